"""What the final model trains on, for how many epochs, and what the run says of
validation. The search command and the experiment's DEFT methods both take it from here.

- `final.data = "train"` (and one fold): the train split, `final.epochs`, `final.keep` as
  configured; the final model's own validation scores stand.
- `final.data = "train+val"` (one fold): train+val (`pooled`), `final.epochs`, the last
  epoch kept; with `final.ensemble = k >= 2`, k masks each trained so (the selected one,
  the full mask, then by fitness), their probabilities averaged. No validation split is left, so the run reports none for the final model
  (`n = 0`); the search's validation fitness is what was measured.
- A k-fold search (`search.folds = k >= 2`), whatever `final.data`: train+val
  (`Folds.all_train`), the last epoch kept.
  - Epochs: with a final-recipe fitness (`search.schedule = "final"`) and `final.keep =
    "best-val"`, each fold's fine-tune of the winner kept its best epoch; the final model
    trains the mean of those epoch counts, rounded half up. Otherwise `final.epochs`.
  - Validation: never the final model's own (it trained on every train+val image), but the
    winner's out-of-fold scores: every train+val image scored by the fitness fine-tune of
    the fold that validated on it (`FoldedEvaluator.record`), marked `"out_of_fold": true`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core.ensemble import retrained_member_masks
from deft_jax.core.masks import GroupMask
from deft_jax.data.folds import pooled
from deft_jax.data.inputs import PreparedData

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FinalInputs:
    """The config and data the final model trains with; on train+val, what the record says
    of it (`trained_on`), and with folds also the out-of-fold validation logits and labels
    and what the record says of the folds."""

    cfg: Config
    data: PreparedData
    val_logits: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    folds: dict | None = None
    trained_on: dict | None = None
    masks: list[GroupMask] = dataclasses.field(default_factory=list)  # >1: an ensemble, each trained

    def validation(self, report: Callable[[np.ndarray, np.ndarray, list], dict]) -> dict | None:
        """`report(logits, labels, class names)` of the out-of-fold logits, marked so; on
        train+val without folds, an empty report that says why; None on train (the final
        model's own validation scores stand)."""
        if self.val_logits is None:
            if self.trained_on is None:
                return None
            return {"n": 0, "held_out": False,
                    "note": "none held out: the final model trained on train+val (final.data); "
                            "the search's fitness is its validation score"}
        scores = report(self.val_logits, self.val_labels, self.data.class_names)
        return {**scores, "out_of_fold": True,
                "note": "out-of-fold: each train+val image scored by the search's fine-tune of the "
                        "fold that validated on it; the final model trained on all of them"}


def epochs_from_folds(cfg: Config) -> bool:
    """Whether the folds choose the final training's epoch count (else `final.epochs`)."""
    return cfg.search.schedule == "final" and cfg.final.keep == "best-val"


def rounded_mean(counts: list[int]) -> int:
    """The mean of epoch counts, rounded half up (at least 1)."""
    return max(1, int(math.floor(sum(counts) / len(counts) + 0.5)))


def final_inputs(cfg: Config, data: PreparedData, evaluator, mask: GroupMask,
                 fitness: dict[str, float] | None = None) -> FinalInputs:
    """What the final training of `mask` uses: `cfg` and `data` as they are; with
    `final.data = "train+val"` train+val and the last epoch kept; with `search.folds >= 2`
    (`evaluator` a `FoldedEvaluator`) train+val, the folds' epoch count and the last epoch
    kept (see the module's docstring). On train+val with `final.ensemble = k >= 2`, `masks`
    are the k masks of `retrained_member_masks` by the search's whole-budget `fitness`."""
    if cfg.search.folds < 2:
        if cfg.final.data == "train":
            return FinalInputs(cfg, data, masks=[mask])
        out = copy.deepcopy(cfg)
        out.final.keep = "last"
        arrays = pooled(data.arrays)
        logger.info(f"final training on train+val ({len(arrays.y_train)} images, final.data), "
                    f"{out.final.epochs} epochs, the last epoch kept")
        masks = retrained_member_masks(cfg, mask, fitness or {})
        record = {"data": "train+val", "train_items": int(len(arrays.y_train)), "epochs": out.final.epochs,
                  "models": len(masks)}
        if len(masks) > 1:
            which = ("full masks (final.member_masks = full)" if cfg.final.member_masks == "full"
                     else "masks (the selected one, the full mask, then by fitness)")
            seeds = ("its own training seed" if cfg.final.member_seeds == "distinct" else "the run's seed")
            logger.info(f"final model: an ensemble of {len(masks)} {which}, each trained on train+val "
                        f"with {seeds}")
        return FinalInputs(out, dataclasses.replace(data, arrays=arrays), trained_on=record, masks=masks)
    best, logits = evaluator.record(mask)
    counts = [epoch + 1 for epoch in best]
    chosen = epochs_from_folds(cfg)
    out = copy.deepcopy(cfg)
    out.final.epochs = rounded_mean(counts) if chosen else cfg.final.epochs
    out.final.keep = "last"
    arrays = evaluator.folds.all_train()
    how = (f"the rounded mean of the folds' best epochs {counts}" if chosen else "final.epochs")
    logger.info(f"final training on train+val ({len(arrays.y_train)} images), {out.final.epochs} epochs "
                f"({how}), the last epoch kept; validation scores are out-of-fold")
    record = {"k": cfg.search.folds, "train_items": int(len(arrays.y_train)),
              "fold_kept_epochs": counts, "epochs": out.final.epochs,
              "epochs_from": "folds" if chosen else "final.epochs"}
    return FinalInputs(out, dataclasses.replace(data, arrays=arrays), logits, evaluator.folds.y, record,
                       trained_on={"data": "train+val", "train_items": record["train_items"], "epochs": out.final.epochs,
                                   "models": 1}, masks=[mask])
