"""Every bad input: one line on stderr, non-zero exit, no traceback, no run dir that looks complete."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deft_jax.cli.search import main

from helpers import tiny_overrides


def run_cli(tmp_path, capsys, *extra, overrides=()):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), *extra, "--set", *tiny_overrides(), *overrides])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (out / "metrics.json").exists() and not (out / "report.md").exists()
    return err


def folder_source(path, regex=None):
    src = {"kind": "folder", "path": str(path), "image_size": 16}
    if regex:
        src["label_regex"] = regex
    return [f"data.source={json.dumps(src)}"]


def write_images(folder: Path, counts: dict[str, int], size=20):
    rng = np.random.default_rng(0)
    for label, n in counts.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")


def test_a_missing_data_path_is_reported_in_one_line(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, overrides=folder_source(tmp_path / "nope"))
    assert "nope" in err


def test_an_empty_dataset_is_reported(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no image" in run_cli(tmp_path, capsys, overrides=folder_source(tmp_path / "empty")).lower()


def test_a_single_class_dataset_is_reported(tmp_path, capsys):
    write_images(tmp_path / "one", {"a": 6})
    assert "class" in run_cli(tmp_path, capsys, overrides=folder_source(tmp_path / "one"))


def test_a_class_too_small_for_the_split_is_reported(tmp_path, capsys):
    write_images(tmp_path / "small", {"a": 6, "b": 2})
    err = run_cli(tmp_path, capsys, overrides=folder_source(tmp_path / "small"))
    assert "'b'" in err and "group" in err


def test_an_unreadable_image_is_named(tmp_path, capsys):
    write_images(tmp_path / "bad", {"a": 4, "b": 4})
    (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"not a png at all")
    assert "broken.png" in run_cli(tmp_path, capsys, overrides=folder_source(tmp_path / "bad"))


def test_an_unknown_model_name_is_reported(tmp_path, capsys):
    assert "resnet99" in run_cli(tmp_path, capsys, overrides=['model.name="resnet99"'])


def test_a_weights_file_that_does_not_match_the_model_is_reported(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch
    bogus = tmp_path / "bogus.th"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3, 3, 3, 3)}}, bogus)
    err = run_cli(tmp_path, capsys, overrides=['model.name="resnet20"', f'model.weights="{bogus}"'])
    assert "bogus.th" in err


def test_a_weights_file_that_is_not_a_checkpoint_is_reported(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 definitely not torch")
    assert "junk.pth" in run_cli(tmp_path, capsys, overrides=['model.name="resnet20"', f'model.weights="{junk}"'])


@pytest.mark.parametrize("override, needle", [
    ("search.population_size=2", "population_size"),
    ("search.crossover_rate=1.5", "crossover_rate"),
    ('finetune.optimizer="rmsprop"', "optimizer"),
    ("finetune.learning_rate=-1", "learning_rate"),
    ('search.generations="many"', "generations"),
    ("search.colour=3", "colour"),
    ("data.fractions=[0.5,0.5]", "fractions"),
])
def test_an_invalid_config_value_is_reported(tmp_path, capsys, override, needle):
    assert needle in run_cli(tmp_path, capsys, overrides=[override])


def test_a_missing_config_file_is_reported(tmp_path, capsys):
    assert "missing.toml" in run_cli(tmp_path, capsys, "--config", str(tmp_path / "missing.toml"))


def test_an_existing_run_directory_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    assert "already exists" in run_cli(tmp_path, capsys)
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"


def test_resume_of_something_that_is_not_a_run_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--resume", str(tmp_path)])
    assert exc.value.code == 2 and "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_on_a_missing_image_and_a_missing_run_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deft_jax.predict", "--run", str(tmp_path), "x.png"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_ctrl_c_in_predict_exits_130_without_promising_a_resume(capsys, monkeypatch):
    from deft_jax import api
    from deft_jax.cli import predict

    def interrupted(_run):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "load", interrupted)  # the restore the predict command calls
    with pytest.raises(SystemExit) as exc:
        predict.main(["--run", "anywhere", "image.png"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 130
    assert err.splitlines()[-1] == "interrupted" and "--resume" not in err


def test_ctrl_c_in_a_search_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from deft_jax.run import pipeline

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_pipeline", interrupted)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "run"), "--set", *tiny_overrides()])
    assert exc.value.code == 130
    assert "continue with --resume RUN_DIR" in capsys.readouterr().err
