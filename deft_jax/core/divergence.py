"""Divergence: a fine-tune whose numbers stop being finite.

- In the search, a mask whose fine-tune ends with non-finite validation logits (or a
  non-finite last training loss) gets the worst fitness, `WORST_FITNESS` = 1.0 (as bad as
  classifying nothing right; NaN logits are never argmax'ed into a class), and one log
  line; the search goes on.
- The final model: non-finite parameters, BatchNorm statistics, last training loss or
  validation/test logits are a one-line `UserError` naming what diverged and which setting
  to lower, raised before anything is written as a finished run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from deft_jax.core.metrics import metric_from_logits
from deft_jax.errors import UserError

logger = logging.getLogger(__name__)

WORST_FITNESS = 1.0
# search.metric = "nll": a mean log-loss counts at most this much, so that a diverged fine-tune
# (fitness 1 + NLL_CAP) is never better than a trained one
NLL_CAP = 100.0


def worst_fitness(metric: str) -> float:
    """The fitness of a diverged fine-tune under `metric`: no finite score is worse."""
    return 1.0 + NLL_CAP if metric == "nll" else WORST_FITNESS


def all_finite(tree) -> bool:
    """True when every floating-point leaf of `tree` (arrays, scalars) is finite."""
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            return False
    return True


def _describe(mask: Mapping[str, bool] | None) -> str:
    if mask is None:
        return "a mask"
    on = [g for g, v in mask.items() if v]
    return "mask [" + ", ".join(on) + "]"


def fitness_from_logits(metric: str, logits: np.ndarray, labels: np.ndarray, num_classes: int,
                        mask: Mapping[str, bool] | None = None,
                        losses: Sequence[float] | None = None) -> float:
    """Fitness = 1 - metric on the validation split (with "nll": 1 + the mean log-loss, at
    most 1 + NLL_CAP), or `worst_fitness(metric)` (with a warning) when the fine-tune
    diverged: non-finite logits or a non-finite last loss."""
    diverged = None
    if not all_finite(logits):
        diverged = "validation logits"
    elif losses is not None and len(losses) and not math.isfinite(float(losses[-1])):
        diverged = "training loss"
    if diverged:
        logger.warning(f"diverged: {_describe(mask)} gave non-finite {diverged}; scored as the worst "
             f"fitness {worst_fitness(metric):.1f} (lower finetune.learning_rate if this is frequent)")
        return worst_fitness(metric)
    if metric == "nll":
        return 1.0 + min(-metric_from_logits(metric, logits, labels, num_classes), NLL_CAP)
    return 1.0 - metric_from_logits(metric, logits, labels, num_classes)


def final_model_problems(trained: dict, logits: Mapping[str, np.ndarray],
                         losses: Sequence[float] | None = None) -> list[str]:
    """What is not finite in a trained model: parameters, BatchNorm statistics, the last
    training loss, the logits per split. Empty when nothing diverged."""
    problems = []
    if not all_finite(trained.get("params", {})):
        problems.append("parameters")
    if not all_finite(trained.get("batch_stats", {})):
        problems.append("BatchNorm statistics")
    if losses and not math.isfinite(float(losses[-1])):
        problems.append("training loss")
    return problems + [f"{split} logits" for split, value in logits.items() if not all_finite(value)]


def check_final_model(cfg, final, run_dir=None) -> None:
    """Raise a one-line UserError if the final model (a `deft_jax.core.final.FinalModel`)
    diverged: which numbers are not finite, and the learning rate to lower
    (`--resume RUN_DIR --set final.learning_rate=` retrains only the final model of a
    finished search)."""
    logits = {"val": final.val_logits, "test": final.test_logits}
    problems = final_model_problems(final.variables, logits, final.losses)
    if not problems:
        return
    lr = cfg.final.learning_rate if cfg.final.learning_rate is not None else cfg.finetune.learning_rate
    how = (f"; --resume {run_dir} --set final.learning_rate=... retrains only the final model"
           if run_dir is not None else "")
    raise UserError(f"final training diverged (non-finite {', '.join(problems)}); lower "
                    f"final.learning_rate (now {lr:g}){how}")
