"""In-memory datasets: scikit-learn digits, a folder of images, or a MedMNIST-style .npz.

Every loader returns a `Dataset` of uint8 RGB images that all have the same size, int32
labels 0..C-1 and a group id per sample. Samples that share a group (the crops of one
tile, or all tiles of one case when `group_regex` is set) must never be split across
train/val/test; `deft_jax.splits` enforces that.

Source configs (a dict with a `kind` key):

- ``{"kind": "digits", "max_per_class": None}``
- ``{"kind": "folder", "path": ..., "label_regex": None, "group_regex": None,
  "crop": None, "crop_stride": None, "image_size": None, "max_images": None}``
- ``{"kind": "npz", "path": ...}`` (MedMNIST layout; its own train/val/test become
  `predefined_splits`)
- ``{"kind": "tfds", "name": ..., "split": None, "data_dir": None, ...}`` (a prepared
  TensorFlow Datasets dataset; see `deft_jax.tfds_source`)

Folder notes. Labels come from class sub-folders (each immediate sub-folder is a class,
sorted by name) unless `label_regex` is set, in which case the label is the regex's named
group `label` (or its first capture group) searched in each file's name. By default a
sample's group is the source image's path relative to the folder, so crops of one image
stay together but different images of the same patient/case may land in different splits.
For data where several images come from one case (e.g. the osteosarcoma tiles), that
leaks case identity into the test score; the honest setting is a `group_regex` that pulls
the case (or at least the slide) id out of the file name (named group `group` or the first
capture group). For ``Non-Tumor___Case-3-A15-2939-11262_112.jpg``:

- case:  ``"___(Case-\\d+|P\\d+)-"`` -> ``Case-3``. On the 60-tile shared subset this
  gives only 4 cases and some classes have fewer than 3, so a stratified 3-way split is
  impossible and `make_splits` says so (the class/case confound is real);
- slide: ``"___((?:Case-\\d+-)?(?:P\\d+-)?[A-Z]\\d+)-"`` -> ``Case-3-A15`` (26 groups
  there), a middle ground between tile-level and case-level grouping.

Non-square images are resized to a square (aspect not kept); crops that do not fit at
the right/bottom edge are dropped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from deft_jax.errors import UserError
from deft_jax.tfds_source import OPTIONS as TFDS_OPTIONS  # tensorflow_datasets itself: lazily

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
KINDS = ("digits", "folder", "npz", "tfds")
_OPTIONS = {
    "digits": {"kind", "max_per_class"},
    "folder": {"kind", "path", "label_regex", "group_regex", "crop", "crop_stride",
               "image_size", "max_images"},
    "npz": {"kind", "path"},
    "tfds": TFDS_OPTIONS,
}
_NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels",
             "test_images", "test_labels")


@dataclasses.dataclass
class Dataset:
    images: np.ndarray      # uint8 [N, H, W, 3] RGB (all same size)
    labels: np.ndarray      # int32 [N], 0..C-1
    groups: np.ndarray      # [N] str group id; samples sharing a group never cross a split
    class_names: list[str]
    description: str        # one line, e.g. "digits: 1797 images, 10 classes"
    predefined_splits: dict[str, np.ndarray] | None = None  # name -> indices (npz)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


# ---------------------------------------------------------------------------------------
# Single images and preprocessing


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """uint8 HxWx3 from any PIL mode (16-bit/float greyscale is scaled down, alpha dropped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        if im.mode.startswith("I;16"):
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def load_image_file(path) -> np.ndarray:
    """uint8 HxWx3 RGB; UserError if the file is missing or not a readable image."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"image not found: {p}")
    if not p.is_file():
        raise UserError(f"not an image file: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            arr = _to_rgb_array(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {p}: {_one_line(err)}") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"cannot read image {p}: empty image")
    return np.ascontiguousarray(arr)


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image to size x size (PIL bilinear); no-op if already there."""
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))


def _channel_stats(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size not in (1, 3):
        raise UserError(f"{name} must be one number or three (per RGB channel), got {arr.size}")
    if name == "std" and np.any(arr <= 0):
        raise UserError(f"std must be positive, got {arr.tolist()}")
    return arr


def preprocess(images_uint8: np.ndarray, input_size: int, mean, std) -> np.ndarray:
    """float32 NHWC: resize (PIL bilinear) to input_size if needed, /255, (x - mean) / std."""
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"expected images shaped [N, H, W, 3], got {list(images.shape)}")
    if images.dtype != np.uint8:
        raise UserError(f"expected uint8 images, got {images.dtype}")
    size = int(input_size)
    if size <= 0:
        raise UserError(f"input_size must be a positive integer, got {input_size}")
    mean_arr = _channel_stats(mean, "mean")
    std_arr = _channel_stats(std, "std")
    if images.shape[1:3] != (size, size):
        resized = np.empty((images.shape[0], size, size, 3), dtype=np.uint8)
        for i, img in enumerate(images):
            resized[i] = _resize(img, size)
        images = resized
    # (x/255 - mean)/std == x * (1/(255 std)) - mean/std, done in one pass over float32.
    scale = (1.0 / (255.0 * std_arr)).astype(np.float32)
    shift = (mean_arr / std_arr).astype(np.float32)
    out = images.astype(np.float32)
    out *= scale
    out -= shift
    return out


# ---------------------------------------------------------------------------------------
# Source loaders


def _positive_int(source: dict, key: str, default=None):
    value = source.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserError(f"dataset option '{key}' must be a positive integer, got {value!r}")
    return int(value)


def _check_classes(labels: np.ndarray, class_names: Sequence[str], what: str) -> None:
    present = np.unique(labels)
    if present.size < 2:
        name = class_names[int(present[0])] if present.size else "none"
        raise UserError(f"only one class found in {what} ('{name}'); need at least 2 classes")


def load_dataset(source: dict) -> Dataset:
    """Load a dataset from a source config dict (see module docstring)."""
    if not isinstance(source, dict):
        raise UserError(f"dataset source must be a mapping with a 'kind' key, got {source!r}")
    kind = source.get("kind")
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = sorted(set(source) - _OPTIONS[kind])
    if unknown:
        raise UserError(f"unknown dataset option(s) {', '.join(map(repr, unknown))} for kind "
                        f"'{kind}'; allowed: {', '.join(sorted(_OPTIONS[kind] - {'kind'}))}")
    if kind == "digits":
        return _load_digits(source)
    if kind == "folder":
        return _load_folder(source)
    if kind == "tfds":  # optional extra, imported only when used
        from deft_jax.tfds_source import load_tfds
        return load_tfds(source)
    return _load_npz(source)


def _load_digits(source: dict) -> Dataset:
    from sklearn.datasets import load_digits

    max_per_class = _positive_int(source, "max_per_class")
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


def _compile_regex(pattern, key: str, group_name: str) -> re.Pattern:
    if not isinstance(pattern, str):
        raise UserError(f"dataset option '{key}' must be a regular expression string, "
                        f"got {pattern!r}")
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise UserError(f"invalid {key} {pattern!r}: {err}") from None
    if regex.groups < 1:
        raise UserError(f"{key} {pattern!r} needs a capture group (e.g. '(?P<{group_name}>...)')")
    return regex


def _regex_value(regex: re.Pattern, name: str, group_name: str) -> str | None:
    match = regex.search(name)
    if match is None:
        return None
    value = match.group(group_name) if group_name in regex.groupindex else match.group(1)
    return value if value else None


def _image_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fname in filenames:
            if not fname.startswith(".") and fname.lower().endswith(IMAGE_EXTENSIONS):
                files.append(Path(dirpath) / fname)
    return sorted(files)


def _folder_samples(root: Path, source: dict) -> tuple[list[Path], list[str]]:
    """Image paths and their class label strings (sorted by path)."""
    label_regex = source.get("label_regex")
    if label_regex is None:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            if _image_files(root):
                raise UserError(f"no class sub-folders in {root}; put each class in its own "
                                f"sub-folder or set label_regex to read labels from file names")
            raise UserError(f"no images found in {root} (extensions: "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
        paths, names = [], []
        for d in class_dirs:
            files = _image_files(d)
            if not files:
                raise UserError(f"class folder '{d.name}' in {root} has no images")
            paths += files
            names += [d.name] * len(files)
        return paths, names

    regex = _compile_regex(label_regex, "label_regex", "label")
    files = _image_files(root)
    if not files:
        raise UserError(f"no images found in {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    names = [_regex_value(regex, f.name, "label") for f in files]
    bad = [f for f, n in zip(files, names) if n is None]
    if bad:
        raise UserError(f"{len(bad)} of {len(files)} file names do not match label_regex "
                        f"{label_regex!r}, e.g. '{bad[0].name}'")
    return files, names


def image_to_samples(arr: np.ndarray, crop: int | None, stride: int | None,
                     image_size: int | None, name: str = "image") -> list[np.ndarray]:
    """One image -> its samples: non-overlapping (or `stride`-spaced) crop x crop tiles in
    row-major order (edge remainders dropped), each resized to image_size. Used for
    training data and, identically, at predict time."""
    if crop is None:
        tiles = [arr]
    else:
        stride = stride or crop
        h, w = arr.shape[:2]
        if crop > h or crop > w:
            raise UserError(f"crop {crop} is larger than image '{name}' ({w}x{h})")
        tiles = [arr[y:y + crop, x:x + crop]
                 for y in range(0, h - crop + 1, stride)
                 for x in range(0, w - crop + 1, stride)]
    if image_size is not None:
        tiles = [_resize(np.ascontiguousarray(t), image_size) for t in tiles]
    return tiles


def _load_folder(source: dict) -> Dataset:
    path = source.get("path")
    if not path:
        raise UserError("folder dataset needs a 'path'")
    root = Path(os.path.expanduser(str(path)))
    if not root.exists():
        raise UserError(f"dataset path not found: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a directory: {root}")
    crop = _positive_int(source, "crop")
    stride = _positive_int(source, "crop_stride")
    if stride is not None and crop is None:
        raise UserError("dataset option 'crop_stride' needs 'crop' to be set")
    stride = stride or crop
    image_size = _positive_int(source, "image_size")
    max_images = _positive_int(source, "max_images")

    files, label_strs = _folder_samples(root, source)
    class_names = sorted(set(label_strs))
    class_index = {n: i for i, n in enumerate(class_names)}
    labels = np.array([class_index[n] for n in label_strs], dtype=np.int32)
    if len(class_names) < 2:
        raise UserError(f"only one class found in {root} ('{class_names[0]}'); "
                        f"need at least 2 classes")

    if max_images is not None:
        keep = np.sort(np.concatenate(
            [np.flatnonzero(labels == c)[:max_images] for c in range(len(class_names))]))
        files = [files[i] for i in keep]
        labels = labels[keep]

    rel = [f.relative_to(root).as_posix() for f in files]
    group_regex = source.get("group_regex")
    if group_regex is None:
        image_groups = rel
    else:
        regex = _compile_regex(group_regex, "group_regex", "group")
        image_groups = [_regex_value(regex, f.name, "group") for f in files]
        bad = [f for f, g in zip(files, image_groups) if g is None]
        if bad:
            raise UserError(f"{len(bad)} of {len(files)} file names do not match group_regex "
                            f"{group_regex!r}, e.g. '{bad[0].name}'")

    def read(i: int) -> list[np.ndarray]:
        return image_to_samples(load_image_file(files[i]), crop, stride, image_size, rel[i])

    workers = max(1, min(8, os.cpu_count() or 1, len(files)))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            per_image = list(pool.map(read, range(len(files))))
    else:
        per_image = [read(i) for i in range(len(files))]

    counts = [len(t) for t in per_image]
    tiles = [t for ts in per_image for t in ts]
    shapes = {t.shape for t in tiles}
    if len(shapes) > 1:
        first = tiles[0].shape
        j = next(k for k, t in enumerate(tiles) if t.shape != first)
        src = int(np.searchsorted(np.cumsum(counts), j, side="right"))
        raise UserError(f"images have different sizes ('{rel[0]}' is {first[1]}x{first[0]}, "
                        f"'{rel[src]}' is {tiles[j].shape[1]}x{tiles[j].shape[0]}); "
                        f"set image_size to resize them")
    images = np.stack(tiles).astype(np.uint8, copy=False)
    labels = np.repeat(labels, counts).astype(np.int32)
    groups = np.repeat(np.array(image_groups), counts)

    n_img = len(files)
    h, w = images.shape[1:3]
    desc = f"folder {root.name}: {images.shape[0]} samples"
    if crop is not None:
        desc += f" ({n_img} images cut into {crop} px crops)"
    desc += f", {len(class_names)} classes, {w}x{h} px"
    desc += f", {len(set(image_groups))} groups"
    if max_images is not None:
        desc += f" (first {max_images} images per class)"
    return Dataset(images, labels, groups, class_names, desc)


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
    if arr.size and np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1:
        return np.rint(arr * 255.0).astype(np.uint8)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise UserError(f"{path.name}: '{key}' values must be in 0..255 (or 0..1 floats), "
                        f"got {arr.min()}..{arr.max()}")
    return np.rint(arr).astype(np.uint8)


def _load_npz(source: dict) -> Dataset:
    path = source.get("path")
    if not path:
        raise UserError("npz dataset needs a 'path'")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"dataset path not found: {p}")
    if not p.is_file():
        raise UserError(f"dataset path is not a file: {p} (npz datasets are one .npz file)")
    try:
        npz = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read npz file {p}: {_one_line(err)}") from None
    with npz:
        missing = [k for k in _NPZ_KEYS if k not in npz.files]
        if missing:
            raise UserError(f"{p.name} is missing key(s) {', '.join(missing)}; "
                            f"expected MedMNIST keys {', '.join(_NPZ_KEYS)}")
        parts_img, parts_lab = [], []
        for split in ("train", "val", "test"):
            imgs = _npz_images(npz[f"{split}_images"], f"{split}_images", p)
            labs = np.asarray(npz[f"{split}_labels"])
            if labs.ndim == 2 and labs.shape[1] == 1:
                labs = labs[:, 0]
            if labs.ndim != 1 or labs.shape[0] != imgs.shape[0]:
                raise UserError(f"{p.name}: '{split}_labels' must be [N] or [N, 1] with "
                                f"N = {imgs.shape[0]}, got {list(labs.shape)}")
            if labs.size and not np.all(np.equal(np.mod(labs, 1), 0)):
                raise UserError(f"{p.name}: '{split}_labels' must be integer class ids")
            parts_img.append(imgs)
            parts_lab.append(labs.astype(np.int64))
        class_names = None
        if "class_names" in npz.files:
            class_names = [str(c) for c in np.asarray(npz["class_names"]).reshape(-1)]
    shapes = {a.shape[1:] for a in parts_img if a.shape[0]}
    if len(shapes) > 1:
        raise UserError(f"{p.name}: train/val/test images have different sizes {sorted(shapes)}")
    labels = np.concatenate(parts_lab)
    if labels.size == 0:
        raise UserError(f"no images found in {p}")
    if labels.min() < 0:
        raise UserError(f"{p.name}: labels must be >= 0, found {labels.min()}")
    if class_names is None:
        class_names = [str(c) for c in range(int(labels.max()) + 1)]
    elif labels.max() >= len(class_names):
        raise UserError(f"{p.name}: label {labels.max()} out of range for "
                        f"{len(class_names)} class_names")
    labels = labels.astype(np.int32)
    _check_classes(labels, class_names, str(p))
    images = np.concatenate(parts_img)
    sizes = np.cumsum([0] + [a.shape[0] for a in parts_lab])
    splits = {name: np.arange(sizes[i], sizes[i + 1])
              for i, name in enumerate(("train", "val", "test"))}
    groups = np.array([str(i) for i in range(labels.shape[0])])
    h, w = images.shape[1:3]
    desc = (f"npz {p.name}: {labels.shape[0]} images, {len(class_names)} classes, {w}x{h} px, "
            f"predefined splits {'/'.join(str(len(v)) for v in splits.values())}")
    return Dataset(images, labels, groups, class_names, desc, predefined_splits=splits)
