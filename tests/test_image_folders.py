"""Image folders as users keep them: class or split layouts, mixed sizes and file types,
EXIF orientation, 16-bit and palette images, hidden and non-image files, memory check,
uint8 datasets normalised per batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from deft_jax.runtime import host_memory
from deft_jax.config.schema import load_config
from deft_jax.config.sources import FolderSource
from deft_jax.data import (NormalizedImages, Sampling, decode_image, image_samples, load_dataset,
                           normalize_batch, preprocess)
from deft_jax.data import folder as folder_loader
from deft_jax.errors import UserError
from deft_jax.data.inputs import prepare_data, split_dataset
from deft_jax.models import build_model
from deft_jax.run.predictor import checkpoint_sampling
from deft_jax.data.splits import complete_splits

from helpers import logged, tiny_overrides

CLASSES = ("cat", "dog", "owl")
# every extension a user may have, in mixed letter case
EXTENSIONS = (".jpg", ".JPEG", ".png", ".BMP", ".tif", ".Tiff", ".webp", ".PNG")
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF", ".webp": "WEBP"}


def photo(path, size, colour, seed=0):
    """A (w, h) photo dominated by one RGB channel (so the class is learnable), saved in
    the format its extension names."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    arr[..., colour] += 180
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, FORMATS[path.suffix.lower()])


def photo_tree(root, splits: dict[str, int], classes=CLASSES, seed=0):
    """root/<split>/<class>/ (or root/<class>/ when `splits` is {"": n}) with n photos per
    class of random sizes (20-70 px, any aspect) and file types."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for c, name in enumerate(classes):
            for i in range(n):
                size = tuple(int(v) for v in rng.integers(20, 70, 2))
                ext = EXTENSIONS[(i + c) % len(EXTENSIONS)]
                photo(root / split / name / f"img{i}{ext}", size, c, seed=int(rng.integers(1 << 30)))
    return root


def add_clutter(root):
    """What real folders hold besides photos: macOS and Windows files, notes, hidden dirs."""
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / CLASSES[0] / "._img0.jpg").write_bytes(b"\0\5\26\7")  # AppleDouble, not a JPEG
    (root / CLASSES[1] / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / CLASSES[1] / "notes.txt").write_text("taken in the garden")
    (root / CLASSES[2] / ".thumbnails").mkdir()
    photo(root / CLASSES[2] / ".thumbnails" / "x.jpg", (8, 8), 0)


def lines(capture: list):
    return "\n".join(capture)


# --------------------------------------------------------------------------- class layout


def test_a_class_folder_tree_of_mixed_sizes_and_types_loads_at_the_model_input_size(tmp_path):
    root = photo_tree(tmp_path / "photos", {"": 8})
    add_clutter(root)
    with logged() as log:
        ds = load_dataset(FolderSource(path=str(root)), input_size=24)
    assert ds.class_names == list(CLASSES)
    assert ds.images.shape == (24, 24, 24, 3) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [8, 8, 8]
    # each photo keeps its colour: the class's channel dominates after decoding and resizing
    assert np.all(ds.images.mean(axis=(1, 2)).argmax(-1) == ds.labels)
    assert ds.predefined_splits is None and ds.origin["layout"] == "class folders"
    assert "skipped 3 hidden file(s)/folder(s) and 2 non-image file(s)" in lines(log)
    assert "class folders" in ds.description and "short-side-crop" in ds.description


def test_without_a_model_input_size_mixed_sizes_still_need_image_size(tmp_path):
    root = photo_tree(tmp_path, {"": 2})
    with pytest.raises(UserError, match="different sizes.*image_size"):
        load_dataset(FolderSource(path=str(root)))
    assert load_dataset(FolderSource(path=str(root), image_size=12)).images.shape[1:3] == (12, 12)


# --------------------------------------------------------------------------- split layout


def split_config(root, **data):
    cfg = load_config(None, tiny_overrides(**{"data.source": json.dumps({"kind": "folder", "path": str(root)})}))
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_split_folders_are_splits_not_classes_and_their_membership_is_kept(tmp_path):
    root = photo_tree(tmp_path, {"train": 6, "validation": 2, "test": 3})
    with logged() as log:
        ds = load_dataset(FolderSource(path=str(root)), input_size=16)
    assert ds.class_names == list(CLASSES)
    assert ds.origin["layout"] == "split folders"
    assert ds.origin["split_folders"] == {"train": "train", "val": "validation", "test": "test"}
    splits, origin = split_dataset(split_config(root), ds)
    for name, folder, n in (("train", "train", 6), ("val", "validation", 2), ("test", "test", 3)):
        assert len(splits[name]) == 3 * n
        assert all(g.startswith(folder + "/") for g in ds.groups[splits[name]])
        assert np.bincount(ds.labels[splits[name]]).tolist() == [n] * 3
    assert origin["from_dataset"] == ["train", "val", "test"] and origin["carved_from_train"] == []
    assert "split folders train/, validation/ as val, test/" in lines(log)


def test_a_missing_val_folder_is_carved_out_of_train_stratified_and_grouped(tmp_path):
    root = photo_tree(tmp_path, {"Train": 8, "TEST": 2})  # any letter case
    ds = load_dataset(FolderSource(path=str(root)), input_size=16)
    splits, origin = split_dataset(split_config(root), ds)
    assert origin["from_dataset"] == ["train", "test"] and origin["carved_from_train"] == ["val"]
    assert all(g.startswith("TEST/") for g in ds.groups[splits["test"]])
    assert all(g.startswith("Train/") for s in ("train", "val") for g in ds.groups[splits[s]])
    # val gets 0.2 / (0.6 + 0.2) of each class's training images
    assert np.bincount(ds.labels[splits["val"]]).tolist() == [2, 2, 2]
    assert np.bincount(ds.labels[splits["train"]]).tolist() == [6, 6, 6]
    assert not set(splits["train"]) & set(splits["val"])
    again, _ = split_dataset(split_config(root), ds)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)  # seeded
    other, _ = split_dataset(split_config(root, split_seed=1), ds)
    assert not np.array_equal(splits["val"], other["val"])
    assert np.array_equal(splits["test"], other["test"])  # the folder's own split never moves


def test_a_train_folder_alone_is_split_three_ways(tmp_path):
    root = photo_tree(tmp_path, {"train": 5})
    ds = load_dataset(FolderSource(path=str(root)), input_size=16)
    splits, origin = split_dataset(split_config(root), ds)
    assert origin["carved_from_train"] == ["val", "test"]
    assert [len(splits[k]) for k in ("train", "val", "test")] == [9, 3, 3]


def test_complete_splits_rejects_a_class_too_small_to_carve_from():
    labels = np.array([0, 0, 0, 1, 2, 2])
    groups = np.array(["a", "b", "c", "d", "e", "f"])
    with pytest.raises(UserError, match="class 'dog' has 1 group in train.*val"):
        complete_splits(labels, groups, {"train": np.arange(6), "test": np.arange(0)},
                        class_names=list(CLASSES))


def test_a_class_missing_from_one_split_is_reported(tmp_path):
    root = photo_tree(tmp_path, {"train": 4, "val": 2, "test": 2})
    for f in (root / "test" / "owl").iterdir():
        f.unlink()
    with logged() as log:
        ds = load_dataset(FolderSource(path=str(root)), input_size=16)
    assert ds.class_names == list(CLASSES)
    assert ds.origin["classes_missing"] == {"test": ["owl"]}
    assert "warning: the test folder 'test' has no images of class(es) owl" in lines(log)


def test_an_extra_class_in_test_is_an_error(tmp_path):
    root = photo_tree(tmp_path, {"train": 2, "test": 1})
    photo(root / "test" / "zebra" / "z.jpg", (30, 20), 0)
    with pytest.raises(UserError, match="class 'zebra' has images in .*/test but none in .*/train"):
        load_dataset(FolderSource(path=str(root)), input_size=16)


@pytest.mark.parametrize("folders, needle", [
    (("train", "cat"), "mixes split folders \\(train\\) with other folders \\(cat\\)"),
    (("train", "val", "valid"), "two folders for the val split"),
    (("val", "test"), "no train folder"),
])
def test_ambiguous_split_folders_are_errors(tmp_path, folders, needle):
    for f in folders:
        photo(tmp_path / f / "a" / "x.png", (10, 10), 0)
        photo(tmp_path / f / "b" / "y.png", (10, 10), 1)
    with pytest.raises(UserError, match=needle):
        load_dataset(FolderSource(path=str(tmp_path)), input_size=16)


# --------------------------------------------------------------------------- decoding


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high; left half red
    arr[:, :10, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after a 90 degree clockwise turn
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    upright = decode_image(tmp_path / "r.jpg")
    assert upright.shape == (20, 10, 3)  # portrait
    assert upright[:8, :, 0].mean() > 200 and upright[12:, :, 0].mean() < 50  # red on top


def test_16_bit_and_palette_images_become_8_bit_rgb(tmp_path):
    grey16 = np.full((6, 8), 65535, np.uint16)
    grey16[:, :4] = 257 * 100
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    out = decode_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    assert out[0, 0].tolist() == [100] * 3 and out[0, 7].tolist() == [255] * 3
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "pal.png", transparency=0)
    out = decode_image(tmp_path / "pal.png")
    assert out.shape == (4, 4, 3) and out[1, 1].tolist() == [10, 200, 30]


def test_resize_modes_crop_the_centre_stretch_or_pad(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)  # three 20x20 squares: red, green, blue
    for c in range(3):
        arr[:, 20 * c:20 * (c + 1), c] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    crop = decode_image(tmp_path / "wide.png", 10, "short-side-crop")
    assert crop.shape == (10, 10, 3) and crop[:, 1:-1, 1].min() == 255
    # only the centre square: its outer columns blend in a little of the neighbours
    assert crop[:, 1:-1, [0, 2]].max() == 0 and crop[..., [0, 2]].max() < 40
    stretch = decode_image(tmp_path / "wide.png", 12, "stretch")
    assert stretch[:, 0, 0].min() > 200 and stretch[:, 11, 2].min() > 200
    pad = decode_image(tmp_path / "wide.png", 12, "pad")
    assert pad[0].max() == 0 and pad[-1].max() == 0  # black bands above and below
    assert pad[6, 0, 0] > 200 and pad[6, 11, 2] > 200
    with pytest.raises(UserError, match="data.source.resize must be short-side-crop, stretch or pad, got 'squash'"):
        load_config(None, [f'data.source={{kind="folder", path="{tmp_path}", resize="squash"}}'])


# --------------------------------------------------------------------------- memory


def test_a_folder_too_big_for_memory_is_an_error_before_decoding(tmp_path, monkeypatch):
    root = photo_tree(tmp_path, {"": 4})
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 10_000)
    monkeypatch.setattr(folder_loader, "decode_all", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(UserError, match=r"would need .* \(12 images at 224x224 px, uint8 RGB\) "
                                        r"but only .* available"):
        load_dataset(FolderSource(path=str(root)), input_size=224)


def test_the_prepared_splits_stay_uint8_and_normalise_each_batch_like_preprocess(tmp_path):
    cfg = load_config(None, tiny_overrides())
    spec = build_model("small_cnn", 10, "none", 16)
    data = prepare_data(cfg, spec)
    x = data.arrays.x_train
    assert isinstance(x, NormalizedImages) and x.images.dtype == np.uint8
    assert x.shape == (len(data.splits["train"]), 16, 16, 3) and len(x) == x.shape[0]
    full = preprocess(data.dataset.images, 16, spec.mean, spec.std)
    idx = np.array([5, 0, 3])
    np.testing.assert_array_equal(x[idx], full[data.splits["train"][idx]])
    np.testing.assert_array_equal(data.x_test[2:4], full[data.splits["test"][2:4]])
    np.testing.assert_array_equal(np.asarray(data.arrays.x_val), full[data.splits["val"]])
    batch = x.uint8(idx)
    on_device = normalize_batch(jnp.asarray(batch), spec.mean, spec.std)
    np.testing.assert_allclose(np.asarray(on_device), x[idx], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- predict


def test_predict_reads_the_stored_resize_mode_and_old_checkpoints_stretch():
    meta = {"input_size": 32, "sampling": {"crop": None, "crop_stride": None, "image_size": 32,
                                           "resize": "pad"}}
    assert checkpoint_sampling(meta) == Sampling(None, None, 32, "pad")
    old = {"input_size": 32, "sampling": {"crop": 256, "crop_stride": None, "image_size": None}}
    assert checkpoint_sampling(old) == Sampling(256, 256, 32, "stretch")
    assert checkpoint_sampling({"input_size": 16}) == Sampling(None, None, 16, "stretch")


@pytest.mark.slow
def test_search_runs_on_a_split_folder_of_mixed_size_photos_with_no_other_data_option(tmp_path):
    root = photo_tree(tmp_path / "photos", {"train": 6, "validation": 2, "test": 2})
    (root / "test" / "dog" / "notes.txt").write_text("skip me")
    run = tmp_path / "run"
    overrides = [o for o in tiny_overrides(**{"search.generations": 1, "final.epochs": 1})
                 if not o.startswith("data.source=")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "deft_jax.search", "--out", str(run), "--set",
         f'data.source={{kind="folder",path="{root}"}}', *overrides],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "split folders train/, validation/ as val, test/" in proc.stdout
    assert "splits train, val, test from the data" in proc.stdout
    splits = json.loads((run / "splits.json").read_text())
    assert splits["origin"]["layout"] == "split folders"
    assert splits["origin"]["from_dataset"] == ["train", "val", "test"]
    assert splits["origin"]["skipped"] == {"hidden": 0, "non_image": 1}
    for name, folder in (("train", "train"), ("val", "validation"), ("test", "test")):
        assert all(g.startswith(folder + "/") for g in splits["groups"][name])
        assert len(splits[name]) == {"train": 18, "val": 6, "test": 6}[name]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 6

    # predict resizes a photo exactly as training did: same pixels in, same probabilities
    from deft_jax.run.predictor import Predictor
    predictor = Predictor(run)
    assert predictor.sampling.resize == "short-side-crop" and predictor.sampling.size == 16
    path = next(p for p in sorted((root / "test" / "cat").iterdir())
                if len(set(Image.open(p).size)) == 2)  # a JPEG that is not square
    ds = load_dataset(FolderSource(path=str(root)), input_size=16)
    i = list(ds.groups).index(path.relative_to(root).as_posix())
    expected = np.exp(predictor.logits(ds.images[i:i + 1]))
    np.testing.assert_allclose(predictor.probabilities(str(path)),
                               (expected / expected.sum())[0], rtol=1e-5, atol=1e-6)
    assert np.array_equal(image_samples(path, predictor.sampling)[0], ds.images[i])
