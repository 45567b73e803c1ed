"""Issue 12: a locked run directory, resume that never loses a finished run, the resume
`--set` policy, state saved before a generation is announced, divergence caught, and a
search killed with SIGKILL at random moments that resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from deft_jax.core import divergence
from deft_jax.errors import UserError
from deft_jax.runtime import rundir
from deft_jax.config.schema import load_config
from deft_jax.evolution.loop import run_search
from deft_jax.cli.search import main

from conftest import REPO
from helpers import logged, search_process, tiny_overrides
from test_search import LAYER_GROUPS, CountingEvaluator, fake_config

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def finished_run(tmp_path):
    """A run folder that looks finished: a search is not needed by these tests, which all
    end before the search starts (its state is only a placeholder)."""
    run = tmp_path / "finished" / "run"
    run.mkdir(parents=True)
    rundir.write_json(run / rundir.CONFIG, load_config(None, tiny_overrides()).to_dict())
    rundir.write_json(run / rundir.METRICS, {"test": {"accuracy": 0.5}})
    (run / rundir.REPORT).write_text("# report\n")
    (run / rundir.CHECKPOINT).mkdir()
    (run / rundir.STATE).write_bytes(b"\x85\xaagener")
    return run


@pytest.mark.slow
def test_a_second_process_on_a_locked_run_directory_gets_one_error_line_naming_the_holder(
        finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / rundir.LOCK)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
        with pytest.raises(SystemExit) as exit_info:
            main(["--resume", str(run)])
        assert exit_info.value.code == 2
        assert f"in use by process {holder.pid}" in one_error_line(capsys)
        assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing touched
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_new_run_directory_is_locked_from_the_moment_it_is_created(tmp_path):
    run = tmp_path / "run"
    rundir.create_fresh(run)
    try:
        probe = subprocess.run([sys.executable, "-c", HOLD_LOCK.replace("fcntl.LOCK_EX)", "fcntl.LOCK_EX | fcntl.LOCK_NB)"),
                                str(run / rundir.LOCK)], capture_output=True, text=True)
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr
    finally:
        rundir.release(run)


def test_a_failed_resume_of_a_finished_run_keeps_its_metrics_and_report(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # its search state is torn (a placeholder of a few bytes)
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", str(run)])
    assert exit_info.value.code == 2 and "search state" in one_error_line(capsys)
    assert (run / rundir.METRICS).read_text() == (finished_run / rundir.METRICS).read_text()
    assert (run / rundir.REPORT).is_file() and (run / rundir.CHECKPOINT).is_dir()


def test_resume_refuses_keys_that_change_the_search_result_and_touches_nothing(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for key in ("search.population_size=6", "finetune.learning_rate=0.1", "seed=3", "search.generations=1"):
        with pytest.raises(SystemExit):
            main(["--resume", str(run), "--set", key])
        assert key.split("=")[0] in one_error_line(capsys)
    assert (run / rundir.CONFIG).read_text() == (finished_run / rundir.CONFIG).read_text()


def test_the_generation_line_is_logged_only_after_its_state_is_saved(tmp_path):
    from flax import serialization
    state = tmp_path / "state.msgpack"
    saved_at_log = []

    def log(line):
        if line.startswith("gen"):
            generation = int(line.split()[1].split("/")[0])
            saved = serialization.msgpack_restore(state.read_bytes())
            saved_at_log.append((generation, int(saved["generation"])))

    with logged(on_message=log):
        run_search(fake_config(generations=3), CountingEvaluator(), LAYER_GROUPS, state_path=state)
    assert saved_at_log == [(g, g) for g in range(4)]


def test_non_finite_logits_get_the_worst_fitness_and_a_log_line_never_an_argmax():
    with logged() as lines:
        check_non_finite_fitness()
    assert len(lines) == 2 and all(l.startswith("diverged: mask [a]") for l in lines)


def check_non_finite_fitness():
    labels = np.zeros(8, np.int64)  # imbalanced: NaN logits argmax'ed to class 0 score 1.0
    nan_logits = np.full((8, 3), np.nan, np.float32)
    assert divergence.fitness_from_logits("accuracy", nan_logits, labels, 3, {"a": True}) == 1.0
    good = np.tile(np.array([[5.0, 0.0, 0.0]], np.float32), (8, 1))
    assert divergence.fitness_from_logits("accuracy", good, labels, 3, {"a": True}, [1.0, float("inf")]) == 1.0
    assert divergence.fitness_from_logits("accuracy", good, labels, 3, {"a": True}, [1.0, 0.5]) == 0.0


def test_a_diverging_search_goes_on_and_its_final_model_is_one_error_line_then_resume_can_fix_it(
        tmp_path, capsys):
    run = tmp_path / "run"
    over = tiny_overrides(**{"finetune.learning_rate": "1e6", "search.generations": 1})
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(run), "--set", *over])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "final training diverged" in err and "final.learning_rate" in err, err
    assert "diverged: mask" in captured.out and "gen   1/1" in captured.out  # the search went on
    history = [json.loads(l) for l in (run / rundir.HISTORY).read_text().splitlines()]
    assert [h["generation"] for h in history] == [0, 1]
    assert max(h["mean_fitness"] for h in history) > 0.9  # diverged masks scored (near) worst
    assert not (run / rundir.METRICS).exists() and not (run / rundir.REPORT).exists()
    assert not (run / rundir.CHECKPOINT).exists()

    # the advice in the error works: only the final model is retrained, and config.json says so
    assert main(["--resume", str(run), "--set", "final.learning_rate=0.05"]) == 0
    assert rundir.read_json(run / rundir.CONFIG)["final"]["learning_rate"] == 0.05
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_predict_on_random_checkpoint_bytes_prints_only_the_error_line(tmp_path):
    from test_bad_inputs import checkpoint_run
    _, argv = checkpoint_run(tmp_path, corrupt_data=True)
    proc = subprocess.run([sys.executable, "-m", "deft_jax.predict", *argv], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [l for l in proc.stderr.strip().splitlines() if not l.startswith("compile cache")]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


COMPARED = ("generation", "best_fitness", "generation_best_fitness", "mean_fitness",
            "generation_best_mask", "masks_evaluated", "memo_hits", "distinct_masks_so_far")


def _kill_after(proc, marker: str, delay: float) -> bool:
    """SIGKILL `proc` `delay` seconds after its first output line starting with `marker`
    (progress, not the clock, picks the phase; the delay picks a random moment in it).
    False if it finished first."""
    for line in iter(proc.stdout.readline, ""):
        if line.startswith(marker):
            break
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_a_search_killed_with_sigkill_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "DEFT_JAX_COMPILE_CACHE": str(tmp_path / "xla")}
    over = ["--set", *tiny_overrides(**{"search.generations": 2, "final.epochs": 1})]
    straight = tmp_path / "straight"
    proc = search_process(["--out", str(straight), *over], env)
    assert proc.wait() == 0, proc.stderr.read()

    rng = random.Random(12)
    # a random moment in each phase: the first generations of a fresh run, a resumed
    # generation, the final training and checkpoint
    phases = [("gen   0/2", rng.uniform(0.0, 1.5)), ("resuming", rng.uniform(0.5, 3.0)),
              ("best mask", rng.uniform(0.0, 0.5))]
    run, kills = tmp_path / "killed", 0
    for marker, delay in phases + [(None, None)]:
        if (run / rundir.CONFIG).is_file():
            args = ["--resume", str(run)]
        else:  # killed before the run existed: nothing was computed, start again
            shutil.rmtree(run, ignore_errors=True)
            args = ["--out", str(run), *over]
        proc = search_process(args, env)
        if marker is None or not _kill_after(proc, marker, delay):
            assert proc.wait() == 0, proc.stderr.read()
            if marker is None:
                break
        else:
            kills += 1
            # a killed run never looks finished, unless the kill came after its last line
            # (the process had finished its work and was exiting)
            finished = (run / rundir.METRICS).exists() and (run / rundir.REPORT).exists()
            assert not finished or "test accuracy" in proc.stdout.read()
    assert kills >= 2  # a phase can end before its moment comes on a fast machine

    assert rundir.read_json(run / rundir.BEST) == rundir.read_json(straight / rundir.BEST)
    a, b = (rundir.read_json(d / rundir.METRICS)["test"] for d in (straight, run))
    assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]
    rows = [[{k: h[k] for k in COMPARED} for h in map(json.loads, (d / rundir.HISTORY).read_text().splitlines())]
            for d in (straight, run)]
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_a_search_stopped_with_sigterm_says_how_to_resume_and_resume_finishes_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "DEFT_JAX_COMPILE_CACHE": str(tmp_path / "xla")}
    run = tmp_path / "run"
    proc = search_process(["--out", str(run), "--set", *tiny_overrides(**{"search.generations": 2})], env)
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("gen   0/2"):
            break
    proc.send_signal(signal.SIGTERM)  # what a scheduler sends before it kills a preempted job
    assert proc.wait() == 143
    err = proc.stderr.read().strip().splitlines()
    assert err[-1] == "interrupted: completed generations are saved; continue with --resume RUN_DIR"
    assert not (run / rundir.METRICS).exists()
    resumed = search_process(["--resume", str(run)], env)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert (run / rundir.METRICS).is_file()


def test_sigterm_inside_a_command_exits_143_with_its_resume_hint(capsys):
    from deft_jax.errors import exit_on_user_error

    @exit_on_user_error(on_interrupt="interrupted: continue with --resume DIR")
    def command():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives before this ends
        return 0

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        command()
    assert stopped.value.code == 143
    assert capsys.readouterr().err.strip() == "interrupted: continue with --resume DIR"
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command


def test_a_planted_lock_symlink_is_refused_and_its_target_left_untouched(tmp_path):
    run, target = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    target.write_text("the user's file\n")
    (run / rundir.LOCK).symlink_to(target)
    for shared in (False, True):  # a resume and a predict
        with pytest.raises(UserError, match="symbolic link"):
            rundir.lock(run, shared=shared)
    assert target.read_text() == "the user's file\n"


def test_a_reader_lock_writes_nothing_in_the_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert rundir.lock(run, shared=True) is False  # no lock file: none is created
    assert list(run.iterdir()) == []
    (run / rundir.LOCK).write_text("4242\n")
    before = (run / rundir.LOCK).stat()
    assert rundir.lock(run, shared=True) is True
    rundir.release(run)
    after = (run / rundir.LOCK).stat()
    assert (run / rundir.LOCK).read_text() == "4242\n" and after.st_mtime_ns == before.st_mtime_ns


def test_a_full_disk_before_the_run_is_resumable_leaves_an_empty_folder_and_advice_that_works(
        tmp_path, monkeypatch, capsys):
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    run = tmp_path / "run"
    monkeypatch.setattr(rundir.os, "fsync", no_space)  # the first file of the run: splits.json
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(run), "--set", *tiny_overrides()])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1, err
    assert "splits.json" in err and "run the same command again" in err and "--resume" not in err
    assert not run.exists()  # no splits.json, no .tmp left behind: the same command starts again


def test_a_symlinked_file_in_a_finished_run_is_refused_by_resume_and_predict(finished_run, tmp_path, capsys):
    from deft_jax.cli import predict

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    outside = tmp_path / "outside.json"
    outside.write_text((run / rundir.CONFIG).read_text())
    (run / rundir.CONFIG).unlink()
    (run / rundir.CONFIG).symlink_to(outside)
    for command, argv in ((main, ["--resume", str(run)]), (predict.main, ["--run", str(run), str(outside)])):
        with pytest.raises(SystemExit) as stopped:
            command(argv)
        assert stopped.value.code == 2
        assert "config.json is a symbolic link" in one_error_line(capsys)
    assert outside.read_text() == (finished_run / rundir.CONFIG).read_text()
