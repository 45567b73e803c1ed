import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO
from deft_jax.runtime import rundir
from deft_jax.config.schema import FineTuneConfig
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.data.inputs import SplitArrays
from deft_jax.core.masks import mask_from_names
from deft_jax.models.small_cnn import small_cnn
from deft_jax.evolution.evaluators.population import PopulationEvaluator
from deft_jax.cli.search import main

from helpers import random_arrays, tiny_overrides

TESTS = REPO / "tests"

# six members (padded to 8 on 4 devices), conv1 trains in one of them: the program runs
# from stage 0; the second population starts at conv3 (frozen prefix cached)
POPULATION = [["conv3", "conv4"], ["conv4"], [], ["conv2"], ["conv1", "conv3"], ["conv2", "conv4"]]
SUFFIX_POPULATION = [["conv4"], [], ["conv3"]]


def tiny_problem():
    spec = small_cnn(3, input_size=16)
    variables = spec.init(1)
    x, y = random_arrays(96)
    data = SplitArrays(x[:64], y[:64], x[64:], y[64:], 3)
    cfg = FineTuneConfig(batch_size=16, learning_rate=0.1, momentum=0.9, weight_decay=0.01, epochs=1)
    return spec, variables, data, cfg


def sequential_logits(ev: SequentialEvaluator, mask) -> np.ndarray:
    """The static-mask reference: validation logits after the mask's fine-tune."""
    return ev.evaluate_logits([mask])[0]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), **extra)
    return env


SHARDED_CHILD = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from deft_jax.core.masks import mask_from_names
    from deft_jax.evolution.evaluators.population import PopulationEvaluator
    from deft_jax.evolution.evaluators.recipe import FitnessRecipe
    from test_population import POPULATION, SUFFIX_POPULATION, tiny_problem
    spec, variables, data, cfg = tiny_problem()
    ev = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), sharded=True)
    logits = [ev.evaluate_logits([mask_from_names(n, spec.group_names) for n in pop])
              for pop in (POPULATION, SUFFIX_POPULATION)]
    fitness = ev.evaluate([mask_from_names(n, spec.group_names) for n in POPULATION])
    np.savez(sys.argv[1], full=logits[0], suffix=logits[1])
    print(json.dumps({"devices": jax.device_count(), "fitness": fitness, **ev.stats()}))
""")


@pytest.mark.slow
def test_sequential_vmap_and_sharded_give_the_same_fitness_for_the_same_masks(tmp_path):
    spec, variables, data, cfg = tiny_problem()
    populations = [[mask_from_names(n, spec.group_names) for n in pop]
                   for pop in (POPULATION, SUFFIX_POPULATION)]
    seq = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg))
    reference = [np.stack([sequential_logits(seq, m) for m in pop]) for pop in populations]
    seq_fitness = seq.evaluate(populations[0])

    vmap = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg))
    assert vmap.name == "vmap"
    for pop, ref in zip(populations, reference):
        np.testing.assert_allclose(vmap.evaluate_logits(pop), ref, atol=1e-4)
    assert vmap.evaluate(populations[0]) == pytest.approx(seq_fitness, abs=1e-9)
    stats = vmap.stats()
    assert stats["members_padded"] == 3  # the 3-member population ran in the 6-member program
    assert stats["prefix_misses"] == 1  # the second population trained from conv3 on cached features

    out = tmp_path / "sharded.npz"
    proc = subprocess.run([sys.executable, "-c", SHARDED_CHILD, str(out)], capture_output=True, text=True,
                          timeout=300, cwd=REPO,
                          env=clean_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["devices"] == 4
    assert child["members_padded"] == 2 + 5 + 2  # 6 -> 8, 3 -> 8, 6 -> 8
    sharded = np.load(out)
    np.testing.assert_allclose(sharded["full"], reference[0], atol=1e-4)
    np.testing.assert_allclose(sharded["suffix"], reference[1], atol=1e-4)
    assert child["fitness"] == pytest.approx(seq_fitness, abs=1e-9)


def test_frozen_leaves_are_bit_identical_after_a_vmapped_fine_tune():
    spec = small_cnn(3, input_size=16)
    v0 = spec.init(0)
    x, y = random_arrays()
    data = SplitArrays(x[:48], y[:48], x[48:], y[48:], 3)
    cfg = FineTuneConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.05,
                         batch_size=16, epochs=2)
    masks = [mask_from_names(n, spec.group_names)
             for n in (["conv1", "conv3"], ["conv2", "conv4"], [], ["conv1", "conv2", "conv3", "conv4"])]
    members = PopulationEvaluator(spec, v0, data, FitnessRecipe(cfg)).fine_tune(masks)
    assert len(members) == len(masks)
    for mask, v1 in zip(masks, members):
        for collection in ("params", "batch_stats"):
            for group, sub in v0[collection].items():
                before = jax.tree_util.tree_leaves_with_path(sub)
                after = jax.tree_util.tree_leaves(v1[collection][group])
                assert len(before) == len(after)
                for (path, b), a in zip(before, after):
                    same = np.array_equal(np.asarray(b), np.asarray(a))
                    assert same == (not mask[group]), (mask, collection, group, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path, tag: str, args: list[str]) -> list[str]:
    """Runs `python -m deft_jax.search ARGS` as processes 0 and 1 over 127.0.0.1; returns logs."""
    port = free_port()
    log_files = [tmp_path / f"{tag}{i}.log" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            with log_files[i].open("w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "deft_jax.search", *args(i), "--evaluation", "sharded",
                     "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                    cwd=REPO, env=clean_env(), stdout=log, stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=420)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [f.read_text() for f in log_files]
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"{tag} process {i}:\n{logs[i][-3000:]}"
    return logs


@pytest.mark.slow
def test_two_process_search_resumed_from_its_saved_state_matches_an_uninterrupted_one_process_search(tmp_path):
    # three steps at a high learning rate: fitness differs between masks (with the default
    # tiny config all masks tie at chance), yet the fine-tune is short enough that float
    # rounding differences between the programs (1e-7) are not amplified into a flipped
    # prediction; after ~4 steps, ReLU/max-pool kinks on the upsampled digits can do that
    overrides = tiny_overrides(**{"finetune.batch_size": 30, "finetune.learning_rate": 0.2})
    single = tmp_path / "single"
    assert main(["--out", str(single), "--evaluation", "sequential", "--set", *overrides]) == 0

    # two processes stop after generation 1 (of 2) with the DE state saved, as an interrupted
    # run would have it; then both resume from process 0's run directory (a shared file
    # system) and finish generation 2
    outs = [tmp_path / f"proc{i}" for i in range(2)]
    first = tiny_overrides(**{"finetune.batch_size": 30, "finetune.learning_rate": 0.2,
                              "search.generations": 1})
    logs = run_two_processes(tmp_path, "first", lambda i: ["--out", str(outs[i]), "--set", *first])
    assert "evaluation: sharded (requested; 2 cpu device(s) in 2 processes)" in logs[0]
    assert "best mask" not in logs[1]  # only process 0 logs
    assert not outs[1].exists()  # only process 0 writes
    assert (outs[0] / rundir.STATE).exists()
    logs = run_two_processes(tmp_path, "resumed",
                             lambda i: ["--resume", str(outs[0]), "--set", "search.generations=2"])
    assert "resum" in logs[0].lower()
    assert not outs[1].exists()

    one, two = (rundir.read_json(d / rundir.BEST) for d in (single, outs[0]))
    assert two["mask"] == one["mask"]
    assert two["fitness"] == pytest.approx(one["fitness"], abs=1e-6)
    history = [[json.loads(line) for line in (d / rundir.HISTORY).read_text().splitlines()]
               for d in (single, outs[0])]
    assert len(history[1]) == len(history[0]) == 3  # generations 0, 1, 2 once each
    assert [h["best_fitness"] for h in history[1]] == pytest.approx([h["best_fitness"] for h in history[0]])
    assert history[1][0]["devices"] == 2
    for name in ("config.json", "splits.json", "metrics.json", "report.md", "checkpoint"):
        assert (outs[0] / name).exists(), name


def test_a_memory_limit_splits_the_population_into_smaller_programs_with_the_same_fitness():
    spec, variables, data, cfg = tiny_problem()
    masks = [mask_from_names(names, spec.group_names) for names in
             ((), ("conv2",), ("conv1", "conv3"), ("conv1", "conv2", "conv3", "conv4"))]
    whole = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg))
    reference = whole.evaluate_logits(masks)
    start = min(whole.plan.start_of(m) for m in masks)
    two = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg)).program_bytes(2, start)
    four = whole.program_bytes(4, start)
    assert two < four
    limited = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), memory_limit_bytes=two)
    logits = limited.evaluate_logits(masks)
    assert limited.members_per_program == 2
    assert limited.stats()["memory_fit"]["program_bytes"] <= two
    np.testing.assert_allclose(logits, reference, atol=1e-4)
    roomy = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), memory_limit_bytes=four)
    roomy.evaluate_logits(masks)
    assert roomy.members_per_program is None  # the whole population fits: one program


def test_a_population_member_that_cannot_fit_in_memory_is_a_one_line_user_error():
    from deft_jax.errors import UserError
    spec, variables, data, cfg = tiny_problem()
    ev = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), memory_limit_bytes=1024)
    with pytest.raises(UserError, match="lower finetune.batch_size"):
        ev.evaluate_logits([mask_from_names(("conv1",), spec.group_names)])


def test_on_cpu_the_population_memory_limit_is_a_share_of_the_hosts_available_memory(monkeypatch):
    from deft_jax.evolution.evaluators import choice as evaluators
    host = 8 * 2**30  # one reading of the host's available memory, fixed for the test
    monkeypatch.setattr(evaluators, "available_bytes", lambda: host)
    devices = jax.local_devices()
    assert all(d.platform == "cpu" for d in devices)
    # the host's memory is shared by its devices, and a program may use MEMORY_HEADROOM of a share
    assert evaluators.device_memory_limit() == int(evaluators.MEMORY_HEADROOM * (host // len(devices)))
