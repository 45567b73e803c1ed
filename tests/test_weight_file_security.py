"""A crafted weight file never runs code, whichever record carries the payload and whichever
entry point reads it (search, experiment, predict, benchmarks).

Every malicious file here pickles `os.system("touch MARKER")`: if anything unpickled it with a
plain unpickler, MARKER would exist afterwards. Safetensors files hold no pickle at all (a
JSON header plus raw bytes), so they are safe by design and need no such test.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deft_jax.errors import UserError
from deft_jax.models.torch_weights import read_torch_state_dict

from conftest import REPO
from helpers import tiny_overrides

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
LEGACY_RECORDS = ["magic", "protocol", "sys_info", "main", "storage_keys"]


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _payload(marker: Path) -> bytes:
    return pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2)


def legacy_file(path: Path, marker: Path, evil_record: str) -> Path:
    """A legacy torch.save file (5 consecutive pickles, no storages) with one record replaced
    by the payload."""
    records = {
        "magic": pickle.dumps(LEGACY_MAGIC, protocol=2),
        "protocol": pickle.dumps(LEGACY_PROTOCOL, protocol=2),
        "sys_info": pickle.dumps({"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
        "main": pickle.dumps({"conv.weight": 0}, protocol=2),
        "storage_keys": pickle.dumps([], protocol=2),
    }
    records[evil_record] = _payload(marker)
    path.write_bytes(b"".join(records[name] for name in LEGACY_RECORDS))
    return path


def zip_file(path: Path, marker: Path) -> Path:
    """A zip-format torch.save file whose data.pkl is the payload."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _payload(marker))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return path


def malicious_files(tmp_path: Path) -> list[tuple[Path, Path]]:
    """(weight file, marker it would create) for every record of both formats."""
    out = []
    for record in LEGACY_RECORDS:
        marker = tmp_path / f"pwned-legacy-{record}"
        out.append((legacy_file(tmp_path / f"evil-{record}.th", marker, record), marker))
    marker = tmp_path / "pwned-zip"
    out.append((zip_file(tmp_path / "evil-zip.pth", marker), marker))
    return out


def test_the_payload_really_creates_its_marker_when_unpickled_plainly(tmp_path):
    """Guards the other tests: the payload is live, so 'no marker' means 'nothing ran'."""
    marker = tmp_path / "plain"
    pickle.loads(_payload(marker))
    assert marker.exists()


@pytest.mark.parametrize("record", LEGACY_RECORDS)
def test_a_legacy_file_with_a_payload_in_any_record_is_refused_without_running_it(tmp_path, record):
    marker = tmp_path / "pwned"
    path = legacy_file(tmp_path / "evil.th", marker, record)
    with pytest.raises(UserError, match="evil.th") as err:
        read_torch_state_dict(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_a_zip_file_with_a_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UserError, match="evil.pth"):
        read_torch_state_dict(zip_file(tmp_path / "evil.pth", marker))
    assert not marker.exists()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _assert_one_line_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_search_and_experiment_refuse_every_malicious_weight_file_without_running_it(tmp_path):
    for path, marker in malicious_files(tmp_path):
        overrides = tiny_overrides(**{"model.name": '"resnet20"', "model.weights": json.dumps(str(path)),
                                      "model.input_size": "32"})
        search = _run(["-m", "deft_jax.search", "--out", str(tmp_path / f"run-{path.stem}"),
                       "--set", *overrides], tmp_path)
        _assert_one_line_error(search)
        assert "cannot read weights file" in search.stderr
        experiment = _run(["-m", "deft_jax.experiment", "--methods", "linear-probe", "--seeds", "1",
                           "--out", str(tmp_path / f"exp-{path.stem}"), "--set", *overrides], tmp_path)
        _assert_one_line_error(experiment)
        assert not marker.exists(), path.name


@pytest.mark.slow
def test_predict_refuses_a_checkpoint_whose_files_are_payloads_without_running_them(tmp_path):
    """predict reads an Orbax checkpoint (JSON metadata + array files, no pickle): replacing
    every file of a real checkpoint with a payload is a one-line error, and nothing runs."""
    run = tmp_path / "run"
    finished = _run(["-m", "deft_jax.search", "--out", str(run), "--set",
                     *tiny_overrides(**{"search.generations": "0", "final.epochs": "1"})], tmp_path)
    assert finished.returncode == 0, finished.stderr
    marker = tmp_path / "pwned"
    files = [p for p in (run / "checkpoint").rglob("*") if p.is_file()]
    assert files
    for p in files:
        p.write_bytes(_payload(marker))
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (16, 16)).save(image)
    proc = _run(["-m", "deft_jax.predict", "--run", str(run), str(image)], tmp_path)
    _assert_one_line_error(proc)
    assert not marker.exists()


def test_the_benchmarks_weight_loaders_refuse_malicious_files_without_running_them(tmp_path):
    """The PyTorch side of the benchmarks loads weights with torch.load(weights_only=True)
    (torch's own allow-list unpickler); the JAX side with the reader above."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twins.torch_models import resnet_cifar_torch
    from deft_jax.models import build_model

    for path, marker in malicious_files(tmp_path):
        with pytest.raises(UserError):
            build_model("resnet20", 3, str(path), 32)
        with pytest.raises((pickle.UnpicklingError, RuntimeError, ValueError, EOFError)):
            resnet_cifar_torch(20, 3, path)
        assert not marker.exists(), path.name
    del torch
