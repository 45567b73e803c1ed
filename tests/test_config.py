"""The config schema: Literal choices drive validation, argparse choices and help texts;
sections merge, free-form tables are replaced; optional numbers; data.source, a typed
source per kind chosen by `kind`."""

from __future__ import annotations

import dataclasses
from typing import get_args

import numpy as np
import pytest
from PIL import Image

from deft_jax.config.schema import Config, Evaluation, config_from_dict, load_config
from deft_jax.config.parsing import choices_of, describe_keys, field_types, one_of
from deft_jax.config.sources import DigitsSource, FolderSource, NpzSource, TfdsSource
from deft_jax.data import load_dataset
from deft_jax.errors import UserError


def literal_keys(cls=Config, where="") -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for name, typ in field_types(cls).items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(typ):
            out += literal_keys(typ, key)
        elif choices_of(typ) is not None:
            out.append((key, choices_of(typ)))
    return out


def test_the_string_choices_are_literal_types():
    keys = dict(literal_keys())
    assert keys["finetune.optimizer"] == ("sgd", "adam", "adamw")
    assert {"search.evaluation", "search.space", "search.schedule", "search.fidelity", "search.select",
            "search.metric", "final.keep", "model.granularity", "finetune.compute_dtype",
            "experiment.folds"} <= set(keys)


@pytest.mark.parametrize("key, allowed", literal_keys())
def test_a_value_outside_a_literals_choices_is_one_line_naming_them_all(key, allowed):
    with pytest.raises(UserError) as err:
        load_config(None, [f'{key}="nope"'])
    message = str(err.value)
    assert "\n" not in message and key in message and "'nope'" in message
    assert f"must be {one_of(allowed)}," in message
    # and every allowed value is accepted as far as the choice goes
    for value in allowed:
        try:
            load_config(None, [f'{key}="{value}"'])
        except UserError as other:  # another key's rule may refuse the combination
            assert key not in str(other) or "needs" in str(other), other


def test_a_literal_key_given_a_number_must_be_a_string():
    with pytest.raises(UserError, match=r"config finetune\.optimizer must be a string, got 3"):
        load_config(None, ["finetune.optimizer=3"])


def test_one_of_reads_like_a_sentence():
    assert [one_of(v) for v in (["a"], ["a", "b"], ["a", "b", "c"])] == ["a", "a or b", "a, b or c"]


def test_a_config_files_data_source_replaces_the_default_table_and_sections_merge(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\nsource = {kind = "npz", path = "x.npz"}\n[search]\ngenerations = 7\n')
    cfg = load_config(path)
    assert cfg.data.source == NpzSource(path="x.npz")  # no max_per_class from the default
    assert cfg.search.generations == 7 and cfg.search.population_size == Config().search.population_size
    assert cfg.data.fractions == Config().data.fractions


def test_an_optional_number_takes_null_or_a_number_only():
    assert load_config(None, ["final.learning_rate=null"]).final.learning_rate is None
    assert load_config(None, ["final.learning_rate=1"]).final.learning_rate == 1.0
    with pytest.raises(UserError, match=r"config final\.learning_rate must be a number, got 'fast'"):
        load_config(None, ["final.learning_rate=fast"])


def test_the_search_cli_takes_its_evaluation_choices_and_help_from_the_config():
    from deft_jax.cli.search import build_parser

    parser = build_parser()
    for mode in get_args(Evaluation):
        assert parser.parse_args(["--evaluation", mode]).evaluation == mode
    with pytest.raises(UserError) as err:
        parser.parse_args(["--evaluation", "nope"])
    assert all(f"'{mode}'" in str(err.value) for mode in get_args(Evaluation))
    epilog = " ".join(parser.epilog.split())
    search_keys = [e for e in describe_keys(Config) if not e.startswith("experiment.")]
    for entry in search_keys:  # every key with its choices or default
        key = entry.split(" ", 1)[0]
        assert key in epilog, key
    assert "search.evaluation (auto|sequential|vmap|vmap-1|sharded, default auto" in epilog
    assert "search.population_size (8)" in epilog and "experiment." not in epilog


def test_the_experiment_cli_lists_the_experiment_keys_with_their_defaults():
    from deft_jax.cli.experiment import build_parser

    epilog = " ".join(build_parser().epilog.split())
    assert "experiment.seeds (5)" in epilog and "experiment.folds (repeated, default repeated)" in epilog


# --------------------------------------------------------------------------- data.source


def two_class_folder(root, per_class=3, size=12):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def search_cli_config(*argv) -> Config:
    """The config `python -m deft_jax.search ARGV` would run with (no run started)."""
    from deft_jax.cli.search import build_parser, new_run_config

    return new_run_config(build_parser().parse_args(list(argv)))


def test_set_data_source_kind_folder_and_path_gives_a_folder_source_the_loader_reads(tmp_path):
    root = two_class_folder(tmp_path / "photos")
    cfg = search_cli_config("--set", "data.source.kind=folder", f"data.source.path={root}")
    assert cfg.data.source == FolderSource(path=str(root))  # no max_per_class from the digits default
    dataset = load_dataset(cfg.data.source, input_size=8)
    assert dataset.class_names == ["cat", "dog"] and dataset.images.shape == (6, 8, 8, 3)


def test_the_order_of_kind_and_its_keys_on_the_command_line_does_not_matter(tmp_path):
    assert (search_cli_config("--set", "data.source.path=photos", "data.source.kind=folder").data.source
            == search_cli_config("--set", "data.source.kind=folder", "data.source.path=photos").data.source
            == FolderSource(path="photos"))


def test_switching_kind_drops_the_old_kinds_options(tmp_path):
    config = tmp_path / "folder.toml"
    config.write_text('[data]\nsource = { kind = "folder", path = "tiles", crop = 512, label_regex = "^(.+)_" }\n')
    # --set kind: the new kind's defaults (crop, label_regex are not npz keys: no error)
    assert search_cli_config("--config", str(config), "--set", "data.source.kind=npz",
                             "data.source.path=x.npz").data.source == NpzSource(path="x.npz")
    # a table, and the tfds:NAME shorthand, start from their kind's defaults too
    assert search_cli_config("--config", str(config), "--set",
                             'data.source={kind="folder", path="other"}').data.source == FolderSource(path="other")
    assert search_cli_config("--config", str(config), "--set",
                             "data.source=tfds:beans").data.source == TfdsSource(name="beans")
    # the same kind again keeps the options; a dotted key edits the current kind
    same = search_cli_config("--config", str(config), "--set", "data.source.kind=folder", "data.source.crop=256")
    assert same.data.source == FolderSource(path="tiles", crop=256, label_regex="^(.+)_")
    assert search_cli_config("--set", "data.source.kind=digits").data.source == DigitsSource(max_per_class=60)


@pytest.mark.parametrize("argv, kind, keys", [
    (["data.source.kind=folder", "data.source.path=p", "data.source.max_per_class=3"], "folder",
     "path, label_regex, group_regex, crop, crop_stride, image_size, max_images, resize"),
    (["data.source.path=photos"], "digits", "max_per_class"),  # kind not switched: still digits
    (['data.source={kind="npz", path="x.npz", crop=4}'], "npz", "path"),
    (["data.source=tfds:beans", "data.source.path=x"], "tfds", "name, split, data_dir, image_size, max_examples"),
])
def test_a_key_the_chosen_kind_lacks_is_one_line_naming_that_kinds_keys(argv, kind, keys, capsys):
    from deft_jax.cli.search import main

    with pytest.raises(SystemExit) as exit_:
        main(["--set", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: unknown config key data.source.")
    assert f"for data.source.kind = '{kind}' ({kind} keys: {keys}; " in err


@pytest.mark.parametrize("source, needle", [
    ('{kind="folder"}', "data.source.path must be set for kind folder"),
    ('{kind="npz", path=""}', "data.source.path must be set for kind npz"),
    ('{kind="tfds"}', "data.source.name must be set for kind tfds"),
    ('{kind="folder", path="p", crop_stride=4}', "data.source.crop_stride needs data.source.crop"),
    ('{kind="folder", path="p", crop=0}', "data.source.crop must be a positive integer or null, got 0"),
    ('{kind="digits", max_per_class=-1}', "data.source.max_per_class must be a positive integer"),
    ('{kind="tfds", name="x", max_examples=0}', "data.source.max_examples must be a positive integer"),
    ('{kind="folder", path="p", image_size=1.5}', "data.source.image_size must be an integer, got 1.5"),
    ('{kind="folder", path=3}', "data.source.path must be a string, got 3"),
    ('{kind="folder", path="p", resize="squash"}', "data.source.resize must be short-side-crop, stretch or pad"),
    ('{path="p"}', "data.source.kind must be set (digits, folder, npz or tfds)"),
    ('{kind="imagenet"}', "data.source.kind must be digits, folder, npz or tfds, got 'imagenet'"),
])
def test_a_sources_options_are_checked_with_the_config(source, needle):
    with pytest.raises(UserError) as err:
        load_config(None, [f"data.source={source}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("source", [DigitsSource(), DigitsSource(max_per_class=7),
                                    FolderSource(path="tiles", label_regex="^(?P<label>.+?)___", crop=512,
                                                 crop_stride=256, image_size=96, resize="pad"),
                                    NpzSource(path="x.npz"),
                                    TfdsSource(name="beans", split="train[:50]", data_dir="/d", max_examples=9)])
def test_a_resolved_source_round_trips_through_config_json(source, tmp_path):
    from deft_jax.cli.search import resumed_run_config
    from deft_jax.runtime import rundir

    cfg = Config()
    cfg.data.source = source
    rundir.write_json(tmp_path / rundir.CONFIG, cfg.to_dict())
    raw = rundir.read_json(tmp_path / rundir.CONFIG)
    assert raw["data"]["source"]["kind"] == source.kind
    assert config_from_dict(raw) == cfg
    assert resumed_run_config(raw, ["search.generations=9"]).data.source == source


def test_an_old_config_json_with_a_source_of_kind_and_options_is_still_read():
    old = {"data": {"source": {"kind": "folder", "path": "tiles", "label_regex": "^(.+?)___", "crop": 512}}}
    assert config_from_dict(old).data.source == FolderSource(path="tiles", label_regex="^(.+?)___", crop=512)
    assert config_from_dict({"data": {"source": {"kind": "digits", "max_per_class": 60}}}) == Config()


def test_the_search_help_lists_every_kinds_keys_from_the_dataclasses():
    from deft_jax.cli.search import build_parser

    epilog = " ".join(build_parser().epilog.split())
    assert "data.source.kind (digits|folder|npz|tfds, default digits with max_per_class=60" in epilog
    for cls in (DigitsSource, FolderSource, NpzSource, TfdsSource):
        kind = cls().kind
        group = epilog.split(f"data.source with kind={kind}: ", 1)[1].split(", data.", 1)[0]
        names = [f.name for f in dataclasses.fields(cls) if f.name != "kind"]
        assert [part.split(" ", 1)[0] for part in group.split("), ")] == names, group
    assert 'resize (short-side-crop|stretch|pad, default short-side-crop)' in epilog
    assert all(len(line) <= 96 for line in build_parser().epilog.splitlines() if "data.source with" in line)


@pytest.mark.slow  # a whole (tiny) search, in this process
def test_a_search_run_with_set_kind_folder_writes_a_config_json_that_reads_back(tmp_path):
    from helpers import tiny_overrides

    from deft_jax.cli.search import main
    from deft_jax.runtime import rundir

    root = two_class_folder(tmp_path / "photos", per_class=6, size=16)
    base = [o for o in tiny_overrides() if not o.startswith("data.source=")]
    out = tmp_path / "run"
    assert main(["--out", str(out), "--set", *base, "data.source.kind=folder",
                 f"data.source.path={root}", "data.fractions=[0.5, 0.25, 0.25]"]) == 0
    raw = rundir.read_json(out / rundir.CONFIG)
    assert raw["data"]["source"] == dataclasses.asdict(FolderSource(path=str(root)))
    assert config_from_dict(raw).data.source == FolderSource(path=str(root))
