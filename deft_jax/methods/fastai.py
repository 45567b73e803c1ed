"""`fastai`: the defaults of fastai's `Learner.fine_tune` (fastai 2, `callback/schedule.py`):

    freeze(); fit_one_cycle(freeze_epochs=1, slice(base_lr), pct_start=0.99)
    base_lr /= 2; unfreeze()
    fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=0.3, div=5)

Here: one epoch of the head only (one-cycle, pct_start 0.99, div 25), then every group for
final.epochs - 1 epochs (at least 1; the same budget as the other methods) with
discriminative rates - spaced geometrically over the layer groups in model order from
lr / lr_mult (the first group) to lr (the head), `experiment.fastai_lr_mult` (100) - under
a one-cycle schedule (pct_start 0.3, div 5). lr is final.learning_rate (each rate of the
learning-rate grid, chosen on validation). The optimizer is `[finetune]`'s (fastai's default
is Adam); the one-cycle's momentum cycling and fastai's trainable BatchNorm in frozen
groups are not reproduced."""

from __future__ import annotations

import dataclasses

from deft_jax.core import final as final_training
from deft_jax.core.optimizer import learning_rate_schedule, make_optimizer
from deft_jax.methods.common import MethodContext, MethodResult, fit_with_learning_rates

FROZEN_PCT_START, PCT_START, DIV, FROZEN_DIV = 0.99, 0.3, 5.0, 25.0


def group_multipliers(group_names, lr_mult: float) -> dict[str, float]:
    """fastai's `even_mults(lr / lr_mult, lr, n)` over the groups, as multipliers of lr:
    group i of n gets lr_mult ** ((i - (n - 1)) / (n - 1)); the last (head) 1."""
    n = len(group_names)
    if n == 1:
        return {group_names[0]: 1.0}
    return {g: float(lr_mult ** ((i - (n - 1)) / (n - 1))) for i, g in enumerate(group_names)}


def run(ctx: MethodContext) -> MethodResult:
    cfg, spec, data = ctx.cfg, ctx.spec, ctx.data
    n = len(data.arrays.x_train)
    steps = n // min(cfg.finetune.batch_size, n)
    base = cfg.final.learning_rate or cfg.finetune.learning_rate
    one_cycle = dataclasses.replace(cfg.finetune, schedule="onecycle", warmup_epochs=0.0)
    unfrozen_epochs = max(1, cfg.final.epochs - 1)

    def tuner(lr: float, epochs: int, pct_start: float, div: float, tag: str):
        tx = make_optimizer(cfg.finetune, schedule=learning_rate_schedule(one_cycle, lr, steps, epochs, div, pct_start))
        return ctx.programs.tuner(spec, cfg.finetune, lr, epochs, tx=tx, tx_key=f"fastai/{tag}/{steps}/{lr}")

    frozen = final_training.train_final(cfg, spec, ctx.variables, ctx.mask_of([]), data,
                                        tuner=tuner(base, 1, FROZEN_PCT_START, FROZEN_DIV, "frozen"))
    multipliers = group_multipliers(spec.group_names, cfg.experiment.fastai_lr_mult)
    result, _ = fit_with_learning_rates(
        ctx, multipliers, lambda lr: tuner((lr or base) / 2, unfrozen_epochs, PCT_START, DIV, "unfrozen"),
        variables=frozen.variables)
    result.mask = None  # every group trains; its rates are in extra
    result.trainable_fraction = 1.0
    result.extra.update({"group_lr_multipliers": multipliers, "frozen_epochs": 1,
                         "unfrozen_epochs": unfrozen_epochs, "peak_learning_rate": base / 2})
    return result
