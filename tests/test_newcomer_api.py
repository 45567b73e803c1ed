"""A newcomer's tool: the search's flags and their precedence, the default input size for
photos, the Python API (`deft_jax.search`, `deft_jax.load`), batch prediction of folders."""

from __future__ import annotations

import csv
import io
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from deft_jax.config import flags
from deft_jax.config.sources import DigitsSource, FolderSource, NpzSource, TfdsSource
from deft_jax.errors import UserError

from helpers import logged, tiny_overrides

CLASSES = ("cat", "dog")


def write_photos(root: Path, per_class: int, size: int = 24, seed: int = 0) -> Path:
    """root/<class>/i.png: cats dark, dogs bright (learnable), random noise on top."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 60 + 130 * c
            img = np.clip(base + rng.normal(0, 25, (size, size + 4 * (i % 2), 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def write_split_tree(root: Path, per_class: int = 6) -> Path:
    for split, n, seed in (("train", per_class, 0), ("validation", per_class // 2, 1), ("test", per_class // 2, 2)):
        write_photos(root / split, n, seed=seed)
    return root


def cli_config(*argv):
    from deft_jax.cli.search import build_parser, new_run_config

    return new_run_config(build_parser().parse_args(list(argv)))


# --- flags -------------------------------------------------------------------------------


def test_data_flag_reads_a_folder_an_npz_tfds_and_digits(tmp_path):
    folder = write_photos(tmp_path / "photos", 1)
    npz = tmp_path / "set.npz"
    npz.write_bytes(b"")
    assert cli_config("--data", str(folder), "--model", "resnet20").data.source == FolderSource(path=str(folder))
    assert cli_config("--data", str(npz)).data.source == NpzSource(path=str(npz))
    assert cli_config("--data", "tfds:beans", "--image-size", "32").data.source == TfdsSource(name="beans")
    assert cli_config("--data", "digits").data.source == DigitsSource(max_per_class=60)


@pytest.mark.parametrize("data, needle", [("no/such/folder", "not found"), ("tfds:", "needs a dataset name")])
def test_a_bad_data_flag_is_one_line(tmp_path, capsys, data, needle):
    from deft_jax.cli.search import main

    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "run"), "--data", data])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_flags_override_the_config_file_and_set_overrides_both(tmp_path):
    folder = write_photos(tmp_path / "photos", 1)
    config = tmp_path / "c.toml"
    config.write_text('[data]\nsource = { kind = "folder", path = "elsewhere", crop = 8 }\n'
                      '[model]\nname = "resnet32"\nweights = "none"\ninput_size = 48\n')
    cfg = cli_config("--config", str(config), "--data", str(folder), "--model", "resnet20", "--image-size", "40")
    # the folder source keeps the file's other options; the flags win over the file
    assert cfg.data.source == FolderSource(path=str(folder), crop=8)
    assert (cfg.model.name, cfg.model.weights, cfg.model.input_size) == ("resnet20", "none", 40)
    cfg = cli_config("--config", str(config), "--model", "resnet20", "--weights", "default",
                     "--set", "model.name=resnet44", "model.input_size=56")
    assert (cfg.model.name, cfg.model.weights, cfg.model.input_size) == ("resnet44", "default", 56)


def test_resume_refuses_the_flags_that_would_change_the_run(tmp_path, capsys):
    from deft_jax.cli.search import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["--resume", str(run), "--model", "resnet20"])
    assert "drop --model" in capsys.readouterr().err


# --- the default input size ---------------------------------------------------------------


def test_an_imagenet_backbone_on_photos_gets_160_px_on_a_cpu_and_224_on_a_gpu_and_says_so(tmp_path, monkeypatch):
    from deft_jax import api

    folder = write_photos(tmp_path / "photos", 1)
    with logged() as messages:
        assert cli_config("--data", str(folder), "--model", "efficientnet_lite0").model.input_size == (
            160 if api.jax_backend() == "cpu" else 224)
    assert any("model.input_size not set" in m and "ImageNet backbone" in m for m in messages)
    monkeypatch.setattr(api, "jax_backend", lambda: "gpu")
    assert cli_config("--data", str(folder), "--model", "resnet50", "--weights", "none").model.input_size == 224
    monkeypatch.setattr(api, "jax_backend", lambda: "cpu")
    assert cli_config("--data", str(folder), "--model", "convnext_tiny", "--weights", "none").model.input_size == 160


def test_a_size_given_anywhere_wins_and_small_data_or_cifar_models_keep_32_px(tmp_path):
    folder = write_photos(tmp_path / "photos", 1)
    config = tmp_path / "c.toml"
    config.write_text("[model]\ninput_size = 64\n")
    lite = ("--data", str(folder), "--model", "efficientnet_lite0")
    assert cli_config(*lite, "--image-size", "96").model.input_size == 96
    assert cli_config(*lite, "--config", str(config)).model.input_size == 64
    assert cli_config(*lite, "--set", "model.input_size=72").model.input_size == 72
    assert cli_config(*lite, "--set", "data.source.image_size=80").model.input_size == 80
    with logged() as messages:
        assert cli_config().model.input_size == 32  # the digits demo with Lite0, as before
        assert cli_config("--data", str(folder), "--model", "resnet20").model.input_size == 32
    assert not any("input_size not set" in m for m in messages)


def test_the_default_input_size_rule_by_family_and_source():
    gpu = lambda: "gpu"  # noqa: E731
    assert flags.default_input_size("efficientnet_lite2", {"kind": "tfds"}, gpu)[0] == 224
    # an ImageNet backbone upsamples an .npz file's small images like a folder's photos
    assert flags.default_input_size("vgg16", {"kind": "npz"}, gpu)[0] == 224
    assert flags.default_input_size("efficientnet_lite0", {"kind": "npz"})[0] == 160
    assert flags.default_input_size("efficientnet_lite0", {"kind": "npz", "image_size": 64})[0] == 64
    assert flags.default_input_size("efficientnet_lite0", {"kind": "digits"}, gpu) == (32, None)
    assert flags.default_input_size("resnet20", {"kind": "npz"}, gpu) == (32, None)
    assert flags.default_input_size("small_cnn", {"kind": "folder"}, gpu) == (32, None)
    assert flags.default_input_size("no_such_model", {"kind": "folder"}, gpu) == (32, None)


# --- the Python API -----------------------------------------------------------------------


def test_importing_the_search_module_does_not_break_deft_jax_search(monkeypatch, tmp_path):
    import deft_jax
    from deft_jax import api

    monkeypatch.delitem(sys.modules, "deft_jax.search", raising=False)
    if "search" in vars(deft_jax):  # set by an earlier import of the module
        monkeypatch.delattr(deft_jax, "search")
    assert deft_jax.search is api.search  # before the module is imported: the function
    import deft_jax.search  # noqa: F401  (sets the package's attribute to the module)

    assert callable(deft_jax.search)
    from deft_jax import search
    for call in (deft_jax.search, search):
        with pytest.raises(UserError, match="not found"):
            call(data=str(tmp_path / "missing"), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert deft_jax.load is api.load


def test_keywords_become_overrides_table_by_table():
    from deft_jax.api import keyword_overrides

    assert keyword_overrides({"search": {"generations": 2, "metric": "macro_f1"}, "final.epochs": 3,
                              "data": {"fractions": [0.5, 0.25, 0.25]}}) == [
        "search.generations=2", 'search.metric="macro_f1"', "final.epochs=3", "data.fractions=[0.5, 0.25, 0.25]"]


FAST = [o for o in tiny_overrides() if not o.startswith(("data.source", "model."))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run of the API on a split-folder tree of photos."""
    import deft_jax

    root = tmp_path_factory.mktemp("newcomer")
    tree = write_split_tree(root / "photos")
    result = deft_jax.search(data=tree, model="small_cnn", weights="none", image_size=16,
                             out=root / "run", set=FAST, search={"generations": 1}, final={"epochs": 2})
    return result, tree


def test_search_returns_the_best_mask_metrics_and_run_dir_and_writes_the_resolved_config(finished):
    result, tree = finished
    assert result.run_dir.is_dir() and (result.run_dir / "checkpoint").is_dir()
    assert result.best_mask["head"] and set(result.trained_groups) <= set(result.best_mask)
    assert 0.0 <= result.metrics["test"]["accuracy"] <= 1.0 and result.metrics["test"]["n"] == 6
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["data"]["source"]["path"] == str(tree) and saved["model"]["input_size"] == 16
    assert saved["search"]["generations"] == 1 and saved["final"]["epochs"] == 2


def test_a_loaded_model_predicts_paths_images_and_batches_alike(finished):
    import deft_jax
    from deft_jax.data import decode_image

    result, tree = finished
    model = deft_jax.load(result.run_dir)
    assert model.class_names == list(CLASSES)
    files = sorted((tree / "test").rglob("*.png"))
    from_paths = model.predict([str(f) for f in files])
    assert from_paths.shape == (len(files), 2) and from_paths.dtype == np.float32
    np.testing.assert_allclose(from_paths.sum(axis=1), 1.0, atol=1e-5)
    image = decode_image(files[1])  # 24x28: resized as the file would be
    np.testing.assert_allclose(model.predict(image), from_paths[1:2], atol=1e-6)
    np.testing.assert_allclose(model.predict(files[1]), from_paths[1:2], atol=1e-6)
    square = [i for i, f in enumerate(files) if f.stem in ("0", "2")]  # the 24x24 ones, as one batch
    np.testing.assert_allclose(model.predict(np.stack([decode_image(files[i]) for i in square])),
                               from_paths[square], atol=1e-6)
    np.testing.assert_allclose(model.predict([image, str(files[0])]), from_paths[[1, 0]], atol=1e-6)
    with pytest.raises(UserError, match="uint8"):
        model.predict(image.astype(np.float32))


# --- batch prediction ---------------------------------------------------------------------


def test_predict_classifies_a_labelled_folder_into_a_csv_and_prints_its_accuracy(finished, tmp_path, capsys):
    from deft_jax.cli.predict import main

    result, tree = finished
    (tree / "test" / "cat" / ".hidden.png").write_bytes(b"not an image")  # the loader's rules: skipped
    (tree / "test" / "notes.txt").write_text("skipped")
    out = tmp_path / "out.csv"
    assert main(["--run", str(result.run_dir), str(tree), "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["path", "predicted", "probability", "cat", "dog"]
    files = sorted(str(f) for f in tree.rglob("*.png") if not f.name.startswith("."))
    assert sorted(r[0] for r in rows[1:]) == files and len(rows) == 1 + 24
    truth = [Path(r[0]).parent.name for r in rows[1:]]
    for r in rows[1:]:
        probs = [float(p) for p in r[3:]]
        assert r[1] == CLASSES[int(np.argmax(probs))] and float(r[2]) == max(probs)
    accuracy = np.mean([r[1] == t for r, t in zip(rows[1:], truth)])
    assert f"wrote 24 predictions to {out}" in printed
    assert f"{tree}: 24 labelled images, accuracy {accuracy:.4f}, macro-F1" in printed
    assert "confusion matrix (rows: true class, columns: predicted class):" in printed
    matrix = [line.split()[1:] for line in printed.splitlines()
              if line.split()[:1] in (["cat"], ["dog"]) and line.split()[-1].isdigit()]
    assert len(matrix) == 2
    assert sum(int(v) for row in matrix for v in row) == 24


def test_predict_of_an_unlabelled_folder_prints_a_line_per_image_and_no_accuracy(finished, tmp_path, capsys):
    from deft_jax.cli.predict import main

    result, tree = finished
    loose = tmp_path / "loose" / "deeper"
    loose.mkdir(parents=True)
    for f in sorted((tree / "test" / "dog").glob("*.png")):
        (loose / f.name).write_bytes(f.read_bytes())
    assert main(["--run", str(result.run_dir), str(tmp_path / "loose")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 3 for line in lines)
    assert not any("accuracy" in line for line in lines)


def test_predict_refuses_a_missing_path_and_an_empty_folder_in_one_line(finished, tmp_path, capsys):
    from deft_jax.cli.predict import main

    result, _ = finished
    (tmp_path / "empty").mkdir()
    for path, needle in ((tmp_path / "nope", "not found"), (tmp_path / "empty", "no images found")):
        with pytest.raises(SystemExit) as exit_:
            main(["--run", str(result.run_dir), str(path)])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and err.startswith("error: ") and needle in err, err


def test_folder_labels_come_from_class_or_split_class_sub_folders():
    from deft_jax.data.layout import folder_label

    names = ["cat", "dog"]
    assert folder_label(Path("cat/a.png"), names) == "cat"
    assert folder_label(Path("Validation/dog/x/a.png"), names) == "dog"
    assert folder_label(Path("a.png"), names) is None
    assert folder_label(Path("bird/a.png"), names) is None


def test_batch_progress_prints_plain_lines_off_a_terminal_at_most_every_few_seconds():
    from deft_jax.cli.progress import ItemProgress

    now = [0.0]
    out = io.StringIO()
    with ItemProgress(100, "classified", stream=out, every=5.0, clock=lambda: now[0]) as bar:
        for _ in range(10):
            now[0] += 1.0
            bar.advance(10)
    assert out.getvalue().splitlines() == ["classified 50/100, ETA 5s", "classified 100/100, ETA 0s"]


def test_the_console_scripts_name_the_commands_main_functions():
    import importlib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"deft-search", "deft-predict", "deft-experiment"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
