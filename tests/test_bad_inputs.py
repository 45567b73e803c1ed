"""Every bad input of issue 12 is one `error: ...` line on stderr with exit status 2: no
traceback, and no run directory that looks finished (metrics.json / report.md), nor any
folder at all when the input is refused before work starts.

The cases run in-process (the CLIs' `main`), so the table costs seconds, not a JAX start
per case; predict's cases use a checkpoint written directly (no training)."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from deft_jax.cli import predict, search
from deft_jax.runtime import rundir
from deft_jax.run.checkpoint import save_checkpoint
from deft_jax.config.schema import load_config
from deft_jax.errors import UserError
from deft_jax.cli import experiment as experiment_cli
from deft_jax.models import build_model
from deft_jax.run.pipeline import inference_meta

from helpers import tiny_overrides


def sets(**extra) -> list[str]:
    return ["--set", *tiny_overrides(**extra)]


def npz_source(path) -> dict:
    return {"data.source": json.dumps({"kind": "npz", "path": str(path)})}


def write_npz(path, images, pickled=False):
    labels = np.arange(len(images)) % 2
    arrays = {f"{s}_images": images for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": labels for s in ("train", "val", "test")})
    if pickled:
        arrays["train_labels"] = np.array([{"label": 0}] * len(images), dtype=object)
    np.savez(path, **arrays)
    return path


def resumable_run(tmp_path, config_text=None, splits=None):
    """A run folder as `search` leaves it after the split is written."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, tiny_overrides())
    (run / "config.json").write_text(config_text if config_text is not None
                                     else json.dumps(cfg.to_dict()))
    if splits is not None:
        (run / "splits.json").write_text(json.dumps(splits))
    return run


def checkpoint_run(tmp_path, edit_meta=None, corrupt_data=False):
    """A finished-looking run holding a small_cnn checkpoint, its metadata edited."""
    cfg = load_config(None, tiny_overrides())
    spec = build_model("small_cnn", 3, "none", 16)
    meta = inference_meta(cfg, spec, ["a", "b", "c"], {g: True for g in spec.group_names}, None)
    if edit_meta:
        edit_meta(meta)
    run = tmp_path / "finished"
    run.mkdir()
    save_checkpoint(run / "checkpoint", spec.init(0), meta)
    if corrupt_data:
        rng = np.random.default_rng(0)
        for f in (run / "checkpoint" / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    return predict.main, ["--run", str(run), str(image)]


def case_npz_with_pickled_arrays(tmp_path, monkeypatch):
    path = write_npz(tmp_path / "pickled.npz", np.zeros((8, 16, 16), np.uint8), pickled=True)
    return search.main, sets(**npz_source(path)), "pickled"


def case_npz_with_nan_images(tmp_path, monkeypatch):
    images = np.full((8, 16, 16), 0.5, np.float32)
    images[3, 2, 2] = np.nan
    path = write_npz(tmp_path / "nan.npz", images)
    return search.main, sets(**npz_source(path)), "non-finite"


def case_resume_with_invalid_config_json(tmp_path, monkeypatch):
    run = resumable_run(tmp_path, config_text="{not json")
    return search.main, ["--resume", str(run)], "config.json"


def case_resume_with_out_of_range_split_indices(tmp_path, monkeypatch):
    run = resumable_run(tmp_path, splits={"train": [0, 1, 99999], "val": [2], "test": [3]})
    return search.main, ["--resume", str(run)], "99999"


def case_negative_seed(tmp_path, monkeypatch):
    return search.main, ["--seed", "-1", *sets()], "seed"


def case_unknown_granularity(tmp_path, monkeypatch):
    return search.main, sets(**{"model.granularity": '"bogus"'}), "granularity"


def case_huge_input_size(tmp_path, monkeypatch):
    return search.main, sets(**{"model.input_size": "100000"}), "input_size"


def case_infinite_learning_rate(tmp_path, monkeypatch):
    return search.main, sets(**{"finetune.learning_rate": "Infinity"}), "learning_rate"


def case_nan_crossover_rate(tmp_path, monkeypatch):
    return search.main, sets(**{"search.crossover_rate": "NaN"}), "crossover_rate"


def case_a_full_disk(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(rundir.os, "fsync", no_space)
    return search.main, sets(), "run the same command again"  # nothing is resumable yet


def case_predict_on_random_checkpoint_data(tmp_path, monkeypatch):
    return (*checkpoint_run(tmp_path, corrupt_data=True), "cannot restore checkpoint")


def case_predict_with_num_classes_not_matching_the_parameters(tmp_path, monkeypatch):
    def edit(meta):
        meta["num_classes"], meta["class_names"] = 5, list("abcde")
    return (*checkpoint_run(tmp_path, edit), "does not match")


def case_predict_with_class_names_not_matching_num_classes(tmp_path, monkeypatch):
    return (*checkpoint_run(tmp_path, lambda m: m.update(class_names=["a", "b"])), "class_names")


def case_predict_with_a_huge_input_size_in_the_checkpoint(tmp_path, monkeypatch):
    return (*checkpoint_run(tmp_path, lambda m: m.update(input_size=99999)), "input_size")


def case_an_unknown_search_option(tmp_path, monkeypatch):
    return search.main, ["--bogus"], "--bogus"


def case_a_search_seed_that_is_not_a_number(tmp_path, monkeypatch):
    return search.main, ["--seed", "abc"], "--seed"


def case_predict_without_run(tmp_path, monkeypatch):
    return predict.main, ["x.png"], "--run"


def case_an_unknown_experiment_option(tmp_path, monkeypatch):
    return experiment_cli.main, ["--nope"], "--nope"


def case_default_resnet_weights_that_are_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFT_SHARED_DATA", str(tmp_path / "no-shared-data"))
    return search.main, sets(**{"model.name": '"resnet20"', "model.weights": '"default"'}), "model.weights"


def case_resume_changing_the_population_size(tmp_path, monkeypatch):
    run = resumable_run(tmp_path)
    return search.main, ["--resume", str(run), "--set", "search.population_size=6"], "population_size"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[len("case_"):] for c in CASES])
def test_a_bad_input_is_one_error_line_with_exit_status_2(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default --out would land here
    entry, argv, needle = case(tmp_path, monkeypatch)
    out = tmp_path / "out"
    if entry is search.main and "--resume" not in argv:
        argv = ["--out", str(out), *argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    lines = [l for l in err.splitlines() if not l.startswith("compile cache")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle in lines[0], err
    for folder in (out, tmp_path / "run", tmp_path / "runs"):
        assert not (folder / "metrics.json").exists() and not (folder / "report.md").exists()
    if needle not in ("--resume",) and entry is search.main and "--resume" not in argv:
        assert not out.exists(), "refused input left a run directory behind"


def test_a_second_unlocked_check_cannot_start_writing_a_locked_folder(tmp_path):
    rundir.create_fresh(tmp_path / "run")
    try:
        fd = os.open(tmp_path / "run" / rundir.LOCK, os.O_RDWR)
        import fcntl
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        rundir.release(tmp_path / "run")


def test_checkpoint_save_on_a_full_disk_is_a_user_error(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def full(*args, **kwargs):
        raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device")
    monkeypatch.setattr(ocp.Checkpointer, "save", full)
    spec = build_model("small_cnn", 2, "none", 16)
    with pytest.raises(UserError, match="disk is full"):
        save_checkpoint(tmp_path / "ckpt", spec.init(0), {"model": "small_cnn"})


def test_metrics_json_is_strict_json_without_nan(tmp_path):
    rundir.write_json(tmp_path / "m.json", {"auc": float("nan"), "x": [np.float32(np.inf), 1.5]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"auc": None, "x": [None, 1.5]}
