"""PyTorch twins of deft_jax's models, with deft_jax's layer groups (needs torch).

Used by the PyTorch reference of the fitness evaluation (`benchmarks/torch_reference.py`)
and its equivalence tests. Nothing here imports JAX: the variables handed in are nested
dicts of numpy arrays (``{'params': ..., 'batch_stats': ...}`` as `ModelSpec.init` makes).

- `SmallCnnTorch`: the twin of `deft_jax.models.small_cnn` with the same module names
  (`conv1.conv`, `conv1.bn`, ..., `head.fc`), so `load_flax_variables` copies every tensor.
- `efficientnet_lite0_torch`: `efficientnet_lite_pytorch`'s EfficientNet-Lite0 built with
  static TF-SAME padding for the input size, BatchNorm momentum 0.1 (PyTorch convention;
  deft_jax's `GatedBatchNorm` uses the same), dropout and drop-connect off (deft_jax's model
  has neither) and a fresh `num_classes` head; the ImageNet backbone is loaded from the .pth.
- `resnet_cifar_torch`: `benchmarks.torch_twins.torch_resnet_cifar.ResNetCifar` with the
  pretrained checkpoint and a fresh head.
- `torch_twin(...)`: any of the above plus a map layer group -> torch modules, with the
  head weights copied from the JAX variables so both sides start from the same point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1  # PyTorch convention, as deft_jax's GatedBatchNorm
LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # MBConv blocks per stage of EfficientNet-Lite0


# ------------------------------------------------------------------------------------------
# small_cnn


class ConvBnRelu(nn.Module):
    """3x3 conv (stride 1, padding 1, no bias) + BN + ReLU, optionally 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=BN_MOMENTUM)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return F.max_pool2d(x, 2, 2) if self.pool else x


class Head(nn.Module):
    """Global average pool + linear (deft_jax's ClassifierHead)."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class SmallCnnTorch(nn.Module):
    """Twin of `deft_jax.models.small_cnn.small_cnn` (NCHW inputs)."""

    def __init__(self, num_classes: int, width: int = 16, num_convs: int = 4):
        super().__init__()
        cin = 3
        self.stage_names = []
        for i in range(num_convs):
            features = width * 2 ** (i // 2)
            self.add_module(f"conv{i + 1}", ConvBnRelu(cin, features, pool=i % 2 == 1))
            self.stage_names.append(f"conv{i + 1}")
            cin = features
        self.head = Head(cin, num_classes)
        self.stage_names.append("head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


def _flax_leaf(variables: Mapping, collection: str, path: list[str]) -> np.ndarray:
    node = variables[collection]
    for part in path:
        node = node[part]
    return np.array(node, dtype=np.float32)  # a writable copy


def load_flax_variables(model: nn.Module, variables: Mapping, prefix: tuple[str, ...] = ()) -> nn.Module:
    """Copy flax variables into a torch model whose module names equal the flax paths.

    Conv2d kernel HWIO -> OIHW, Linear kernel [in, out] -> weight [out, in], BatchNorm
    scale/bias/mean/var -> weight/bias/running_mean/running_var. Every parameter and BN
    buffer of the model is written (KeyError if the variables lack one).
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            path = [*prefix, *name.split(".")] if name else list(prefix)
            if isinstance(module, nn.Conv2d):
                kernel = _flax_leaf(variables, "params", path + ["kernel"])
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
                if module.bias is not None:
                    module.bias.copy_(torch.from_numpy(_flax_leaf(variables, "params", path + ["bias"])))
            elif isinstance(module, nn.Linear):
                copy_linear(module, variables, path)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.from_numpy(_flax_leaf(variables, "params", path + ["scale"])))
                module.bias.copy_(torch.from_numpy(_flax_leaf(variables, "params", path + ["bias"])))
                module.running_mean.copy_(torch.from_numpy(_flax_leaf(variables, "batch_stats", path + ["mean"])))
                module.running_var.copy_(torch.from_numpy(_flax_leaf(variables, "batch_stats", path + ["var"])))
    return model


def copy_linear(linear: nn.Linear, variables: Mapping, path: list[str] | tuple[str, ...] = ("head", "fc")) -> nn.Linear:
    """flax Dense at `path` (kernel [in, out], bias [out]) -> torch Linear (weight [out, in])."""
    kernel = _flax_leaf(variables, "params", [*path, "kernel"])
    bias = _flax_leaf(variables, "params", [*path, "bias"])
    if tuple(linear.weight.shape) != kernel.T.shape:
        raise ValueError(f"linear {tuple(linear.weight.shape)} vs flax kernel {kernel.shape}")
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
        linear.bias.copy_(torch.from_numpy(bias))
    return linear


# ------------------------------------------------------------------------------------------
# EfficientNet-Lite0 and CIFAR ResNets


def efficientnet_lite0_torch(num_classes: int, input_size: int, weights: str | Path | None = None,
                             bn_momentum: float = BN_MOMENTUM) -> nn.Module:
    """efficientnet_lite_pytorch's Lite0 with static SAME padding for `input_size`.

    BN momentum `bn_momentum` (torch convention), dropout and drop-connect off, a fresh
    `num_classes` head; the backbone comes from the ImageNet `weights` .pth if given.
    """
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(
        "efficientnet-lite0", image_size=input_size, num_classes=num_classes, dropout_rate=0.0,
        drop_connect_rate=0.0, batch_norm_momentum=1.0 - bn_momentum)
    if weights is not None:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("_fc.")]
        if missing or result.unexpected_keys:
            raise ValueError(f"{weights}: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model


def resnet_cifar_torch(depth: int, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """ResNetCifar(depth) with the pretrained checkpoint (if given) and a fresh head."""
    from benchmarks.torch_twins.torch_resnet_cifar import ResNetCifar, load_checkpoint

    model = ResNetCifar(depth, 10)
    if weights is not None:
        load_checkpoint(model, weights)
    model.linear = nn.Linear(model.linear.in_features, num_classes)
    return model


# ------------------------------------------------------------------------------------------
# twins with layer groups


StageFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model, x) -> y


@dataclasses.dataclass
class TorchTwin:
    """A torch model and, per deft_jax layer group, the torch modules that belong to it.

    `stages`, where given, are the model's forward pass cut at the layer groups, in order:
    (group, fn(model, x)), so that a frozen prefix can be run once and cached (applied to
    any copy of the model)."""

    model: nn.Module
    groups: dict[str, list[nn.Module]]
    stages: list[tuple[str, StageFn]] | None = None

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(self.groups)


def _resnet_stages(model: nn.Module) -> list[tuple[str, StageFn]]:
    stages: list[tuple[str, StageFn]] = [("stem", lambda m, x: F.relu(m.bn1(m.conv1(x))))]
    for layer in (1, 2, 3):
        for i in range(len(getattr(model, f"layer{layer}"))):
            stages.append((f"layer{layer}_{i}", lambda m, x, l=layer, i=i: getattr(m, f"layer{l}")[i](x)))
    stages.append(("head", lambda m, x: m.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))))
    return stages


def _resnet_groups(model: nn.Module) -> dict[str, list[nn.Module]]:
    groups: dict[str, list[nn.Module]] = {"stem": [model.conv1, model.bn1]}
    for layer in (1, 2, 3):
        for i, block in enumerate(getattr(model, f"layer{layer}")):
            groups[f"layer{layer}_{i}"] = [block]
    groups["head"] = [model.linear]
    return groups


def _lite0_groups(model: nn.Module, granularity: str) -> dict[str, list[nn.Module]]:
    groups: dict[str, list[nn.Module]] = {"stem": [model._conv_stem, model._bn0]}
    blocks = list(model._blocks)
    if granularity == "block":
        for i, block in enumerate(blocks):
            groups[f"block{i}"] = [block]
    elif granularity == "stage":
        start = 0
        for stage, repeats in enumerate(LITE0_REPEATS, 1):
            groups[f"stage{stage}"] = blocks[start:start + repeats]
            start += repeats
    else:
        raise ValueError(f"unknown granularity {granularity!r}")
    groups["final_conv"] = [model._conv_head, model._bn1]
    groups["head"] = [model._fc]
    return groups


def torch_twin(model_name: str, num_classes: int, variables: Mapping, input_size: int = 32,
               granularity: str = "block", weights: str | Path | None = None) -> TorchTwin:
    """The torch twin of deft_jax model `model_name`, starting from the same point.

    `variables`: the JAX side's initial variables (numpy nested dicts are enough). The head
    is always copied from them (`head/fc`); small_cnn (no pretrained weights) gets every
    tensor from them; the pretrained backbones load `weights` (the file `ModelSpec.pretrained`
    names) through the torch loaders, independently of the JAX loader.
    """
    if model_name == "small_cnn":
        fc = np.asarray(variables["params"]["head"]["fc"]["kernel"])
        convs = sum(1 for k in variables["params"] if k.startswith("conv"))
        width = int(np.asarray(variables["params"]["conv1"]["conv"]["kernel"]).shape[-1])
        model = SmallCnnTorch(num_classes, width=width, num_convs=convs)
        if fc.shape[1] != num_classes:
            raise ValueError(f"head has {fc.shape[1]} classes, expected {num_classes}")
        load_flax_variables(model, variables)
        groups = {name: [getattr(model, name)] for name in model.stage_names}
        stages = [(name, lambda m, x, n=name: getattr(m, n)(x)) for name in model.stage_names]
        return TorchTwin(model, groups, stages)
    if model_name in ("resnet20", "resnet32", "resnet44", "resnet56"):
        model = resnet_cifar_torch(int(model_name[len("resnet"):]), num_classes, weights)
        copy_linear(model.linear, variables)
        return TorchTwin(model, _resnet_groups(model), _resnet_stages(model))
    if model_name == "efficientnet_lite0":
        model = efficientnet_lite0_torch(num_classes, input_size, weights)
        copy_linear(model._fc, variables)
        return TorchTwin(model, _lite0_groups(model, granularity))
    raise ValueError(f"no torch twin for model {model_name!r}")
