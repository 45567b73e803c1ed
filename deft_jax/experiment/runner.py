"""Runs every (seed, method) of an experiment not yet recorded, then writes the summary."""

from __future__ import annotations

import logging
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core import epoch_count
from deft_jax.core.masks import mask_key
from deft_jax.data import load_dataset
from deft_jax.data.inputs import prepare_data
from deft_jax.data.splits import save_splits
from deft_jax.errors import UserError
from deft_jax.experiment.records import RUNS, RUNS_CSV, append_run, read_runs, write_csv
from deft_jax.experiment.summary import SUMMARY_MD, format_value, summarize
from deft_jax.methods import MethodContext, ExperimentCache, get_method, run_order
from deft_jax.methods import handpicked as handpicked_method
from deft_jax.runtime import rundir

logger = logging.getLogger(__name__)

META = "experiment.json"
PROGRAMS_KEPT = 40  # compiled fine-tune programs kept alive across seeds (see ExperimentCache)


def seed_config(cfg: Config, s: int) -> Config:
    """Seed s: its own split (split_seed + s) and its own training seed (seed + s)."""
    out = copy.deepcopy(cfg)
    out.seed = cfg.seed + s
    out.data.split_seed = cfg.data.split_seed + s
    return out


def split_sha(splits: dict[str, np.ndarray]) -> str:
    text = json.dumps({k: [int(i) for i in splits[k]] for k in sorted(splits)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prepare_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / META).is_file():
            raise UserError(f"{out} is not an experiment folder (no {META})")
        rundir.lock(out, "experiment folder")  # held until the experiment ends
        return
    rundir.create_fresh(out, "output folder")


def run_experiment(cfg: Config, out: Path, methods: list[str] | None = None, seeds: int | None = None,
                   resume: bool = False) -> dict:
    """Runs every missing (seed, method) and writes the summary; returns summary.json's dict."""
    import jax

    out = Path(out)
    if resume and methods is not None:  # a resumed experiment keeps its methods and may add some
        methods = list(cfg.experiment.methods) + [m for m in methods if m not in cfg.experiment.methods]
    methods = list(cfg.experiment.methods if methods is None else methods)
    seeds = cfg.experiment.seeds if seeds is None else seeds
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if not methods:
        raise UserError("no methods to run")
    order = run_order(methods)
    cfg = copy.deepcopy(cfg)
    cfg.experiment.methods, cfg.experiment.seeds = methods, seeds

    # everything that can fail on user input fails before the output folder is created
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size)
    programs = ExperimentCache()
    spec = programs.model(cfg, len(dataset.class_names))
    for m in order:  # a method's own config check (the deft variants' overrides)
        check = getattr(get_method(m), "check_config", None)
        if check is not None:
            check(cfg)
    if "handpicked" in order:
        handpicked_method.check(cfg, spec)
    scratch_arch = cfg.experiment.scratch_model or cfg.model.name
    if "scratch" in order:
        programs.model(cfg, len(dataset.class_names), name=scratch_arch, weights="none")
    first = prepare_data(seed_config(cfg, 0), spec, dataset)

    _prepare_out(out, resume)
    rundir.write_json(out / rundir.CONFIG, cfg.to_dict())
    meta = {"methods": methods, "run_order": order, "seeds": seeds, "model": spec.name,
            "pretrained": spec.pretrained, "scratch_architecture": scratch_arch,
            "groups": list(spec.group_names), "class_names": dataset.class_names,
            "data": dataset.description, "backend": f"{jax.default_backend()} x{jax.device_count()}"}
    rundir.write_json(out / META, meta)
    (out / "splits").mkdir(exist_ok=True)
    (out / "state").mkdir(exist_ok=True)
    records = read_runs(out / RUNS)
    done = {(r["seed"], r["method"]) for r in records}
    logger.info(f"experiment: {', '.join(order)} x {seeds} seed(s); {dataset.description}; model {spec.name} "
        f"({spec.pretrained or 'random init'}); output {out}")
    if done:
        logger.info(f"resuming: {len(done)} (seed, method) run(s) already recorded are skipped")

    t_start = time.perf_counter()
    for s in range(seeds):
        todo = [m for m in order if (s, m) not in done]
        if not todo:
            continue
        cfg_s = seed_config(cfg, s)
        data = first if s == 0 else prepare_data(cfg_s, spec, dataset)
        save_splits(out / "splits" / f"seed{s}.json", data.splits, dataset.groups,
                    seed=cfg_s.data.split_seed, fractions=list(cfg_s.data.fractions),
                    origin=data.split_origin)
        sha = split_sha(data.splits)
        test_sha = split_sha({"test": data.splits["test"]})  # equal in every seed: a fixed test split
        sizes = {k: int(len(v)) for k, v in data.splits.items()}
        variables = spec.init(cfg_s.seed)
        for m in order:
            if (s, m) in done:
                continue
            previous = {r["method"]: r for r in records if r["seed"] == s}
            ctx = MethodContext(cfg=cfg_s, data=data, spec=spec, variables=variables, seed=s,
                                previous=previous, programs=programs, state_dir=out / "state")
            logger.info(f"seed {s + 1}/{seeds} method {m} ...")
            t0 = time.perf_counter()
            with epoch_count.counting() as epochs:  # training epochs over the training set
                result = get_method(m).run(ctx)
            wall = time.perf_counter() - t0
            record = {"seed": s, "method": m, "train_seed": cfg_s.seed, "split_seed": cfg_s.data.split_seed,
                      "split_sha": sha, "test_sha": test_sha,
                      "test_from_dataset": "test" in (data.split_origin.get("from_dataset") or []),
                      "split_sizes": sizes, "test": result.test, "val": result.val,
                      "trainable_fraction": result.trainable_fraction, "wall_seconds": round(wall, 2),
                      "fine_tune_epochs": epochs.epochs,
                      "fitness_evaluations": result.fitness_evaluations,
                      "mask_key": mask_key(result.mask) if result.mask else None,
                      "trained_groups": [g for g, on in result.mask.items() if on] if result.mask else None,
                      "history": result.history, "extra": result.extra,
                      "compiles_so_far": programs.compiles()}
            record = rundir.strict_json_value(record)
            append_run(out / RUNS, record)
            records.append(record)
            done.add((s, m))
            write_csv(out / RUNS_CSV, records)
            t = result.test
            logger.info(f"seed {s + 1}/{seeds} method {m} ... test acc {t['accuracy']:.3f}, macro-F1 "
                f"{t['macro_f1']:.3f}, AUC {format_value(t.get('auc'))} ({wall:.0f} s)")
        if programs.release_if_over(PROGRAMS_KEPT):
            logger.info(f"released compiled programs after seed {s + 1} (more than {PROGRAMS_KEPT} alive)")
    logger.info(f"runs finished in {time.perf_counter() - t_start:.0f} s; writing the summary")
    write_csv(out / RUNS_CSV, records)
    summary = summarize(records, meta, cfg, out)
    logger.info(f"summary: {out / SUMMARY_MD}")
    return summary
