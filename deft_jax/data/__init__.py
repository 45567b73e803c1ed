"""Datasets: loaders (`sources`), one image file -> samples (`images`), folder layouts
(`layout`, `folder`), normalisation of uint8 batches (`normalize`)."""

from deft_jax.data.dataset import Dataset
from deft_jax.data.images import (
                                  DEFAULT_RESIZE,
                                  IMAGE_EXTENSIONS,
                                  LEGACY_RESIZE,
                                  RESIZE_MODES,
                                  Sampling,
                                  decode_image,
                                  image_samples,
                                  image_to_samples,
                                  load_image_file,
)
from deft_jax.data.normalize import (
                                  NormalizedImages,
                                  normalization_constants,
                                  normalize_batch,
                                  preprocess,
                                  resize_images,
)
from deft_jax.data.sources import load_dataset, sampling_of

__all__ = ["Dataset", "DEFAULT_RESIZE", "IMAGE_EXTENSIONS", "LEGACY_RESIZE", "RESIZE_MODES",
           "Sampling", "decode_image", "image_samples", "image_to_samples", "load_image_file",
           "NormalizedImages", "normalization_constants", "normalize_batch", "preprocess",
           "resize_images", "load_dataset", "sampling_of"]
