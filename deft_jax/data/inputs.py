"""Dataset + split + backbone preprocessing -> the arrays a search trains and scores on.

The images stay uint8 (resized once to the model's input size); `x_train`, `x_val` and
`x_test` are `NormalizedImages` views that normalise each batch as it is taken.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from deft_jax.config.schema import Config
from deft_jax.data import Dataset, NormalizedImages, load_dataset, resize_images
from deft_jax.data.folds import check_folds
from deft_jax.data.splits import (
    complete_splits,
    load_splits,
    make_splits,
    TRAIN_SUBSAMPLE_STREAM,
    VAL_SUBSAMPLE_STREAM,
    subsample_per_class,
)
from deft_jax.errors import UserError
from deft_jax.models.base import ModelSpec


@dataclasses.dataclass
class SplitArrays:
    """Inputs (NHWC: `NormalizedImages` views over uint8, or float32 arrays) and labels of the
    train and val splits: what a search fine-tunes and scores on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None  # group ids of the train items, then the val items (folds)


@dataclasses.dataclass
class PreparedData:
    dataset: Dataset
    splits: dict[str, np.ndarray]
    arrays: SplitArrays
    x_test: NormalizedImages
    y_test: np.ndarray
    split_origin: dict = dataclasses.field(default_factory=dict)  # for splits.json

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names


def split_dataset(cfg: Config, dataset: Dataset, saved_splits: Path | None = None
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """(splits, origin): saved splits (resume), else the dataset's own splits completed by
    carving the missing ones out of train, else stratified grouped splits of everything.
    `origin` says which: {"from_dataset": [...], "carved_from_train": [...], ...}."""
    origin = dict(dataset.origin or {})
    if saved_splits is not None and saved_splits.exists():
        splits = load_splits(saved_splits)
        largest = max((int(v.max()) for v in splits.values() if v.size), default=-1)
        if largest >= len(dataset):
            raise UserError(f"splits file {saved_splits} names sample {largest}, but the dataset has "
                            f"{len(dataset)} samples (was the data changed since the run started?)")
        return splits, {**origin, "from": str(saved_splits)}
    if dataset.predefined_splits is not None:
        splits, carved = complete_splits(dataset.labels, dataset.groups, dataset.predefined_splits,
                                         tuple(cfg.data.fractions), cfg.data.split_seed,
                                         class_names=dataset.class_names)
        origin = {**origin, "from_dataset": sorted(dataset.predefined_splits, key=_order),
                  "carved_from_train": carved}
    else:
        splits = make_splits(dataset.labels, dataset.groups, tuple(cfg.data.fractions),
                             cfg.data.split_seed, class_names=dataset.class_names)
        origin = {**origin, "from_dataset": [], "made_here": ["train", "val", "test"]}
    for split, per_class, stream in (("train", cfg.data.train_per_class, TRAIN_SUBSAMPLE_STREAM),
                                     ("val", cfg.data.val_per_class, VAL_SUBSAMPLE_STREAM)):
        if per_class:  # the low-data setting on a large set; test is never subsampled
            before = len(splits[split])
            splits = {**splits, split: subsample_per_class(splits[split], np.asarray(dataset.labels),
                                                           per_class, cfg.data.split_seed, stream=stream)}
            origin[f"{split}_per_class"] = {"kept": int(len(splits[split])), "of": before,
                                            "per_class": per_class}
    return splits, origin


def _order(name: str) -> int:
    return ("train", "val", "test").index(name)


def describe_origin(origin: dict) -> str:
    """One line for the run log: which splits came from the data, which were made here."""
    given = origin.get("from_dataset")
    if given is None:
        return f"splits from {origin.get('from', 'a saved file')}"
    if not given:
        text = "splits made here (stratified, grouped)"
    else:
        carved = origin.get("carved_from_train") or []
        text = f"splits {', '.join(given)} from the data"
        if carved:
            text += f"; {', '.join(carved)} carved out of train (stratified, grouped)"
    for split in ("train", "val"):
        if sub := origin.get(f"{split}_per_class"):
            text += f"; {split} subsampled to {sub['per_class']} per class ({sub['kept']} of {sub['of']})"
    return text


def check_fits_in_memory(num_images: int, input_size: int, share: float = 0.5) -> None:
    """The images resized to the input size (uint8) must fit in `share` of the host's
    available memory; checked before anything is allocated, so a huge model.input_size is a
    one-line error instead of an out-of-memory kill."""
    from deft_jax.runtime.host_memory import available_bytes

    needed = num_images * input_size * input_size * 3
    available = available_bytes()
    if available is not None and needed > share * available:
        raise UserError(f"{num_images} images at model.input_size={input_size} need "
                        f"{needed / 2**30:.1f} GiB as uint8, more than {share:.0%} of the "
                        f"{available / 2**30:.1f} GiB of available memory; lower model.input_size")


def prepare_data(cfg: Config, spec: ModelSpec, dataset: Dataset | None = None,
                 saved_splits: Path | None = None) -> PreparedData:
    if dataset is None:
        dataset = load_dataset(cfg.data.source, input_size=spec.input_size)
    splits, origin = split_dataset(cfg, dataset, saved_splits)
    for name in ("train", "val", "test"):
        if len(splits.get(name, [])) == 0:
            raise UserError(f"the {name} split is empty")
    train_val = np.concatenate([splits["train"], splits["val"]])
    check_folds(dataset.labels[train_val], cfg.search.folds, np.asarray(dataset.groups)[train_val], dataset.class_names)
    check_fits_in_memory(len(dataset), spec.input_size)
    images = resize_images(dataset.images, spec.input_size)
    y = dataset.labels.astype(np.int32)

    def view(name):
        return NormalizedImages(images, spec.mean, spec.std, index=splits[name])

    arrays = SplitArrays(x_train=view("train"), y_train=y[splits["train"]],
                         x_val=view("val"), y_val=y[splits["val"]],
                         num_classes=len(dataset.class_names), groups=np.asarray(dataset.groups)[train_val])
    return PreparedData(dataset, splits, arrays, view("test"), y[splits["test"]], origin)
