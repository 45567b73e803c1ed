"""TensorFlow Datasets as a data source: `deft_jax.config.sources.TfdsSource` (`name`,
`split`, `data_dir`, `image_size`, `max_examples`), checked by the config.

Needs the optional extra (`pip install -e .[tfds]`: tensorflow-datasets, which reads
prepared datasets without TensorFlow through `tfds.data_source` and decodes images with
PIL); it is imported only when a tfds source is used. Nothing is downloaded: the dataset
must already be prepared in `data_dir` (default: TFDS's own, `~/tensorflow_datasets`); if
it is not, the error says how to prepare it once on a machine with internet.

- Labels and class names come from the dataset's info: its supervised keys (else the
  features "image" and "label") and the label feature's names.
- `split` given (e.g. "train" or "train[:500]"): only that split is read and deft_jax
  makes stratified train/val/test splits as for folders.
- `split` omitted: the dataset's own splits are used - train/validation/test as they are;
  with only train and test, validation is a stratified fifth of train (seed 0); with only
  train, stratified splits as for folders.
- Images must share one size for the in-memory dataset: `image_size` resizes all to that
  square; without it, images of different sizes are resized to the median height.
  Grayscale images are repeated to RGB.
- `max_examples`: read at most that many examples per split (the first ones).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from deft_jax.config.sources import TfdsSource
from deft_jax.data.dataset import Dataset
from deft_jax.errors import UserError

VALIDATION_NAMES = ("validation", "val", "valid")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("data source kind 'tfds' needs tensorflow-datasets: "
                        "pip install -e '.[tfds]' (or pip install tensorflow-datasets)") from None
    return tfds


def _not_prepared(name: str, data_dir: str | None, detail: str = "") -> UserError:
    where = data_dir or "~/tensorflow_datasets"
    flag = f" --data_dir {data_dir}" if data_dir else ""
    arg = f", data_dir={data_dir!r}" if data_dir else ""
    return UserError(
        f"TFDS dataset '{name}' is not prepared in {where}{detail}; deft_jax never downloads: "
        f"prepare it once with internet: tfds build {name}{flag} "
        f"(or python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}'{arg}).download_and_prepare()\")")


def _builder(tfds, name: str, data_dir: str | None):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise _not_prepared(name, data_dir) from None
    except (OSError, ValueError) as err:  # unreadable prepared files
        raise UserError(f"cannot open TFDS dataset '{name}' in {data_dir}: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir)
    return builder


def _feature_keys(info) -> tuple[str, str]:
    keys = info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    if "image" in info.features and "label" in info.features:
        return "image", "label"
    raise UserError(f"TFDS dataset '{info.name}' has no (image, label) supervised keys; "
                    f"its features are {', '.join(info.features.keys())}")


def _read_split(builder, split: str, image_key: str, label_key: str,
                limit: int | None) -> tuple[list[np.ndarray], list[int]]:
    try:
        source = builder.as_data_source(split=split)
    except (ValueError, KeyError) as err:
        raise UserError(f"TFDS dataset '{builder.name}': cannot read split {split!r} "
                        f"({str(err).splitlines()[0]})") from None
    n = len(source) if limit is None else min(limit, len(source))
    images, labels = [], []
    for i in range(n):
        example = source[i]
        image = np.asarray(example[image_key])
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise UserError(f"TFDS dataset '{builder.name}': feature '{image_key}' is not an "
                            f"image (shape {image.shape})")
        image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
        images.append(image.astype(np.uint8))
        labels.append(int(example[label_key]))
    return images, labels


def _same_size(images: list[np.ndarray], image_size: int | None) -> np.ndarray:
    sizes = {im.shape[:2] for im in images}
    if image_size is None and len(sizes) == 1:
        return np.stack(images)
    side = image_size or int(np.median([im.shape[0] for im in images]))
    return np.stack([im if im.shape[:2] == (side, side) else
                     np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR))
                     for im in images])


def _val_from_train(labels: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    keep, val = train_test_split(train, test_size=0.2, random_state=0, stratify=labels[train])
    return np.sort(keep), np.sort(val)


def load_tfds(source: TfdsSource):
    """A `deft_jax.data.Dataset` from a prepared TFDS dataset (see the module docstring)."""

    name = source.name
    data_dir = source.data_dir
    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
        if not Path(data_dir).is_dir():
            raise _not_prepared(name, data_dir, " (the folder does not exist)")
    split = source.split
    image_size, limit = source.image_size, source.max_examples
    tfds = _import_tfds()
    builder = _builder(tfds, name, data_dir)
    info = builder.info
    image_key, label_key = _feature_keys(info)
    class_names = list(getattr(info.features[label_key], "names", []) or [])

    available = list(info.splits.keys())
    if split is not None:
        wanted = {"all": str(split)}
    elif "train" in available and "test" in available:
        val_name = next((v for v in VALIDATION_NAMES if v in available), None)
        wanted = {"train": "train", "test": "test", **({"val": val_name} if val_name else {})}
    elif "train" in available:
        wanted = {"all": "train"}
    else:
        raise UserError(f"TFDS dataset '{name}' has splits {', '.join(available)}: "
                        f"choose one with data.source.split")
    images, labels, parts = [], [], {}
    for part, tfds_split in wanted.items():
        part_images, part_labels = _read_split(builder, tfds_split, image_key, label_key, limit)
        parts[part] = np.arange(len(labels), len(labels) + len(part_labels))
        images += part_images
        labels += part_labels
    if not labels:
        raise UserError(f"TFDS dataset '{name}' split {split!r} has no examples")
    labels_array = np.asarray(labels, np.int32)
    if not class_names:
        class_names = [str(c) for c in range(int(labels_array.max()) + 1)]
    predefined = None
    if "all" not in parts:
        if "val" not in parts:
            parts["train"], parts["val"] = _val_from_train(labels_array, parts["train"])
        predefined = {k: parts[k] for k in ("train", "val", "test")}
    images_array = _same_size(images, image_size)
    groups = np.array([str(i) for i in range(len(labels))])
    h, w = images_array.shape[1:3]
    where = f"split {split}" if split is not None else (
        "predefined splits " + "/".join(str(len(predefined[k])) for k in ("train", "val", "test")))
    desc = (f"tfds {name}: {len(labels)} images, {len(class_names)} classes, {w}x{h} px, {where}")
    return Dataset(np.ascontiguousarray(images_array), labels_array, groups, class_names, desc,
                   predefined_splits=predefined)
