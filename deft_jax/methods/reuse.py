"""The winner's final model taken from the search instead of trained again, and ensembles of
the models the search already trained (`final.reuse`, `final.ensemble`).

With `search.schedule = "final"` a mask's fitness fine-tune *is* its final training (the
final epochs, rate, `final.keep` and the run's seed), so the model it kept is the final
model: `final.reuse = true` scores the selected mask's fitness model on val and test with no
retraining (one final training's epochs saved). `final.ensemble = k` averages the softmax
probabilities of k of those models: the selected mask's and the next k - 1 by fitness.
Both need the sequential evaluator's kept models (`SequentialEvaluator.keep_models`); where
a model is missing (a member restored from the journal on a resume, another evaluator, or
an experiment learning-rate grid the fitness did not use) the winner is trained again as
usual and the record says `final_reused: false`.
"""

from __future__ import annotations

import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core import training
from deft_jax.core.final import FinalModel
from deft_jax.core.masks import GroupMask, mask_key
from deft_jax.core.metrics import softmax
from deft_jax.methods.common import MethodContext, MethodResult, result_of


def wanted(cfg: Config) -> bool:
    """Whether the search's models stand in for the final training."""
    return (cfg.search.schedule == "final" and (cfg.final.reuse or cfg.final.ensemble > 1)
            and not cfg.experiment.learning_rates)


def members(selected: str, models: dict[str, tuple[float, dict]], k: int) -> list[str]:
    """The selected mask's key, then the best others by fitness (earliest on ties), k in all."""
    others = sorted((key for key in models if key != selected), key=lambda key: models[key][0])
    return [selected, *others][:k]


def averaged_log_probabilities(logits: list[np.ndarray]) -> np.ndarray:
    """log of the mean softmax probabilities (a single model: its log-softmax)."""
    mean = np.mean([softmax(np.asarray(z, np.float64)) for z in logits], axis=0)
    return np.log(np.maximum(mean, 1e-300))


def result_from_fitness_models(ctx: MethodContext, mask: GroupMask, models: dict) -> MethodResult | None:
    """The result of the selected mask's fitness model (or of the ensemble), or None when
    its model was not kept."""
    selected = mask_key(mask)
    if selected not in models:
        return None
    keys = members(selected, models, max(1, ctx.cfg.final.ensemble))
    cache, a = ctx.programs.programs, ctx.data.arrays
    val = [training.logits(ctx.spec, models[k][1], a.x_val, cache=cache) for k in keys]
    test = [training.logits(ctx.spec, models[k][1], ctx.data.x_test, cache=cache) for k in keys]
    single = len(keys) == 1
    final = FinalModel(models[selected][1], val[0] if single else averaged_log_probabilities(val),
                       test[0] if single else averaged_log_probabilities(test), [],
                       ctx.spec.layer_groups.fraction(mask), 0.0)
    result = result_of(final, ctx.data, mask)
    result.extra.update({"final_reused": True, "ensemble_members": keys})
    return result
