"""`lp-ft` (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution", ICLR): first a linear probe (the backbone frozen, the head fitted to
convergence on its features: `deft_jax.core.probe`, as `linear-probe`), then full fine-tuning
of every group starting from the probed head instead of a random one.

The epoch budget is the other methods': the fine-tune has final.epochs epochs with the final
recipe (its learning-rate grid, `final.keep`); the probe adds one inference pass over train
and val and a full-batch fit of the head, far less than an epoch."""

from __future__ import annotations

from deft_jax.methods import linear_probe
from deft_jax.methods.common import MethodContext, MethodResult, all_groups, final_fit


def run(ctx: MethodContext) -> MethodResult:
    probe, probed = linear_probe.fit(ctx)
    result = final_fit(ctx, all_groups(ctx.spec), variables=probe.variables)
    result.extra.update(linear_probe.extra(probe))
    result.extra["probe_val_accuracy"] = float((probed.val_logits.argmax(-1) == ctx.data.arrays.y_val).mean())
    return result
