"""The search command takes its final model from the search (`final.reuse`, `final.ensemble`):
an ensemble checkpoint holds its members and predicts the mean of their probabilities, a
reused model is not trained again, and single-model checkpoints load as before."""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import logged, tiny_overrides
from PIL import Image

from deft_jax.cli.predict import main as predict_main
from deft_jax.cli.search import main as search_main
from deft_jax.config.schema import load_config
from deft_jax.core import training
from deft_jax.core.metrics import softmax
from deft_jax.data import load_dataset, preprocess
from deft_jax.data.splits import load_splits
from deft_jax.errors import UserError
from deft_jax.models import build_model
from deft_jax.run import checkpoint as checkpoint_module
from deft_jax.run import final_model as final_model_module
from deft_jax.run.checkpoint import save_checkpoint
from deft_jax.run.predictor import Predictor
from deft_jax.runtime import rundir

FINAL_RECIPE = {"search.schedule": '"final"', "search.evaluation": '"sequential"', "search.generations": "1",
                "finetune.epochs": "1", "final.epochs": "2"}
ENSEMBLE = {**FINAL_RECIPE, "search.fidelity": '"halving"', "search.promote_fraction": "1.0",
            "final.ensemble": "2"}


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """A finished tiny search with halving whose final model is an ensemble of 2, and a few
    of its test images as PNG files."""
    root = tmp_path_factory.mktemp("ensemble")
    assert search_main(["--out", str(root / "run"), "--set", *tiny_overrides(**ENSEMBLE)]) == 0
    dataset = load_dataset(load_config(None, tiny_overrides()).data.source)
    test_idx = load_splits(root / "run" / rundir.SPLITS)["test"]
    paths = []
    for i in test_idx[:5]:
        Image.fromarray(dataset.images[i]).save(root / f"img{i}.png")
        paths.append(str(root / f"img{i}.png"))
    return root / "run", paths, dataset, test_idx


def single_run(folder, variables: dict, meta: dict):
    """A run folder holding one model's checkpoint with `meta` (ensemble field dropped)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in meta.items() if k not in ("ensemble", "fingerprint")}
    save_checkpoint(folder / rundir.CHECKPOINT, variables, meta)
    return folder


def test_an_ensemble_search_writes_two_members_whose_average_is_what_predict_returns(ensemble_run, tmp_path):
    run, paths, dataset, test_idx = ensemble_run
    metrics = rundir.read_json(run / rundir.METRICS)
    assert metrics["final_model"]["source"] == "search" and metrics["final_model"]["ensemble"] == 2
    predictor = Predictor(run)
    assert len(predictor.members) == 2
    assert predictor.meta["ensemble"]["members"] == 2 and predictor.ensemble_masks == metrics["final_model"]["masks"]
    assert predictor.ensemble_masks[0] == predictor.meta["mask"] == rundir.read_json(run / rundir.BEST)["mask"]

    # each member on its own, as a single-model checkpoint: the ensemble is their mean
    alone = [Predictor(single_run(tmp_path / f"member{i}", v, predictor.meta))
             for i, v in enumerate(predictor.members)]
    mean = np.mean([p.probabilities_of(paths) for p in alone], axis=0)
    np.testing.assert_allclose(predictor.probabilities_of(paths), mean, atol=2e-6)
    assert not np.allclose(alone[0].probabilities_of(paths), alone[1].probabilities_of(paths), atol=1e-4)

    out = tmp_path / "ensemble.csv"
    assert predict_main(["--run", str(run), *paths, "--csv", str(out)]) == 0
    rows = list(csv.reader(out.open(newline="")))[1:]
    np.testing.assert_allclose(np.array([[float(p) for p in r[3:]] for r in rows]), mean, atol=2e-6)

    # the run scored the ensemble: its test predictions are the checkpoint's
    x = preprocess(dataset.images[test_idx], predictor.meta["input_size"], predictor.meta["mean"],
                   predictor.meta["std"])
    probs = np.mean([softmax(training.logits(predictor.spec, v, x)) for v in predictor.members], axis=0)
    assert float(np.mean(probs.argmax(1) == dataset.labels[test_idx])) == pytest.approx(metrics["test"]["accuracy"])
    report = (run / rundir.REPORT).read_text()
    assert "ensemble of 2 models from the search" in report
    assert "ensemble of 2 models from the search" in (run / rundir.REPORT_HTML).read_text()


def test_predict_on_an_ensemble_checkpoint_prints_and_writes_the_same_columns_as_a_single_model(
        ensemble_run, tmp_path, capsys):
    run, paths, _, _ = ensemble_run
    predictor = Predictor(run)
    single = single_run(tmp_path / "single", predictor.members[0], predictor.meta)
    capsys.readouterr()
    printed, written = {}, {}
    for name, folder in (("ensemble", run), ("single", single)):
        assert predict_main(["--run", str(folder), *paths]) == 0
        printed[name] = capsys.readouterr().out.strip().splitlines()
        assert predict_main(["--run", str(folder), *paths, "--csv", str(tmp_path / f"{name}.csv")]) == 0
        assert capsys.readouterr().out.startswith(f"wrote {len(paths)} predictions to ")
        written[name] = list(csv.reader((tmp_path / f"{name}.csv").open(newline="")))
    assert len(printed["ensemble"]) == len(printed["single"]) == len(paths)
    for a, b in zip(printed["ensemble"], printed["single"]):
        assert len(a.split("\t")) == len(b.split("\t")) == 3 and a.split("\t")[0] == b.split("\t")[0]
    assert written["ensemble"][0] == written["single"][0] == ["path", "predicted", "probability",
                                                             *predictor.class_names]
    assert [len(r) for r in written["ensemble"]] == [len(r) for r in written["single"]]


def test_with_final_reuse_the_final_model_is_the_fitness_model_and_is_not_trained_again(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the final model was trained again")

    monkeypatch.setattr(final_model_module, "train_final", never)
    run = tmp_path / "run"
    with logged() as messages:
        assert search_main(["--out", str(run), "--set",
                            *tiny_overrides(**FINAL_RECIPE, **{"final.reuse": "true"})]) == 0
    assert any("the selected mask's model from the search, no retraining" in m for m in messages)
    metrics = rundir.read_json(run / rundir.METRICS)
    assert metrics["final_model"] == {"source": "search", "ensemble": 1,
                                      "members": [metrics["final_model"]["members"][0]],
                                      "masks": [rundir.read_json(run / rundir.BEST)["mask"]]}
    assert metrics["val"]["accuracy"] == pytest.approx(1 - metrics["search"]["best_fitness"])
    history = [json.loads(line) for line in (run / rundir.HISTORY).read_text().splitlines()]
    assert metrics["fine_tune_epochs"] == sum(r["epochs_trained"] for r in history)  # fitness epochs only
    assert len(Predictor(run).members) == 1 and Predictor(run).ensemble_masks is None


def test_a_resumed_search_whose_winner_was_restored_trains_the_final_model_and_says_so(tmp_path, monkeypatch):
    """Without a kept model (a journal member on a resume) the final model is trained."""
    cfg = load_config(None, tiny_overrides(**FINAL_RECIPE, **{"final.reuse": "true"}))
    dataset = load_dataset(cfg.data.source)
    spec = build_model("small_cnn", len(dataset.class_names), "none", 16)
    calls = []
    monkeypatch.setattr(final_model_module, "train_final", lambda *a, **k: calls.append(1) or "trained")
    mask = {g: True for g in spec.group_names}
    with logged() as messages:
        final, chosen = final_model_module.final_model(cfg, spec, spec.init(0), mask, None, models={})
    assert (final, chosen, calls) == ("trained", None, [1])
    assert any("not kept by the search" in m and "training the final model again" in m for m in messages)


def old_format_checkpoint(path, variables: dict, meta: dict) -> None:
    """A checkpoint as the search wrote it before ensembles (and before fingerprints): an
    orbax composite of `state` = {params, batch_stats} and `meta`."""
    state = jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": variables["batch_stats"]})
    ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
        path.absolute(), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def test_an_old_format_single_checkpoint_still_loads_and_predicts_identically(tmp_path):
    spec = build_model("small_cnn", 3, "none", 16)
    variables = spec.init(7)
    meta = {"model": "small_cnn", "num_classes": 3, "class_names": ["a", "b", "c"], "input_size": 16,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "granularity": "block",
            "mask": {g: True for g in spec.group_names}, "pretrained": None}
    (tmp_path / "old").mkdir()
    old_format_checkpoint(tmp_path / "old" / rundir.CHECKPOINT, variables, meta)
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    restored = Predictor(tmp_path / "old")
    assert len(restored.members) == 1 and restored.ensemble_masks is None
    x = preprocess(images, 16, meta["mean"], meta["std"])
    np.testing.assert_array_equal(restored.logits(images), training.logits(spec, variables, x))
    # a single model written now is the same format: its fingerprint is the one older versions wrote
    single_run(tmp_path / "new", variables, meta)
    written = Predictor(tmp_path / "new")
    shapes = checkpoint_module.stored_shapes(jax.tree.map(np.asarray, variables), 1)
    assert written.meta["fingerprint"] == rundir.fingerprint(
        {"meta": meta, "shapes": {c: {n: list(s) for n, s in v.items()} for c, v in shapes.items()}})
    assert set(shapes) == {"params", "batch_stats"} and "ensemble" not in written.meta
    np.testing.assert_array_equal(written.probabilities_of(list(images)), restored.probabilities_of(list(images)))


def test_an_ensemble_checkpoint_whose_metadata_no_longer_says_ensemble_is_refused_in_one_line(tmp_path):
    spec = build_model("small_cnn", 3, "none", 16)
    mask = {g: True for g in spec.group_names}
    meta = {"model": "small_cnn", "num_classes": 3, "class_names": ["a", "b", "c"], "input_size": 16,
            "mean": [0.5], "std": [0.25], "mask": mask}
    path = tmp_path / "ckpt"
    save_checkpoint(path, spec.init(0), meta, members=[(spec.init(0), mask), (spec.init(1), mask)])
    meta_file = path / "meta" / "metadata"
    edited = meta_file.read_text().replace('"ensemble"', '"ensemblf"')
    meta_file.write_text(edited)
    with pytest.raises(UserError, match="does not match its metadata"):
        checkpoint_module.restore_models(path)
