"""`full`: pretrained backbone, every group fine-tuned."""

from __future__ import annotations

from deft_jax.methods.common import MethodContext, MethodResult, all_groups, final_fit


def run(ctx: MethodContext) -> MethodResult:
    return final_fit(ctx, all_groups(ctx.spec))
