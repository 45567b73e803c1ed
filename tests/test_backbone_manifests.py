"""The key names and shapes deft_jax expects, and those of its torch twins, are the real
libraries' (tests/manifests/*.json).

Provenance of the manifests (each file's "generated_by" says which): generated from the
real, installed libraries by tests/manifests/generate_manifests.py (no arguments,
pretrained=False: nothing downloaded) on a machine where torchvision and timm import (the
lent GPU machine, 2026-11-26: torchvision 0.26.0+cu130, timm 1.0.29, efficientnet_lite_pytorch
0.1.0, torch 2.11.0+cu130). The same script run on this CPU machine from the libraries'
published source (torchvision 0.29.1's wheel, timm 1.0.29.dev0's repository) gave identical
keys and shapes for all 17.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from deft_jax.models import convnext, efficientnet_b0, efficientnet_lite, mobilenet_v2, resnet_imagenet, vgg
from deft_jax.models.weight_layout import torch_shape

MANIFESTS = Path(__file__).resolve().parent / "manifests"

# manifest -> (deft_jax spec with a 1000-class head, its layout)
CASES = {
    "resnet18_torchvision": (lambda: resnet_imagenet.resnet(18, 1000), lambda: resnet_imagenet.torch_layout(18)),
    "resnet18_timm": (lambda: resnet_imagenet.resnet(18, 1000), lambda: resnet_imagenet.torch_layout(18)),
    "resnet34_torchvision": (lambda: resnet_imagenet.resnet(34, 1000), lambda: resnet_imagenet.torch_layout(34)),
    "resnet50_torchvision": (lambda: resnet_imagenet.resnet(50, 1000), lambda: resnet_imagenet.torch_layout(50)),
    "resnet50_timm": (lambda: resnet_imagenet.resnet(50, 1000), lambda: resnet_imagenet.torch_layout(50)),
    "vgg16_torchvision": (lambda: vgg.vgg16(1000), lambda: vgg.torch_layout(False)),
    "vgg16_bn_torchvision": (lambda: vgg.vgg16(1000, batch_norm=True), lambda: vgg.torch_layout(True)),
    "mobilenet_v2_torchvision": (lambda: mobilenet_v2.mobilenet_v2(1000), mobilenet_v2.torch_layout),
    "efficientnet_b0_timm": (lambda: efficientnet_b0.efficientnet_b0(1000), efficientnet_b0.timm_layout),
    "efficientnet_b0_torchvision": (lambda: efficientnet_b0.efficientnet_b0(1000),
                                    efficientnet_b0.torchvision_layout),
    "convnext_tiny_timm": (lambda: convnext.convnext_tiny(1000), convnext.timm_layout),
    "convnext_tiny_torchvision": (lambda: convnext.convnext_tiny(1000), convnext.torchvision_layout),
    **{f"efficientnet_lite{v}": ((lambda v=v: efficientnet_lite.efficientnet_lite(v, 1000)),
                                 (lambda v=v: efficientnet_lite.torch_layout(v))) for v in range(5)},
}


def _twin(manifest: str):
    from benchmarks.torch_twins import torch_classic, torch_modern

    twins = {
        "resnet18": lambda: torch_classic.ResNet(18), "resnet34": lambda: torch_classic.ResNet(34),
        "resnet50": lambda: torch_classic.ResNet(50),
        "vgg16_torchvision": lambda: torch_classic.VGG(False),
        "vgg16_bn_torchvision": lambda: torch_classic.VGG(True),
        "mobilenet_v2_torchvision": torch_classic.MobileNetV2,
        "efficientnet_b0_timm": torch_modern.TimmEfficientNetB0,
        "efficientnet_b0_torchvision": torch_modern.TorchvisionEfficientNetB0,
        "convnext_tiny_timm": torch_modern.TimmConvNeXtTiny,
        "convnext_tiny_torchvision": torch_modern.TorchvisionConvNeXtTiny,
    }
    return twins.get(manifest) or twins.get(manifest.split("_")[0])


def _manifest(name: str) -> tuple[str, dict[str, tuple[int, ...]]]:
    data = json.loads((MANIFESTS / f"{name}.json").read_text())
    return data["generated_by"], {key: tuple(shape) for key, shape in data["keys"]}


def _expected_by_deft_jax(spec, layout) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(lambda k: spec.net.init(k, jnp.zeros((1, spec.input_size, spec.input_size, 3)),
                                                    train=False), jax.random.key(0))
    flat = traverse_util.flatten_dict(dict(shapes))
    return {e.key: torch_shape(e.kind, tuple(flat[(e.collection, *e.path)].shape)) for e in layout}


def test_every_architecture_has_a_manifest_with_its_provenance():
    assert {p.stem for p in MANIFESTS.glob("*.json")} == set(CASES)
    for name in CASES:
        generated_by, keys = _manifest(name)
        assert "generate_manifests.py" in generated_by and len(keys) > 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_deft_jax_expects_exactly_the_real_state_dict_keys_and_shapes(name):
    build, layout = CASES[name]
    _, manifest = _manifest(name)
    real = {k: v for k, v in manifest.items() if not k.endswith("num_batches_tracked")}
    expected = _expected_by_deft_jax(build(), layout())
    assert expected == real


@pytest.mark.parametrize("name", sorted(n for n in CASES if not n.startswith("efficientnet_lite")))
def test_torch_twin_state_dict_equals_the_real_one(name):
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # shapes only, no memory
        model = _twin(name)()
    _, manifest = _manifest(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == manifest
