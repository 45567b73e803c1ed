"""`random-search`: the same budget as DEFT, spent on uniformly random masks.

Genomes are drawn uniformly from [0,1]^G and decoded with the search threshold, exactly
as DEFT decodes its population. A mask already tried, or over
`search.max_trainable_fraction`, is skipped (DEFT does not train those either). Masks are
drawn until `budget` distinct masks have been trained, where budget = the number DEFT
trained on this seed (when `deft` ran first, which the runner arranges), else the DE
budget population_size * (generations + 1). Each is scored with the same evaluator and
short fine-tune as DEFT; the best by validation fitness (earliest on ties) gets the final
training. If the feasible mask space is smaller than the budget, all of it is tried.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from deft_jax.core.divergence import worst_fitness
from deft_jax.core.masks import (
    decode_genome,
    mask_from_key,
    mask_key,
    searchable_groups,
)
from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.choice import fitness_recipe
from deft_jax.evolution.fitness import MemoTable, evaluate_population
from deft_jax.methods.common import MethodContext, MethodResult, final_fit
from deft_jax.methods.deft import make_shared_evaluator, search_start

logger = logging.getLogger(__name__)

AFTER = ("deft",)  # run after deft on the same seed, to match its evaluation count
DRAW_STREAM = 20230  # random-search's genomes come from default_rng([seed, DRAW_STREAM])


def budget(ctx: MethodContext) -> tuple[int, str]:
    deft = ctx.previous.get("deft")
    if deft is not None:
        return int(deft["fitness_evaluations"]), "deft's evaluations on this seed"
    s = ctx.cfg.search
    return s.population_size * (s.generations + 1), "DE budget population_size * (generations + 1)"


def run(ctx: MethodContext) -> MethodResult:
    t0 = time.perf_counter()
    ctx, start = search_start(ctx)  # search.start, as deft's
    cfg, spec = ctx.cfg, ctx.spec
    n, source = budget(ctx)
    genes = searchable_groups(spec.group_names)
    rng = np.random.default_rng([cfg.seed, DRAW_STREAM])
    evaluator, mode = make_shared_evaluator(ctx)
    groups = spec.layer_groups
    memo, order, tried = MemoTable(), [], set()
    max_draws = 1000 * max(n, 1) + 10_000
    draws = 0
    while len(memo.entries) < n and draws < max_draws:
        batch = []  # up to one population of new feasible masks per evaluator call
        while len(batch) < min(cfg.search.population_size, n - len(memo.entries)) and draws < max_draws:
            if len(tried) >= 2 ** len(genes):
                break  # every mask has been tried
            draws += 1
            mask = decode_genome(rng.random(len(genes)), spec.group_names, cfg.search.threshold)
            key = mask_key(mask)
            if key in tried:
                continue
            tried.add(key)
            if groups.fraction(mask) > cfg.search.max_trainable_fraction + 1e-12:
                continue
            batch.append(mask)
        if not batch:
            break  # the feasible mask space is exhausted
        evaluate_population(evaluator, batch, memo, groups, cfg.search.max_trainable_fraction,
                            worst=worst_fitness(cfg.search.metric))
        order += [mask_key(m) for m in batch]
    if not order:
        raise UserError("random-search: no mask within search.max_trainable_fraction")
    best_key = min(order, key=lambda k: (memo.entries[k], order.index(k)))
    t1 = time.perf_counter()
    logger.info(f"random search: {len(order)} masks trained (budget {n}: {source}); "
                f"best fitness {memo.entries[best_key]:.4f}")
    result = final_fit(ctx, mask_from_key(best_key, spec.group_names))
    best_so_far = np.minimum.accumulate([memo.entries[k] for k in order]).tolist()
    result.fitness_evaluations = len(memo.entries)
    result.extra.update({"budget": n, "budget_source": source, "draws": draws,
                         "space_exhausted": len(memo.entries) < n,
                         "best_fitness": memo.entries[best_key], "best_fitness_so_far": best_so_far,
                         "fitness_epochs": len(memo.entries) * fitness_recipe(cfg).finetune.epochs,
                         "evaluation": mode, **start, "search_seconds": round(t1 - t0, 2),
                         "final_seconds": round(time.perf_counter() - t1, 2)})
    return result
