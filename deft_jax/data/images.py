"""One image file -> the uint8 RGB samples a model sees; used for training data and,
identically, at predict time.

Decoding: EXIF orientation is applied, palette / 16-bit / greyscale / CMYK / alpha images
become 8-bit RGB. A whole image (no crop) is resized to a square `size` x `size` with one
of `RESIZE_MODES`:

- ``short-side-crop`` (default): the shorter side to `size`, then the centre square, as
  torchvision's evaluation transform (``Resize(size)`` + ``CenterCrop(size)``) does;
- ``stretch``: both sides to `size`, the aspect ratio is not kept;
- ``pad``: the longer side to `size`, the rest padded with black, centred.

With `crop` the image is cut into crop x crop tiles at full resolution (row-major order,
edge remainders dropped), each resized to `size`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from deft_jax.config.sources import DEFAULT_RESIZE, RESIZE_MODES  # the config's choices
from deft_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# predict on a checkpoint that predates the resize option: what training did then
LEGACY_RESIZE = "stretch"
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
              4: [Image.Transpose.FLIP_TOP_BOTTOM],
              5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_270],
              7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_90]}


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one image file becomes samples: optional crops, then a square `size` (None:
    keep the decoded size) reached with `resize`."""

    crop: int | None = None
    crop_stride: int | None = None
    size: int | None = None
    resize: str = DEFAULT_RESIZE

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except (TypeError, ValueError):  # a malformed EXIF block: treat as upright
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit and 32-bit greyscale are scaled to 0..255
    (16-bit by 1/257), float greyscale in 0..1 by 255, palette and alpha images composed
    through RGBA (alpha dropped)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if im.mode.startswith("I;16") or 255 < top <= 65535:
            arr = arr / 257.0
        elif im.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 65535:
            arr = arr * (255.0 / top)
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if im.mode == "P" or im.mode in ("LA", "PA", "La"):
        im = im.convert("RGBA")
    return im.convert("RGB")


def _decode(path: Path, size: int | None, resize: str) -> np.ndarray:
    with Image.open(path) as im:
        orientation = _orientation(im)
        if size is not None and im.format == "JPEG":
            # decode at a reduced scale that keeps both sides >= size: much faster for
            # big photos, and the resize below still sets the final pixels
            im.draft("RGB", (size, size))
        im.load()
        for op in _TRANSPOSE.get(orientation, []):
            im = im.transpose(op)
        im = _to_rgb(im)
        if size is not None:
            im = resize_image(im, size, resize)
        return np.array(im, dtype=np.uint8)


def decode_image(path, size: int | None = None, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """uint8 HxWx3 RGB, upright (EXIF), resized to size x size by `resize` unless size is
    None; UserError if the file is missing or not a readable image."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"image not found: {p}")
    if not p.is_file():
        raise UserError(f"not an image file: {p}")
    try:
        arr = _decode(p, size, resize)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {p}: {_one_line(err)}") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"cannot read image {p}: empty image")
    return arr


def load_image_file(path) -> np.ndarray:
    """uint8 HxWx3 RGB at the file's own size (EXIF orientation applied)."""
    return decode_image(path)


def resize_image(im: Image.Image, size: int, mode: str) -> Image.Image:
    """A size x size RGB image (PIL bilinear, antialiased) by `mode` (see module doc)."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    if mode == "stretch" or w == h:
        return im.resize((size, size), Image.BILINEAR)
    if mode == "short-side-crop":
        # the centre square of the source, resized: Resize(size) + CenterCrop(size)
        short = min(w, h)
        left, top = (w - short) / 2.0, (h - short) / 2.0
        return im.resize((size, size), Image.BILINEAR, box=(left, top, left + short, top + short))
    if mode == "pad":
        scale = size / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(im.resize(new, Image.BILINEAR), ((size - new[0]) // 2, (size - new[1]) // 2))
        return canvas
    raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")


def resize_array(arr: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """resize_image for an HxWx3 uint8 array; no-op if already size x size."""
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(resize_image(Image.fromarray(arr), size, mode))


def crop_count(width: int, height: int, crop: int, stride: int) -> int:
    if crop > width or crop > height:
        return 0
    return ((height - crop) // stride + 1) * ((width - crop) // stride + 1)


def image_samples(path, sampling: Sampling, name: str | None = None) -> list[np.ndarray]:
    """The uint8 samples of one image file: the whole image resized by `sampling.resize`,
    or its crops each resized to `sampling.size` (see module doc). `name` names the file
    in errors (default: its file name)."""
    s = sampling
    if s.crop is None:
        return [decode_image(path, s.size, s.resize)]
    return image_to_samples(decode_image(path), s.crop, s.crop_stride, s.size,
                            name or Path(path).name)


def array_samples(arr: np.ndarray, sampling: Sampling, name: str = "image") -> list[np.ndarray]:
    """`image_samples` for an image already in memory: uint8 HxWx3 (HxW greyscale, HxWx1
    and HxWx4 are made RGB), cut and resized exactly as a decoded file would be."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise UserError(f"{name}: expected uint8 pixels (0..255), got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
        raise UserError(f"{name}: expected an HxWxC image with C = 1, 3 or 4, got shape {arr.shape}")
    arr = np.ascontiguousarray(np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3])
    s = sampling
    if s.crop is None:
        return [arr if s.size is None else np.asarray(resize_image(Image.fromarray(arr), s.size, s.resize))]
    return image_to_samples(arr, s.crop, s.crop_stride, s.size, name)


def image_to_samples(arr: np.ndarray, crop: int | None, stride: int | None,
                     image_size: int | None, name: str = "image",
                     resize: str = LEGACY_RESIZE) -> list[np.ndarray]:
    """One decoded image -> its samples: non-overlapping (or `stride`-spaced) crop x crop
    tiles in row-major order (edge remainders dropped), each resized to image_size."""
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
        tiles = [resize_array(np.ascontiguousarray(t), image_size, resize) for t in tiles]
    return tiles


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the file header only (no decode)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {_one_line(err)}") from None
