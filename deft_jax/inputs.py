"""Dataset + split + backbone preprocessing -> the arrays a search trains and scores on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from deft_jax.config import Config
from deft_jax.data import Dataset, load_dataset, preprocess
from deft_jax.errors import UserError
from deft_jax.fitness import SplitArrays
from deft_jax.models.base import ModelSpec
from deft_jax.splits import load_splits, make_splits


@dataclasses.dataclass
class PreparedData:
    dataset: Dataset
    splits: dict[str, np.ndarray]
    arrays: SplitArrays
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names


def split_dataset(cfg: Config, dataset: Dataset, saved_splits: Path | None = None) -> dict[str, np.ndarray]:
    if saved_splits is not None and saved_splits.exists():
        splits = load_splits(saved_splits)
        largest = max((int(v.max()) for v in splits.values() if v.size), default=-1)
        if largest >= len(dataset):
            raise UserError(f"splits file {saved_splits} names sample {largest}, but the dataset has "
                            f"{len(dataset)} samples (was the data changed since the run started?)")
        return splits
    if dataset.predefined_splits is not None:
        return {k: np.asarray(v) for k, v in dataset.predefined_splits.items()}
    return make_splits(dataset.labels, dataset.groups, tuple(cfg.data.fractions), cfg.data.split_seed,
                       class_names=dataset.class_names)


def check_fits_in_memory(num_images: int, input_size: int, share: float = 0.5) -> None:
    """The preprocessed float32 images must fit in `share` of the host's available memory;
    checked before anything is allocated, so a huge model.input_size is a one-line error
    instead of an out-of-memory kill."""
    from deft_jax.strategies import host_available_bytes  # /proc/meminfo, read once

    needed = num_images * input_size * input_size * 3 * 4
    available = host_available_bytes()
    if available is not None and needed > share * available:
        raise UserError(f"{num_images} images at model.input_size={input_size} need "
                        f"{needed / 2**30:.1f} GiB as float32, more than {share:.0%} of the "
                        f"{available / 2**30:.1f} GiB of available memory; lower model.input_size")


def prepare_data(cfg: Config, spec: ModelSpec, dataset: Dataset | None = None,
                 saved_splits: Path | None = None) -> PreparedData:
    dataset = load_dataset(cfg.data.source) if dataset is None else dataset
    if len(dataset.class_names) < 2:
        raise UserError(f"dataset has {len(dataset.class_names)} class; need at least 2")
    splits = split_dataset(cfg, dataset, saved_splits)
    for name in ("train", "val", "test"):
        if len(splits.get(name, [])) == 0:
            raise UserError(f"the {name} split is empty")
    check_fits_in_memory(len(dataset), spec.input_size)
    x = preprocess(dataset.images, spec.input_size, spec.mean, spec.std)
    y = dataset.labels.astype(np.int32)
    arrays = SplitArrays(x_train=x[splits["train"]], y_train=y[splits["train"]],
                         x_val=x[splits["val"]], y_val=y[splits["val"]],
                         num_classes=len(dataset.class_names))
    return PreparedData(dataset, splits, arrays, x[splits["test"]], y[splits["test"]])
