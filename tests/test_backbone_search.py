"""A search runs end to end on an ImageNet backbone loaded from a user's weight file, and
`predict` restores it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deft_jax.models import build_model
from deft_jax.predict import Predictor
from deft_jax.search import main

from helpers import tiny_overrides


def _image_folder(root, classes=3, per_class=8, size=40):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[..., c] += 150  # a colour per class
            Image.fromarray(image).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_search_with_resnet18_from_a_safetensors_file_runs_and_predict_restores_it(tmp_path, capsys):
    from safetensors.numpy import save_file
    from flax import traverse_util
    from deft_jax.models.resnet_imagenet import torch_layout
    from deft_jax.models.weight_layout import torch_shape

    # a torchvision-named ResNet-18 file with random weights (no torch needed)
    spec = build_model("resnet18", 1000, "none", 32)
    flat = traverse_util.flatten_dict(dict(spec.variable_shapes()))
    rng = np.random.default_rng(1)
    tensors = {}
    for e in torch_layout(18):
        shape = torch_shape(e.kind, tuple(flat[(e.collection, *e.path)].shape))
        value = rng.normal(0, 0.05, shape) if e.kind in ("conv", "dense") else rng.uniform(0.5, 1.5, shape)
        tensors[e.key] = value.astype(np.float32)
    weights = tmp_path / "resnet18.safetensors"
    save_file(tensors, str(weights))
    folder = _image_folder(tmp_path / "images")

    run = tmp_path / "run"
    overrides = tiny_overrides(**{
        "model.name": '"resnet18"', "model.weights": f'"{weights}"', "model.input_size": "32",
        "model.granularity": '"stage"', "data.source": f'{{"kind": "folder", "path": "{folder}"}}',
        "search.generations": "1", "final.epochs": "1"})
    assert main(["--out", str(run), "--set", *overrides]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "best mask" in out
    predictor = Predictor(run)
    assert predictor.spec.name == "resnet18"
    assert set(predictor.spec.group_names) == {"stem", "layer1", "layer2", "layer3", "layer4", "head"}
    images = np.stack([np.asarray(Image.open(p).convert("RGB"))
                       for p in sorted(folder.glob("*/*.png"))[:4]])
    logits = predictor.logits(images)
    assert logits.shape == (4, 3) and np.isfinite(logits).all()
