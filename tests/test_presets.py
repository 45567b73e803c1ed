"""The search command's defaults (three full fine-tunes on train+val), the declared DEFT
(configs/declared_deft.toml) and the paper's (configs/paper.toml)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np

from deft_jax.api import search_config
from deft_jax.config.presets import DECLARED_DEFT, DEFAULT_RECIPE, PAPER_DEFT
from deft_jax.config.schema import Config, load_config
from deft_jax.core.masks import mask_key
from deft_jax.evolution.loop import run_search
from deft_jax.methods.deft import VARIANTS, variant_config
from deft_jax.models.groups import LayerGroups
from helpers import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
GROUPS = tuple(f"g{i}" for i in range(9)) + ("head",)
LAYER_GROUPS = LayerGroups({"params": {g: {"w": np.zeros(10 * (i + 1))} for i, g in enumerate(GROUPS)}},
                           tuple((rf"^{g}/", g) for g in GROUPS), GROUPS)


def value_of(cfg: Config, key: str):
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


DECLARED = REPO / "configs" / "declared_deft.toml"


def test_the_three_presets_set_the_same_keys_and_the_paper_values_are_the_library_defaults():
    assert set(DEFAULT_RECIPE) == set(PAPER_DEFT) == set(DECLARED_DEFT)
    assert {k: value_of(Config(), k) for k in PAPER_DEFT} == PAPER_DEFT
    assert any(DECLARED_DEFT[k] != PAPER_DEFT[k] for k in DECLARED_DEFT)
    changed = {k for k in DEFAULT_RECIPE if DEFAULT_RECIPE[k] != PAPER_DEFT[k]}
    assert changed == {"final.ensemble", "final.epochs", "final.data", "final.member_masks", "final.member_seeds"}


def test_configs_declared_deft_toml_sets_every_preset_key_to_the_declared_defts_value():
    raw = tomllib.loads(DECLARED.read_text())
    assert {f"{s}.{k}": v for s, table in raw.items() for k, v in table.items()} == DECLARED_DEFT
    cfg = search_config(config=DECLARED)
    assert {k: value_of(cfg, k) for k in DECLARED_DEFT} == DECLARED_DEFT


def test_configs_paper_toml_sets_every_preset_key_to_the_papers_value():
    raw = tomllib.loads((REPO / "configs" / "paper.toml").read_text())
    assert {f"{s}.{k}": v for s, table in raw.items() for k, v in table.items()} == PAPER_DEFT
    cfg = search_config(config=REPO / "configs" / "paper.toml")
    assert {k: value_of(cfg, k) for k in PAPER_DEFT} == PAPER_DEFT


def test_configs_trainval_pair_toml_on_the_commands_defaults_is_the_experiments_deft_trainval_pair():
    cfg = search_config(config=REPO / "configs" / "trainval_pair.toml")
    pair = variant_config(load_config(None, [f"final.epochs={DECLARED_DEFT['final.epochs']}"]), "deft-trainval-pair")
    keys = [k if "." in k else f"search.{k}" for k in VARIANTS["deft-trainval-pair"]]
    assert {k: value_of(cfg, k) for k in keys} == {k: value_of(pair, k) for k in keys}
    assert cfg.final.data == "train+val" and cfg.final.ensemble == 2 and cfg.final.epochs == DECLARED_DEFT["final.epochs"]


def test_the_search_commands_defaults_are_the_default_recipe_and_a_config_or_set_overrides_them():
    cfg = search_config()
    assert {k: value_of(cfg, k) for k in DEFAULT_RECIPE} == DEFAULT_RECIPE
    cfg = search_config(config=DECLARED, set=["search.generations=3", "final.ensemble=1"])
    assert cfg.search.generations == 3 and cfg.final.ensemble == 1 and cfg.search.metric == "nll"
    assert load_config().search.schedule == "short"  # the library's (and the experiment's) defaults


def test_the_experiments_deft_default_is_the_declared_deft_at_the_experiments_own_epochs_and_workers():
    cfg = variant_config(load_config(None, ["final.epochs=12"]), "deft-default")
    own = ("final.epochs", "search.workers")
    assert {k: value_of(cfg, k) for k in DECLARED_DEFT if k not in own} == \
        {k: v for k, v in DECLARED_DEFT.items() if k not in own}
    assert cfg.final.epochs == 12 and cfg.search.workers == 1
    assert not set(own) & {k if "." in k else f"search.{k}" for k in VARIANTS["deft-default"]}


class RankedEvaluator:
    """Fitness by mask: a one-epoch run scores worse than any whole-budget run."""

    def __init__(self):
        self.calls = []

    def evaluate(self, masks, epochs=None):
        self.calls.append((epochs, [mask_key(m) for m in masks]))
        return [(2.0 if epochs else 1.0) + 0.01 * sum(m.values()) for m in masks]

    def stats(self):
        return {}


def test_the_declared_deft_trains_two_whole_budget_models_within_3x_a_full_fine_tunes_epochs():
    cfg = search_config(config=DECLARED)
    ev = RankedEvaluator()
    result = run_search(cfg, ev, LAYER_GROUPS, n_val=80)
    epochs = sum(row["epochs_trained"] for row in result.history)
    trained = sum(len(keys) * (cfg.finetune.epochs if e else cfg.final.epochs) for e, keys in ev.calls)
    assert epochs == trained <= 3 * cfg.final.epochs
    whole = [k for e, keys in ev.calls if e is None for k in keys]
    full = mask_key({g: True for g in GROUPS})
    assert len(whole) == 2 and full in whole
    assert all(full not in keys for e, keys in ev.calls if e)  # the full mask skips the short run


def test_a_declared_deft_shortened_to_one_final_epoch_trains_every_member_that_epoch_instead_of_failing():
    cfg = search_config(config=DECLARED, set=["final.epochs=1"])  # a quick try: nothing left to halve
    ev = RankedEvaluator()
    run_search(cfg, ev, LAYER_GROUPS, n_val=80)
    assert ev.calls and all(e is None for e, _ in ev.calls)


def test_a_search_with_the_declared_deft_ships_the_full_masks_model_averaged_with_the_best_other(tmp_path):
    from deft_jax.cli.search import main as search_main
    from deft_jax.runtime import rundir

    tiny = [o for o in tiny_overrides() if o.split("=", 1)[0] not in PAPER_DEFT]
    assert search_main(["--out", str(tmp_path / "run"), "--config", str(DECLARED), "--set", *tiny]) == 0
    saved = json.loads((tmp_path / "run" / rundir.CONFIG).read_text())
    assert saved["search"]["metric"] == "nll" and saved["final"]["ensemble"] == 2
    metrics = json.loads((tmp_path / "run" / rundir.METRICS).read_text())
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert sum(h["epochs_trained"] for h in history) <= 3 * saved["final"]["epochs"] + 7
    final = metrics["final_model"]
    assert final["source"] == "search" and final["ensemble"] == 2
    assert len(final["masks"]) == 2 and len({json.dumps(m, sort_keys=True) for m in final["masks"]}) == 2
    report = (tmp_path / "run" / rundir.REPORT).read_text()  # a screen, not a DE: its candidates
    assert "a screen of" in report and "differential evolution" not in report and "val nll" not in report
    rows = [r for r in report[report.index("## Candidates"):report.index("## Final model")].splitlines()
            if r.startswith("| ") and "candidate" not in r]
    scores = [float(c) for r in rows for c in r.split("|")[2:4] if c.strip()]
    assert len(scores) >= 8 and all(x >= 0 for x in scores)  # log-losses: every screen and finalist score
    assert sum("selected" in r for r in rows) == 1 and sum("finalist" in r or "selected" in r for r in rows) >= 2


def test_each_ablation_of_the_declared_deft_changes_exactly_the_options_it_names():
    from deft_jax.methods.deft import ABLATIONS

    base = variant_config(load_config(), "deft-default").to_dict()
    for name, changes in ABLATIONS.items():
        changed = variant_config(load_config(), name).to_dict()
        diffs = {f"{section}.{k}": values[k] for section, values in changed.items() if isinstance(values, dict)
                 for k in values if base[section][k] != values[k]}
        assert diffs == {k if "." in k else f"search.{k}": v for k, v in changes.items()}, name


def test_the_search_commands_default_trains_the_experiments_full_trainval_ensemble(monkeypatch):
    """What `deft-search` ships by default is the method it was judged as: the same three
    members on train+val (fresh heads, seeds seed, +1000, +2000), the same test predictions."""
    from deft_jax.core.ensemble import final_from_members, retrained_member_masks, trained_members
    from deft_jax.core.metrics import correctness_bits
    from deft_jax.data.folds import pooled
    from deft_jax.evolution.loop import run_search as search_loop
    from deft_jax.methods import METHODS
    from helpers import digits_method_context
    import dataclasses

    preset = [f"{k}={json.dumps(v)}" for k, v in DEFAULT_RECIPE.items() if k != "final.epochs"]
    ctx = digits_method_context(**dict(o.split("=", 1) for o in preset), **{"final.epochs": "2"})
    cfg, spec = ctx.cfg, ctx.spec
    assert cfg.final.member_masks == "full" and cfg.search.start == "head"
    result = search_loop(cfg, RankedEvaluator(), spec.layer_groups)
    assert result.memo == {} and result.best_fitness is None and all(result.best_mask.values())
    masks = retrained_member_masks(cfg, result.best_mask, result.memo)
    data = dataclasses.replace(ctx.data, arrays=pooled(ctx.data.arrays))
    last = dataclasses.replace(cfg, final=dataclasses.replace(cfg.final, keep="last"))
    members = trained_members(last, spec, ctx.variables, masks, data)
    shipped = final_from_members(spec, members, data.arrays.x_val, data.x_test)
    method = METHODS["full-trainval-ensemble"].run(ctx)
    assert method.extra["member_seeds"] == [cfg.seed, cfg.seed + 1000, cfg.seed + 2000]
    assert correctness_bits(shipped.test_logits, ctx.data.y_test) == method.test["correct_bits"]
