"""The DEFT search loop: differential evolution over which layer groups to fine-tune.

One readable loop: ask -> decode masks -> evaluate -> tell -> persist -> log. The DE
state, the memo table and the history are persisted atomically after every generation
(before its line is logged), so a resumed search continues from the last completed
generation with the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from deft_jax import rundir
from deft_jax.config import Config, SearchConfig
from deft_jax.errors import UserError
from deft_jax.evaluators import Evaluator
from deft_jax.fitness import MemoTable, evaluate_population
from deft_jax.groups import LayerGroups
from deft_jax.masks import GroupMask, decode_genome, mask_from_key, mask_key, searchable_groups


@dataclasses.dataclass
class SearchResult:
    best_mask: GroupMask
    best_fitness: float
    history: list[dict]
    memo: dict[str, float]


def make_differential_evolution(cfg: SearchConfig, num_genes: int):
    """evosax's DifferentialEvolution over [0,1]^num_genes and its params from the config."""
    # imported here: importing evosax starts the XLA backend, which must wait until a
    # multi-process run has called jax.distributed.initialize (see main)
    from evosax.algorithms import DifferentialEvolution
    de = DifferentialEvolution(population_size=cfg.population_size,
                               solution=jnp.zeros((num_genes,), jnp.float32))
    params = de.default_params.replace(
        elitism=cfg.elitism, crossover_rate=cfg.crossover_rate,
        differential_weight=cfg.differential_weight,
        differential_weight_min=cfg.differential_weight,
        differential_weight_max=cfg.differential_weight)
    return de, params


def _save_state(path: Path, generation: int, de_state, memo: MemoTable, history: list[dict]) -> None:
    payload = {"generation": generation,
               "de_state": jax.tree.map(np.asarray, serialization.to_state_dict(de_state)),
               "memo": json.dumps(memo.entries), "history": json.dumps(history)}
    rundir.write_bytes_atomic(path, serialization.msgpack_serialize(payload))


def _load_state(path: Path, template):
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
        de_state = serialization.from_state_dict(template, payload["de_state"])
        return (int(payload["generation"]), de_state, MemoTable(json.loads(payload["memo"])),
                json.loads(payload["history"]))
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable, corrupt, or not a state
        raise UserError(f"cannot read search state {path}: {err}") from None


def run_search(cfg: Config, evaluator: Evaluator, groups: LayerGroups,
               state_path: Path | None = None, log: Callable[[str], None] = print,
               stop_after: int | None = None, save_state: bool = True) -> SearchResult:
    """The DE loop over the masks of `groups` (whose sizes give the trainable-fraction
    constraint). `stop_after` ends the loop after that many completed generations (used to
    test resumption). `save_state=False` only reads an existing state (processes other than
    0 of a multi-process run)."""
    s = cfg.search
    group_names = groups.names
    genes = searchable_groups(group_names)
    de, de_params = make_differential_evolution(s, len(genes))
    base_key = jax.random.key(cfg.seed)

    def decode(population) -> list[GroupMask]:
        return [decode_genome(g, group_names, s.threshold) for g in np.asarray(population)]

    def evaluate(population, generation: int, t0: float, history: list[dict], memo: MemoTable):
        masks = decode(population)
        fitness, info = evaluate_population(evaluator, masks, memo, groups, s.max_trainable_fraction)
        fitness = np.asarray(fitness, np.float32)
        running = min([fitness.min()] + [h["best_fitness"] for h in history])
        best_idx = int(np.argmin(fitness))
        row = {"generation": generation, "best_fitness": float(running),
               "generation_best_fitness": float(fitness[best_idx]),
               "mean_fitness": float(fitness.mean()),
               "generation_best_mask": mask_key(masks[best_idx]),
               "masks_evaluated": info["evaluated"], "memo_hits": info["memo_hits"],
               "infeasible": info["infeasible"], "distinct_masks_so_far": len(memo.entries),
               "seconds": round(time.perf_counter() - t0, 3), **evaluator.stats()}
        history.append(row)
        return jnp.asarray(fitness)

    def report(row: dict) -> None:
        log(f"gen {row['generation']:>3}/{s.generations}  best {row['best_fitness']:.4f}  "
            f"mean {row['mean_fitness']:.4f}  evaluated {row['masks_evaluated']}  "
            f"memo hits {row['memo_hits']}  {row['seconds']:.1f} s")

    init_population = jax.random.uniform(jax.random.fold_in(base_key, 0),
                                         (s.population_size, len(genes)))
    if state_path is not None and state_path.exists():
        template = de.init(jax.random.key(0), init_population,
                                 jnp.zeros(s.population_size), de_params)
        generation, de_state, memo, history = _load_state(state_path, template)
        log(f"resuming after generation {generation} ({len(memo.entries)} masks memoised)")
    else:
        memo, history = MemoTable(), []
        t0 = time.perf_counter()
        fitness = evaluate(init_population, 0, t0, history, memo)
        de_state = de.init(jax.random.fold_in(base_key, 0), init_population, fitness, de_params)
        generation = 0
        if state_path is not None and save_state:
            _save_state(state_path, generation, de_state, memo, history)
        report(history[-1])

    while generation < s.generations and (stop_after is None or generation < stop_after):
        generation += 1
        t0 = time.perf_counter()
        key_ask, key_tell = jax.random.split(jax.random.fold_in(base_key, generation))
        population, de_state = de.ask(key_ask, de_state, de_params)
        population = jnp.clip(population, 0.0, 1.0)  # genomes live in [0,1]^G
        fitness = evaluate(population, generation, t0, history, memo)
        de_state, _ = de.tell(key_tell, population, fitness, de_state, de_params)
        if state_path is not None and save_state:
            _save_state(state_path, generation, de_state, memo, history)
        report(history[-1])

    best = min(memo.entries.items(), key=lambda kv: (kv[1], kv[0])) if memo.entries else None
    best_de = decode_genome(np.asarray(de_state.best_solution), group_names, s.threshold)
    best_mask, best_fitness = best_de, float(de_state.best_fitness)
    if best is not None and best[1] < best_fitness:  # cannot happen; kept as a guard
        best_mask, best_fitness = mask_from_key(best[0], group_names), best[1]
    return SearchResult(best_mask, best_fitness, history, dict(memo.entries))
