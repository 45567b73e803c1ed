"""PyTorch reference of DEFT's fitness evaluation, written the way a PyTorch user would.

For every layer-group mask, one after another:

1. a fresh copy of the pretrained model (`copy.deepcopy`), the same initial head as the
   JAX side (copied from its variables, see `benchmarks.torch_twins.torch_models.torch_twin`);
2. frozen groups: `requires_grad_(False)`; `model.train()` and then the frozen groups'
   BatchNorms back to `.eval()`, so they normalise with, and never update, their running
   statistics (BN momentum 0.1 in both frameworks);
3. `torch.optim.SGD(trainable, lr, momentum, weight_decay, dampening=0)` - the same update
   as deft_jax's `optax.chain(add_decayed_weights(wd), sgd(lr, momentum))`: both add wd * p
   to the gradient, then buf = momentum * buf + g (first buf = g), p -= lr * buf. (Adam and
   AdamW map to torch's Adam(weight_decay) and AdamW the same way.);
4. the same batches in the same order (`deft_jax.core.finetune.batch_plan`, full batches only,
   passed in as `plan`) and the same augmentation (`deft_jax.core.finetune.augment_batch`, only
   imported when augmentation is on);
5. `model.eval()`, logits of the validation split in batches of 256 under
   `torch.inference_mode()`; fitness = 1 - metric (deft_jax.core.metrics, numpy only).

With `cache_prefix=True` (`--cache-prefix`) it is the reference as a careful PyTorch user
would write it: the frozen groups below a mask's first trainable group are run once per
distinct first group (eval mode, no autograd, cached), and only the rest of the network
trains, on those features (twins that define `stages`; off when augmentation is on).

No JAX is imported on this side unless augmentation is on, so the process's peak memory
is PyTorch's own. `benchmarks/torch_reference_worker.py` runs it in its own process for
`benchmarks/vs_pytorch.py`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_twins.torch_models import TorchTwin
from deft_jax.core.metrics import metric_from_logits

VAL_BATCH = 256  # as deft_jax.core.training.logits


def set_threads(threads: int | None = None) -> int:
    """torch.set_num_threads to the machine's cores (or `threads`)."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def freeze(twin: TorchTwin, mask: Mapping[str, bool]) -> list[nn.Parameter]:
    """requires_grad per group; returns the trainable parameters in model order."""
    unknown = set(mask) ^ set(twin.groups)
    if unknown:
        raise ValueError(f"mask and model groups differ: {sorted(unknown)}")
    for group, modules in twin.groups.items():
        for module in modules:
            module.requires_grad_(bool(mask[group]))
    return [p for p in twin.model.parameters() if p.requires_grad]


def set_train_modes(twin: TorchTwin, mask: Mapping[str, bool]) -> None:
    """model.train(), then every frozen group's BatchNorms .eval()."""
    twin.model.train()
    for group, modules in twin.groups.items():
        if not mask[group]:
            for module in modules:
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()


def make_optimizer(params: Sequence[nn.Parameter], cfg) -> torch.optim.Optimizer:
    """The torch equivalent of deft_jax.core.finetune.make_optimizer (cfg: a FineTuneConfig or
    anything with the same attributes)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum,
                               dampening=0.0, weight_decay=cfg.weight_decay, nesterov=False)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


class TorchReference:
    """Fitness of layer-group masks, one member after another, in idiomatic PyTorch.

    `twin`: the pretrained model (never modified; each member trains a deep copy) and its
    layer groups. Arrays are deft_jax's preprocessed float32 NHWC splits; `plan` is
    `deft_jax.core.finetune.batch_plan(len(x_train), batch_size, epochs, seed)`.
    """

    def __init__(self, twin: TorchTwin, x_train: np.ndarray, y_train: np.ndarray,
                 x_val: np.ndarray, y_val: np.ndarray, num_classes: int, cfg,
                 plan: Sequence[np.ndarray], seed: int = 0, metric: str = "accuracy",
                 device: str = "cpu", cache_prefix: bool = False):
        self.twin, self.cfg, self.seed, self.metric = twin, cfg, seed, metric
        self.device = torch.device(device)
        twin.model.to(self.device)
        self.num_classes = num_classes
        self.x_train_nhwc = x_train
        self.x_train = _nchw(x_train).to(self.device)
        self.y_train = torch.from_numpy(np.asarray(y_train, np.int64)).to(self.device)
        self.x_val = _nchw(x_val).to(self.device)
        self.y_val = np.asarray(y_val)
        self.plan = [torch.from_numpy(np.asarray(idx, np.int64)).to(self.device) for idx in plan]
        self.augment = bool(getattr(cfg, "flip", False) or getattr(cfg, "rotate90", False))
        if cache_prefix and twin.stages is None:
            raise ValueError("this twin defines no stages: no frozen-prefix cache")
        self.cache_prefix = cache_prefix and not self.augment
        self._features: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.records: list[dict] = []  # per evaluated mask: seconds (train, val), steps

    def member(self, mask: Mapping[str, bool]) -> tuple[TorchTwin, list[nn.Parameter]]:
        """A fresh copy of the pretrained model, frozen per `mask`."""
        model = copy.deepcopy(self.twin.model)
        # the deep copy's modules, group by group
        lookup = dict(self.twin.model.named_modules())
        names = {id(m): n for n, m in lookup.items()}
        copied = dict(model.named_modules())
        groups = {g: [copied[names[id(m)]] for m in mods] for g, mods in self.twin.groups.items()}
        twin = TorchTwin(model, groups)
        return twin, freeze(twin, mask)

    def start_of(self, mask: Mapping[str, bool]) -> int:
        """The stage a member's forward starts at: its first trainable group (prefix cache)."""
        if not self.cache_prefix:
            return 0
        names = [g for g, _ in self.twin.stages]
        return next((i for i, g in enumerate(names) if mask[g]), len(names) - 1)

    def features(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train and val inputs of stage `start`, computed once by the pretrained model."""
        if start == 0:
            return self.x_train, self.x_val
        if start not in self._features:
            model = self.twin.model.eval()

            def prefix(x):
                for _, fn in self.twin.stages[:start]:
                    x = fn(model, x)
                return x

            with torch.inference_mode():
                self._features[start] = tuple(
                    torch.cat([prefix(x[i:i + VAL_BATCH]) for i in range(0, len(x), VAL_BATCH)])
                    for x in (self.x_train, self.x_val))
        return self._features[start]

    def forward_fn(self, start: int):
        """model, x -> logits from stage `start` on."""
        if start == 0:
            return lambda model, x: model(x)

        def run(model, x):
            for _, fn in self.twin.stages[start:]:
                x = fn(model, x)
            return x

        return run

    def fine_tune(self, mask: Mapping[str, bool]) -> tuple[nn.Module, list[float]]:
        """Short fine-tune of a fresh copy under `mask`; returns the model and the losses."""
        twin, params = self.member(mask)
        set_train_modes(twin, mask)
        optimizer = make_optimizer(params, self.cfg)
        model = twin.model
        start = self.start_of(mask)
        x_train, _ = self.features(start)
        forward = self.forward_fn(start)
        rng = np.random.default_rng([self.seed, 7])  # deft_jax.data.batches.AUGMENT_STREAM
        losses = []
        for idx in self.plan:
            if self.augment:
                from deft_jax.data.batches import augment_batch
                xb = _nchw(augment_batch(self.x_train_nhwc[idx.cpu().numpy()], self.cfg, rng)).to(self.device)
            else:
                xb = x_train[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(model, xb), self.y_train[idx])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        return model, [float(v) for v in losses]

    def logits(self, model: nn.Module, start: int = 0) -> np.ndarray:
        model.eval()
        _, x_val = self.features(start)
        forward = self.forward_fn(start)
        with torch.inference_mode():
            return torch.cat([forward(model, x_val[i:i + VAL_BATCH])
                              for i in range(0, len(x_val), VAL_BATCH)]).cpu().numpy()

    def evaluate_one(self, mask: Mapping[str, bool]) -> float:
        t0 = time.perf_counter()
        model, _ = self.fine_tune(mask)
        t1 = time.perf_counter()
        logits = self.logits(model, self.start_of(mask))
        fitness = 1.0 - metric_from_logits(self.metric, logits, self.y_val, self.num_classes)
        t2 = time.perf_counter()
        self.records.append({"eval_s": t2 - t0, "train_s": t1 - t0, "val_s": t2 - t1,
                             "steps": len(self.plan)})
        return fitness

    def evaluate(self, masks: Sequence[Mapping[str, bool]]) -> list[float]:
        return [self.evaluate_one(m) for m in masks]

    def time_steps(self, mask: Mapping[str, bool], steps: int = 10, warmup: int = 2) -> list[float]:
        """Seconds per train step (forward, backward, optimizer) under `mask`."""
        twin, params = self.member(mask)
        set_train_modes(twin, mask)
        optimizer = make_optimizer(params, self.cfg)
        start = self.start_of(mask)
        x_train, forward = self.features(start)[0], self.forward_fn(start)
        times = []
        for i in range(warmup + steps):
            idx = self.plan[i % len(self.plan)]
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(twin.model, x_train[idx]), self.y_train[idx])
            loss.backward()
            optimizer.step()
            loss.item()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return times

    def time_forward(self, mask: Mapping[str, bool], steps: int = 10, warmup: int = 2) -> list[float]:
        """Seconds per forward alone (no autograd; trainable groups' BN in train mode)."""
        twin, _ = self.member(mask)
        set_train_modes(twin, mask)
        times = []
        with torch.no_grad():
            for i in range(warmup + steps):
                idx = self.plan[i % len(self.plan)]
                t0 = time.perf_counter()
                twin.model(self.x_train[idx]).sum().item()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        return times
