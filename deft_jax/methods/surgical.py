"""`surgical` (Lee et al. 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution
Shifts", ICLR): fine-tune one architectural stage (plus the new head) with the final recipe,
for every stage in turn, and keep the one with the best validation metric (`search.metric`,
the earlier stage on ties). A stage is the groups sharing a name before a trailing `_<k>`
(ResNet `layer2_0`, `layer2_1`, ... -> `layer2`); other groups are stages of their own."""

from __future__ import annotations

import re

from deft_jax.core.metrics import metric_from_report
from deft_jax.methods.common import MethodContext, MethodResult, final_fit


def stages(group_names) -> dict[str, list[str]]:
    """{stage: its groups} in model order, the head excluded."""
    out: dict[str, list[str]] = {}
    for g in group_names:
        if g == "head":
            continue
        out.setdefault(re.sub(r"_\d+$", "", g), []).append(g)
    return out


def run(ctx: MethodContext) -> MethodResult:
    metric = ctx.cfg.search.metric
    best, tried = None, {}
    for stage, groups in stages(ctx.spec.group_names).items():
        result = final_fit(ctx, ctx.mask_of(groups))
        tried[stage] = metric_from_report(metric, result.val)
        if best is None or tried[stage] > tried[best[0]]:
            best = (stage, result)
    stage, result = best
    result.fitness_evaluations = len(tried)
    result.extra.update({"stage": stage, "stage_val_scores": tried})
    return result
