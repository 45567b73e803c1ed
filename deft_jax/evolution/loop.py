"""The DEFT search loop: differential evolution over which layer groups to fine-tune.

One readable loop: ask -> decode masks -> evaluate -> tell -> persist -> log. The DE
state, the memo table and the history are persisted atomically after every generation
(before its line is logged), so a resumed search continues from the last completed
generation with the same result as an uninterrupted one.

Options past the paper (config `[search]`, see `deft_jax.config.schema.SearchConfig`): genes that
also set learning-rate multipliers (`space`), successive halving inside a generation
(`fidelity`), the baselines' masks in the initial population (`seed_baselines`), and the
one-standard-error rule toward fewer trainable parameters (`select`).
"""

from __future__ import annotations

import logging
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from deft_jax.config.resume import config_changes, result_config
from deft_jax.config.schema import Config, SearchConfig
from deft_jax.core.divergence import worst_fitness
from deft_jax.core.masks import (
    GroupMask,
    decode_genome,
    full_mask_key,
    mask_from_key,
    mask_key,
    searchable_groups,
)
from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.choice import Evaluator, fitness_recipe
from deft_jax.evolution.fitness import Halving, MemoTable, evaluate_population, no_signal
from deft_jax.evolution.journal import EvaluationJournal, journal_path
from deft_jax.evolution.progress import SearchProgress
from deft_jax.evolution.selection import select_mask
from deft_jax.models.groups import LayerGroups
from deft_jax.runtime import rundir
from deft_jax.runtime.xla_options import bookkeeping_compiler_options

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SearchResult:
    best_mask: GroupMask         # the selected mask (search.select)
    best_fitness: float | None   # its fitness (None: no search ran, final.member_masks = full)
    history: list[dict]
    memo: dict[str, float]       # every mask evaluated -> fitness
    memo_epochs: dict[str, int] = dataclasses.field(default_factory=dict)  # lower-fidelity entries
    selection: dict = dataclasses.field(default_factory=dict)  # how best_mask was chosen
    warning: str | None = None   # the fitness carried no signal (see `no_signal`)
    restored_members: int = 0    # evaluations taken from the journal on a resume, not retrained


def baseline_genomes(num_genes: int) -> list[np.ndarray]:
    """Genomes of the baselines' masks: head only, everything, the last group, the last half
    of the groups (genes 0 or 1: frozen, or trained at the base rate)."""
    head_only = np.zeros(num_genes, np.float32)
    last = head_only.copy()
    last[-1] = 1.0
    half = head_only.copy()
    half[num_genes // 2:] = 1.0
    return [head_only, np.ones(num_genes, np.float32), last, half]


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


def _save_state(path: Path, generation: int, de_state, memo: MemoTable, history: list[dict],
                cfg: Config) -> None:
    checked = result_config(cfg)
    payload = {"generation": generation,
               "de_state": jax.tree.map(np.asarray, serialization.to_state_dict(de_state)),
               "memo": json.dumps(memo.entries), "memo_epochs": json.dumps(memo.epochs),
               "history": json.dumps(history),
               # what the result depends on, to refuse a resume whose config.json was edited
               "config": rundir.json_text(checked, indent=None), "fingerprint": rundir.fingerprint(checked),
               "generations": cfg.search.generations}
    rundir.write_bytes_atomic(path, serialization.msgpack_serialize(payload))


def _load_state(path: Path, template):
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
        de_state = serialization.from_state_dict(template, payload["de_state"])
        memo = MemoTable(json.loads(payload["memo"]), json.loads(payload.get("memo_epochs", "{}")))
        saved = {"fingerprint": payload.get("fingerprint"), "generations": payload.get("generations"),
                 "config": json.loads(payload["config"]) if "config" in payload else None}
        return int(payload["generation"]), de_state, memo, json.loads(payload["history"]), saved
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable, corrupt, or not a state
        raise UserError(f"cannot read search state {path}: {err}") from None


def check_state_config(path: Path, saved: dict, cfg: Config) -> None:
    """A resumed state must belong to this config: the values its result depends on
    (`result_config`, by fingerprint) are unchanged and the generations are not fewer, else
    config.json was edited since the search started and the result would be a hybrid of
    two searches. A state written before fingerprints were stored is read with a warning."""
    if saved["fingerprint"] is None:
        logger.warning(f"warning: search state {path} has no config fingerprint (written by an older version): "
                       "cannot check that config.json is unchanged since the search started")
        return
    now = result_config(cfg)
    if rundir.fingerprint(now) != saved["fingerprint"]:
        changed = config_changes(saved["config"] or {}, now) or "values not shown"
        raise UserError(f"the config was changed since the search started ({changed}; see "
                        f"{path.parent / 'config.json'}): resuming would mix two searches; restore it, "
                        "or start a new run with --out")
    if saved["generations"] is not None and cfg.search.generations < saved["generations"]:
        raise UserError(f"search.generations is lower than when the search ran ({saved['generations']} -> "
                        f"{cfg.search.generations}); --resume can raise it, not lower it: restore "
                        "config.json, or start a new run with --out")


def run_search(cfg: Config, evaluator: Evaluator, groups: LayerGroups,
               state_path: Path | None = None,
               stop_after: int | None = None, save_state: bool = True, n_val: int = 0,
               progress: SearchProgress | None = None, num_classes: int = 0) -> SearchResult:
    """The DE loop over the masks of `groups` (whose sizes give the trainable-fraction
    constraint). `stop_after` ends the loop after that many completed generations (used to
    test resumption). `save_state=False` only reads an existing state (processes other than
    0 of a multi-process run). `n_val`: validation size (the standard error of
    `search.select = "smallest-within-1se"`). `progress`: live per-member progress.
    `num_classes`: for the warning when every fitness is at chance level (0: not checked).

    Every finished member is also appended to an fsynced journal beside the state
    (`deft_jax.evolution.journal`), so a resume retrains at most the members in flight
    (single-process runs; with several processes the generation in flight is redone).

    With `final.member_masks = "full"` every member of the final model is the full mask, so
    there is nothing to search: the result is the full mask with no evaluation."""
    s = cfg.search
    group_names = groups.names
    if cfg.final.member_masks == "full":
        full = mask_from_key(full_mask_key(group_names, s.threshold, s.space), group_names)
        logger.info("no search: final.member_masks = full (every member of the final model is the full mask)")
        return SearchResult(full, None, [], {}, selection={"rule": "none: final.member_masks = full"})
    genes = searchable_groups(group_names)
    de, de_params = make_differential_evolution(s, len(genes))
    options = bookkeeping_compiler_options()  # DE's programs cost microseconds to run
    ask, tell = (jax.jit(f, compiler_options=options) for f in (de.ask, de.tell))
    base_key = jax.random.key(cfg.seed)
    full_key = full_mask_key(group_names, s.threshold, s.space)
    halving = (Halving(cfg.finetune.epochs, s.promote_fraction,
                       (full_key,) if s.select == "full-unless-1se-better" else ())
               if s.fidelity == "halving" else None)
    whole_epochs = fitness_recipe(cfg).finetune.epochs
    if halving is not None and halving.short_epochs >= whole_epochs:
        logger.info(f"search.fidelity = halving: the short budget (finetune.epochs = {halving.short_epochs}) is "
                    f"not below the whole one ({whole_epochs} epochs): every member trains the whole budget")
        halving = None
    worst = worst_fitness(s.metric)  # infeasible masks score above it
    if s.select != "best" and n_val < 1:
        raise ValueError("search.select = smallest-within-1se needs the validation size n_val")

    def decode(population) -> list[GroupMask]:
        return [decode_genome(g, group_names, s.threshold, s.space) for g in np.asarray(population)]

    def evaluate(population, generation: int, t0: float, history: list[dict], memo: MemoTable):
        masks = decode(population)
        if progress is not None:
            new = len({mask_key(m) for m in masks} - set(memo.entries))
            runs = new + (halving.promoted(new) if halving is not None and new else 0)
            with progress.generation(generation, members=runs) as bar:
                evaluator.on_member_done = bar.advance
                fitness, info = evaluate_population(evaluator, masks, memo, groups,
                                                    s.max_trainable_fraction, halving, journal, worst)
            evaluator.on_member_done = None
        else:
            fitness, info = evaluate_population(evaluator, masks, memo, groups, s.max_trainable_fraction,
                                                halving, journal, worst)
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
        if halving is not None:
            row["promoted"] = info["promoted"]
            row["short_fitness"] = info["short_fitness"]  # mask key -> its short-budget fitness
            row["epochs_trained"] = (info["short_runs"] * halving.short_epochs + info["promoted"] * whole_epochs) * s.folds
        else:  # with search.folds every fold's fine-tune counts (each over that fold's training part)
            row["epochs_trained"] = info["evaluated"] * whole_epochs * s.folds
        history.append(row)
        return jnp.asarray(fitness)

    def report(row: dict) -> None:
        promoted = f" (whole budget {row['promoted']})" if "promoted" in row else ""
        logger.info(f"gen {row['generation']:>3}/{s.generations}  best {row['best_fitness']:.4f}  "
            f"mean {row['mean_fitness']:.4f}  evaluated {row['masks_evaluated']}{promoted}  "
            f"memo hits {row['memo_hits']}  {row['seconds']:.1f} s")

    init_population = jax.jit(lambda k: jax.random.uniform(k, (s.population_size, len(genes))),
                              compiler_options=options)(jax.random.fold_in(base_key, 0))
    if s.seed_baselines:
        seeds = baseline_genomes(len(genes))[:s.population_size]
        init_population = init_population.at[:len(seeds)].set(jnp.asarray(np.stack(seeds)))
    # the journal: only the writer of a single-process run (other processes could read it
    # while the writer appends, and would then evaluate other members than it)
    journal = None
    if state_path is not None and save_state and jax.process_count() == 1:
        journal = EvaluationJournal(journal_path(state_path), rundir.fingerprint(result_config(cfg)), 0)

    def resume_journal(generation: int) -> None:
        if journal is not None:
            journal.generation = generation
            if journal.load():
                logger.info(f"resuming generation {generation}: {len(journal.done)} finished "
                            "evaluation(s) taken from the journal, not retrained")

    def saved(generation: int) -> None:
        if state_path is not None and save_state:
            _save_state(state_path, generation, de_state, memo, history, cfg)
            if journal is not None:
                journal.next_generation(generation + 1)

    if state_path is not None and state_path.exists():
        template = de.init(jax.random.key(0), init_population,
                                 jnp.zeros(s.population_size), de_params)
        generation, de_state, memo, history, stored = _load_state(state_path, template)
        check_state_config(state_path, stored, cfg)
        logger.info(f"resuming after generation {generation} ({len(memo.entries)} masks memoised)")
        if generation < s.generations:
            resume_journal(generation + 1)
    else:
        memo, history = MemoTable(), []
        resume_journal(0)
        t0 = time.perf_counter()
        fitness = evaluate(init_population, 0, t0, history, memo)
        de_state = de.init(jax.random.fold_in(base_key, 0), init_population, fitness, de_params)
        generation = 0
        saved(generation)
        report(history[-1])

    while generation < s.generations and (stop_after is None or generation < stop_after):
        generation += 1
        t0 = time.perf_counter()
        key_ask, key_tell = jax.random.split(jax.random.fold_in(base_key, generation))
        population, de_state = ask(key_ask, de_state, de_params)
        population = jnp.clip(population, 0.0, 1.0)  # genomes live in [0,1]^G
        fitness = evaluate(population, generation, t0, history, memo)
        de_state, _ = tell(key_tell, population, fitness, de_state, de_params)
        saved(generation)
        report(history[-1])

    if not memo.full_budget():
        raise UserError("the search evaluated no mask within search.max_trainable_fraction; raise it")
    best_de = decode_genome(np.asarray(de_state.best_solution), group_names, s.threshold, s.space)
    key, selection = select_mask(memo, groups, s.select, n_val, s.metric, full_key)
    if s.select == "best" and mask_key(best_de) in memo.full_budget() \
            and memo.entries[mask_key(best_de)] == memo.entries[key]:
        key = mask_key(best_de)  # DE's own best (the paper's answer) where it ties
    selection["mask"] = key
    warning = no_signal(memo, num_classes, s.metric, n_val)
    if warning:
        logger.warning(f"warning: the search's fitness carries no signal: {warning}; the chosen mask is "
                       "arbitrary. Check the learning rate (finetune.learning_rate), the epochs and the data")
    return SearchResult(mask_from_key(key, group_names), memo.entries[key], history,
                        dict(memo.entries), dict(memo.epochs), selection, warning,
                        journal.restored if journal is not None else 0)
