"""Members scored in worker processes, one per CPU core (`search.workers`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deft_jax.config.schema import Config, FineTuneConfig
from deft_jax.core import epoch_count
from deft_jax.core.masks import mask_key
from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.choice import make_evaluator, pick_workers
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.evaluators.workers import WorkerFailed, WorkerPoolEvaluator
from deft_jax.models import build_model
from tests.helpers import random_arrays

MODEL = ("small_cnn", "block")


def problem():
    from deft_jax.data.inputs import SplitArrays

    spec = build_model(MODEL[0], 3, "none", 16, MODEL[1])
    x, y = random_arrays(96)
    data = SplitArrays(x[:64], y[:64], x[64:], y[64:], 3)
    recipe = FitnessRecipe(FineTuneConfig(batch_size=16, learning_rate=0.1, momentum=0.9, epochs=2),
                           metric="nll")
    return spec, spec.init(3), data, recipe


def masks(spec):
    groups = spec.group_names
    return [{g: g == "head" for g in groups}, {g: True for g in groups},
            {g: i >= len(groups) // 2 for i, g in enumerate(groups)},
            {g: i % 2 == 1 or g == "head" for i, g in enumerate(groups)}]


@pytest.mark.parametrize("mode", ["sequential", "vmap-1"])
def test_two_workers_give_one_workers_fitness_and_logits_bit_for_bit(mode):
    spec, variables, data, recipe = problem()
    results = {}
    for n in (1, 2):
        pool = WorkerPoolEvaluator(spec, variables, data, recipe, mode=mode, workers=n, model=MODEL)
        scored = []
        pool.on_member_scored = lambda i, f: scored.append(i)
        try:
            results[n] = (pool.evaluate(masks(spec)), pool.evaluate_logits(masks(spec)[:2], epochs=1))
        finally:
            pool.close()
        assert sorted(scored) == [0, 1, 2, 3]
    assert results[1][0] == results[2][0]
    np.testing.assert_array_equal(results[1][1], results[2][1])
    assert len(set(results[1][0])) > 1  # the masks really differ


def test_workers_count_their_epochs_here_and_send_back_the_models_the_search_keeps():
    spec, variables, data, recipe = problem()
    cfg = Config()
    cfg.final.ensemble = 2
    pool = WorkerPoolEvaluator(spec, variables, data, recipe, mode="sequential", workers=2, model=MODEL)
    try:
        pool.keep_final_models(cfg, spec.group_names)
        with epoch_count.counting() as counted:
            fitness = pool.evaluate(masks(spec))
            pool.evaluate(masks(spec)[:1], epochs=1)  # a lower fidelity keeps no model
    finally:
        pool.close()
    assert counted.epochs == 4 * 2 + 1
    full = mask_key(masks(spec)[1])
    best_two = {mask_key(masks(spec)[i]) for i in np.argsort(fitness)[:2]}
    assert set(pool.models) == best_two | {full}
    for key, (f, model) in pool.models.items():
        assert f == fitness[[mask_key(m) for m in masks(spec)].index(key)]
        assert set(model) >= {"params"}


def test_a_worker_that_cannot_build_the_model_raises_its_traceback_here():
    spec, variables, data, recipe = problem()
    pool = WorkerPoolEvaluator(spec, variables, data, recipe, mode="sequential", workers=1,
                               model=("small_cnn", "no-such-granularity"))
    with pytest.raises(WorkerFailed, match="no-such-granularity"):
        pool.evaluate(masks(spec)[:1])
    pool.close()


def test_workers_need_a_one_member_cpu_evaluation_mode():
    spec, variables, data, _ = problem()
    cfg = Config()
    cfg.search.workers, cfg.search.evaluation = 2, "vmap"
    with pytest.raises(UserError, match="search.workers = 2"):
        make_evaluator(cfg, spec, variables, data)


def test_auto_workers_take_one_cpu_core_each_where_workers_can_run_and_stay_in_this_process_elsewhere():
    cfg = Config()
    cfg.search.workers, cfg.search.population_size = 0, 8
    assert pick_workers(cfg, "vmap-1", cores=2)[0] == 2
    assert pick_workers(cfg, "sequential", cores=4)[0] == 4
    assert pick_workers(cfg, "sequential", cores=64)[0] == 8  # at most the population (and 8)
    cfg.search.population_size = 3
    assert pick_workers(cfg, "sequential", cores=16)[0] == 3
    assert pick_workers(cfg, "sequential", cores=1)[0] == 1  # one core: this process
    assert pick_workers(cfg, "vmap", cores=4)[0] == 1  # a mode the workers do not run
    cfg.search.folds = 2
    assert pick_workers(cfg, "sequential", cores=4)[0] == 1  # folds run in this process
    cfg.search.folds, cfg.search.workers = 1, 3
    assert pick_workers(cfg, "vmap", cores=1) == (3, "")  # asked for: as asked (make_evaluator checks it)


def test_an_auto_worker_evaluator_on_this_machine_is_the_worker_pool_or_this_process():
    spec, variables, data, _ = problem()
    cfg = Config()
    cfg.search.workers, cfg.search.evaluation = 0, "sequential"
    evaluator, mode, reason = make_evaluator(cfg, spec, variables, data)
    try:
        cores = len(os.sched_getaffinity(0))
        assert isinstance(evaluator, WorkerPoolEvaluator) == (cores >= 2)
        assert ("worker processes" in reason) == (cores >= 2)
    finally:
        getattr(evaluator, "close", lambda: None)()


@pytest.mark.slow
def test_the_declared_deft_on_two_workers_ships_what_a_one_core_search_ships(tmp_path):
    """The search command end to end (sequential members, models reused for a 2-member
    ensemble): two workers, one core each, give the search of a process pinned to one core."""
    import json
    import subprocess
    import sys

    from deft_jax.config.presets import PAPER_DEFT
    from deft_jax.runtime import rundir
    from tests.helpers import tiny_overrides

    tiny = [o for o in tiny_overrides() if o.split("=", 1)[0] not in PAPER_DEFT]
    declared = Path(__file__).resolve().parent.parent / "configs" / "declared_deft.toml"
    pinned = ("import os, runpy, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "sys.argv = ['deft_jax.search'] + sys.argv[1:]; runpy.run_module('deft_jax.search', run_name='__main__')")
    runs = {}
    for n, launcher in ((1, ["-c", pinned]), (2, ["-m", "deft_jax.search"])):
        out = tmp_path / f"w{n}"
        subprocess.run([sys.executable, *launcher, "--out", str(out), "--config", str(declared), "--set", *tiny,
                        f"search.workers={n}"],
                       check=True, capture_output=True)
        runs[n] = json.loads((out / rundir.METRICS).read_text())
        assert runs[n]["final_model"]["source"] == "search" and runs[n]["final_model"]["ensemble"] == 2
    assert runs[1]["search"]["best_fitness"] == runs[2]["search"]["best_fitness"]
    assert runs[1]["final_model"]["masks"] == runs[2]["final_model"]["masks"]
    assert runs[1]["test"] == runs[2]["test"]


def test_a_worker_message_that_refers_to_anything_outside_the_allow_list_is_refused():
    import io
    import os
    import pickle

    from deft_jax.evolution.evaluators import frames

    stream = io.BytesIO()
    frames.write_frame(stream, {"fitness": np.float64(0.25), "logits": np.ones((2, 3), np.float32)})
    stream.seek(0)
    back = frames.read_frame(stream)
    assert back["fitness"] == 0.25 and back["logits"].shape == (2, 3)
    evil = io.BytesIO()
    frames.write_frame(evil, os.system)  # a global no message needs
    evil.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        frames.read_frame(evil)
