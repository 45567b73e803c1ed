"""The published fine-tuning recipes added as methods, each by its defining property: lp-ft's
second phase starts from the probed head, fastai's rates are spaced by lr_mult over the
groups, surgical tries every stage, full-ensemble averages its members' probabilities."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest
from helpers import tiny_overrides

from deft_jax.config.schema import load_config
from deft_jax.core import final as final_training
from deft_jax.core.final import FinalModel
from deft_jax.data.inputs import prepare_data
from deft_jax.experiment.runner import seed_config
from deft_jax.methods import (METHODS, ExperimentCache, MethodContext, common, fastai, full, full_ensemble,
                              linear_probe, lp_ft, surgical)
from deft_jax.models import build_model


def context(**extra):
    over = {"data.source": '{"kind": "digits", "max_per_class": 10}', "final.epochs": "3", **extra}
    cfg = seed_config(load_config(None, tiny_overrides(**over)), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    return MethodContext(cfg=cfg, data=prepare_data(cfg, spec), spec=spec, variables=spec.init(cfg.seed),
                         seed=0, programs=ExperimentCache())


REAL_TRAIN_FINAL = final_training.train_final


def recording(monkeypatch, module, calls):
    real = REAL_TRAIN_FINAL

    def train_final(cfg, spec, variables, mask, data, tuner=None):
        out = real(cfg, spec, variables, mask, data, tuner=tuner)
        calls.append({"cfg": cfg, "variables": variables, "mask": dict(mask), "tuner": tuner, "out": out})
        return out

    monkeypatch.setattr(module, "train_final", train_final)


def test_the_new_recipes_are_registered_as_methods():
    for name in ("lp-ft", "fastai", "surgical", "full-ensemble"):
        assert name in METHODS and callable(METHODS[name].run)


def test_lp_ft_fine_tunes_every_group_for_the_whole_budget_starting_from_the_probed_head(monkeypatch):
    ctx = context()
    calls = []
    recording(monkeypatch, common, calls)
    probes = []
    real_fit = linear_probe.fit

    def fit(c):
        probes.append(real_fit(c))
        return probes[-1]

    monkeypatch.setattr(lp_ft.linear_probe, "fit", fit)
    result = lp_ft.run(ctx)
    (tune,) = calls
    ((probe, _),) = probes
    assert all(tune["mask"].values()) and tune["tuner"].epochs == 3  # the whole final.epochs
    probed_head = jax.tree.leaves(probe.variables["params"]["head"])
    for a, b in zip(jax.tree.leaves(tune["variables"]["params"]["head"]), probed_head):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    initial_head = jax.tree.leaves(ctx.variables["params"]["head"])
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(probed_head, initial_head))
    for g in ctx.spec.group_names[:-1]:  # the backbone enters the fine-tune as pretrained
        for a, b in zip(jax.tree.leaves(tune["variables"]["params"][g]), jax.tree.leaves(ctx.variables["params"][g])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert result.trainable_fraction == 1.0 and result.extra["probe_l2"] == probe.l2


def test_fastais_discriminative_rates_are_spaced_geometrically_by_lr_mult_over_the_groups():
    m = fastai.group_multipliers(["a", "b", "c", "d", "head"], 100.0)
    rates = np.array(list(m.values()))
    assert rates[-1] == 1.0 and rates[0] == pytest.approx(1 / 100)
    np.testing.assert_allclose(rates[1:] / rates[:-1], 100 ** 0.25)  # one constant step


def test_fastai_trains_the_head_one_epoch_then_every_group_at_its_spaced_rate(monkeypatch):
    ctx = context(**{"experiment.fastai_lr_mult": "100"})
    calls = []
    recording(monkeypatch, fastai.final_training, calls)
    recording(monkeypatch, common, calls)
    result = fastai.run(ctx)
    frozen, unfrozen = calls
    assert frozen["tuner"].epochs == 1 and not any(v for g, v in frozen["mask"].items() if g != "head")
    assert unfrozen["tuner"].epochs == 2
    assert unfrozen["mask"] == fastai.group_multipliers(ctx.spec.group_names, 100.0)
    first, last = ctx.spec.group_names[0], ctx.spec.group_names[-1]
    assert unfrozen["mask"][first] / unfrozen["mask"][last] == pytest.approx(1 / 100)
    # the multipliers reached the optimizer: its per-leaf scales are the groups' rates
    scales = optax.tree_utils.tree_get(unfrozen["tuner"].last_state.opt_state, "leaf_scales")
    leaf_rates = sorted({round(float(v), 6) for v in jax.tree.leaves(scales)})
    assert leaf_rates == pytest.approx(sorted(unfrozen["mask"].values()), rel=1e-5)
    assert result.mask is None and result.extra["peak_learning_rate"] == pytest.approx(2e-3 / 2)
    hyper = optax.tree_utils.tree_get(unfrozen["tuner"].last_state.opt_state, "hyperparams")
    assert float(hyper["b2"]) == pytest.approx(0.99) and float(hyper["weight_decay"]) == pytest.approx(0.01)


def test_fastais_one_cycle_raises_the_rate_while_lowering_adams_momentum_then_reverses_both():
    tx = fastai.adam_one_cycle(1e-3, 100, 0.3, 5.0)
    params = {"w": np.zeros(3, np.float32)}
    state = tx.init(params)
    seen = []
    for _ in range(101):
        _, state = tx.update({"w": np.ones(3, np.float32)}, state, params)
        seen.append((float(state.hyperparams["learning_rate"]), float(state.hyperparams["b1"])))
    lrs, moms = np.array(seen).T
    # hyperparams are those of the step just taken: step 0 at lr/div and 0.95, peak at step 30
    assert lrs[0] == pytest.approx(1e-3 / 5) and moms[0] == pytest.approx(0.95)
    assert lrs.argmax() == moms.argmin() == 30
    assert lrs[30] == pytest.approx(1e-3) and moms[30] == pytest.approx(0.85)
    assert lrs[100] == pytest.approx(1e-3 / 1e5, rel=1e-2) and moms[100] == pytest.approx(0.95)


def test_the_stages_of_a_resnet_are_its_layers_and_surgical_tries_every_stage(monkeypatch):
    names = ["stem"] + [f"layer{s}_{b}" for s in (1, 2, 3) for b in range(3)] + ["head"]
    assert surgical.stages(names) == {"stem": ["stem"], **{f"layer{s}": [f"layer{s}_{b}" for b in range(3)]
                                                           for s in (1, 2, 3)}}
    ctx = context()
    tried = []
    val = {"conv1": 0.2, "conv2": 0.7, "conv3": 0.7, "conv4": 0.1}

    def final_fit(ctx, mask):
        (stage,) = [g for g, on in mask.items() if on and g != "head"]
        assert mask["head"]
        tried.append(stage)
        return common.MethodResult(test={"accuracy": 0.0}, val={"accuracy": val[stage]}, trainable_fraction=0.1,
                                   mask=dict(mask))

    monkeypatch.setattr(surgical, "final_fit", final_fit)
    result = surgical.run(ctx)
    assert tried == [g for g in ctx.spec.group_names if g != "head"] == list(val)
    assert result.extra["stage"] == "conv2"  # best on validation, the earlier stage on the tie
    assert result.fitness_evaluations == 4


def test_full_ensemble_averages_the_members_probabilities_and_one_member_is_full(monkeypatch):
    ctx = context(**{"experiment.ensemble_size": "1"})
    alone, reference = full_ensemble.run(ctx), full.run(ctx)
    assert alone.test["confusion_matrix"] == reference.test["confusion_matrix"]
    ctx = context(**{"experiment.ensemble_size": "3"})
    n_val, n_test = len(ctx.data.arrays.y_val), len(ctx.data.y_test)
    rng = np.random.default_rng(0)
    fake = {s: (rng.normal(size=(n_val, 10)) * 3, rng.normal(size=(n_test, 10)) * 3)
            for s in full_ensemble.member_seeds(ctx.cfg)}
    seen = []

    def train_final(cfg, spec, variables, mask, data, tuner=None):
        seen.append(cfg.seed)
        return FinalModel(variables, *fake[cfg.seed], [1.0], 1.0, 0.0)

    monkeypatch.setattr(full_ensemble.final_training, "train_final", train_final)
    result = full_ensemble.run(ctx)
    assert seen == [ctx.cfg.seed, ctx.cfg.seed + 1000, ctx.cfg.seed + 2000]
    probs = np.mean([np.exp(t) / np.exp(t).sum(1, keepdims=True) for _, t in fake.values()], axis=0)
    expected = float(np.mean(probs.argmax(1) == ctx.data.y_test))
    assert result.test["accuracy"] == pytest.approx(expected)
    single = [float(np.mean(t.argmax(1) == ctx.data.y_test)) for _, t in fake.values()]
    assert json.dumps(result.extra["member_seeds"]) == json.dumps(seen) and len(set(single)) > 1
