"""Checks shared by the backbone tests: a torch twin with random weights saved as .pth and
.safetensors, converted by deft_jax, compared in eval mode and after one train-mode step."""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

LOGIT_TOLERANCE = 1e-4


def randomise(model, seed: int = 0):
    """Random weights everywhere, BatchNorm/LayerNorm affine and statistics included (a
    default init leaves them at 1/0, which would hide a mix-up)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif value.ndim == 1 and key.endswith("weight") or key.endswith(("gamma", "layer_scale")):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif value.ndim == 1:
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
            else:  # conv / linear: keep the scale of torch's default init, redraw
                std = float(value.std()) or 0.05
                value.copy_(torch.randn(value.shape, generator=gen) * std)
    return model.eval()


def save_both(model, folder: Path, stem: str) -> tuple[Path, Path]:
    """The twin's state dict as `stem.pth` (torch.save) and `stem.safetensors`."""
    import torch
    from safetensors.numpy import save_file

    state = model.state_dict()
    pth, st = folder / f"{stem}.pth", folder / f"{stem}.safetensors"
    torch.save(state, pth)
    save_file({k: np.ascontiguousarray(v.detach().numpy()) for k, v in state.items()}, str(st))
    return pth, st


def compare_with_twin(spec, model, layout, size: int, batch: int = 2, seed: int = 1):
    """Max |logit diff| in eval mode, in train mode, and the largest relative BatchNorm
    running-statistic diff (|a - b| / (1 + |b|)) after one train-mode forward, between
    `spec` (pretrained from the twin's file) and `model`."""
    import torch

    x = np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)
    variables = spec.init(0)

    @jax.jit
    def both_modes(v, x):  # one compiled program for eval and train mode
        eval_logits = spec.net.apply(v, x, train=False)
        train_logits, updates = spec.net.apply(v, x, train=True, mutable=["batch_stats"])
        return eval_logits, train_logits, updates

    with jax.default_matmul_precision("float32"):
        eval_logits, train_logits, updates = both_modes(variables, x)
    eval_logits = np.asarray(eval_logits)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    trained = copy.deepcopy(model).train()  # the train-mode forward updates its statistics
    for module in trained.modules():  # deft_jax's models have no dropout
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    with torch.no_grad():
        expected_eval = model.eval()(xt).numpy()
        expected_train = trained(xt).numpy()
    state = trained.state_dict()
    flat = traverse_util.flatten_dict(dict(updates.get("batch_stats", {})))
    stat_diff, stats = 0.0, 0
    for entry in layout:
        if entry.collection == "batch_stats":
            ours, theirs = np.asarray(flat[entry.path]), state[entry.key].numpy()
            stat_diff = max(stat_diff, float((np.abs(ours - theirs) / (1 + np.abs(theirs))).max()))
            stats += 1
    return {"eval": float(np.abs(eval_logits - expected_eval).max()),
            "train": float(np.abs(np.asarray(train_logits) - expected_train).max()),
            "stats": stat_diff, "num_stats": stats, "logit_scale": float(np.abs(expected_eval).max())}
