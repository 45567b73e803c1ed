"""`handpicked`: the conventional choice - fine-tune the groups listed in
`experiment.handpicked` (typically the last block(s)) plus the head."""

from __future__ import annotations

from deft_jax.errors import UserError
from deft_jax.methods.common import MethodContext, MethodResult, final_fit


def check(ctx_cfg, spec) -> None:
    """One-line UserError unless experiment.handpicked names groups of this model."""
    names = list(ctx_cfg.experiment.handpicked)
    searchable = [g for g in spec.group_names if g != "head"]
    if not names:
        raise UserError(f"experiment.handpicked is empty; list the groups to fine-tune, "
                        f"e.g. [\"{searchable[-1]}\"] (groups of {spec.name}: {', '.join(searchable)})")
    unknown = [g for g in names if g not in spec.group_names]
    if unknown:
        raise UserError(f"experiment.handpicked: unknown layer group(s) {', '.join(unknown)} for "
                        f"{spec.name} (granularity {ctx_cfg.model.granularity}); known: {', '.join(searchable)}")


def run(ctx: MethodContext) -> MethodResult:
    check(ctx.cfg, ctx.spec)
    return final_fit(ctx, ctx.mask_of(ctx.cfg.experiment.handpicked))
