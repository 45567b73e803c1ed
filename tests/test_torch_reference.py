"""The PyTorch reference of the fitness evaluation (benchmarks/torch_reference.py) computes
what deft_jax computes: same model, weights, batches, recipe and frozen-group semantics."""

from __future__ import annotations

import dataclasses
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")


from conftest import REPO  # noqa: E402
from benchmarks.torch_reference import (TorchReference, freeze, make_optimizer,  # noqa: E402
                                        set_threads, set_train_modes)
from deft_jax.data import Dataset, load_dataset  # noqa: E402
from deft_jax.core.finetune import FineTuner  # noqa: E402
from deft_jax.data.batches import batch_plan
from deft_jax.core.optimizer import make_optimizer as make_optax  # noqa: E402
from deft_jax.evolution.evaluators.recipe import FitnessRecipe  # noqa: E402
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator  # noqa: E402
from deft_jax.data.inputs import prepare_data  # noqa: E402
from benchmarks.torch_twins.torch_models import torch_twin  # noqa: E402
from deft_jax.core.masks import mask_from_names  # noqa: E402
from deft_jax.models import build_model  # noqa: E402
from helpers import tiny_config  # noqa: E402

LOGIT_ATOL = 1e-3

MASKS = (
    (),                                   # head only
    ("conv2",),                           # one middle group, frozen groups on both sides
    ("conv1", "conv2", "conv3", "conv4"),  # everything
)


EASY_DIGITS = (0, 1, 7)  # three well-separated digits: a small CNN learns them in 25 steps
STEPS = 5 * (90 // 16)  # 5 epochs of 5 full batches of 16


def easy_digits(cfg) -> Dataset:
    """The digits 0, 1 and 7 (50 of each: 90 train / 30 val / 30 test, 10 of each class in val)."""
    digits = load_dataset(cfg.data.source)
    keep = np.isin(digits.labels, EASY_DIGITS)
    labels = np.searchsorted(EASY_DIGITS, digits.labels[keep]).astype(np.int32)
    return dataclasses.replace(digits, images=digits.images[keep], labels=labels,
                               groups=digits.groups[keep],
                               class_names=[digits.class_names[d] for d in EASY_DIGITS],
                               description="digits 0, 1 and 7")


@pytest.fixture(scope="module")
def tiny():
    """small_cnn on 16 px digits 0/1/7, 5 epochs of 5 full batches of 16: 25 SGD steps at
    learning rate 0.02 with momentum 0.9 and weight decay, the JAX initial variables copied
    to torch. Enough steps that the models learn (and that BatchNorm's running statistics,
    momentum 0.1, approach the data's), few enough at a low rate that float32 rounding
    differences between the frameworks stay ~1e-6 in the logits."""
    cfg = tiny_config(**{"finetune.epochs": 5, "finetune.batch_size": 16, "finetune.learning_rate": 0.02,
                         "finetune.weight_decay": 0.001, "finetune.momentum": 0.9,
                         "data.source": '{"kind": "digits", "max_per_class": 50}'})
    dataset = easy_digits(cfg)
    spec = build_model("small_cnn", len(dataset.class_names), "none", cfg.model.input_size)
    data = prepare_data(cfg, spec, dataset).arrays
    variables = spec.init(cfg.seed)
    twin = torch_twin("small_cnn", data.num_classes, jax.tree.map(np.asarray, variables),
                      cfg.model.input_size)
    set_threads(1)  # one thread: the tests share the machine with JAX's own threads
    plan = batch_plan(len(data.x_train), cfg.finetune.batch_size, cfg.finetune.epochs, cfg.seed)
    # the reference takes plain float32 arrays (deft_jax's splits normalise per batch)
    reference = TorchReference(twin, np.asarray(data.x_train), data.y_train,
                               np.asarray(data.x_val), data.y_val,
                               data.num_classes, cfg.finetune, plan, seed=cfg.seed)
    return cfg, spec, data, variables, twin, reference


def test_pytorch_reference_and_deft_jax_train_the_same_above_chance_models_for_the_same_mask_and_seed(tiny):
    """For 3 masks, after the same fine-tune (25 steps of SGD, momentum 0.9, weight decay
    1e-3, same batches), the validation logits of deft_jax (static mask, full forward) and of
    the PyTorch reference agree within 1e-3 absolute (observed: ~3e-6; float32 summation
    order differs), the per-step losses within 1e-4, and the fitness (1 - val accuracy, here
    from deft_jax's real evaluator with its frozen-prefix cache) is exactly equal. The
    models learn, so agreement means something: every mask ends below the fitness of
    predicting one class for every image (2/3 here), and the whole network predicts every
    class."""
    cfg, spec, data, variables, _, reference = tiny
    tuner = FineTuner(spec, cfg.finetune)
    evaluator = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg.finetune, seed=cfg.seed))
    one_class = 1.0 - np.bincount(data.y_val).max() / len(data.y_val)
    assert one_class == pytest.approx(2 / 3)
    for names in MASKS:
        mask = mask_from_names(names, spec.group_names)
        tuned, losses = tuner.fine_tune(variables, mask, data.x_train, data.y_train, seed=cfg.seed)
        ours = np.asarray(tuner.logits(tuned, data.x_val))
        model, torch_losses = reference.fine_tune(mask)
        theirs = reference.logits(model)
        assert len(losses) == len(torch_losses) == STEPS
        np.testing.assert_allclose(losses, torch_losses, atol=1e-4)
        np.testing.assert_allclose(ours, theirs, atol=LOGIT_ATOL)
        fitness = evaluator.evaluate([mask])[0]
        assert fitness == reference.evaluate_one(mask)  # the PyTorch reference's own API
        assert fitness == pytest.approx(1.0 - np.mean(ours.argmax(-1) == data.y_val))
        assert fitness < one_class - 0.1, (names, fitness)
    assert set(ours.argmax(-1).tolist()) == {0, 1, 2}  # the last mask trains every group


def test_the_prefix_cached_pytorch_reference_trains_to_the_same_logits(tiny):
    """A careful PyTorch user's reference (frozen prefix run once, the rest trained on its
    features) is the same computation as the idiomatic one."""
    cfg, spec, data, variables, twin, reference = tiny
    cached = TorchReference(twin, data.x_train, data.y_train, data.x_val, data.y_val, data.num_classes,
                            cfg.finetune, reference.plan and [p.numpy() for p in reference.plan],
                            seed=cfg.seed, cache_prefix=True)
    mask = mask_from_names(["conv3"], spec.group_names)
    assert cached.start_of(mask) == 2
    model, losses = cached.fine_tune(mask)
    plain_model, plain_losses = reference.fine_tune(mask)
    np.testing.assert_allclose(losses, plain_losses, atol=1e-5)
    np.testing.assert_allclose(cached.logits(model, 2), reference.logits(plain_model), atol=1e-4)


def test_frozen_torch_groups_keep_weights_and_batchnorm_statistics(tiny):
    cfg, spec, _, _, twin, reference = tiny
    before = {k: v.clone() for k, v in twin.model.state_dict().items()}
    mask = mask_from_names(["conv2"], spec.group_names)
    model, _ = reference.fine_tune(mask)
    after = model.state_dict()
    for group in spec.group_names:
        prefix = f"{group}."
        keys = [k for k in before if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
        assert keys, group
        changed = [k for k in keys if not torch.equal(before[k], after[k])]
        if mask[group]:
            # trained: weights move, and BatchNorm (conv groups) updates its running stats
            assert any(k.endswith("weight") for k in changed), group
            if group != "head":
                assert {f"{group}.bn.running_mean", f"{group}.bn.running_var"} <= set(changed)
        else:
            assert changed == [], f"frozen group {group} changed: {changed}"
    # the pretrained model the members are copied from is never touched
    for k, v in twin.model.state_dict().items():
        assert torch.equal(v, before[k]), k

    # the modes a member trains in: requires_grad and BatchNorm mode per group
    member, params = reference.member(mask)
    set_train_modes(member, mask)
    assert {id(p) for p in params} == {id(p) for g in ("conv2", "head")
                                       for m in member.groups[g] for p in m.parameters()}
    for group, modules in member.groups.items():
        for module in modules:
            assert all(p.requires_grad == mask[group] for p in module.parameters())
            for sub in module.modules():
                if isinstance(sub, torch.nn.BatchNorm2d):
                    assert sub.training == mask[group]
    assert [id(p) for p in freeze(member, mask)] == [id(p) for p in params]


def test_optax_sgd_chain_equals_torch_sgd_with_weight_decay_and_momentum(tiny):
    """deft_jax's add_decayed_weights + sgd(momentum) == torch SGD(weight_decay, momentum,
    dampening 0): the same parameters after 5 steps of the same gradients."""
    cfg = tiny[0].finetune
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(7).astype(np.float32)
    grads = [rng.standard_normal(7).astype(np.float32) for _ in range(5)]
    tx = make_optax(cfg)
    w, state = jax.numpy.asarray(w0), None
    state = tx.init(w)
    for g in grads:
        updates, state = tx.update(jax.numpy.asarray(g), state, w)
        w = w + updates
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = make_optimizer([p], cfg)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    np.testing.assert_allclose(np.asarray(w), p.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_vs_pytorch_benchmark_replays_the_same_masks_on_both_sides_and_reports_a_speedup(tmp_path):
    """The whole benchmark script, end to end on the smoke config (one strategy, one thread)."""
    import json
    import subprocess

    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "vs_pytorch.py"), "--config",
                           str(REPO / "configs" / "smoke.toml"), "--strategies", "sequential",
                           "--torch-threads", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    jax_side, torch_side = result["raw"]["deft_jax"][0], result["raw"]["pytorch"][0]
    assert torch_side["masks"] == jax_side["masks"] and len(jax_side["masks"]) > 0
    assert result["speedup_vs_pytorch"] == pytest.approx(torch_side["search_s"] / jax_side["search_s"], rel=1e-2)
    fitness = result["rows"][0]["fitness_vs_pytorch"]
    assert fitness["mean_abs_diff"] < 0.1
    assert "| pytorch |" in proc.stdout and "speedup_vs_pytorch" in proc.stdout
    assert result["machine"]["cpu"]["logical_cores"] >= 1
    assert fitness["same_mask_sequence"]
    # the careful user's PyTorch reference (frozen prefix cached) trains the same masks to the
    # same fitness, and its ratio is reported beside the idiomatic one
    cached = result["raw"]["pytorch"][1]
    assert cached["cache_prefix"] and cached["masks"] == torch_side["masks"]
    assert np.mean(np.abs(np.subtract(cached["fitness"], torch_side["fitness"]))) < 0.05
    assert result["speedup_vs_pytorch_prefix_cached"] == pytest.approx(
        cached["search_s"] / jax_side["search_s"], rel=1e-2)
    assert {"first_stage", "stages_trained"} <= set(jax_side["records"][0])

