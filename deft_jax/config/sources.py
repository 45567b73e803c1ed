"""`data.source`: where the images come from, one typed dataclass per kind, chosen by `kind`.

`Source` is a tagged union (`deft_jax.config.parsing` reads a table into the member its
`kind` names): a table (`data.source={kind="folder", path="x"}`) or a changed
`data.source.kind` starts from that kind's defaults, and a key the kind lacks is an error
naming the kind's keys. The loaders (`deft_jax.data.sources`) take these values as they
are; every check of a source's options is `check_source`, run with the config's
validation.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from deft_jax.config.parsing import check_choices
from deft_jax.errors import UserError

# how a whole image becomes a square (`deft_jax.data.images` implements them)
Resize = Literal["short-side-crop", "stretch", "pad"]
RESIZE_MODES: tuple[str, ...] = get_args(Resize)
DEFAULT_RESIZE = "short-side-crop"

# Larger inputs than any model here was built for (model.input_size, a source's
# image_size, a checkpoint's); the memory checks bound what a dataset may need below this.
MAX_INPUT_SIZE = 1024
MAX_CROP = 1 << 15  # pixels: larger than any image this reads
MAX_COUNT = 10**9  # images per class, per split, examples: more than any dataset here
# every integer option of a source: 1 .. its bound (or null); checked before any work
SOURCE_INT_BOUNDS = {"max_per_class": MAX_COUNT, "crop": MAX_CROP, "crop_stride": MAX_CROP,
                     "image_size": MAX_INPUT_SIZE, "max_images": MAX_COUNT,
                     "max_examples": MAX_COUNT}


def shown(value) -> str:
    """An integer as text for an error line; a huge one as its magnitude (a number of
    thousands of digits is neither readable nor printable by Python)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"{'-' if value < 0 else ''}about 10^{int(value.bit_length() * 0.30103)}"
    return repr(value)


@dataclasses.dataclass
class DigitsSource:
    """scikit-learn's 8x8 digits (offline)."""

    kind: Literal["digits"] = "digits"
    max_per_class: int | None = None  # the first k images of each class; null = all


@dataclasses.dataclass
class FolderSource:
    """A folder of images: `root/<class>/...` or `root/<split>/<class>/...`
    (see `deft_jax.data.folder` and `deft_jax.data.layout`)."""

    kind: Literal["folder"] = "folder"
    path: str = ""
    label_regex: str | None = None  # label from the file name (named group `label`)
    group_regex: str | None = None  # group (case, slide) from the file name (named group `group`)
    crop: int | None = None  # crop x crop tiles at full resolution
    crop_stride: int | None = None  # null = crop
    image_size: int | None = None  # whole images or crops resized to it; null = model.input_size
    max_images: int | None = None  # the first k images per class (per split folder)
    resize: Resize = DEFAULT_RESIZE  # whole images to a square


@dataclasses.dataclass
class NpzSource:
    """A MedMNIST-style .npz; its own train/val/test become the splits."""

    kind: Literal["npz"] = "npz"
    path: str = ""


@dataclasses.dataclass
class TfdsSource:
    """A TensorFlow Datasets dataset already prepared on disk (see `deft_jax.data.tfds`)."""

    kind: Literal["tfds"] = "tfds"
    name: str = ""
    split: str | None = None  # e.g. "train[:500]"; null = the dataset's own splits
    data_dir: str | None = None  # null = TFDS's default, ~/tensorflow_datasets
    image_size: int | None = None  # resize to a square; null = one size or the median height
    max_examples: int | None = None  # at most k examples per split


Source = DigitsSource | FolderSource | NpzSource | TfdsSource
SOURCE_KINDS: tuple[str, ...] = tuple(cls().kind for cls in get_args(Source))


def tfds_shorthand(key: list[str], value):
    """`data.source=tfds:NAME` is short for `data.source={kind="tfds", name="NAME"}`."""
    if key == ["data", "source"] and isinstance(value, str) and value.startswith("tfds:"):
        return {"kind": "tfds", "name": value[len("tfds:"):]}
    return value


def check_source(source: Source, where: str = "data.source") -> None:
    """The rules of `source`'s options beyond their types: choices (`resize`), counts are
    positive, a path or name is set, a crop stride comes with a crop."""
    def need(ok: bool, message: str):
        if not ok:
            raise UserError(f"invalid config: {where}.{message}")

    check_choices(source, where)

    for field in dataclasses.fields(source):
        value = getattr(source, field.name)
        if isinstance(value, int) and not isinstance(value, bool):
            top = SOURCE_INT_BOUNDS[field.name]  # every integer option has a bound
            need(value >= 1, f"{field.name} must be a positive integer or null, got {shown(value)}")
            need(value <= top, f"{field.name} must be an integer in [1, {top}] or null, "
                               f"got {shown(value)}")
    if isinstance(source, (FolderSource, NpzSource)):
        need(source.path != "", f"path must be set for kind {source.kind} (the dataset's "
                                f"{'folder' if source.kind == 'folder' else '.npz file'})")
    if isinstance(source, FolderSource):
        need(source.crop_stride is None or source.crop is not None,
             f"crop_stride needs {where}.crop to be set")
    if isinstance(source, TfdsSource):
        need(source.name != "", "name must be set for kind tfds (e.g. data.source=tfds:beans)")
