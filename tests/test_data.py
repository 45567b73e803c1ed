"""Dataset loading: digits, folders (sub-folders, label regex, crops), npz, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import OSTEO_TILES, needs_osteo
from deft_jax.config.schema import load_config
from deft_jax.config.sources import DigitsSource, FolderSource, NpzSource
from deft_jax.data import Dataset, load_dataset, load_image_file, preprocess
from deft_jax.errors import UserError
from deft_jax.data.splits import make_splits

OSTEO_LABEL_REGEX = r"^(?P<label>.+?)___"


def write_image(path, size=(16, 16), seed=0, mode="RGB"):
    """A random image of `size` (w, h) written with PIL; returns its pixels."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return arr


def make_class_folders(root, classes=("benign", "malignant"), per_class=3, size=(16, 16)):
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"img_{i}.png", size=size, seed=10 * c + i)
    return root


# --------------------------------------------------------------------------- digits


def test_digits_load_1797_rgb_uint8_images_with_10_classes():
    ds = load_dataset(DigitsSource())
    assert isinstance(ds, Dataset)
    assert ds.images.shape == (1797, 8, 8, 3) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (1797,) and ds.labels.dtype == np.int32
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.images.max() == 255 and ds.images.min() == 0
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])
    assert len(set(ds.groups.tolist())) == 1797
    assert ds.description == "digits: 1797 images, 10 classes"


def test_digits_max_per_class_keeps_the_first_k_of_each_class():
    ds = load_dataset(DigitsSource(max_per_class=5))
    assert ds.images.shape[0] == 50
    assert np.bincount(ds.labels).tolist() == [5] * 10
    again = load_dataset(DigitsSource(max_per_class=5))
    assert np.array_equal(ds.groups, again.groups)


def test_preprocess_resizes_each_image_bilinearly_then_normalises_it():
    ds = load_dataset(DigitsSource())
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = preprocess(ds.images, 64, mean, std)
    assert x.shape == (1797, 64, 64, 3) and x.dtype == np.float32
    for i in (0, 900, 1796):  # PIL's bilinear resize of that image, then (x/255 - mean)/std
        resized = np.asarray(Image.fromarray(ds.images[i]).resize((64, 64), Image.BILINEAR), np.float32)
        np.testing.assert_allclose(x[i], (resized / 255.0 - np.float32(mean)) / np.float32(std),
                                   rtol=1e-5, atol=1e-5)
    # No resize when already at input size: exactly (x/255 - mean)/std.
    y = preprocess(ds.images[:4], 8, mean, std)
    expected = (ds.images[:4].astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_preprocess_rejects_images_that_are_not_nhwc_uint8():
    with pytest.raises(UserError, match=r"\[N, H, W, 3\]"):
        preprocess(np.zeros((8, 8, 3), np.uint8), 8, 0.5, 0.5)
    with pytest.raises(UserError, match="uint8"):
        preprocess(np.zeros((1, 8, 8, 3), np.float32), 8, 0.5, 0.5)


# --------------------------------------------------------------------------- folders


def test_folder_with_class_subfolders_labels_by_sorted_folder_name(tmp_path):
    root = make_class_folders(tmp_path / "data", classes=("zeta", "alpha"), per_class=2)
    ds = load_dataset(FolderSource(path=str(root)))
    assert ds.class_names == ["alpha", "zeta"]
    assert ds.images.shape == (4, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.groups.tolist() == ["alpha/img_0.png", "alpha/img_1.png",
                                  "zeta/img_0.png", "zeta/img_1.png"]
    # Pixels survive unchanged when no resize is asked for.
    assert np.array_equal(ds.images[2], np.asarray(Image.open(root / "zeta" / "img_0.png")))


def test_folder_with_label_regex_reads_labels_from_file_names(tmp_path):
    names = ["Viable___Case-1-A1_1.jpg", "Non-Tumor___Case-2-B1_1.JPG",
             "Viable___Case-1-A2_2.png", "Non-Tumor___Case-2-B2_2.tif"]
    for i, n in enumerate(names):
        write_image(tmp_path / n, size=(12, 10), seed=i)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(FolderSource(path=str(tmp_path), label_regex=OSTEO_LABEL_REGEX, image_size=8))
    assert ds.class_names == ["Non-Tumor", "Viable"]
    assert ds.images.shape == (4, 8, 8, 3)
    assert sorted(zip(ds.groups.tolist(), ds.labels.tolist())) == [
        ("Non-Tumor___Case-2-B1_1.JPG", 0), ("Non-Tumor___Case-2-B2_2.tif", 0),
        ("Viable___Case-1-A1_1.jpg", 1), ("Viable___Case-1-A2_2.png", 1)]
    # Unnamed first capture group works too, and group_regex groups by case.
    ds2 = load_dataset(FolderSource(path=str(tmp_path), label_regex=r"^(.+?)___", group_regex=r"___(Case-\d+)-", image_size=8))
    assert ds2.class_names == ds.class_names
    assert sorted(set(ds2.groups.tolist())) == ["Case-1", "Case-2"]


def test_folder_max_images_keeps_the_first_k_images_per_class(tmp_path):
    root = make_class_folders(tmp_path, per_class=4)
    ds = load_dataset(FolderSource(path=str(root), max_images=2))
    assert ds.groups.tolist() == ["benign/img_0.png", "benign/img_1.png",
                                  "malignant/img_0.png", "malignant/img_1.png"]


def test_crops_of_one_tile_never_cross_splits(tmp_path):
    for c, name in enumerate(("a", "b")):
        for i in range(5):
            write_image(tmp_path / name / f"tile_{i}.png", size=(20, 20), seed=10 * c + i)
    ds = load_dataset(FolderSource(path=str(tmp_path), crop=10, image_size=6))
    assert ds.images.shape == (40, 6, 6, 3)  # 10 tiles x 4 crops
    _, counts = np.unique(ds.groups, return_counts=True)
    assert counts.tolist() == [4] * 10
    # The crops are the tile's quadrants, in row-major order.
    unresized = load_dataset(FolderSource(path=str(tmp_path), crop=10))
    tile = np.asarray(Image.open(tmp_path / "a" / "tile_0.png"))
    assert np.array_equal(unresized.images[1], tile[0:10, 10:20])
    assert np.array_equal(unresized.images[2], tile[10:20, 0:10])
    for seed in range(5):
        splits = make_splits(ds.labels, ds.groups, seed=seed)
        sets = {k: set(ds.groups[v].tolist()) for k, v in splits.items()}
        assert not sets["train"] & sets["val"]
        assert not sets["train"] & sets["test"]
        assert not sets["val"] & sets["test"]
        assert sum(len(v) for v in splits.values()) == 40


def test_crop_stride_gives_overlapping_crops(tmp_path):
    make_class_folders(tmp_path, per_class=1, size=(20, 20))
    ds = load_dataset(FolderSource(path=str(tmp_path), crop=10, crop_stride=5))
    assert ds.images.shape == (18, 10, 10, 3)  # 2 images x 3 x 3 positions


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_with_predefined_splits(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 7, 7), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    path = tmp_path / "pathmnist.npz"
    np.savez(path, **arrays)
    ds = load_dataset(NpzSource(path=str(path)))
    assert ds.images.shape == (11, 7, 7, 3) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[6, :, :, 1], arrays["val_images"][0])
    assert ds.labels.dtype == np.int32
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2]
    assert ds.class_names == ["0", "1", "2"]
    assert {k: v.tolist() for k, v in ds.predefined_splits.items()} == {
        "train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9, 10]}
    # RGB images and stored class names.
    arrays = {k: (np.repeat(v[..., None], 3, -1) if k.endswith("images") else v[:, 0])
              for k, v in arrays.items()}
    np.savez(path, class_names=np.array(["adipose", "debris", "mucus"]), **arrays)
    ds = load_dataset(NpzSource(path=str(path)))
    assert ds.images.shape == (11, 7, 7, 3)
    assert ds.class_names == ["adipose", "debris", "mucus"]


# --------------------------------------------------------------------------- bad inputs


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found.*nowhere"):
        load_dataset(FolderSource(path=str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="not found.*nowhere.npz"):
        load_dataset(NpzSource(path=str(tmp_path / "nowhere.npz")))


def test_a_file_given_as_folder_is_a_user_error(tmp_path):
    path = tmp_path / "x.png"
    write_image(path)
    with pytest.raises(UserError, match="not a directory"):
        load_dataset(FolderSource(path=str(path)))


def test_a_folder_without_images_is_a_user_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match="no images found"):
        load_dataset(FolderSource(path=str(tmp_path), label_regex="(.+)_"))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_dataset(FolderSource(path=str(tmp_path)))


def test_a_single_class_is_a_user_error(tmp_path):
    make_class_folders(tmp_path, classes=("only",))
    with pytest.raises(UserError, match="only one class.*'only'"):
        load_dataset(FolderSource(path=str(tmp_path)))


def test_an_npz_whose_labels_hold_one_class_is_a_user_error(tmp_path):
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = np.zeros((n, 5, 5), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.ones(n, dtype=np.int64)
    path = tmp_path / "one.npz"
    np.savez(path, class_names=np.array(["cat", "dog"]), **arrays)
    with pytest.raises(UserError, match="only one class.*'dog'"):
        load_dataset(NpzSource(path=str(path)))


def test_a_corrupt_image_is_a_user_error_naming_the_file(tmp_path):
    make_class_folders(tmp_path)
    (tmp_path / "benign" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    with pytest.raises(UserError, match="cannot read image.*broken.jpg") as err:
        load_dataset(FolderSource(path=str(tmp_path)))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="image not found.*missing.png"):
        load_image_file(tmp_path / "missing.png")


def test_an_unknown_kind_or_an_option_the_kind_lacks_is_a_user_error():
    with pytest.raises(UserError, match="data.source.kind must be digits, folder, npz or tfds, got 'imagenet'"):
        load_config(None, ['data.source={kind="imagenet"}'])
    with pytest.raises(UserError, match=r"unknown config key data.source.crop_size for data.source.kind = "
                                        r"'digits' \(digits keys: max_per_class;"):
        load_config(None, ['data.source={kind="digits", crop_size=4}'])


def test_a_crop_larger_than_the_image_is_a_user_error(tmp_path):
    make_class_folders(tmp_path, size=(16, 12))
    with pytest.raises(UserError, match="crop 14 is larger than image.*16x12"):
        load_dataset(FolderSource(path=str(tmp_path), crop=14))


def test_file_names_that_do_not_match_the_label_regex_are_a_user_error(tmp_path):
    write_image(tmp_path / "Viable___a.png")
    write_image(tmp_path / "stray.png")
    with pytest.raises(UserError, match="do not match label_regex.*'stray.png'"):
        load_dataset(FolderSource(path=str(tmp_path), label_regex=OSTEO_LABEL_REGEX))


def test_images_of_different_sizes_need_image_size(tmp_path):
    write_image(tmp_path / "a" / "x.png", size=(8, 8))
    write_image(tmp_path / "b" / "y.png", size=(9, 8))
    with pytest.raises(UserError, match="different sizes.*image_size"):
        load_dataset(FolderSource(path=str(tmp_path)))
    ds = load_dataset(FolderSource(path=str(tmp_path), image_size=8))
    assert ds.images.shape == (2, 8, 8, 3)


def test_an_npz_missing_a_key_is_a_user_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([0, 1]))
    with pytest.raises(UserError, match="missing key.*val_images"):
        load_dataset(NpzSource(path=str(path)))


# --------------------------------------------------------------------------- real tiles


@needs_osteo
def test_osteosarcoma_tiles_load_with_three_classes_via_the_regex():
    ds = load_dataset(FolderSource(path=str(OSTEO_TILES), label_regex=OSTEO_LABEL_REGEX, image_size=64))
    assert ds.images.shape == (60, 64, 64, 3)
    assert ds.class_names == ["Non-Tumor", "Non-Viable-Tumor", "Viable"]
    assert np.bincount(ds.labels).tolist() == [20, 20, 20]


@needs_osteo
def test_osteosarcoma_crops_keep_each_tile_in_one_split_and_decode_each_tile_once(monkeypatch):
    from deft_jax.data import images

    decoded = []
    decode_image = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda path, *a, **k: decoded.append(path) or decode_image(path, *a, **k))
    ds = load_dataset(FolderSource(path=str(OSTEO_TILES), label_regex=OSTEO_LABEL_REGEX, crop=512, image_size=64))
    assert ds.images.shape == (240, 64, 64, 3)
    groups, counts = np.unique(ds.groups, return_counts=True)
    assert groups.size == 60 and counts.tolist() == [4] * 60
    splits = make_splits(ds.labels, ds.groups, seed=0)
    sets = [set(ds.groups[splits[k]].tolist()) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert [len(s) for s in sets] == [36, 12, 12]
    assert len(decoded) == len(set(decoded)) == 60  # 4 crops from one decode of each tile
