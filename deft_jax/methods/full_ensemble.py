"""`full-ensemble`: `experiment.ensemble_size` (k) full fine-tunes that differ only in the
training seed (the new head's initialisation and the batch order: seed, seed + 1000, ...;
the first is `full`'s own run), their softmax probabilities averaged on val and test. The
strong baseline a search costing k fine-tunes must beat. Each member trains at
final.learning_rate (no grid: k x the grid would be the cost). `averaged_full_fine_tunes`
is shared with `full-trainval-ensemble`, whose members train on train+val."""

from __future__ import annotations

import copy

from deft_jax.core import final as final_training
from deft_jax.core.ensemble import SEED_STRIDE, averaged_log_probabilities
from deft_jax.data.inputs import PreparedData
from deft_jax.methods.common import MethodContext, MethodResult, all_groups, scores


def member_seeds(cfg) -> list[int]:
    return [cfg.seed + j * SEED_STRIDE for j in range(cfg.experiment.ensemble_size)]


def averaged_full_fine_tunes(ctx: MethodContext, cfg, data: PreparedData) -> MethodResult:
    """`member_seeds(cfg)` full fine-tunes of `cfg`'s recipe on `data`, probabilities averaged
    on val (none when `data` has no validation split) and test."""
    spec = ctx.spec
    tuner = ctx.programs.tuner(spec, cfg.finetune, cfg.final.learning_rate, cfg.final.epochs)
    mask = all_groups(spec)
    val, test = [], []
    for seed in member_seeds(cfg):
        member_cfg = copy.deepcopy(cfg)
        member_cfg.seed = seed
        variables = ctx.variables if seed == cfg.seed else spec.init(seed)
        final = final_training.train_final(member_cfg, spec, variables, mask, data, tuner=tuner)
        val.append(final.val_logits)
        test.append(final.test_logits)
    names = data.class_names
    # log of the averaged probabilities: its argmax and softmax are the ensemble's
    test_scores = scores(averaged_log_probabilities(test), data.y_test, names, items=True)
    val_scores = (scores(averaged_log_probabilities(val), data.arrays.y_val, names)
                  if len(data.arrays.y_val) else {})
    return MethodResult(test=test_scores, val=val_scores, trainable_fraction=1.0, mask=mask,
                        extra={"members": len(test), "member_seeds": member_seeds(cfg)})


def run(ctx: MethodContext) -> MethodResult:
    return averaged_full_fine_tunes(ctx, ctx.cfg, ctx.data)
