"""A search runs end to end on an ImageNet backbone loaded from a user's weight file, and
`predict` restores it.

Cost: one CLI search compiles at least two fine-tune programs of the backbone (the
fitness program and the final one), 20-120 s per model on the 2-core CPU (docs/backbones.md,
'Backbones'), so the full CLI path runs for one model per family whose code differs
(residual blocks, depthwise/inverted residual blocks with BatchNorm, LayerNorm); every
model of `IMAGENET_MODELS + LITE_MODELS` goes through the weight file -> model ->
checkpoint -> `predict` path, which compiles nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from deft_jax.config.schema import load_config
from deft_jax.models import IMAGENET_MODELS, LITE_MODELS, build_model
from deft_jax.run.predictor import Predictor
from deft_jax.cli.search import main

from conftest import SHARED_DATA
from helpers import tiny_overrides

# the smallest input each architecture takes (VGG's five pools and ConvNeXt's /32 need 32)
SMALLEST_INPUT = {"vgg16": 32, "vgg16_bn": 32, "convnext_tiny": 32}
SIGN_LANGUAGE = SHARED_DATA / "sign_language_digits"
OUTLIERS = ("IMG_5874.JPG", "IMG_5935.JPG", "IMG_5978.JPG")  # 3024 px photographs in 7/


def _torch_layout(name: str):
    from deft_jax.models import convnext, efficientnet_b0, efficientnet_lite, mobilenet_v2, resnet_imagenet, vgg
    if name.startswith("resnet"):
        return resnet_imagenet.torch_layout(int(name[len("resnet"):]))
    if name.startswith("vgg16"):
        return vgg.torch_layout(name == "vgg16_bn")
    if name.startswith("efficientnet_lite"):
        return efficientnet_lite.torch_layout(int(name[-1]))
    return {"mobilenet_v2": mobilenet_v2.torch_layout, "efficientnet_b0": efficientnet_b0.timm_layout,
            "convnext_tiny": convnext.timm_layout}[name]()


def torch_named_weights(name: str, path, shapes=None, seed: int = 1):
    """A .safetensors file of random weights under the torchvision / timm /
    efficientnet_lite_pytorch key names and shapes of `name` (no torch needed), with a
    1000-class classifier as a real checkpoint has. `spec`: the model built for the
    target classes, whose backbone shapes are the file's. `shapes`: that model's
    `variable_shapes()`, when the caller has them (saves tracing it again)."""
    from safetensors.numpy import save_file
    from deft_jax.models.weight_layout import torch_shape

    shapes = shapes or build_model(name, 3, "none", SMALLEST_INPUT.get(name, 16)).variable_shapes()
    flat = traverse_util.flatten_dict(dict(shapes))
    rng = np.random.default_rng(seed)
    tensors = {}
    for e in _torch_layout(name):
        shape = tuple(flat[(e.collection, *e.path)].shape)
        if e.head:  # the file's own ImageNet classifier
            shape = (*shape[:-1], 1000)
        shape = torch_shape(e.kind, shape)
        if e.kind in ("conv", "dense"):  # He-normal
            fan_in = int(np.prod(shape[1:])) or 1
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        else:
            value = rng.random(shape, dtype=np.float32) + np.float32(0.5)
        tensors[e.key] = value
    save_file(tensors, str(path))
    return path


def _image_folder(root, classes=3, per_class=4, size=20):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[..., c] += 150  # a colour per class
            Image.fromarray(image).save(root / f"class{c}" / f"{i}.png")
    return root


def _search_and_predict(name: str, weights, folder, run, capsys) -> Predictor:
    """The CLI search (population 4, no generation after it, 1 final epoch, stage groups,
    the smallest input) from `weights`, then `predict` restores the run."""
    size = SMALLEST_INPUT.get(name, 16)
    overrides = tiny_overrides(**{
        "model.name": f'"{name}"', "model.weights": f'"{weights}"', "model.input_size": str(size),
        "model.granularity": '"stage"', "data.source": f'{{kind="folder", path="{folder}"}}',
        "search.generations": "0", "final.epochs": "1"})
    assert main(["--out", str(run), "--set", *overrides]) == 0
    out = capsys.readouterr().out
    assert f"model: {name} ({weights})" in out and "best mask" in out
    predictor = Predictor(run)
    assert predictor.spec.name == name and predictor.meta["pretrained"] == str(weights)
    assert predictor.spec.group_names == build_model(name, 3, "none", size, "stage").group_names
    return predictor


# resnet18 only in CI (time: 30-140 s of compile per model here); DEFT_ALL_BACKBONES=1 runs
# every model (`DEFT_ALL_BACKBONES=1 python -m pytest -q -n 2 tests/test_backbone_search.py`).
# convnext_tiny found the empty-batch_stats bug, which the restore test below also catches.
CLI_SEARCHED = IMAGENET_MODELS + LITE_MODELS if os.environ.get("DEFT_ALL_BACKBONES") == "1" else ["resnet18"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CLI_SEARCHED)
def test_search_from_a_torch_named_weight_file_runs_and_predict_restores_it(name, tmp_path, capsys):
    weights = torch_named_weights(name, tmp_path / f"{name}.safetensors")
    folder = _image_folder(tmp_path / "images")
    predictor = _search_and_predict(name, weights, folder, tmp_path / "run", capsys)
    images = np.stack([np.asarray(Image.open(p).convert("RGB"))
                       for p in sorted(folder.glob("*/*.png"))[:4]])
    logits = predictor.logits(images)
    assert logits.shape == (4, 3) and np.isfinite(logits).all()


# One model per family and block type (the search test above trains resnet18 and convnext_tiny);
# resnet18/34, vgg16, efficientnet_lite1..3 share these families' code paths and are left out
# of CI for time (each passed this test when it was written)
RESTORED = ("resnet50", "vgg16_bn", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "efficientnet_lite4")


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET_MODELS + LITE_MODELS if os.environ.get("DEFT_ALL_BACKBONES") == "1"
                         else [m for m in IMAGENET_MODELS + LITE_MODELS if m in RESTORED])
def test_every_backbone_from_a_weight_file_is_restored_by_predict_exactly(name, tmp_path):
    """Weight file -> `model.name` + `model.weights` as the search builds it -> the
    pipeline's checkpoint metadata -> `predict`: the same architecture, groups and every
    loaded weight (no fine-tune: the CLI test above trains one model per family)."""
    from deft_jax.run.checkpoint import save_checkpoint
    from deft_jax.run.pipeline import inference_meta
    from deft_jax.runtime import rundir

    size = SMALLEST_INPUT.get(name, 16)
    shapes = build_model(name, 3, "none", size, "stage").variable_shapes()
    weights = torch_named_weights(name, tmp_path / f"{name}.safetensors", shapes)
    cfg = load_config(None, tiny_overrides(**{
        "model.name": f'"{name}"', "model.weights": f'"{weights}"', "model.input_size": str(size),
        "model.granularity": '"stage"'}))
    spec = build_model(cfg.model.name, 3, cfg.model.weights, size, cfg.model.granularity)
    template = {"params": {}, "batch_stats": {}}
    for c, tree in shapes.items():
        template[c] = traverse_util.unflatten_dict(
            {k: np.zeros(v.shape, np.float32) for k, v in traverse_util.flatten_dict(dict(tree)).items()})
    variables = spec.load_pretrained(template)
    head = variables["params"]["head"]
    variables["params"]["head"] = {k: {n: np.full_like(a, 0.25) for n, a in v.items()} for k, v in head.items()}
    mask = {g: g == "head" for g in spec.group_names}
    save_checkpoint(tmp_path / "run" / rundir.CHECKPOINT, variables,
                    inference_meta(cfg, spec, ["a", "b", "c"], mask, spec.pretrained))

    predictor = Predictor(tmp_path / "run")
    assert predictor.spec.name == name and predictor.spec.group_names == spec.group_names
    assert predictor.class_names == ["a", "b", "c"] and predictor.meta["mask"] == mask
    assert (predictor.spec.mean, predictor.spec.std) == (spec.mean, spec.std)
    want, got = (traverse_util.flatten_dict(v) for v in (variables, predictor.variables))
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=str(key))
    # the backbone really came from the file: the file's conv weights are not all zero
    assert any(np.any(want[k]) for k in want if k[0] == "params" and k[1] != "head")


@pytest.mark.slow
@pytest.mark.skipif(not SIGN_LANGUAGE.is_dir(), reason=f"shared sign_language_digits not found at {SIGN_LANGUAGE}")
def test_the_sign_language_photos_and_their_3024_px_outliers_run_through_a_resnet18_search(tmp_path, capsys):
    from deft_jax.config.sources import FolderSource
    from deft_jax.data import load_dataset

    # the whole folder loads at the model's size, outliers resized like the rest
    dataset = load_dataset(FolderSource(path=str(SIGN_LANGUAGE)), input_size=16)
    assert dataset.images.shape == (2062, 16, 16, 3) and len(dataset.class_names) == 10
    assert {f"7/{o}" for o in OUTLIERS} <= set(dataset.groups)
    # a ResNet-18 search on the three outliers and nine ordinary photos (links, not copies)
    folder = tmp_path / "photos"
    for digit in ("6", "7", "8"):
        (folder / digit).mkdir(parents=True)
        ordinary = [p for p in sorted((SIGN_LANGUAGE / digit).iterdir()) if p.name not in OUTLIERS]
        chosen = [SIGN_LANGUAGE / "7" / o for o in OUTLIERS] + ordinary[:1] if digit == "7" else ordinary[:4]
        for p in chosen:
            (folder / digit / p.name).symlink_to(p)
    assert max(Image.open(folder / "7" / OUTLIERS[0]).size) == 3024
    weights = torch_named_weights("resnet18", tmp_path / "resnet18.safetensors")
    predictor = _search_and_predict("resnet18", weights, folder, tmp_path / "run", capsys)
    probs = predictor.probabilities(str(folder / "7" / OUTLIERS[0]))
    assert probs.shape == (3,) and np.isclose(probs.sum(), 1.0, atol=1e-5)
