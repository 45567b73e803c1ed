"""`full-trainval`: `full` trained on train+val, every labelled image the searches see, for
`final.epochs`, keeping the last epoch. The simple recipe to compare `deft-folds` with, whose
final model trains on train+val too: without it, a k-fold search's gain from twice the
training images would read as the search's. No validation split is left, so its record's
validation scores are empty."""

from __future__ import annotations

import copy
import dataclasses

from deft_jax.data.folds import pooled
from deft_jax.errors import UserError
from deft_jax.methods.common import MethodContext, MethodResult, all_groups, final_fit


def run(ctx: MethodContext) -> MethodResult:
    both = pooled(ctx.data.arrays)
    fit = copy.copy(ctx)
    fit.cfg = copy.deepcopy(ctx.cfg)
    fit.cfg.final.keep = "last"
    fit.data = dataclasses.replace(ctx.data, arrays=both)
    result = final_fit(fit, all_groups(ctx.spec))
    result.val = {}
    result.extra["train_items"] = int(len(both.y_train))
    return result


def check_config(cfg) -> None:
    """Called by the experiment before it starts: a learning-rate grid needs a validation split."""
    if cfg.experiment.learning_rates:
        raise UserError("method full-trainval: no validation split is left to choose an "
                        "experiment.learning_rates rate on; drop the grid or the method")
