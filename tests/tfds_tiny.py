"""A tiny image dataset prepared locally with TFDS's own builder machinery (no download, no
TensorFlow): 3 colour classes of 20 px PNGs, splits train (30) and test (12)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def prepare_tiny_shapes(data_dir: Path, with_validation: bool = False) -> str:
    """Build the dataset into `data_dir` (array_record files); returns its name."""
    import tensorflow_datasets as tfds

    def examples(n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            image = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
            image[..., i % 3] += 150
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            yield i, {"image": buffer.getvalue(), "label": i % 3}

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"),
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(20, 20, 3)),
                    "label": tfds.features.ClassLabel(names=["red", "green", "blue"])}))

        def _split_generators(self, dl_manager):
            splits = {"train": examples(30, 0), "test": examples(12, 1)}
            if with_validation:
                splits["validation"] = examples(9, 2)
            return splits

        def _generate_examples(self, generator):  # pragma: no cover - generators passed directly
            yield from generator

    TinyShapes(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_shapes"
