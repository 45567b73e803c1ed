"""`linear-probe`: pretrained backbone frozen (BatchNorm in inference mode), head trained."""

from __future__ import annotations

from deft_jax.methods.common import MethodContext, MethodResult, final_fit


def run(ctx: MethodContext) -> MethodResult:
    return final_fit(ctx, ctx.mask_of([]))
