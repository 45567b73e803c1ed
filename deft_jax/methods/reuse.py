"""The experiment's side of `final.reuse` and `final.ensemble` (`deft_jax.core.ensemble`):
the selected mask's fitness model, or the ensemble of the best kept models, scored as a
method's result. Both need the evaluator's kept models (`FinalModelCandidates`); where a
model is missing (a member restored from the journal on a resume, or an experiment learning-rate grid the fitness did
not use) the winner is trained again as usual and the record says `final_reused: false`.
"""

from __future__ import annotations

from deft_jax.core.ensemble import final_from_members, members_from_models
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
