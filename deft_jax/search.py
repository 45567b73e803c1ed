"""DEFT search: differential evolution over which layer groups to fine-tune.

    python -m deft_jax.search [--config FILE] [--out RUN_DIR] [--seed N]
                              [--resume RUN_DIR] [--set key=value ...]

One readable loop: ask -> decode masks -> evaluate -> tell -> log -> persist. The DE
state, the memo table and the history are persisted atomically after every generation,
so `--resume RUN_DIR` continues from the last completed generation with the same result
as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from deft_jax import cli, rundir
from deft_jax.config import (Config, SearchConfig, apply_overrides, check_resume_overrides,
                             check_resumed_config, config_from_dict, load_config)
from deft_jax.errors import UserError, exit_on_user_error
from deft_jax.fitness import MemoTable, evaluate_population
from deft_jax.masks import GroupMask, decode_genome, mask_from_key, mask_key, searchable_groups


@dataclasses.dataclass
class SearchResult:
    best_mask: GroupMask
    best_fitness: float
    history: list[dict]
    memo: dict[str, float]


def make_strategy(cfg: SearchConfig, num_genes: int):
    # imported here: importing evosax starts the XLA backend, which must wait until a
    # multi-process run has called jax.distributed.initialize (see main)
    from evosax.algorithms import DifferentialEvolution
    strategy = DifferentialEvolution(population_size=cfg.population_size,
                                     solution=jnp.zeros((num_genes,), jnp.float32))
    params = strategy.default_params.replace(
        elitism=cfg.elitism, crossover_rate=cfg.crossover_rate,
        differential_weight=cfg.differential_weight,
        differential_weight_min=cfg.differential_weight,
        differential_weight_max=cfg.differential_weight)
    return strategy, params


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
    except Exception as err:
        raise UserError(f"cannot read search state {path}: {err}") from None


def run_search(cfg: Config, evaluator, params, group_rules, group_names: tuple[str, ...],
               state_path: Path | None = None, log: Callable[[str], None] = print,
               stop_after: int | None = None, save_state: bool = True) -> SearchResult:
    """The DE loop. `evaluator.evaluate(masks) -> fitnesses`; `params` and `group_rules` are
    used for the trainable-fraction constraint. `stop_after` ends the loop after that many
    completed generations (used to test resumption). `save_state=False` only reads an
    existing state (processes other than 0 of a multi-process run)."""
    s = cfg.search
    genes = searchable_groups(group_names)
    strategy, de_params = make_strategy(s, len(genes))
    base_key = jax.random.key(cfg.seed)

    def decode(population) -> list[GroupMask]:
        return [decode_genome(g, group_names, s.threshold) for g in np.asarray(population)]

    def evaluate(population, generation: int, t0: float, history: list[dict], memo: MemoTable):
        masks = decode(population)
        fitness, info = evaluate_population(evaluator, masks, memo, params, group_rules,
                                            s.max_trainable_fraction)
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
        line = (f"gen {generation:>3}/{s.generations}  best {row['best_fitness']:.4f}  "
                f"mean {row['mean_fitness']:.4f}  evaluated {info['evaluated']}  "
                f"memo hits {info['memo_hits']}  {row['seconds']:.1f} s")
        return jnp.asarray(fitness), line  # logged once the generation is saved

    init_population = jax.random.uniform(jax.random.fold_in(base_key, 0),
                                         (s.population_size, len(genes)))
    if state_path is not None and state_path.exists():
        template = strategy.init(jax.random.key(0), init_population,
                                 jnp.zeros(s.population_size), de_params)
        generation, de_state, memo, history = _load_state(state_path, template)
        log(f"resuming after generation {generation} ({len(memo.entries)} masks memoised)")
    else:
        memo, history = MemoTable(), []
        t0 = time.perf_counter()
        fitness, line = evaluate(init_population, 0, t0, history, memo)
        de_state = strategy.init(jax.random.fold_in(base_key, 0), init_population, fitness, de_params)
        generation = 0
        if state_path is not None and save_state:
            _save_state(state_path, generation, de_state, memo, history)
        log(line)

    while generation < s.generations and (stop_after is None or generation < stop_after):
        generation += 1
        t0 = time.perf_counter()
        key_ask, key_tell = jax.random.split(jax.random.fold_in(base_key, generation))
        population, de_state = strategy.ask(key_ask, de_state, de_params)
        population = jnp.clip(population, 0.0, 1.0)  # genomes live in [0,1]^G
        fitness, line = evaluate(population, generation, t0, history, memo)
        de_state, _ = strategy.tell(key_tell, population, fitness, de_state, de_params)
        if state_path is not None and save_state:
            _save_state(state_path, generation, de_state, memo, history)
        log(line)

    best = min(memo.entries.items(), key=lambda kv: (kv[1], kv[0])) if memo.entries else None
    best_de = decode_genome(np.asarray(de_state.best_solution), group_names, s.threshold)
    best_mask, best_fitness = best_de, float(de_state.best_fitness)
    if best is not None and best[1] < best_fitness:  # cannot happen; kept as a guard
        best_mask, best_fitness = mask_from_key(best[0], group_names), best[1]
    return SearchResult(best_mask, best_fitness, history, dict(memo.entries))


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m deft_jax.search",
        description="DEFT: search with differential evolution for which layer groups of a "
                    "pretrained CNN to fine-tune, then train the winner and save a checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (--set section.key=value; values parsed as JSON):\n"
               "  seed, data.source (table: kind=digits|folder|npz ...), data.fractions, data.split_seed,\n"
               "  model.name (small_cnn|resnet20|resnet32|resnet44|resnet56|efficientnet_lite0),\n"
               "  model.weights (default|none|PATH), model.input_size, model.granularity (block|stage),\n"
               "  finetune.optimizer (sgd|adam|adamw), finetune.learning_rate, finetune.momentum,\n"
               "  finetune.weight_decay, finetune.batch_size, finetune.epochs, finetune.flip, finetune.rotate90,\n"
               "  search.population_size (8), search.generations (4), search.differential_weight (F, 0.5),\n"
               "  search.crossover_rate (CR, 0.7), search.elitism (true), search.threshold (0.5),\n"
               "  search.metric (accuracy|macro_f1), search.max_trainable_fraction (1.0),\n"
               "  search.strategy (auto|sequential|vmap|vmap-1|sharded), final.epochs, final.learning_rate\n"
               "example: python -m deft_jax.search --config configs/osteosarcoma_lite0.toml "
               "--set search.generations=8")
    p.add_argument("--config", help="TOML/JSON config file (default: the built-in digits demo)")
    p.add_argument("--out", help="run directory to create (default: runs/<time>-<model>)")
    p.add_argument("--seed", type=int, help="random seed for the search and fine-tunes")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override config values")
    p.add_argument("--strategy", choices=["sequential", "vmap", "vmap-1", "sharded", "auto"],
                   help="fitness-evaluation strategy (same as --set search.strategy=...)")
    dist = p.add_argument_group("multi-process runs (all three, or none; every process runs the "
                                "same command, process 0 writes the run directory)")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    dist.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from deft_jax import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any JAX work
    from deft_jax import compile_cache
    compile_cache.enable(log=print if distributed.is_writer() else None)
    from deft_jax.pipeline import run_pipeline, resolve_run_dir
    overrides = list(args.overrides)
    if args.strategy:
        overrides.append(f"search.strategy={json.dumps(args.strategy)}")
    with rundir.owned():  # the run directory's lock is held until the run ends
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / rundir.CONFIG).is_file():
                raise UserError(f"{run_dir} is not a run directory (no {rundir.CONFIG}; a run stopped "
                                "before writing it computed nothing: delete the folder and start again)")
            if args.config or args.seed is not None:
                raise UserError("--resume uses the run's own config.json; drop --config/--seed")
            check_resume_overrides(overrides)
            if distributed.is_writer():
                rundir.lock(run_dir)
            raw = rundir.read_json(run_dir / rundir.CONFIG)
            saved = config_from_dict(raw)
            cfg = config_from_dict(apply_overrides(copy.deepcopy(raw), overrides))
            check_resumed_config(saved, cfg)
            run_pipeline(cfg, run_dir, resume=True)
        else:
            cfg = load_config(args.config, overrides, args.seed)
            run_pipeline(cfg, resolve_run_dir(args.out, cfg), resume=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
