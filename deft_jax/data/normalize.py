"""uint8 images -> the float32 inputs a model takes: (x / 255 - mean) / std per channel.

Datasets stay uint8 (4x smaller than float32); a batch is normalised when it is used.
`normalize_batch` works on NumPy and on JAX arrays alike, so it can run on the host or
inside a jitted step on the device. `NormalizedImages` is a read-only float32 view of a
uint8 image array that normalises on indexing, for code written against float32 arrays.
"""

from __future__ import annotations

import numpy as np

from deft_jax.data.images import resize_array
from deft_jax.errors import UserError


def _channel_stats(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size not in (1, 3):
        raise UserError(f"{name} must be one number or three (per RGB channel), got {arr.size}")
    if name == "std" and np.any(arr <= 0):
        raise UserError(f"std must be positive, got {arr.tolist()}")
    return arr


def normalization_constants(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) float32 with (x/255 - mean)/std == x * scale - shift."""
    mean_arr = _channel_stats(mean, "mean")
    std_arr = _channel_stats(std, "std")
    return ((1.0 / (255.0 * std_arr)).astype(np.float32),
            (mean_arr / std_arr).astype(np.float32))


def normalize_batch(images, mean, std):
    """float32 (x / 255 - mean) / std of a uint8 [..., 3] batch (NumPy or JAX array in,
    the same kind out)."""
    scale, shift = normalization_constants(mean, std)
    return images.astype(np.float32) * scale - shift


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"expected images shaped [N, H, W, 3], got {list(images.shape)}")
    if images.dtype != np.uint8:
        raise UserError(f"expected uint8 images, got {images.dtype}")
    return images


def resize_images(images_uint8: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC resized (PIL bilinear, stretch) to size x size; the same array if it
    already is."""
    images = _check_images(images_uint8)
    size = int(size)
    if size <= 0:
        raise UserError(f"input_size must be a positive integer, got {size}")
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((images.shape[0], size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = resize_array(img, size)
    return out


def preprocess(images_uint8: np.ndarray, input_size: int, mean, std) -> np.ndarray:
    """float32 NHWC of the whole array: resize to input_size if needed, then normalise."""
    images = resize_images(images_uint8, input_size)
    scale, shift = normalization_constants(mean, std)
    out = images.astype(np.float32)
    out *= scale
    out -= shift
    return out


class NormalizedImages:
    """A float32 [N, H, W, 3] view of uint8 images: indexing (`x[idx]`, `x[a:b]`) returns
    that batch normalised; nothing else is stored in float32. `images` and `index` give
    the uint8 data for code that normalises itself (`normalize_batch`)."""

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, images_uint8: np.ndarray, mean, std, index=None):
        self.images = _check_images(images_uint8)
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.mean, self.std = mean, std
        self._scale, self._shift = normalization_constants(mean, std)

    def __len__(self) -> int:
        return len(self.images) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + tuple(self.images.shape[1:])

    def uint8(self, key=slice(None)) -> np.ndarray:
        """The uint8 images at `key` (positions in this view)."""
        return self.images[key] if self.index is None else self.images[self.index[key]]

    def __getitem__(self, key) -> np.ndarray:
        out = self.uint8(key).astype(np.float32)
        out *= self._scale
        out -= self._shift
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"NormalizedImages(shape={self.shape}, uint8 storage)"
