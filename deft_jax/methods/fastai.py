"""`fastai`: the defaults of fastai's `Learner.fine_tune` (fastai 2, `callback/schedule.py`):

    freeze(); fit_one_cycle(freeze_epochs=1, slice(base_lr), pct_start=0.99)
    base_lr /= 2; unfreeze()
    fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=0.3, div=5)

Here: fastai's optimizer defaults (`Learner`'s `Adam`: betas (0.9, 0.99), eps 1e-5, decoupled
weight decay 0.01, the first moment cycled 0.95 -> 0.85 -> 0.95 as `fit_one_cycle`'s moms) at
fastai's `base_lr` (`experiment.fastai_learning_rate`, 2e-3); one epoch of the head only
(one-cycle, pct_start 0.99, div 25), then every group for final.epochs - 1 epochs (at least 1;
the same budget as the other methods) at base_lr / 2 with discriminative rates - spaced
geometrically over the layer groups in model order from lr / lr_mult (the first group) to lr
(the head), `experiment.fastai_lr_mult` (100) - under a one-cycle schedule (pct_start 0.3,
div 5). The experiment's learning-rate grid is not used (its rates are for `[finetune]`'s
optimizer; fastai's recipe is its default rate). Not reproduced: fastai's trainable
BatchNorm in frozen groups, and `lr_find`."""

from __future__ import annotations

import dataclasses

import optax

from deft_jax.core import final as final_training
from deft_jax.core.optimizer import ONECYCLE_FINAL_DIV, ONECYCLE_MOMENTUMS, one_cycle
from deft_jax.methods.common import MethodContext, MethodResult, fit_with_learning_rates

FROZEN_PCT_START, PCT_START, DIV, FROZEN_DIV = 0.99, 0.3, 5.0, 25.0
ADAM_B2, ADAM_EPS, WEIGHT_DECAY = 0.99, 1e-5, 0.01  # fastai's Adam and Learner defaults


def group_multipliers(group_names, lr_mult: float) -> dict[str, float]:
    """fastai's `even_mults(lr / lr_mult, lr, n)` over the groups, as multipliers of lr:
    group i of n gets lr_mult ** ((i - (n - 1)) / (n - 1)); the last (head) 1."""
    n = len(group_names)
    if n == 1:
        return {group_names[0]: 1.0}
    return {g: float(lr_mult ** ((i - (n - 1)) / (n - 1))) for i, g in enumerate(group_names)}


def adam_one_cycle(lr: float, total_steps: int, pct_start: float, div: float) -> optax.GradientTransformation:
    """fastai's Adam under `fit_one_cycle`: the rate from lr/div up to lr and down to
    lr/1e5, the first moment's decay 0.95 -> 0.85 -> 0.95, along cosines."""
    hi, low, end = ONECYCLE_MOMENTUMS
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=one_cycle(total_steps, lr / div, lr, lr / ONECYCLE_FINAL_DIV, pct_start),
        b1=one_cycle(total_steps, hi, low, end, pct_start), b2=ADAM_B2, eps=ADAM_EPS,
        weight_decay=WEIGHT_DECAY)


def run(ctx: MethodContext) -> MethodResult:
    cfg, spec, data = ctx.cfg, ctx.spec, ctx.data
    n = len(data.arrays.x_train)
    steps = n // min(cfg.finetune.batch_size, n)
    base = cfg.experiment.fastai_learning_rate
    unfrozen_epochs = max(1, cfg.final.epochs - 1)

    def tuner(lr: float, epochs: int, pct_start: float, div: float, tag: str):
        tx = adam_one_cycle(lr, steps * epochs, pct_start, div)
        return ctx.programs.tuner(spec, cfg.finetune, lr, epochs, tx=tx, tx_key=f"fastai/{tag}/{steps}/{lr}")

    frozen = final_training.train_final(cfg, spec, ctx.variables, ctx.mask_of([]), data,
                                        tuner=tuner(base, 1, FROZEN_PCT_START, FROZEN_DIV, "frozen"))
    multipliers = group_multipliers(spec.group_names, cfg.experiment.fastai_lr_mult)
    own_rate = dataclasses.replace(ctx, cfg=dataclasses.replace(
        cfg, experiment=dataclasses.replace(cfg.experiment, learning_rates=[])))
    result, _ = fit_with_learning_rates(
        own_rate, multipliers, lambda _: tuner(base / 2, unfrozen_epochs, PCT_START, DIV, "unfrozen"),
        variables=frozen.variables)
    result.mask = None  # every group trains; its rates are in extra
    result.trainable_fraction = 1.0
    result.extra.update({"group_lr_multipliers": multipliers, "frozen_epochs": 1,
                         "unfrozen_epochs": unfrozen_epochs, "peak_learning_rate": base / 2,
                         "optimizer": "fastai adam (0.95-0.85-0.95, 0.99), eps 1e-5, wd 0.01"})
    return result
