"""Every bad input is one `error: ...` line on stderr with exit status 2: no traceback,
and no run directory that looks finished (metrics.json / report.md), nor any folder at all
when the input is refused before work starts. A few inputs that look odd but are right
(bfloat16 weights, a .safetensors CIFAR ResNet) are in the table as accepted cases.

The cases run in-process (the CLIs' `main`), so the table costs seconds, not a JAX start
per case; every case fails before any training. The config cases are generated from the
config dataclasses (every key: wrong type, out of bounds, huge, NaN/Infinity, unknown
choice); predict's cases share one checkpoint written directly (no training) per module
and edit a copy of its metadata."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from PIL import Image

from deft_jax.cli import predict, search
from deft_jax.runtime import rundir
from deft_jax.run.checkpoint import save_checkpoint
from deft_jax.config.schema import load_config
from deft_jax.errors import UserError
from deft_jax.cli import experiment as experiment_cli
from deft_jax.models import build_model
from deft_jax.run.pipeline import inference_meta
from deft_jax.config.parsing import choices_of, field_types, optional_type
from deft_jax.config.bounds import INT_BOUNDS, int_keys
from deft_jax.config.schema import Config
from deft_jax.config.sources import SOURCE_INT_BOUNDS, Source

from helpers import tiny_overrides


def sets(**extra) -> list[str]:
    return ["--set", *tiny_overrides(**extra)]


def npz_source(path) -> dict:
    return {"data.source": json.dumps({"kind": "npz", "path": str(path)})}


def write_npz(path, images, pickled=False):
    labels = np.arange(len(images)) % 2
    arrays = {f"{s}_images": images for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": labels for s in ("train", "val", "test")})
    if pickled:
        arrays["train_labels"] = np.array([{"label": 0}] * len(images), dtype=object)
    np.savez(path, **arrays)
    return path


def resumable_run(tmp_path, config_text=None, splits=None):
    """A run folder as `search` leaves it after the split is written."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, tiny_overrides())
    (run / "config.json").write_text(config_text if config_text is not None
                                     else json.dumps(cfg.to_dict()))
    if splits is not None:
        (run / "splits.json").write_text(json.dumps(splits))
    return run


def checkpoint_run(tmp_path, edit_meta=None, corrupt_data=False):
    """A finished-looking run holding a small_cnn checkpoint, its metadata edited."""
    cfg = load_config(None, tiny_overrides())
    spec = build_model("small_cnn", 3, "none", 16)
    meta = inference_meta(cfg, spec, ["a", "b", "c"], {g: True for g in spec.group_names}, None)
    if edit_meta:
        edit_meta(meta)
    run = tmp_path / "finished"
    run.mkdir()
    save_checkpoint(run / "checkpoint", spec.init(0), meta)
    if corrupt_data:
        rng = np.random.default_rng(0)
        for f in (run / "checkpoint" / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    return predict.main, ["--run", str(run), str(image)]


def case_npz_with_pickled_arrays(tmp_path, monkeypatch, shared=None):
    path = write_npz(tmp_path / "pickled.npz", np.zeros((8, 16, 16), np.uint8), pickled=True)
    return search.main, sets(**npz_source(path)), "pickled"


def case_npz_with_nan_images(tmp_path, monkeypatch, shared=None):
    images = np.full((8, 16, 16), 0.5, np.float32)
    images[3, 2, 2] = np.nan
    path = write_npz(tmp_path / "nan.npz", images)
    return search.main, sets(**npz_source(path)), "non-finite"


def case_resume_with_invalid_config_json(tmp_path, monkeypatch, shared=None):
    run = resumable_run(tmp_path, config_text="{not json")
    return search.main, ["--resume", str(run)], "config.json"


def case_resume_with_out_of_range_split_indices(tmp_path, monkeypatch, shared=None):
    run = resumable_run(tmp_path, splits={"train": [0, 1, 99999], "val": [2], "test": [3]})
    return search.main, ["--resume", str(run)], "99999"


def case_negative_seed(tmp_path, monkeypatch, shared=None):
    return search.main, ["--seed", "-1", *sets()], "seed"


def case_unknown_granularity(tmp_path, monkeypatch, shared=None):
    return search.main, sets(**{"model.granularity": '"bogus"'}), "granularity"


def case_huge_input_size(tmp_path, monkeypatch, shared=None):
    return search.main, sets(**{"model.input_size": "100000"}), "input_size"


def case_infinite_learning_rate(tmp_path, monkeypatch, shared=None):
    return search.main, sets(**{"finetune.learning_rate": "Infinity"}), "learning_rate"


def case_nan_crossover_rate(tmp_path, monkeypatch, shared=None):
    return search.main, sets(**{"search.crossover_rate": "NaN"}), "crossover_rate"


def case_a_full_disk(tmp_path, monkeypatch, shared=None):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(rundir.os, "fsync", no_space)
    return search.main, sets(), "run the same command again"  # nothing is resumable yet


def case_predict_on_random_checkpoint_data(tmp_path, monkeypatch, shared=None):
    return (*checkpoint_run(tmp_path, corrupt_data=True), "cannot restore checkpoint")


def case_predict_with_num_classes_not_matching_the_parameters(tmp_path, monkeypatch, shared=None):
    def edit(meta):
        meta["num_classes"], meta["class_names"] = 5, list("abcde")
    return (*checkpoint_run(tmp_path, edit), "does not match")


def case_predict_with_class_names_not_matching_num_classes(tmp_path, monkeypatch, shared=None):
    return (*checkpoint_run(tmp_path, lambda m: m.update(class_names=["a", "b"])), "class_names")


def case_predict_with_a_huge_input_size_in_the_checkpoint(tmp_path, monkeypatch, shared=None):
    return (*checkpoint_run(tmp_path, lambda m: m.update(input_size=99999)), "input_size")


def case_an_unknown_search_option(tmp_path, monkeypatch, shared=None):
    return search.main, ["--bogus"], "--bogus"


def case_a_search_seed_that_is_not_a_number(tmp_path, monkeypatch, shared=None):
    return search.main, ["--seed", "abc"], "--seed"


def case_predict_without_run(tmp_path, monkeypatch, shared=None):
    return predict.main, ["x.png"], "--run"


def case_an_unknown_experiment_option(tmp_path, monkeypatch, shared=None):
    return experiment_cli.main, ["--nope"], "--nope"


def case_default_resnet_weights_that_are_absent(tmp_path, monkeypatch, shared=None):
    monkeypatch.setenv("DEFT_SHARED_DATA", str(tmp_path / "no-shared-data"))
    return search.main, sets(**{"model.name": '"resnet20"', "model.weights": '"default"'}), "model.weights"


def case_resume_changing_the_population_size(tmp_path, monkeypatch, shared=None):
    run = resumable_run(tmp_path)
    return search.main, ["--resume", str(run), "--set", "search.population_size=6"], "population_size"


# --- config keys, generated from the dataclasses -------------------------------------------

def set_case(key: str, text: str, needle: str | None = None):
    def case(tmp_path, monkeypatch, shared=None):
        return search.main, sets(**{key: text}), needle or key
    return case


def config_key_cases() -> dict:
    """Every key of every section: a wrong type, and where it has bounds the values just
    outside them, a huge integer, NaN, Infinity, a negative number, an unknown choice."""
    cases = {}

    def walk(cls, where):
        for name, typ in field_types(cls).items():
            key = f"{where}.{name}" if where else name
            inner = optional_type(typ) or typ
            if dataclasses.is_dataclass(typ):
                walk(typ, key)
            elif key == "data.source":
                continue  # tagged union: the source cases below
            elif inner is int:
                lo, hi = INT_BOUNDS[key]
                cases[f"{key} a string"] = (key, '"ten"')
                cases[f"{key} a fraction"] = (key, "1.5")
                cases[f"{key} below {lo}"] = (key, str(lo - 1))
                cases[f"{key} above {hi}"] = (key, str(hi + 1))
                cases[f"{key} 10^30"] = (key, str(10**30))
            elif inner is float:
                cases[f"{key} a string"] = (key, '"fast"')
                cases[f"{key} NaN"] = (key, "NaN")
                cases[f"{key} Infinity"] = (key, "Infinity")
                cases[f"{key} negative"] = (key, "-1")
                cases[f"{key} 10^400"] = (key, str(10**400))
            elif inner is bool:
                cases[f"{key} a string"] = (key, '"yes"')
                cases[f"{key} a number"] = (key, "1")
            elif choices_of(inner) is not None:
                cases[f"{key} unknown choice"] = (key, '"bogus"')
                cases[f"{key} a number"] = (key, "3")
            elif inner is str:
                cases[f"{key} a number"] = (key, "3")
            elif inner is list:
                cases[f"{key} not a list"] = (key, "3")
    walk(Config, "")
    for member in get_args(Source):
        kind = member().kind
        base = {"digits": {}, "folder": {"path": "p"}, "npz": {"path": "p"}, "tfds": {"name": "x"}}[kind]
        for name, typ in field_types(member).items():
            if (optional_type(typ) or typ) is int:
                top = SOURCE_INT_BOUNDS[name]
                for label, value in (("zero", 0), (f"above {top}", top + 1), ("10^30", 10**30)):
                    source = json.dumps({"kind": kind, **base, name: value})
                    cases[f"data.source {kind} {name} {label}"] = ("data.source", source,
                                                                  f"data.source.{name}")
    cases["data.fractions two numbers"] = ("data.fractions", "[0.5, 0.5]", "data.fractions")
    cases["data.fractions not summing to 1"] = ("data.fractions", "[0.6, 0.6, 0.2]", "data.fractions")
    cases["data.fractions with NaN"] = ("data.fractions", "[NaN, 0.5, 0.5]", "data.fractions")
    cases["experiment.learning_rates with Infinity"] = ("experiment.learning_rates", "[Infinity]",
                                                         "experiment.learning_rates")
    cases["an unknown section key"] = ("search.bogus", "1", "search.bogus")
    cases["an unknown source kind"] = ("data.source", '{"kind": "imagenet"}', "data.source.kind")
    cases["a 5000-digit integer"] = ("seed", "1" * 5000, "cannot read value")
    return {name: set_case(*args) for name, args in cases.items()}


# --- config files ---------------------------------------------------------------------------

def config_file_case(name: str, content: bytes | None, needle: str):
    def case(tmp_path, monkeypatch, shared=None):
        path = tmp_path / name
        if content is None:
            os.mkfifo(path)  # a FIFO named like a config: never opened
        else:
            path.write_bytes(content)
        text = (content or b"").decode("latin-1")
        kept = [o for o in tiny_overrides() if o.split("=")[0].split(".")[-1] not in text]
        return search.main, ["--config", str(path), "--set", *kept], needle
    return case


CONFIG_FILES = {
    "json config with a syntax error": ("c.json", b'{"seed": 1,', "cannot parse config"),
    "toml config with a syntax error": ("c.toml", b"[search\npopulation_size = 4", "cannot parse config"),
    "json config that is a list": ("c.json", b"[1, 2]", "must be a table"),
    "json config with a 5000-digit integer": ("c.json", b'{"seed": ' + b"1" * 5000 + b"}",
                                              "cannot parse config"),
    "toml config with a 10^30 integer": ("c.toml", b"seed = " + str(10**30).encode(), "seed"),
    "toml config with epochs 10^9": ("c.toml", b"[finetune]\nepochs = 1000000000", "finetune.epochs"),
    "toml config with population 10^12": ("c.toml", b"[search]\npopulation_size = 1000000000000",
                                          "search.population_size"),
    "toml config with inf": ("c.toml", b"[finetune]\nlearning_rate = inf", "learning_rate"),
    "toml config with nan": ("c.toml", b"[search]\ncrossover_rate = nan", "crossover_rate"),
    "config that is not utf-8": ("c.toml", b"seed = 1 # \xff\xfe", "cannot parse config"),
    "config with an unknown section": ("c.toml", b"[bogus]\nx = 1", "bogus"),
    "config whose section is a number": ("c.toml", b"search = 3", "search"),
    "config that is a FIFO": ("c.toml", None, "not a regular file"),
}


# --- damaged .npz files ---------------------------------------------------------------------

def npz_arrays(n=8, size=16):
    images = np.zeros((n, size, size), np.uint8)
    labels = np.arange(n) % 2
    arrays = {f"{s}_images": images for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": labels for s in ("train", "val", "test")})
    return arrays


def npz_case(edit, needle: str, raw: bytes | None = None):
    def case(tmp_path, monkeypatch, shared=None):
        path = tmp_path / "data.npz"
        if raw is not None:
            path.write_bytes(raw)
        else:
            arrays = npz_arrays()
            edit(arrays)
            np.savez(path, **arrays)
        return search.main, sets(**npz_source(path)), needle
    return case


def truncated_npz_case(tmp_path, monkeypatch, shared=None):
    path = tmp_path / "data.npz"
    np.savez(path, **npz_arrays())
    path.write_bytes(path.read_bytes()[:700])
    return search.main, sets(**npz_source(path)), "cannot read npz file"


def npz_header_claiming_terabytes_case(tmp_path, monkeypatch, shared=None):
    """A .npy record whose header claims [10^6, 10^6, 1000] uint8 (about 10^15 bytes)."""
    path = tmp_path / "data.npz"
    np.savez(path, **npz_arrays())
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6, 1000)}
    from io import BytesIO
    buffer = BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path) as old:
        records = {n: old.read(n) for n in old.namelist()}
    records["train_images.npy"] = buffer.getvalue() + b"\0" * 64
    with zipfile.ZipFile(path, "w") as new:
        for n, data in records.items():
            new.writestr(n, data)
    return search.main, sets(**npz_source(path)), "claims shape"


def npz_label_of_100000_case(tmp_path, monkeypatch, shared=None):
    """The issue's case: one label of 100000 (no class_names) once trained, then built a
    74 GiB confusion matrix; now refused while the file is read."""
    def edit(a):
        a["test_labels"] = a["test_labels"].copy()
        a["test_labels"][0] = 100000
    return npz_case(edit, "classes")(tmp_path, monkeypatch)


def npz_fifo_case(tmp_path, monkeypatch, shared=None):
    os.mkfifo(tmp_path / "data.npz")
    return search.main, sets(**npz_source(tmp_path / "data.npz")), "not a file"


def _set(key, value):
    return lambda a: a.__setitem__(key, value)


NPZ_CASES = {
    "npz that is not a zip": npz_case(None, "cannot read npz file", raw=b"not an npz file" * 20),
    "npz missing test_labels": npz_case(lambda a: a.pop("test_labels"), "missing key"),
    "npz with string images": npz_case(_set("train_images", np.array([["a"]] * 8)), "train_images"),
    "npz with complex images": npz_case(_set("val_images", np.zeros((8, 16, 16), np.complex64)),
                                        "must hold numbers"),
    "npz with 2-d images": npz_case(_set("train_images", np.zeros((8, 16), np.uint8)), "train_images"),
    "npz with images above 255": npz_case(_set("train_images", np.full((8, 16, 16), 300, np.int32)),
                                          "0..255"),
    "npz with fewer labels than images": npz_case(_set("train_labels", np.zeros(5, int)), "train_labels"),
    "npz with 2-column labels": npz_case(_set("val_labels", np.zeros((8, 2), int)), "val_labels"),
    "npz with fractional labels": npz_case(_set("train_labels", np.full(8, 0.5)), "integer class ids"),
    "npz with string labels": npz_case(_set("train_labels", np.array(["a"] * 8)), "integer class ids"),
    "npz with negative labels": npz_case(_set("test_labels", -(np.arange(8) % 2)), ">= 0"),
    "npz with a label beyond its class_names": npz_case(
        lambda a: a.update(class_names=np.array(["a", "b"]), train_labels=np.arange(8) % 3),
        "out of range"),
    "npz with splits of different image sizes": npz_case(
        _set("test_images", np.zeros((8, 12, 12), np.uint8)), "different sizes"),
    "npz with one class": npz_case(lambda a: a.update({k: np.zeros(8, int) for k in list(a) if
                                                       k.endswith("labels")}), "one class"),
}


# --- damaged checkpoint metadata (one checkpoint per module, its metadata edited in a copy) ---

class Shared:
    """What several cases use, made once per module (per test worker)."""

    def __init__(self, factory):
        self.factory = factory
        self._checkpoint = None

    @property
    def checkpoint(self) -> Path:
        if self._checkpoint is None:
            folder = self.factory.mktemp("shared")
            cfg = load_config(None, tiny_overrides())
            spec = build_model("small_cnn", 3, "none", 16)
            meta = inference_meta(cfg, spec, ["a", "b", "c"], {g: True for g in spec.group_names}, None)
            save_checkpoint(folder / "checkpoint", spec.init(0), meta)
            self._checkpoint = folder / "checkpoint"
        return self._checkpoint


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return Shared(tmp_path_factory)


def meta_case(edit, needle: str):
    def case(tmp_path, monkeypatch, shared=None):
        run = tmp_path / "finished"
        run.mkdir()
        shutil.copytree(shared.checkpoint, run / "checkpoint")
        meta_file = run / "checkpoint" / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        meta = edit(meta) or meta
        meta_file.write_text(meta if isinstance(meta, str) else json.dumps(meta))
        image = tmp_path / "img.png"
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
        return predict.main, ["--run", str(run), str(image)], needle
    return case


def _sampling(**values):
    return lambda m: m["sampling"].update(values)


META_CASES = {
    # the case: a 32768 px image_size allocated for 35 s before failing
    "checkpoint image_size 32768": meta_case(_sampling(image_size=32768), "sampling.image_size"),
    "checkpoint crop 0": meta_case(_sampling(crop=0), "sampling.crop"),
    "checkpoint crop_stride a string": meta_case(_sampling(crop_stride="8"), "sampling.crop_stride"),
    "checkpoint sampling a list": meta_case(lambda m: m.update(sampling=[1]), "sampling"),
    "checkpoint unknown model": meta_case(lambda m: m.update(model="alexnet"), "unknown model"),
    "checkpoint input_size true": meta_case(lambda m: m.update(input_size=True), "input_size"),
    "checkpoint input_size 4": meta_case(lambda m: m.update(input_size=4), "input_size"),
    "checkpoint num_classes a string": meta_case(lambda m: m.update(num_classes="3"), "num_classes"),
    "checkpoint 1001 class_names": meta_case(
        lambda m: m.update(class_names=[str(i) for i in range(1001)], num_classes=1001), "class_names"),
    "checkpoint class_names numbers": meta_case(lambda m: m.update(class_names=[1, 2, 3]), "class_names"),
    "checkpoint mean of two numbers": meta_case(lambda m: m.update(mean=[0.5, 0.5]), "mean"),
    "checkpoint std zero": meta_case(lambda m: m.update(std=[0.0, 0.5, 0.5]), "std"),
    "checkpoint std a string": meta_case(lambda m: m.update(std="0.5"), "std"),
    "checkpoint granularity bogus": meta_case(lambda m: m.update(granularity="bogus"), "granularity"),
    "checkpoint metadata a list": meta_case(lambda m: "[1, 2]", "not a JSON object"),
    "checkpoint metadata not json": meta_case(lambda m: "{not json", "cannot restore checkpoint"),
}


# --- damaged weight files -------------------------------------------------------------------

def _p(obj) -> bytes:
    """`obj`'s pickle opcodes without PROTO and STOP, to compose a pickle by hand."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def crafted_state_pickle(numel: int, size: tuple, stride: tuple, view: bool = True) -> bytes:
    """A torch.save main pickle {'w': tensor} by hand (no torch): the tensor's storage is a
    persistent id ('storage', torch.FloatStorage, '0', 'cpu', numel[, None])."""
    pid = b"(" + _p("storage") + b"ctorch\nFloatStorage\n" + _p("0") + _p("cpu") + _p(numel)
    pid += (b"N" if view else b"") + b"tQ"
    args = b"(" + pid + _p(0) + _p(size) + _p(stride) + b"\x89Nt"
    return b"\x80\x02}" + _p("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Rs."


def legacy_weight_file(path: Path, numel: int, size: tuple, stride: tuple, data_numel: int) -> Path:
    records = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
               pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
               crafted_state_pickle(numel, size, stride), pickle.dumps(["0"], protocol=2),
               struct.pack("<q", numel), b"\0" * 4 * data_numel]
    path.write_bytes(b"".join(records))
    return path


def weights_case(make, needle: str, model: str = "resnet20"):
    def case(tmp_path, monkeypatch, shared=None):
        path = make(tmp_path)
        return search.main, sets(**{"model.name": json.dumps(model), "model.weights": json.dumps(str(path)),
                                    "model.input_size": "32"}), needle
    return case


def terabyte_legacy_pth(tmp_path):
    """The issue's case: about 300 bytes that asked for 3.64 TiB."""
    path = legacy_weight_file(tmp_path / "tiny.pth", 10**12, (10**12,), (1,), 0)
    assert path.stat().st_size < 400
    return path


def stride_zero_pth(tmp_path):
    return legacy_weight_file(tmp_path / "stride0.pth", 1, (10**6, 10**6), (0, 0), 1)


def zip_pth(tmp_path, numel, record_bytes):
    path = tmp_path / "zip.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", crafted_state_pickle(numel, (numel,), (1,), view=False))
        archive.writestr("archive/data/0", b"\0" * record_bytes)
    return path


def cifar_state(torch, dtype):
    from deft_jax.models.resnet_cifar import _expected_tensors
    return {k: torch.zeros(shape, dtype=dtype) for k, (_, _, shape) in
            _expected_tensors(20, 10, False).items()}


def torch_file(kind, dtype_name, model="resnet20"):
    def make(tmp_path):
        torch = pytest.importorskip("torch")
        dtype = getattr(torch, dtype_name)
        if model == "resnet20":
            state = cifar_state(torch, dtype)
        else:
            from deft_jax.models.resnet_imagenet import torch_layout
            from deft_jax.models.weight_layout import torch_shape
            from flax import traverse_util
            shapes = traverse_util.flatten_dict(build_model(model, 2, "none", 32).variable_shapes())
            state = {e.key: torch.zeros(torch_shape(e.kind, tuple(shapes[(e.collection, *e.path)].shape)),
                                        dtype=dtype)
                     for e in torch_layout(18) if not e.head}
        if kind == "safetensors":
            from safetensors.torch import save_file
            path = tmp_path / f"w-{dtype_name}.safetensors"
            save_file(state, str(path))
        else:
            path = tmp_path / f"w-{dtype_name}.pth"
            torch.save(state, path)
        return path
    return make


def garbage_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10**15) + b"{}")
    return path


def truncated_safetensors(tmp_path):
    path = torch_file("safetensors", "float32")(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    return path


def fifo_weights(tmp_path):
    os.mkfifo(tmp_path / "w.pth")
    return tmp_path / "w.pth"


WEIGHT_CASES = {
    "a 300-byte pth asking for terabytes": weights_case(terabyte_legacy_pth, "bytes the file holds"),
    "a pth tensor of 10^12 elements over one": weights_case(stride_zero_pth, "larger than its storage"),
    "a zip pth storage larger than its record": weights_case(lambda t: zip_pth(t, 10**12, 4),
                                                             "bytes the file holds"),
    "a zip pth with a negative storage size": weights_case(lambda t: zip_pth(t, -5, 4),
                                                           "invalid element count"),
    "complex safetensors weights": weights_case(torch_file("safetensors", "complex64"), "complex"),
    "complex pth weights": weights_case(torch_file("pth", "complex64"), "complex"),
    "integer pth weights": weights_case(torch_file("pth", "int64"), "not floating point"),
    "complex resnet18 weights": weights_case(torch_file("safetensors", "complex64", "resnet18"),
                                             "complex", model="resnet18"),
    "a safetensors header of 10^15 bytes": weights_case(garbage_safetensors, "not a readable .safetensors"),
    "a truncated safetensors file": weights_case(truncated_safetensors, "not a readable .safetensors"),
    "weights that are a FIFO": weights_case(fifo_weights, "not a regular file"),
}


def accepted_weights(make, model):
    """Accepted: building the model reads, checks and converts the file without an error."""
    def case(tmp_path, monkeypatch, shared=None):
        def build():
            spec = build_model(model, 10 if model == "resnet20" else 2, str(make(tmp_path)), 32)
            variables = spec.load_pretrained(spec.init(0))
            leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(variables["params"])]
            assert all(leaf.dtype == np.float32 for leaf in leaves)
        return build, [], None
    return case


ACCEPTED_CASES = {
    "accepted: bfloat16 safetensors for resnet18": accepted_weights(
        torch_file("safetensors", "bfloat16", "resnet18"), "resnet18"),
    "accepted: bfloat16 pth for resnet18": accepted_weights(torch_file("pth", "bfloat16", "resnet18"),
                                                            "resnet18"),
    "accepted: safetensors for a CIFAR resnet20": accepted_weights(torch_file("safetensors", "float32"),
                                                                   "resnet20"),
    "accepted: bfloat16 safetensors for a CIFAR resnet20": accepted_weights(
        torch_file("safetensors", "bfloat16"), "resnet20"),
    "accepted: float16 pth for a CIFAR resnet20": accepted_weights(torch_file("pth", "float16"),
                                                                   "resnet20"),
}


# --- special files --------------------------------------------------------------------------

def image_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def fifo_in_image_folder(crop):
    """The issue's case: a FIFO named x.png (with crop) waited forever for a writer."""
    def case(tmp_path, monkeypatch, shared=None):
        root = image_folder(tmp_path)
        os.mkfifo(root / "a" / "x.png")
        source = {"kind": "folder", "path": str(root), **({"crop": 8} if crop else {})}
        return search.main, sets(**{"data.source": json.dumps(source)}), "not a regular file"
    return case


def predict_on_a_fifo(tmp_path, monkeypatch, shared=None):
    entry, argv, _ = meta_case(lambda m: None, "")(tmp_path, monkeypatch, shared)
    os.mkfifo(tmp_path / "pipe.png")
    return entry, [*argv[:-1], str(tmp_path / "pipe.png")], "not an image file"


def a_dangling_link_in_an_image_folder(tmp_path, monkeypatch, shared=None):
    root = image_folder(tmp_path)
    os.symlink(tmp_path / "gone.png", root / "b" / "x.png")
    source = {"kind": "folder", "path": str(root), "crop": 8}
    return search.main, sets(**{"data.source": json.dumps(source)}), "cannot read image"


SPECIAL_CASES = {
    "a FIFO in an image folder with crop": fifo_in_image_folder(True),
    "a FIFO in an image folder": fifo_in_image_folder(False),
    "a FIFO as the npz file": npz_fifo_case,
    "a FIFO as the image to predict": predict_on_a_fifo,
    "a dangling link in an image folder": a_dangling_link_in_an_image_folder,
}


CASES = {
    **{k[len("case_"):]: v for k, v in sorted(globals().items()) if k.startswith("case_")},
    **config_key_cases(),
    **{k: config_file_case(*v) for k, v in CONFIG_FILES.items()},
    **NPZ_CASES,
    "a truncated npz": truncated_npz_case,
    "an npz header claiming 10^15 bytes": npz_header_claiming_terabytes_case,
    "an npz label of 100000": npz_label_of_100000_case,
    **META_CASES,
    **WEIGHT_CASES,
    **ACCEPTED_CASES,
    **SPECIAL_CASES,
}


def test_the_table_has_at_least_100_cases_and_every_integer_key_has_bounds():
    assert len(CASES) >= 100
    assert set(int_keys(Config)) == set(INT_BOUNDS)


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_error_line_with_exit_status_2(name, tmp_path, monkeypatch, capsys, shared):
    monkeypatch.chdir(tmp_path)  # a default --out would land here
    entry, argv, needle = CASES[name](tmp_path, monkeypatch, shared)
    if needle is None:  # a case that is right to accept
        entry(*argv)
        return
    out = tmp_path / "out"
    if entry is search.main and "--resume" not in argv:
        argv = ["--out", str(out), *argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    lines = [l for l in err.splitlines() if not l.startswith("compile cache")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle in lines[0], err
    for folder in (out, tmp_path / "run", tmp_path / "runs"):
        assert not (folder / "metrics.json").exists() and not (folder / "report.md").exists()
    if entry is search.main and "--resume" not in argv:
        assert not out.exists(), "refused input left a run directory behind"


def test_a_second_unlocked_check_cannot_start_writing_a_locked_folder(tmp_path):
    rundir.create_fresh(tmp_path / "run")
    try:
        fd = os.open(tmp_path / "run" / rundir.LOCK, os.O_RDWR)
        import fcntl
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        rundir.release(tmp_path / "run")


def test_checkpoint_save_on_a_full_disk_is_a_user_error(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def full(*args, **kwargs):
        raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device")
    monkeypatch.setattr(ocp.Checkpointer, "save", full)
    spec = build_model("small_cnn", 2, "none", 16)
    with pytest.raises(UserError, match="disk is full"):
        save_checkpoint(tmp_path / "ckpt", spec.init(0), {"model": "small_cnn"})


def test_metrics_json_is_strict_json_without_nan(tmp_path):
    rundir.write_json(tmp_path / "m.json", {"auc": float("nan"), "x": [np.float32(np.inf), 1.5]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"auc": None, "x": [None, 1.5]}


def _fill(disk: Path, leave: int) -> Path:
    """Fill the file system of `disk` until only about `leave` bytes are free."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    block = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                try:
                    os.write(fd, b"\0" * 4096)  # the last partial block
                except OSError:
                    break
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.slow
def test_a_really_full_disk_is_one_error_line_whose_advice_leads_to_a_finished_run(tmp_path):
    """A small tmpfs filled to a few levels (nothing free, a few KB, enough for the run's
    first files but not the checkpoint): each run ends in one `error:` line; after space is
    freed, doing what the line says finishes the run."""
    import subprocess
    import sys

    from conftest import REPO

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = disk / "run"
    command = ["--out", str(run), "--set", *tiny_overrides()]

    def search_cli(args):
        return subprocess.run([sys.executable, "-m", "deft_jax.search", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)

    advised = set()
    try:
        for leave in (0, 4096, 64 * 1024):
            filler = _fill(disk, leave)
            proc = search_cli(command)
            lines = [l for l in proc.stderr.strip().splitlines() if not l.startswith("compile cache")]
            assert proc.returncode == 2, proc.stderr[-3000:]
            assert len(lines) == 1 and lines[0].startswith("error: the disk is full"), proc.stderr[-3000:]
            assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
            assert not (run / "metrics.json").exists()
            filler.unlink()  # free the space, then follow the advice
            if "--resume" in lines[0]:
                assert leave > 0 and (run / "config.json").exists(), lines[0]
                advice = ["--resume", lines[0].rsplit("--resume ", 1)[1].strip()]
                advised.add("resume")
            else:
                assert "run the same command again" in lines[0] and not run.exists(), lines[0]
                advice = command
                advised.add("again")
            done = search_cli(advice)
            assert done.returncode == 0, done.stderr[-3000:]
            assert (run / "metrics.json").exists() and (run / "report.md").exists()
            shutil.rmtree(run)
        assert advised == {"resume", "again"}  # a level before the run is resumable, and one after
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
