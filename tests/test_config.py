"""The config schema: Literal choices drive validation, argparse choices and help texts;
sections merge, free-form tables are replaced; optional numbers."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from deft_jax.config.schema import Config, Evaluation, load_config
from deft_jax.config.parsing import choices_of, describe_keys, field_types, one_of
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
    assert cfg.data.source == {"kind": "npz", "path": "x.npz"}  # no max_per_class from the default
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
