"""`linear-probe`: the pretrained backbone frozen (BatchNorm in inference mode) and the head
fitted to convergence on its features (`deft_jax.core.probe`: L-BFGS, the L2 strength chosen
on validation log-loss), as Kumar et al. (2022) probe; scored on val and test."""

from __future__ import annotations

import time

from deft_jax.core import probe as probing
from deft_jax.core import training
from deft_jax.core.final import FinalModel
from deft_jax.methods.common import MethodContext, MethodResult, result_of


def fit(ctx: MethodContext) -> tuple[probing.Probe, FinalModel]:
    """The probe of this seed's train/val split, as a final model scored on val and test."""
    t0 = time.perf_counter()
    a = ctx.data.arrays
    cache = ctx.programs.programs
    probe = probing.fit_head(ctx.spec, ctx.variables, a.x_train, a.y_train, a.x_val, a.y_val, cache=cache)
    seconds = time.perf_counter() - t0
    mask = ctx.mask_of([])
    final = FinalModel(probe.variables, training.logits(ctx.spec, probe.variables, a.x_val, cache=cache),
                       training.logits(ctx.spec, probe.variables, ctx.data.x_test, cache=cache), [],
                       ctx.spec.layer_groups.fraction(mask), seconds)
    return probe, final


def extra(probe: probing.Probe) -> dict:
    return {"probe_l2": probe.l2, "probe_val_log_loss": probe.val_log_loss,
            "probe_train_objective": probe.train_objective, "probe_gradient_norm": probe.gradient_norm}


def run(ctx: MethodContext) -> MethodResult:
    probe, final = fit(ctx)
    result = result_of(final, ctx.data, ctx.mask_of([]))
    result.extra.update(extra(probe))
    return result
