"""`deft`: differential-evolution search over layer-group masks (the core's `run_search`
with the configured evaluator), then final training of the best mask with the shared
recipe.

The DE state is persisted per generation under the run's state folder, so an interrupted
experiment resumes inside the search (the wall time then covers the resumed part only).
"""

from __future__ import annotations

import time

from deft_jax.evaluators import Evaluator, make_evaluator
from deft_jax.evolution import run_search
from deft_jax.fitness import SequentialEvaluator
from deft_jax.methods.common import MethodContext, MethodResult, final_fit


def make_shared_evaluator(ctx: MethodContext) -> tuple[Evaluator, str]:
    """The configured evaluator; a sequential one reuses the experiment's compiled steps."""
    evaluator, mode, _ = make_evaluator(ctx.cfg, ctx.spec, ctx.variables, ctx.data.arrays)
    if isinstance(evaluator, SequentialEvaluator):
        evaluator.tuner = ctx.programs.tuner(ctx.spec, ctx.cfg.finetune)
    return evaluator, mode


def run(ctx: MethodContext) -> MethodResult:
    t0 = time.perf_counter()
    evaluator, mode = make_shared_evaluator(ctx)
    state = ctx.state_dir / f"seed{ctx.seed}-deft.msgpack" if ctx.state_dir else None
    search = run_search(ctx.cfg, evaluator, ctx.spec.layer_groups, state_path=state,
                        log=lambda line: ctx.log("    " + line))
    t1 = time.perf_counter()
    result = final_fit(ctx, search.best_mask)
    result.fitness_evaluations = len(search.memo)
    result.history = search.history
    result.extra.update({"best_fitness": search.best_fitness, "evaluation": mode,
                         "search_seconds": round(t1 - t0, 2),
                         "final_seconds": round(time.perf_counter() - t1, 2)})
    return result
