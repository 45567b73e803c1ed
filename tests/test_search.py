import json
import math

import numpy as np
import pytest

from deft_jax.runtime import rundir
from deft_jax.config.schema import load_config
from deft_jax.data import load_dataset
from deft_jax.evolution.fitness import MemoTable, evaluate_population
from deft_jax.core.masks import mask_key
from deft_jax.core.metrics import confusion_matrix, softmax
from deft_jax.run.predictor import Predictor
from deft_jax.evolution.loop import run_search
from deft_jax.models.groups import LayerGroups
from deft_jax.cli.search import main
from deft_jax.data.splits import load_splits

from helpers import tiny_overrides

GROUPS = ("g0", "g1", "g2", "g3", "g4", "head")
PARAMS = {g: {"w": np.zeros(10 * (i + 1))} for i, g in enumerate(GROUPS)}
RULES = tuple((rf"^{g}/", g) for g in GROUPS)
LAYER_GROUPS = LayerGroups({"params": PARAMS}, RULES, GROUPS)


class CountingEvaluator:
    """Deterministic fake fitness: prefers training g1 and g3 only."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.masks_seen, self.fail_after = 0, [], fail_after

    def evaluate(self, masks):
        out = []
        for m in masks:
            if self.fail_after is not None and len(self.masks_seen) >= self.fail_after:
                raise KeyboardInterrupt
            self.masks_seen.append(mask_key(m))
            target = {"g0": False, "g1": True, "g2": False, "g3": True, "g4": False}
            out.append(sum(m[g] != t for g, t in target.items()) / 5 + 0.01 * sum(m.values()))
        self.calls += 1
        return out

    def stats(self):
        return {}


def fake_config(**extra):
    over = [f"search.{k}={v}" for k, v in {"population_size": 8, "generations": 6, **extra}.items()]
    return load_config(None, over)


def test_identical_masks_are_evaluated_once_and_counted_as_memo_hits():
    ev, memo = CountingEvaluator(), MemoTable()
    masks = [dict(zip(GROUPS, bits)) for bits in
             [(1, 0, 0, 0, 0, 1), (1, 0, 0, 0, 0, 1), (0, 1, 0, 0, 0, 1)]]
    f1, info1 = evaluate_population(ev, masks, memo, LAYER_GROUPS)
    f2, info2 = evaluate_population(ev, masks[:1], memo, LAYER_GROUPS)
    assert ev.masks_seen == ["100001", "010001"]
    assert f1[0] == f1[1] == f2[0]
    assert (info1["evaluated"], info1["memo_hits"], info2["memo_hits"]) == (2, 1, 1)


def test_masks_over_the_trainable_fraction_limit_are_penalised_and_never_trained():
    ev, memo = CountingEvaluator(), MemoTable()
    big = dict(zip(GROUPS, (1, 1, 1, 1, 1, 1)))
    small = dict(zip(GROUPS, (1, 0, 0, 0, 0, 1)))
    f, info = evaluate_population(ev, [big, small], memo, LAYER_GROUPS, max_fraction=0.5)
    assert ev.masks_seen == ["100001"] and info["infeasible"] == 1
    assert f[0] > 1.0 > f[1]


WIDE_GROUPS = tuple(f"g{i}" for i in range(24)) + ("head",)
WIDE_LAYER_GROUPS = LayerGroups({"params": {g: {"w": np.zeros(4)} for g in WIDE_GROUPS}},
                                tuple((rf"^{g}/", g) for g in WIDE_GROUPS), WIDE_GROUPS)


class HammingEvaluator:
    """Fake fitness built for DE: the share of the 24 groups whose flag differs from a
    hidden target mask (separable, so recombining good members pays)."""

    def __init__(self, target: dict[str, bool]):
        self.target = target

    def evaluate(self, masks):
        return [sum(m[g] != t for g, t in self.target.items()) / len(self.target) for m in masks]

    def stats(self):
        return {}


def random_sampling_reaches(distance: int, genes: int, draws: int) -> float:
    """P(the best of `draws` uniform random masks is within `distance` of the target)."""
    one = sum(math.comb(genes, k) for k in range(distance + 1)) / 2 ** genes
    return 1.0 - (1.0 - one) ** draws


def test_differential_evolution_beats_random_sampling_on_a_landscape_built_for_it():
    """On 5 seeds (a new hidden target each), DE with population 16 and 10 generations
    trains at most 16 x 11 = 176 masks of 2^24 and ends within Hamming distance 3 of the
    target. Random sampling of 176 masks gets that close with probability
    1 - (1 - 2325 / 2^24)^176 = 2.4% per seed, so on all 5 seeds with probability ~8e-9;
    it also loses to DE on every seed when run with DE's own budget here."""
    genes, budget, close = 24, 16 * 11, 3
    assert random_sampling_reaches(close, genes, budget) < 0.025
    assert random_sampling_reaches(close, genes, budget) ** 5 < 1e-8
    for seed in range(5):
        rng = np.random.default_rng(seed)
        target = dict(zip(WIDE_GROUPS[:-1], rng.integers(0, 2, genes).astype(bool).tolist()))
        cfg = load_config(None, ["search.population_size=16", "search.generations=10", f"seed={seed}"])
        result = run_search(cfg, HammingEvaluator(target), WIDE_LAYER_GROUPS)
        de_distance = round(result.best_fitness * genes)
        assert len(result.memo) <= budget
        assert de_distance <= close, (seed, de_distance)
        assert [h["generation"] for h in result.history] == list(range(11))
        assert all(a["best_fitness"] >= b["best_fitness"] for a, b in zip(result.history, result.history[1:]))
        draws = rng.integers(0, 2, (len(result.memo), genes)).astype(bool)
        random_distance = int((draws != np.array(list(target.values()))).sum(axis=1).min())
        assert de_distance < random_distance, (seed, de_distance, random_distance)


def test_resume_after_an_interruption_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    cfg = fake_config()
    straight = run_search(cfg, CountingEvaluator(), LAYER_GROUPS)
    state = tmp_path / "state.msgpack"
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, CountingEvaluator(fail_after=12), LAYER_GROUPS, state_path=state)
    from flax import serialization
    saved = serialization.msgpack_restore(state.read_bytes())
    memo_at_interrupt = set(json.loads(saved["memo"]))
    assert 0 < int(saved["generation"]) < cfg.search.generations
    resumed_eval = CountingEvaluator()
    resumed = run_search(cfg, resumed_eval, LAYER_GROUPS, state_path=state)
    assert resumed.best_mask == straight.best_mask and resumed.best_fitness == straight.best_fitness
    assert resumed.memo == straight.memo
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(resumed.history) == strip(straight.history)
    assert not set(resumed_eval.masks_seen) & memo_at_interrupt  # nothing computed is redone


def test_tiny_end_to_end_search_writes_a_complete_run_whose_checkpoint_predicts_what_the_run_scored(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--out", str(run), "--set", *tiny_overrides()]) == 0
    out = capsys.readouterr().out
    assert "best mask" in out and "test accuracy" in out
    # live progress off a terminal: a plain line per trained member, with the search's ETA
    assert "generation 0/2: 1/4 members trained, search ETA" in out
    for name in ("config.json", "splits.json", "history.jsonl", "best.json", "metrics.json", "report.md"):
        assert (run / name).is_file(), name
    best = rundir.read_json(run / "best.json")
    assert set(best["mask"]) == {"conv1", "conv2", "conv3", "conv4", "head"} and best["mask"]["head"]
    metrics = rundir.read_json(run / "metrics.json")
    assert "macro_f1" in metrics["test"]  # its accuracy is checked against the checkpoint below
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert [h["generation"] for h in history] == [0, 1, 2]
    assert {"best_fitness", "mean_fitness", "masks_evaluated", "memo_hits", "seconds"} <= set(history[0])

    # restored without the training data, the checkpoint's predictions on the test split are
    # those the run scored: the same confusion matrix, cell by cell, so the same accuracy
    # (its logits against the in-memory model's: test_a_restored_checkpoint_gives_the_same_logits...)
    cfg = load_config(None, tiny_overrides())
    dataset = load_dataset(cfg.data.source)
    test_idx = load_splits(run / "splits.json")["test"]
    predictor = Predictor(run)
    logits = predictor.logits(dataset.images[test_idx])
    predictions = logits.argmax(-1)
    scored = confusion_matrix(dataset.labels[test_idx], predictions, len(predictor.class_names))
    assert scored.tolist() == metrics["test"]["confusion_matrix"]
    assert float(np.mean(predictions == dataset.labels[test_idx])) == pytest.approx(metrics["test"]["accuracy"])

    # the predict CLI prints path, class, probability per image
    from PIL import Image
    from deft_jax.cli.predict import main as predict_main
    paths = []
    for i in test_idx[:3]:
        p = tmp_path / f"img{i}.png"
        Image.fromarray(dataset.images[i]).save(p)
        paths.append(str(p))
    assert predict_main(["--run", str(run), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, i in zip(lines, test_idx[:3]):
        path, name, prob = line.split("\t")
        row = logits[list(test_idx).index(i)]
        assert name == predictor.class_names[int(row.argmax())]
        assert float(prob) == pytest.approx(softmax(row).max(), abs=5e-5)  # printed to 4 places


def test_resume_of_the_real_pipeline_after_an_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    over = tiny_overrides(**{"search.generations": 2, "search.evaluation": "\"sequential\""})
    straight = tmp_path / "straight"
    assert main(["--out", str(straight), "--set", *over]) == 0

    from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
    original = SequentialEvaluator.evaluate
    calls = {"n": 0}

    def flaky(self, masks):
        calls["n"] += 1
        if calls["n"] == 2:  # interrupt in the first generation after the initial one that trains
            raise KeyboardInterrupt
        return original(self, masks)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(SequentialEvaluator, "evaluate", flaky)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(interrupted), "--set", *over])
    assert exc.value.code == 130
    assert not (interrupted / "metrics.json").exists() and not (interrupted / "report.md").exists()
    monkeypatch.setattr(SequentialEvaluator, "evaluate", original)
    assert main(["--resume", str(interrupted)]) == 0
    for name in ("best.json",):
        assert rundir.read_json(interrupted / name) == rundir.read_json(straight / name)
    a, b = (rundir.read_json(d / "metrics.json")["test"] for d in (straight, interrupted))
    assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]


def test_a_restored_checkpoint_gives_the_same_logits_as_the_trained_model_in_memory(tmp_path):
    from deft_jax.run.checkpoint import save_checkpoint
    from deft_jax.core.final import train_final
    from deft_jax.data.inputs import prepare_data
    from deft_jax.core.masks import mask_from_names
    from deft_jax.models import build_model
    from deft_jax.run.pipeline import inference_meta
    from deft_jax.core.training import logits

    cfg = load_config(None, tiny_overrides())
    dataset = load_dataset(cfg.data.source)
    spec = build_model(cfg.model.name, len(dataset.class_names), cfg.model.weights, cfg.model.input_size)
    data = prepare_data(cfg, spec, dataset)
    mask = mask_from_names(["conv3", "conv4"], spec.group_names)
    trained = train_final(cfg, spec, spec.init(cfg.seed), mask, data).variables
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint", trained, inference_meta(cfg, spec, data.class_names, mask, None))
    restored = Predictor(run)
    test_idx = data.splits["test"]
    np.testing.assert_allclose(restored.logits(dataset.images[test_idx]),
                               logits(spec, trained, data.x_test), rtol=0, atol=1e-6)
    assert restored.meta["mask"] == mask and restored.class_names == data.class_names
