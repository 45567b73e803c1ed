"""`full-trainval-ensemble`: `full-ensemble` trained on train+val: `experiment.ensemble_size`
(k) full fine-tunes, each on every labelled image for `final.epochs` with the last epoch kept
(as `full-trainval`), differing only in the training seed (seed, seed + 1000, ...), their
probabilities averaged. k x a full fine-tune's epochs: the strongest same-budget recipe a
search costing k fine-tunes that trains its final model on train+val must beat. No
validation split is left, so its record's validation scores are empty."""

from __future__ import annotations

import copy
import dataclasses

from deft_jax.data.folds import pooled
from deft_jax.errors import UserError
from deft_jax.methods.common import MethodContext, MethodResult
from deft_jax.methods.full_ensemble import averaged_full_fine_tunes


def run(ctx: MethodContext) -> MethodResult:
    both = pooled(ctx.data.arrays)
    cfg = copy.deepcopy(ctx.cfg)
    cfg.final.keep = "last"
    result = averaged_full_fine_tunes(ctx, cfg, dataclasses.replace(ctx.data, arrays=both))
    result.extra["train_items"] = int(len(both.y_train))
    return result


def check_config(cfg) -> None:
    """Called by the experiment before it starts: a learning-rate grid needs a validation split."""
    if cfg.experiment.learning_rates:
        raise UserError("method full-trainval-ensemble: no validation split is left to choose an "
                        "experiment.learning_rates rate on; drop the grid or the method")
