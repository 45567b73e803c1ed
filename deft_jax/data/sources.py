"""In-memory datasets: scikit-learn digits, a folder of images, or a MedMNIST-style .npz.

Every loader returns a `Dataset` of uint8 RGB images that all have the same size, int32
labels 0..C-1 and a group id per sample. Samples that share a group (the crops of one
tile, or all tiles of one case when `group_regex` is set) must never be split across
train/val/test; `deft_jax.data.splits` enforces that.

Sources are the typed values of `deft_jax.config.sources` (their options, defaults and
checks live there):

- `DigitsSource` (`max_per_class`)
- `FolderSource` (see `deft_jax.data.folder` and `deft_jax.data.layout`)
- `NpzSource` (MedMNIST layout; its own train/val/test become `predefined_splits`)
- `TfdsSource` (see `deft_jax.data.tfds`)

Folder notes. A folder is either ``root/<class>/...`` or ``root/<split>/<class>/...``
(split folders train, val/valid/validation, test; the splits it lacks are carved out of
train). Labels come from class sub-folders unless `label_regex` is set, in which case the
label is the regex's named group `label` (or its first capture group) searched in each
file's name. Whole images are resized to the model's input size (or `image_size`) by
`resize`. By default a sample's group is the source image's path relative to the folder,
so crops of one image stay together but different images of the same patient/case may
land in different splits. For data where several images come from one case (e.g. the
osteosarcoma tiles), that leaks case identity into the test score; the honest setting is
a `group_regex` that pulls the case (or at least the slide) id out of the file name (named
group `group` or the first capture group). For
``Non-Tumor___Case-3-A15-2939-11262_112.jpg``:

- case:  ``"___(Case-\\d+|P\\d+)-"`` -> ``Case-3``. On the 60-tile shared subset this
  gives only 4 cases and some classes have fewer than 3, so a stratified 3-way split is
  impossible and `make_splits` says so (the class/case confound is real);
- slide: ``"___((?:Case-\\d+-)?(?:P\\d+-)?[A-Z]\\d+)-"`` -> ``Case-3-A15`` (26 groups
  there), a middle ground between tile-level and case-level grouping.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

import deft_jax.data.folder as folder
from deft_jax.config.sources import (
    DEFAULT_RESIZE,
    DigitsSource,
    FolderSource,
    NpzSource,
    Source,
    TfdsSource,
    check_source,
)
from deft_jax.data.dataset import Dataset, check_class_count, require_two_classes
from deft_jax.data.images import Sampling
from deft_jax.errors import UserError
from deft_jax.runtime import host_memory

_NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels",
             "test_images", "test_labels")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_dataset(source: Source, input_size: int | None = None) -> Dataset:
    """Load a dataset from a typed source (see module docstring).

    `input_size`: the model's input size, which a folder's whole images are resized to
    unless `image_size` is set (None: keep their own size, which must then be one size).
    A few lines about what was read (layout, skipped files, progress) are logged."""
    check_source(source)  # the config's rules, also for a source built in code
    if isinstance(source, DigitsSource):
        dataset, where = _load_digits(source), source.kind
    elif isinstance(source, TfdsSource):  # tensorflow_datasets itself: imported only when used
        from deft_jax.data.tfds import load_tfds
        dataset, where = load_tfds(source), source.name
    elif isinstance(source, FolderSource):
        dataset, where = folder.load_folder(source, input_size), source.path
    elif isinstance(source, NpzSource):
        dataset, where = _load_npz(source), source.path
    else:
        raise TypeError(f"not a data source: {source!r}")
    check_class_count(len(dataset.class_names), where)
    require_two_classes(dataset.labels, dataset.class_names, where)
    return dataset


def sampling_of(source: Source, input_size: int) -> dict:
    """How predict turns one image file into samples as this source did at training time
    (stored in the checkpoint): crops, the size whole images or crops are resized to,
    and the resize mode."""
    if isinstance(source, FolderSource):
        s = folder.folder_sampling(source, input_size)
    else:
        s = Sampling(size=input_size, resize=DEFAULT_RESIZE)
    return {"crop": s.crop, "crop_stride": s.crop_stride, "image_size": s.size, "resize": s.resize}


def _load_digits(source: DigitsSource) -> Dataset:
    from sklearn.datasets import load_digits

    max_per_class = source.max_per_class
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int32)
    index = np.arange(labels.shape[0])
    if max_per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:max_per_class] for c in range(10)])
        index = np.sort(keep)
    images = np.repeat(images[index][..., None], 3, axis=-1)
    labels = labels[index]
    groups = np.array([str(i) for i in index])
    class_names = [str(c) for c in range(10)]
    desc = f"digits: {labels.shape[0]} images, 10 classes"
    if max_per_class is not None:
        desc += f" (first {max_per_class} per class)"
    return Dataset(np.ascontiguousarray(images), labels, groups, class_names, desc)


def _npz_images(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserError(f"{path.name}: '{key}' must be [N, H, W] or [N, H, W, 3], "
                        f"got {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise UserError(f"{path.name}: '{key}' must hold numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UserError(f"{path.name}: '{key}' holds {int((~np.isfinite(arr)).sum())} non-finite "
                        "values (NaN or infinity); images must be finite")
    if arr.size and np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1:
        return np.rint(arr * 255.0).astype(np.uint8)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise UserError(f"{path.name}: '{key}' values must be in 0..255 (or 0..1 floats), "
                        f"got {arr.min()}..{arr.max()}")
    return np.rint(arr).astype(np.uint8)


def _check_npz_size(npz, key: str, path: Path) -> None:
    """The array's header (shape, dtype) against the bytes its record holds, before numpy
    allocates the array: a tiny crafted .npz cannot ask for terabytes."""
    try:
        info = npz.zip.getinfo(f"{key}.npy")
        with npz.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise UserError(f"cannot read npz file {path}: '{key}': {_one_line(err)}") from None
    if dtype.hasobject:
        return  # refused as a pickled array when read
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > info.file_size:
        raise UserError(f"{path.name}: '{key}' claims shape {list(shape)} ({nbytes:,} bytes) but "
                        f"its record holds {info.file_size:,} bytes (a truncated or damaged file)")
    available = host_memory.available_bytes()
    if available is not None and nbytes > available:
        raise UserError(f"{path.name}: '{key}' needs {nbytes / 2**30:.1f} GiB, more than the "
                        f"{available / 2**30:.1f} GiB of available memory")


def _npz_array(npz, key: str, path: Path) -> np.ndarray:
    """One array of an .npz; a pickled (object) array is refused as a user error."""
    _check_npz_size(npz, key, path)
    try:
        return np.asarray(npz[key])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:  # a damaged record
        raise UserError(f"cannot read npz file {path}: '{key}': {_one_line(err)}") from None
    except ValueError as err:  # numpy refuses object arrays without allow_pickle
        if "allow_pickle" not in str(err):
            raise UserError(f"cannot read npz file {path}: '{key}': {_one_line(err)}") from None
        raise UserError(f"{path.name}: '{key}' is a pickled (object) array, which is never loaded "
                        "(unpickling can run code); store plain numeric arrays") from None


def _load_npz(source: NpzSource) -> Dataset:
    p = Path(os.path.expanduser(source.path))
    if not p.exists():
        raise UserError(f"dataset path not found: {p}")
    if not p.is_file():
        raise UserError(f"dataset path is not a file: {p} (npz datasets are one .npz file)")
    try:
        npz = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # not an npz, truncated
        raise UserError(f"cannot read npz file {p}: {_one_line(err)}") from None
    with npz:
        missing = [k for k in _NPZ_KEYS if k not in npz.files]
        if missing:
            raise UserError(f"{p.name} is missing key(s) {', '.join(missing)}; "
                            f"expected MedMNIST keys {', '.join(_NPZ_KEYS)}")
        parts_img, parts_lab = [], []
        for split in ("train", "val", "test"):
            imgs = _npz_images(_npz_array(npz, f"{split}_images", p), f"{split}_images", p)
            labs = _npz_array(npz, f"{split}_labels", p)
            if labs.ndim == 2 and labs.shape[1] == 1:
                labs = labs[:, 0]
            if labs.ndim != 1 or labs.shape[0] != imgs.shape[0]:
                raise UserError(f"{p.name}: '{split}_labels' must be [N] or [N, 1] with "
                                f"N = {imgs.shape[0]}, got {list(labs.shape)}")
            if labs.size and (labs.dtype.kind not in "iuf"
                              or not np.all(np.equal(np.mod(labs, 1), 0))):
                raise UserError(f"{p.name}: '{split}_labels' must be integer class ids")
            parts_img.append(imgs)
            parts_lab.append(labs.astype(np.int64))
        class_names = None
        if "class_names" in npz.files:
            class_names = [str(c) for c in _npz_array(npz, "class_names", p).reshape(-1)]
    shapes = {a.shape[1:] for a in parts_img if a.shape[0]}
    if len(shapes) > 1:
        raise UserError(f"{p.name}: train/val/test images have different sizes {sorted(shapes)}")
    labels = np.concatenate(parts_lab)
    if labels.size == 0:
        raise UserError(f"no images found in {p}")
    if labels.min() < 0:
        raise UserError(f"{p.name}: labels must be >= 0, found {labels.min()}")
    if class_names is None:  # labels 0..max are the classes: bounded before anything per class
        check_class_count(int(labels.max()) + 1, p.name,
                          f"classes (its largest label is {labels.max()}; without class_names "
                          "labels 0..largest are the classes)")
        class_names = [str(c) for c in range(int(labels.max()) + 1)]
    elif labels.max() >= len(class_names):
        raise UserError(f"{p.name}: label {labels.max()} out of range for "
                        f"{len(class_names)} class_names")
    labels = labels.astype(np.int32)
    images = np.concatenate(parts_img)
    sizes = np.cumsum([0] + [a.shape[0] for a in parts_lab])
    splits = {name: np.arange(sizes[i], sizes[i + 1])
              for i, name in enumerate(("train", "val", "test"))}
    groups = np.array([str(i) for i in range(labels.shape[0])])
    h, w = images.shape[1:3]
    desc = (f"npz {p.name}: {labels.shape[0]} images, {len(class_names)} classes, {w}x{h} px, "
            f"predefined splits {'/'.join(str(len(v)) for v in splits.values())}")
    return Dataset(images, labels, groups, class_names, desc, predefined_splits=splits)
