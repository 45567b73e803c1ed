"""The experiment's side of `final.reuse` and `final.ensemble` (`deft_jax.core.ensemble`):
the selected mask's fitness model, the ensemble of the best kept models, or (on train+val)
an ensemble of masks trained after the search, scored as a method's result. Both need the evaluator's kept models (`FinalModelCandidates`); where a
model is missing (a member restored from the journal on a resume, or an experiment learning-rate grid the fitness did
not use) the winner is trained again as usual and the record says `final_reused: false`.
"""

from __future__ import annotations

from deft_jax.core.ensemble import final_from_members, members_from_models, trained_members
from deft_jax.core.masks import GroupMask
from deft_jax.methods.common import MethodContext, MethodResult, result_of


def result_from_fitness_models(ctx: MethodContext, mask: GroupMask, models: dict) -> MethodResult | None:
    """The result of the selected mask's fitness model (or of the ensemble), or None when
    its model was not kept."""
    chosen = members_from_models(mask, models, ctx.cfg.final.ensemble)
    if chosen is None:
        return None
    final = final_from_members(ctx.spec, chosen, ctx.data.arrays.x_val, ctx.data.x_test,
                               cache=ctx.programs.programs)
    result = result_of(final, ctx.data, mask)
    result.extra.update({"final_reused": True, "ensemble_members": chosen.keys})
    return result


def result_from_trained_members(ctx: MethodContext, masks: list[GroupMask]) -> MethodResult:
    """The result of an ensemble of `masks`, each trained with the final recipe on
    `ctx.data` (`final.ensemble` with `final.data = "train+val"`)."""
    cfg, spec = ctx.cfg, ctx.spec
    tuner = ctx.programs.tuner(spec, cfg.finetune, cfg.final.learning_rate, cfg.final.epochs)
    chosen = trained_members(cfg, spec, ctx.variables, masks, ctx.data, tuner=tuner)
    final = final_from_members(spec, chosen, ctx.data.arrays.x_val, ctx.data.x_test, cache=ctx.programs.programs)
    result = result_of(final, ctx.data, masks[0])
    result.extra["ensemble_members"] = chosen.keys
    return result
