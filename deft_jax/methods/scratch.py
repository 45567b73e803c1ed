"""`scratch`: the architecture with random initialisation, every group trained.

The architecture is `model.name` unless `experiment.scratch_model` names another one
(e.g. a small CNN as the from-scratch reference). Weights are "none"; the random init
uses this seed's `cfg.seed`. Budget: the final-training recipe (final.epochs).
"""

from __future__ import annotations

from deft_jax.methods.common import MethodContext, MethodResult, all_groups, final_fit


def run(ctx: MethodContext) -> MethodResult:
    name = ctx.cfg.experiment.scratch_model or ctx.cfg.model.name
    spec = ctx.programs.model(ctx.cfg, len(ctx.data.class_names), name=name, weights="none")
    variables = spec.init(ctx.cfg.seed)
    result = final_fit(ctx, all_groups(spec), spec=spec, variables=variables, data=ctx.data_for(spec))
    result.extra["architecture"] = spec.name
    return result
