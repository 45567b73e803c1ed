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
        return load_splits(saved_splits)
    if dataset.predefined_splits is not None:
        return {k: np.asarray(v) for k, v in dataset.predefined_splits.items()}
    return make_splits(dataset.labels, dataset.groups, tuple(cfg.data.fractions), cfg.data.split_seed,
                       class_names=dataset.class_names)


def prepare_data(cfg: Config, spec: ModelSpec, dataset: Dataset | None = None,
                 saved_splits: Path | None = None) -> PreparedData:
    dataset = load_dataset(cfg.data.source) if dataset is None else dataset
    if len(dataset.class_names) < 2:
        raise UserError(f"dataset has {len(dataset.class_names)} class; need at least 2")
    splits = split_dataset(cfg, dataset, saved_splits)
    for name in ("train", "val", "test"):
        if len(splits.get(name, [])) == 0:
            raise UserError(f"the {name} split is empty")
    x = preprocess(dataset.images, spec.input_size, spec.mean, spec.std)
    y = dataset.labels.astype(np.int32)
    arrays = SplitArrays(x_train=x[splits["train"]], y_train=y[splits["train"]],
                         x_val=x[splits["val"]], y_val=y[splits["val"]],
                         num_classes=len(dataset.class_names))
    return PreparedData(dataset, splits, arrays, x[splits["test"]], y[splits["test"]])
