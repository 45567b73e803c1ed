"""The batched PyTorch peer of the fitness evaluation: P members trained together.

The strongest reference a GPU user would write without a compiler: one copy of the model,
its parameters and buffers stacked P times (`torch.func.stack_module_state`), and one
train step of every member at once, `torch.func.vmap` over
`torch.func.grad_and_value(loss(torch.func.functional_call(model, ...)))`. It computes
what `benchmarks/torch_reference.py` computes one member after another:

- the same initial weights (every member starts from the twin's), batches and recipe;
- frozen groups: their gradients are multiplied by 0 before the update, which under SGD
  with momentum and weight decay (d = mask * (g + wd * p); buf = momentum * buf + d, from
  buf = 0; p -= lr * buf) leaves them exactly where they were, as `requires_grad=False`
  does, and gives the trainable ones torch SGD's update bit for bit (0.9 * 0 + d = d);
- BatchNorm: every BN is swapped for `MemberModeBatchNorm`, whose train or eval mode is a
  per-member flag (a stacked buffer) instead of `module.training`, because under `vmap`
  one module serves every member: a trainable group's BN normalises with the batch's
  statistics and updates its running statistics (momentum 0.1, unbiased variance, as
  `nn.BatchNorm2d`), a frozen group's BN normalises with, and keeps, its running ones. The
  new running statistics are returned from the vmapped step (no in-place buffer updates
  under `vmap`/`grad`), so nothing is lost: `torch.func.replace_all_batch_norm_modules_`,
  which would stop tracking running statistics, is not needed;
- validation: the model in eval mode (every BN on its running statistics), logits of
  every member under one `vmap`, fitness = 1 - metric as the sequential reference.

Only SGD (the suite's recipe) is implemented.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from benchmarks.torch_reference import VAL_BATCH, TorchReference
from deft_jax.core.metrics import metric_from_logits


class MemberModeBatchNorm(nn.Module):
    """`nn.BatchNorm2d` whose train/eval choice is the buffer `trains` (1.0: batch
    statistics and a running-statistics update, 0.0: running statistics, no update), so
    that it can differ between the members of one vmapped model. In `.eval()` every member
    uses its running statistics. After a train-mode call, `new_running` holds the updated
    (mean, var)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        if bn.momentum is None or not bn.affine or not bn.track_running_stats:
            raise ValueError("MemberModeBatchNorm needs an affine BatchNorm with a momentum and running stats")
        self.eps, self.momentum = bn.eps, bn.momentum
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("trains", torch.ones(()))
        self.new_running: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        with_running = x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]
        if not self.training:
            return with_running
        with_batch = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        trains = self.trains > 0.5
        seen = x.detach()
        n = seen.numel() // seen.shape[1]
        batch_mean = seen.mean(dim=(0, 2, 3))
        batch_var = seen.var(dim=(0, 2, 3), correction=1) if n > 1 else torch.zeros_like(batch_mean)
        m = self.momentum
        self.new_running = (torch.where(trains, (1 - m) * mean + m * batch_mean, mean),
                            torch.where(trains, (1 - m) * var + m * batch_var, var))
        return torch.where(trains, with_batch, with_running)


def member_mode_model(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every BatchNorm swapped for a `MemberModeBatchNorm` of
    the same weights and statistics, under the same module name."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, MemberModeBatchNorm(child))
    return model


def trainable_by_name(reference: TorchReference) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Each parameter's and each BatchNorm's layer group (None: in no group, always trained,
    as `torch_reference.freeze` leaves it)."""
    model = reference.twin.model
    param_ids = {id(p): n for n, p in model.named_parameters()}
    module_ids = {id(m): n for n, m in model.named_modules()}
    param_group: dict[str, str | None] = {n: None for n in param_ids.values()}
    bn_group: dict[str, str | None] = {n: None for n, m in model.named_modules()
                                       if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for group, modules in reference.twin.groups.items():
        for module in modules:
            for p in module.parameters():
                param_group[param_ids[id(p)]] = group
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    bn_group[module_ids[id(sub)]] = group
    return param_group, bn_group


class BatchedTorchPeer:
    """Fitness of P layer-group masks at once (see the module docstring). Built on a
    `TorchReference`, whose twin, arrays, batch plan, recipe and metric it shares."""

    def __init__(self, reference: TorchReference):
        cfg = reference.cfg
        if cfg.optimizer != "sgd":
            raise ValueError(f"the batched peer implements SGD only, not {cfg.optimizer!r}")
        if reference.augment or reference.cache_prefix:
            raise ValueError("the batched peer has no augmentation and no frozen-prefix cache")
        self.reference = reference
        self.model = member_mode_model(reference.twin.model).to(reference.device)
        self.param_group, self.bn_group = trainable_by_name(reference)
        self.bn_names = list(self.bn_group)
        modules = dict(self.model.named_modules())
        self.bn_modules = [(name, modules[name]) for name in self.bn_names]
        self.records: list[dict] = []

    def _member_loss(self, params, buffers, x, y):
        logits = functional_call(self.model, (params, buffers), (x,))
        running = {}
        for name, bn in self.bn_modules:
            mean, var = bn.new_running
            running[f"{name}.running_mean"], running[f"{name}.running_var"] = mean, var
            bn.new_running = None
        return F.cross_entropy(logits, y), running

    def stacked_state(self, masks: Sequence[Mapping[str, bool]]):
        """Stacked parameters and buffers of P copies, and each parameter's 0/1 gradient mask."""
        params, buffers = stack_module_state([self.model] * len(masks))
        params = {n: p.detach().clone() for n, p in params.items()}
        device = self.reference.device

        def flags(group_of: Mapping[str, str | None], name: str) -> torch.Tensor:
            group = group_of[name]
            return torch.tensor([1.0 if group is None or m[group] else 0.0 for m in masks], device=device)

        for name in self.bn_names:
            buffers[f"{name}.trains"] = flags(self.bn_group, name)
        grad_masks = {n: flags(self.param_group, n).reshape(-1, *([1] * (p.dim() - 1)))
                      for n, p in params.items()}
        return params, buffers, grad_masks

    def fine_tune(self, masks: Sequence[Mapping[str, bool]]):
        """The short fine-tune of P members together; returns the stacked parameters,
        buffers and the per-step losses [steps, P]."""
        ref, cfg = self.reference, self.reference.cfg
        params, buffers, grad_masks = self.stacked_state(masks)
        momentum_buffers = {n: torch.zeros_like(p) for n, p in params.items()}
        step = vmap(grad_and_value(self._member_loss, has_aux=True), in_dims=(0, 0, None, None))
        self.model.train()
        losses = []
        for idx in ref.plan:
            grads, (loss, running) = step(params, buffers, ref.x_train[idx], ref.y_train[idx])
            with torch.no_grad():
                for n, p in params.items():
                    d = grads[n].add(p, alpha=cfg.weight_decay) if cfg.weight_decay else grads[n]
                    d = d * grad_masks[n]
                    buf = momentum_buffers[n].mul_(cfg.momentum).add_(d) if cfg.momentum else d
                    p.sub_(buf, alpha=cfg.learning_rate)
            buffers.update(running)
            losses.append(loss.detach())
        return params, buffers, torch.stack(losses) if losses else torch.zeros((0, len(masks)))

    def logits(self, params, buffers) -> np.ndarray:
        """Validation logits of every member, [P, N, classes]."""
        x_val = self.reference.x_val
        self.model.eval()
        forward = vmap(lambda p, b, x: functional_call(self.model, (p, b), (x,)), in_dims=(0, 0, None))
        with torch.no_grad():
            out = torch.cat([forward(params, buffers, x_val[i:i + VAL_BATCH])
                             for i in range(0, len(x_val), VAL_BATCH)], dim=1)
        return out.cpu().numpy()

    def evaluate_with_logits(self, masks: Sequence[Mapping[str, bool]]) -> tuple[list[float], np.ndarray]:
        params, buffers, _ = self.fine_tune(masks)
        logits = self.logits(params, buffers)
        ref = self.reference
        fitness = [1.0 - metric_from_logits(ref.metric, member, ref.y_val, ref.num_classes) for member in logits]
        return fitness, logits

    def evaluate(self, masks: Sequence[Mapping[str, bool]]) -> list[float]:
        return self.evaluate_with_logits(masks)[0]
