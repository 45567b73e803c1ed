"""TensorFlow Datasets sources, offline on a dataset prepared locally with TFDS's builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from deft_jax.config.schema import load_config
from deft_jax.config.sources import TfdsSource
from deft_jax.data import load_dataset
from deft_jax.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed "
                           "(pip install -e '.[tfds]')")
from tfds_tiny import prepare_tiny_shapes  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return prepare_tiny_shapes(data_dir), data_dir


def test_predefined_splits_labels_and_class_names_come_from_the_dataset(prepared):
    name, data_dir = prepared
    dataset = load_dataset(TfdsSource(name=name, data_dir=str(data_dir)))
    assert dataset.class_names == ["red", "green", "blue"]
    assert dataset.images.shape == (42, 20, 20, 3) and dataset.images.dtype == np.uint8
    splits = dataset.predefined_splits
    # train + test only: validation is a stratified fifth of train, test stays the dataset's
    assert [len(splits[k]) for k in ("train", "val", "test")] == [24, 6, 12]
    assert set(splits["test"]) == set(range(30, 42))
    assert not set(splits["train"]) & set(splits["val"])
    # the colour of each image is its label
    colour = dataset.images.reshape(42, -1, 3).mean(axis=1).argmax(axis=1)
    np.testing.assert_array_equal(colour, dataset.labels)


def test_a_named_split_is_read_alone_and_split_by_deft_jax(prepared):
    name, data_dir = prepared
    dataset = load_dataset(TfdsSource(name=name, data_dir=str(data_dir), split="train", image_size=16, max_examples=21))
    assert dataset.predefined_splits is None
    assert dataset.images.shape == (21, 16, 16, 3)
    assert sorted(set(dataset.labels.tolist())) == [0, 1, 2]  # TFDS stores examples shuffled


def test_a_dataset_that_is_not_prepared_is_one_line_saying_how_to_prepare_it(prepared, tmp_path):
    _, data_dir = prepared
    for name in ("mnist", "no_such_dataset"):
        with pytest.raises(UserError, match=rf"'{name}' is not prepared in .*tfds build {name}") as err:
            load_dataset(TfdsSource(name=name, data_dir=str(data_dir)))
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"unknown config key data.source.path for data.source.kind = 'tfds' "
                                        r"\(tfds keys: name, split, data_dir, image_size, max_examples;"):
        load_config(None, ['data.source={kind="tfds", name="x", path="y"}'])


def test_tfds_name_on_the_command_line_is_short_for_a_tfds_source_table():
    cfg = load_config(None, ["data.source=tfds:mnist", 'data.source.data_dir="/data/tfds"'])
    assert cfg.data.source == TfdsSource(name="mnist", data_dir="/data/tfds")
    assert load_config(None, ["data.source=tfds:mnist"]).data.source == TfdsSource(name="mnist")
    with pytest.raises(UserError, match="data.source must be a table, got 'mnist'"):
        load_config(None, ["data.source=mnist"])  # only the tfds: prefix is a shorthand


@pytest.mark.slow
def test_search_runs_end_to_end_on_a_tfds_source(prepared, tmp_path):
    name, data_dir = prepared
    result = subprocess.run(
        [sys.executable, "-m", "deft_jax.search", "--out", str(tmp_path / "run"), "--set",
         'model.name="small_cnn"', 'model.weights="none"', "model.input_size=16",
         f"data.source=tfds:{name}", f"data.source.data_dir={json.dumps(str(data_dir))}",
         "search.population_size=4", "search.generations=1", "final.epochs=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tfds tiny_shapes" in result.stdout + result.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
