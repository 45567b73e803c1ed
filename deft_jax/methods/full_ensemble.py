"""`full-ensemble`: `experiment.ensemble_size` (k) full fine-tunes that differ only in the
training seed (the new head's initialisation and the batch order: seed, seed + 1000, ...;
the first is `full`'s own run), their softmax probabilities averaged on val and test. The
strong baseline a search costing k fine-tunes must beat. Each member trains at
final.learning_rate (no grid: k x the grid would be the cost)."""

from __future__ import annotations

import copy

from deft_jax.core import final as final_training
from deft_jax.core.ensemble import averaged_log_probabilities
from deft_jax.methods.common import MethodContext, MethodResult, all_groups, scores

SEED_STRIDE = 1000  # member j trains with seed + j * SEED_STRIDE (apart from the other seeds' runs)


def member_seeds(cfg) -> list[int]:
    return [cfg.seed + j * SEED_STRIDE for j in range(cfg.experiment.ensemble_size)]


def run(ctx: MethodContext) -> MethodResult:
    cfg, spec, data = ctx.cfg, ctx.spec, ctx.data
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
    # log of the averaged probabilities: its argmax and softmax are the ensemble's
    log_p = [averaged_log_probabilities(z) for z in (val, test)]
    names = data.class_names
    return MethodResult(test=scores(log_p[1], data.y_test, names, items=True),
                        val=scores(log_p[0], data.arrays.y_val, names),
                        trainable_fraction=1.0, mask=mask,
                        extra={"members": len(val), "member_seeds": member_seeds(cfg)})
