"""ResNet-20/32/44/56 for CIFAR (He et al. 2016, option-A shortcuts).

Mirrors Yerlan Idelbayev's pytorch_resnet_cifar10 `resnet.py`, whose pretrained
checkpoints (`resnet{depth}-*.th`) load into it tensor for tensor:

    stem:   conv3x3(3->16) + BN + ReLU
    layer1: n BasicBlocks, 16 planes, stride 1
    layer2: n BasicBlocks, 32 planes, first stride 2
    layer3: n BasicBlocks, 64 planes, first stride 2
    head:   global average pool + linear 64 -> num_classes

with n = (depth - 2) / 6. A BasicBlock is conv3x3(stride)+BN+ReLU, conv3x3+BN, plus the
shortcut, then ReLU; where the shape changes the shortcut is option A: subsample by 2 and
zero-pad the channels (no parameters).

Stages (= layer groups): `stem`, `layer1_0` .. `layer1_{n-1}`, `layer2_*`, `layer3_*`,
`head`. The head is a fresh classifier (always trained) unless `cifar_head=True`, which
loads the checkpoint's own CIFAR-10 classifier (used to check the port against PyTorch).
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from deft_jax.errors import UserError
from deft_jax.models.base import ModelSpec, StagedNet, stage_rules
from deft_jax.models.layers import ClassifierHead, GatedBatchNorm, TrainFlag
from deft_jax.models.weight_files import as_float32, read_weight_file

DEPTHS = (20, 32, 44, 56)
PLANES = (16, 32, 64)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_PAD = ((1, 1), (1, 1))  # PyTorch padding=1 for 3x3 convs, also with stride 2
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # torch kaiming_normal_


def _conv3x3(features: int, stride: int, name: str) -> nn.Conv:
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=_PAD, use_bias=False,
                   kernel_init=_he_normal, name=name)


def _bn(name: str) -> GatedBatchNorm:
    return GatedBatchNorm(momentum=0.1, epsilon=1e-5, name=name)


class CifarStem(nn.Module):
    """conv3x3(3->16) + BN + ReLU."""

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        x = _conv3x3(PLANES[0], 1, "conv1")(x)
        return nn.relu(_bn("bn1")(x, train))


class BasicBlockA(nn.Module):
    """Two 3x3 conv+BN layers plus an identity / option-A shortcut."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        y = _conv3x3(self.planes, self.stride, "conv1")(x)
        y = nn.relu(_bn("bn1")(y, train))
        y = _conv3x3(self.planes, 1, "conv2")(y)
        y = _bn("bn2")(y, train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            # Option A: x[:, :, ::2, ::2] then zero-pad channels by planes // 4 on each side.
            pad = self.planes // 4
            shortcut = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return nn.relu(y + shortcut)


def _blocks_per_layer(depth: int) -> int:
    if depth not in DEPTHS:
        raise UserError(f"unknown CIFAR ResNet depth {depth}: choose one of "
                        f"{', '.join(map(str, DEPTHS))}")
    return (depth - 2) // 6


def find_cifar_resnet_weights(depth: int, directory: str | Path) -> Path:
    """The `resnet{depth}-*.th` checkpoint in `directory` (UserError if absent)."""
    directory = Path(directory)
    matches = sorted(directory.glob(f"resnet{depth}-*.th"))
    if not matches:
        raise UserError(f"no resnet{depth}-*.th weights file in {directory}")
    return matches[0]


# --- checkpoint layout -------------------------------------------------------------------

def _expected_tensors(depth: int, num_classes: int, cifar_head: bool
                      ) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """torch key -> (collection, flax path, torch shape) for everything that is loaded."""
    n = _blocks_per_layer(depth)
    out: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {}

    def conv(key, path, cin, cout):
        out[f"{key}.weight"] = ("params", (*path, "kernel"), (cout, cin, 3, 3))

    def bn(key, path, c):
        out[f"{key}.weight"] = ("params", (*path, "scale"), (c,))
        out[f"{key}.bias"] = ("params", (*path, "bias"), (c,))
        out[f"{key}.running_mean"] = ("batch_stats", (*path, "mean"), (c,))
        out[f"{key}.running_var"] = ("batch_stats", (*path, "var"), (c,))

    conv("conv1", ("stem", "conv1"), 3, PLANES[0])
    bn("bn1", ("stem", "bn1"), PLANES[0])
    in_planes = PLANES[0]
    for layer, planes in enumerate(PLANES, start=1):
        for i in range(n):
            stage = f"layer{layer}_{i}"
            conv(f"layer{layer}.{i}.conv1", (stage, "conv1"), in_planes, planes)
            bn(f"layer{layer}.{i}.bn1", (stage, "bn1"), planes)
            conv(f"layer{layer}.{i}.conv2", (stage, "conv2"), planes, planes)
            bn(f"layer{layer}.{i}.bn2", (stage, "bn2"), planes)
            in_planes = planes
    if cifar_head:
        out["linear.weight"] = ("params", ("head", "fc", "kernel"), (num_classes, PLANES[-1]))
        out["linear.bias"] = ("params", ("head", "fc", "bias"), (num_classes,))
    return out


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _check_and_convert(path: Path, tensors: dict[str, np.ndarray], depth: int,
                       num_classes: int, cifar_head: bool) -> dict:
    """Verify the file against the architecture; return {(collection, path): array}."""
    name = f"resnet{depth}"
    expected = _expected_tensors(depth, num_classes, cifar_head)
    ignored = {"linear.weight", "linear.bias"} if not cifar_head else set()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected and k not in ignored
                  and not k.endswith(".num_batches_tracked")]
    problems = []
    if missing:
        problems.append(f"missing {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listing(unexpected)}")
    if not problems:
        for key, (_, _, shape) in expected.items():
            if tuple(tensors[key].shape) != shape:
                problems.append(f"{key} has shape {tuple(tensors[key].shape)}, "
                                f"{name} expects {shape}")
                break
    if problems:
        raise UserError(f"weights file {path} does not match {name}: " + "; ".join(problems))
    converted = {}
    for key, (collection, flax_path, _) in expected.items():
        value = as_float32(tensors[key], f"weights file {path}: key '{key}'")
        if flax_path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T  # OIHW->HWIO
        converted[(collection, flax_path)] = np.ascontiguousarray(value)
    return converted


def _copy_into(variables: dict, converted: dict, path: Path) -> dict:
    """New variables with every converted tensor put at its place (shapes re-checked)."""
    def thaw(tree):
        return {k: thaw(v) for k, v in tree.items()} if hasattr(tree, "items") else tree

    out = {collection: thaw(tree) for collection, tree in variables.items()}
    for (collection, flax_path), value in converted.items():
        node = out[collection]
        for part in flax_path[:-1]:
            node = node[part]
        current = node[flax_path[-1]]
        if tuple(current.shape) != value.shape:  # pragma: no cover - guarded by _expected_tensors
            raise UserError(f"weights file {path}: {'/'.join(flax_path)} has shape "
                            f"{value.shape}, model expects {tuple(current.shape)}")
        node[flax_path[-1]] = value
    return out


# --- public API ----------------------------------------------------------------------------

def resnet_cifar(depth: int, num_classes: int, weights: str | Path | None = None,
                 input_size: int = 32, cifar_head: bool = False) -> ModelSpec:
    """CIFAR ResNet of `depth` (20, 32, 44 or 56) with a `num_classes` head.

    `weights`: a `resnet{depth}-*.th` checkpoint (or a directory holding one); every backbone
    tensor is checked and loaded. `cifar_head=True` also loads the checkpoint's classifier
    (its class count must equal `num_classes`).
    """
    n = _blocks_per_layer(depth)
    stages: list[tuple[str, functools.partial]] = [("stem", functools.partial(CifarStem))]
    for layer, planes in enumerate(PLANES, start=1):
        for i in range(n):
            stride = 2 if (i == 0 and layer > 1) else 1
            stages.append((f"layer{layer}_{i}",
                           functools.partial(BasicBlockA, planes=planes, stride=stride)))
    stages.append(("head", functools.partial(ClassifierHead, num_classes=num_classes)))
    names = [stage for stage, _ in stages]

    load_pretrained, pretrained = None, None
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            path = find_cifar_resnet_weights(depth, path)
        converted = _check_and_convert(path, read_weight_file(path), depth, num_classes,
                                       cifar_head)
        load_pretrained = functools.partial(_load_pretrained, converted=converted, path=path)
        pretrained = str(path)
    elif cifar_head:
        raise UserError("cifar_head=True needs a weights file to take the CIFAR head from")

    return ModelSpec(
        name=f"resnet{depth}", net=StagedNet(tuple(stages)), input_size=input_size,
        mean=MEAN, std=STD, group_rules=stage_rules(names),
        load_pretrained=load_pretrained, pretrained=pretrained)


def _load_pretrained(variables: dict, *, converted: dict, path: Path) -> dict:
    return _copy_into(variables, converted, path)
