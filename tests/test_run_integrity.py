"""Trustworthy under what users really hit: a tampered run folder is refused (config
fingerprint in the search state, preprocessing fingerprint in the checkpoint), a kill
mid-generation retrains at most the member in flight (the evaluation journal), a search
whose fitness carries no signal says so, and the smoke config learns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from flax import serialization

from deft_jax.config.schema import load_config
from deft_jax.errors import UserError
from deft_jax.evolution.fitness import Halving, MemoTable, evaluate_population
from deft_jax.evolution.journal import EvaluationJournal, journal_path
from deft_jax.evolution.loop import run_search
from deft_jax.runtime import rundir

from conftest import REPO
from helpers import logged, search_process, tiny_overrides
from test_search import LAYER_GROUPS, CountingEvaluator


def config(*over: str):
    return load_config(None, ["search.population_size=8", "search.generations=4", *over])


class ScoringEvaluator(CountingEvaluator):
    """CountingEvaluator that reports each finished member (`on_member_scored`) and can be
    'killed' (KeyboardInterrupt) before its n-th member."""

    on_member_done = None
    on_member_scored = None

    def evaluate(self, masks, epochs=None):
        out = []
        for i, m in enumerate(masks):
            value = super().evaluate([m])[0] + (0.001 * epochs if epochs else 0.0)
            out.append(value)
            if self.on_member_scored is not None:
                self.on_member_scored(i, value)
        return out


def searched(tmp_path, cfg, kill_after=None):
    state = tmp_path / "state.msgpack"
    if kill_after is not None:
        with pytest.raises(KeyboardInterrupt):
            run_search(cfg, ScoringEvaluator(fail_after=kill_after), LAYER_GROUPS, state_path=state)
    return state


# -- 1. a tampered run folder ---------------------------------------------------------------

@pytest.mark.parametrize("edit", ["finetune.learning_rate=0.5", "seed=3", "data.source.max_per_class=7",
                                  "search.population_size=9"])
def test_a_resume_whose_config_was_edited_is_refused_with_the_changed_key(tmp_path, edit):
    state = searched(tmp_path, config(), kill_after=10)
    with pytest.raises(UserError, match=f"changed since the search started.*{edit.split('=')[0]}"):
        run_search(config(edit), ScoringEvaluator(), LAYER_GROUPS, state_path=state)


def test_a_resume_with_fewer_generations_in_config_json_is_refused(tmp_path):
    state = searched(tmp_path, config(), kill_after=10)
    with pytest.raises(UserError, match="generations is lower"):
        run_search(config("search.generations=2"), ScoringEvaluator(), LAYER_GROUPS, state_path=state)


def test_the_keys_resume_may_change_still_resume_to_the_uninterrupted_result(tmp_path):
    straight = run_search(config("search.generations=5"), ScoringEvaluator(), LAYER_GROUPS)
    state = searched(tmp_path, config(), kill_after=10)
    allowed = config("search.generations=5", "search.evaluation=sequential", "final.epochs=9",
                     "final.learning_rate=0.2")
    resumed = run_search(allowed, ScoringEvaluator(), LAYER_GROUPS, state_path=state)
    assert [dict(h, seconds=0) for h in resumed.history] == [dict(h, seconds=0) for h in straight.history]
    assert resumed.memo == straight.memo


def test_a_state_without_a_fingerprint_is_read_with_a_warning(tmp_path):
    state = searched(tmp_path, config(), kill_after=10)
    payload = serialization.msgpack_restore(state.read_bytes())
    for key in ("fingerprint", "config", "generations"):
        payload.pop(key)
    state.write_bytes(serialization.msgpack_serialize(payload))
    journal_path(state).unlink()  # an older version wrote no journal either
    with logged() as lines:
        run_search(config("finetune.learning_rate=0.5"), ScoringEvaluator(), LAYER_GROUPS, state_path=state)
    assert any(l.startswith("warning: search state") and "no config fingerprint" in l for l in lines)


def _checkpoint_meta_file(run):
    return next(p for p in (run / "checkpoint").rglob("*")
                if p.is_file() and p.read_bytes()[:1] == b"{" and b"input_size" in p.read_bytes())


def test_a_checkpoint_whose_metadata_was_edited_is_refused_by_predict(tmp_path, capsys):
    from test_bad_inputs import checkpoint_run
    from deft_jax.run.predictor import Predictor
    predict, argv = checkpoint_run(tmp_path)
    run = tmp_path / "finished"
    assert Predictor(run).meta["input_size"] == 16  # untouched: restores
    meta_file = _checkpoint_meta_file(run)
    meta = json.loads(meta_file.read_text())
    meta["input_size"] = 24  # still fits the weights (global pooling): silently wrong otherwise
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as stopped:
        predict(argv)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "was modified after it was saved" in err

    del meta["fingerprint"]  # a checkpoint of an older version: readable, with a warning
    meta_file.write_text(json.dumps(meta))
    with logged() as lines:
        assert Predictor(run).meta["input_size"] == 24
    assert any(l.startswith("warning: checkpoint") and "no fingerprint" in l for l in lines)


# -- 2. per-evaluation resume ---------------------------------------------------------------

@pytest.mark.parametrize("kill_after", [3, 9, 10])  # inside generation 0 (8 new members), and 1 (3)
def test_a_search_killed_mid_generation_retrains_only_the_members_not_yet_journaled(tmp_path, kill_after):
    straight_eval = ScoringEvaluator()
    straight = run_search(config(), straight_eval, LAYER_GROUPS)
    state = searched(tmp_path, config(), kill_after=kill_after)
    journal = journal_path(state)
    assert journal.is_file()
    resumed_eval = ScoringEvaluator()
    resumed = run_search(config(), resumed_eval, LAYER_GROUPS, state_path=state)
    # every member finished before the kill is taken from the state or the journal
    assert kill_after + len(resumed_eval.masks_seen) == len(straight_eval.masks_seen)
    assert resumed.restored_members > 0
    assert [dict(h, seconds=0) for h in resumed.history] == [dict(h, seconds=0) for h in straight.history]
    assert resumed.memo == straight.memo and resumed.best_mask == straight.best_mask
    assert not journal.exists()  # removed once the generation's state is saved


def test_halving_resumed_from_the_journal_gives_the_uninterrupted_fitnesses(tmp_path):
    masks = [dict(zip(LAYER_GROUPS.names, map(int, bits)))
             for bits in ("100001", "010001", "001001", "000101", "110001", "011001")]
    halving = Halving(1, 0.34)
    counting = ScoringEvaluator()
    straight, _ = evaluate_population(counting, masks, MemoTable(), LAYER_GROUPS, halving=halving)
    journal = EvaluationJournal(tmp_path / "j.jsonl", "f" * 64, 0)
    with pytest.raises(KeyboardInterrupt):
        evaluate_population(ScoringEvaluator(fail_after=7), masks, MemoTable(), LAYER_GROUPS,
                            halving=halving, journal=journal)
    with open(journal.path, "a") as f:
        f.write('{"generation": 0, "key": "1000')  # a line torn by the kill
    again = EvaluationJournal(tmp_path / "j.jsonl", "f" * 64, 0)
    assert again.load() == 7
    ev = ScoringEvaluator()
    resumed, _ = evaluate_population(ev, masks, MemoTable(), LAYER_GROUPS, halving=halving, journal=again)
    assert resumed == straight and 7 + len(ev.masks_seen) == len(counting.masks_seen)
    with pytest.raises(UserError, match="another config"):
        EvaluationJournal(tmp_path / "j.jsonl", "e" * 64, 0).load()


@pytest.mark.slow
def test_a_search_killed_with_sigkill_mid_generation_retrains_at_most_the_member_in_flight(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "DEFT_JAX_COMPILE_CACHE": str(tmp_path / "xla")}
    over = ["--set", *tiny_overrides(**{"search.generations": 1, "final.epochs": 1})]
    straight = tmp_path / "straight"
    assert search_process(["--out", str(straight), *over], env).wait() == 0
    run = tmp_path / "killed"
    proc = search_process(["--out", str(run), *over], env)
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("generation 0/1: 1/4 members trained"):
            break  # the second member is in flight
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    journal = journal_path(run / rundir.STATE)
    saved = len(journal.read_text().splitlines())
    assert saved >= 1 and not (run / rundir.STATE).exists()  # killed inside generation 0
    resumed = search_process(["--resume", str(run)], env)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert f"resuming generation 0: {saved} finished evaluation(s) taken from the journal" in out
    metrics = rundir.read_json(run / rundir.METRICS)
    assert metrics["search"]["restored_from_journal"] == saved  # retrained: 4 - saved, at most 3
    assert rundir.read_json(run / rundir.BEST) == rundir.read_json(straight / rundir.BEST)
    rows = [[{k: v for k, v in json.loads(l).items() if k in ("generation", "best_fitness", "mean_fitness",
             "generation_best_mask", "masks_evaluated", "memo_hits")}
             for l in (d / rundir.HISTORY).read_text().splitlines()] for d in (straight, run)]
    assert rows[0] == rows[1]
    a, b = (rundir.read_json(d / rundir.METRICS)["test"] for d in (straight, run))
    assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]


# -- 3. the smoke run learns ----------------------------------------------------------------

@pytest.mark.slow
def test_the_smoke_config_learns_well_above_chance(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deft_jax.search", "--config", str(REPO / "configs" / "smoke.toml"),
                           "--out", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    test = rundir.read_json(tmp_path / "run" / rundir.METRICS)["test"]
    assert test["accuracy"] >= 0.5  # 10 classes: chance is 0.1
    assert sum(1 for row in test["confusion_matrix"] if max(row) > 0) == 10
    assert "no signal" not in proc.stdout


# -- 4. a search with no signal ---------------------------------------------------------------

class ChanceEvaluator(ScoringEvaluator):
    def evaluate(self, masks, epochs=None):
        super().evaluate(masks)
        return [0.9 - 0.0125 * (i % 2) for i in range(len(masks))]  # 10 classes, 80 val images


def test_a_search_where_every_member_scores_chance_warns_in_the_log_and_the_report():
    with logged() as lines:
        result = run_search(config(), ChanceEvaluator(), LAYER_GROUPS, n_val=80, num_classes=10)
    assert result.warning and "chance level" in result.warning
    assert sum("warning: the search's fitness carries no signal" in l for l in lines) == 1
    with logged() as lines:
        learned = run_search(config(), ScoringEvaluator(), LAYER_GROUPS, n_val=80, num_classes=10)
    assert learned.warning is None and not any("no signal" in l for l in lines)


def test_a_search_where_every_member_scores_the_same_warns():
    class Flat(ScoringEvaluator):
        def evaluate(self, masks, epochs=None):
            return [0.25] * len(masks)
    result = run_search(config(), Flat(), LAYER_GROUPS, n_val=80, num_classes=2)
    assert result.warning and "the same fitness" in result.warning


def test_the_report_of_a_search_without_signal_says_so():
    from deft_jax.run.report import render_report
    test = {"n": 2, "accuracy": 0.5, "macro_f1": 0.3, "confusion_matrix": [[1, 0], [1, 0]],
            "per_class_recall": {"a": 1.0, "b": 0.0}}
    cfg = load_config(None, []).to_dict()
    args = dict(cfg=cfg, description="digits", model="small_cnn", pretrained=None, group_sizes={"head": 10},
                best_mask={"head": True}, best_fitness=0.5, history=[],
                metrics={"test": test, "val": test, "trainable_fraction": 1.0}, class_names=["a", "b"],
                split_sizes={"train": 1, "val": 1, "test": 2}, seconds={"total": 1.0})
    assert "no signal" not in render_report(**args)
    report = render_report(**args, warning="every mask scored at chance level")
    assert "**Warning: the search's fitness carried no signal** (every mask scored at chance level)" in report
