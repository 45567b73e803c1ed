"""The GPU suite (benchmarks/gpu_suite.py) in its CPU setting (`--tiny`): its three sides
(deft_jax, the sequential PyTorch reference, the batched PyTorch peer) and its report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from benchmarks.gpu_suite import batched_vs_sequential, combine, headline_rows  # noqa: E402
from conftest import REPO  # noqa: E402


def test_rows_get_both_pytorch_speedups_and_the_headline_is_p32_else_the_largest_p():
    jax_side = {"rows": [{"model": "m", "population": p, "dtype": "float32", "members_per_s": 4.0 * p}
                         for p in (8, 32, 128)] + [{"model": "m", "population": 256, "skipped": "few masks"}]}
    torch_side = {"members_per_s": 2.0}
    batched_side = {"rows": [{"model": "m", "population": 8, "members_per_s": 8.0},
                             {"model": "m", "population": 32, "members_per_s": 16.0}]}
    rows = combine(jax_side, torch_side, batched_side)
    assert [r.get("speedup_vs_pytorch") for r in rows] == [16.0, 64.0, 256.0, None]
    assert [r.get("speedup_vs_batched_pytorch") for r in rows] == [4.0, 8.0, None, None]
    assert [r["population"] for r in headline_rows(rows)] == [32]
    assert [r["population"] for r in headline_rows([r for r in rows if r["population"] != 32])] == [128]
    seq = {"masks": ["01", "11"], "fitness": [0.5, 0.25], "val_loss": [1.0, 2.0]}
    peer = {"fitness": {"01": 0.5, "11": 0.25, "10": 0.75}, "val_loss": {"01": 1.0, "11": 2.00001}}
    compared = batched_vs_sequential(seq, peer)
    assert compared["masks"] == 2 and compared["max_abs_fitness_diff"] == 0.0
    assert compared["max_abs_val_loss_diff"] == pytest.approx(1e-5, abs=1e-9)


@pytest.mark.slow
def test_the_gpu_suite_runs_in_its_tiny_cpu_setting_and_reports_all_three_sides(tmp_path):
    """`--tiny --exact-fp32` on the CPU: deft_jax at P = 4 and 8, the sequential reference on
    4 masks, the batched peer at P = 4 and 8. Fitness agreement: the batched peer and the
    sequential reference train the same masks from the same initial weights on the same
    batches, so their fitness is equal and their validation losses agree within 1e-4
    (float32 summation order only); deft_jax agrees with both. `--exact-fp32` has nothing
    to turn off on a CPU, but is accepted and recorded on every side."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--tiny", "--exact-fp32",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (path,) = tmp_path.glob("gpu_suite-*.json")
    assert str(path) in proc.stdout
    assert "speedup_vs_batched_pytorch" in proc.stdout and "PyTorch batched (torch.func.vmap)" in proc.stdout
    result = json.loads(path.read_text())
    sides = result["sides"]["small_cnn"]
    torch_side, batched_side = sides["torch"], sides["torch_batched"]
    rows = [r for r in result["rows"] if r.get("dtype") == "float32"]
    assert [r["population"] for r in rows] == [4, 8]
    batched = {r["population"]: r for r in result["batched_pytorch_rows"]}
    assert sorted(batched) == [4, 8]
    for r in rows:
        assert r["speedup_vs_pytorch"] == pytest.approx(r["members_per_s"] / torch_side["members_per_s"], rel=0.02)
        assert r["batched_pytorch_members_per_s"] == batched[r["population"]]["members_per_s"]
        assert r["speedup_vs_batched_pytorch"] == pytest.approx(
            r["members_per_s"] / batched[r["population"]]["members_per_s"], rel=0.02)
    assert result["speedup_vs_batched_pytorch"] == {"small_cnn": rows[-1]["speedup_vs_batched_pytorch"]}
    assert result["headline_population"] == {"small_cnn": 8}
    # the batched peer trained every mask of both its populations, the sequential ones among them
    assert len(batched_side["fitness"]) == 16 and set(torch_side["masks"]) <= set(batched_side["fitness"])
    peer_vs_sequential = sides["batched_vs_sequential_pytorch"]
    assert peer_vs_sequential["masks"] == len(torch_side["masks"]) == 4
    assert peer_vs_sequential["max_abs_fitness_diff"] == 0.0
    assert peer_vs_sequential["max_abs_val_loss_diff"] < 1e-4
    assert sides["fitness_vs_pytorch"]["mean_abs_diff"] < 0.05
    bf16 = [r for r in result["rows"] if r.get("dtype") == "bfloat16"]
    assert bf16 and bf16[0]["fitness_vs_float32"]["masks"] == bf16[0]["population"]
    # the device of every row, and --exact-fp32 recorded on every side
    assert all(r["device_name"] for r in result["rows"] + result["batched_pytorch_rows"])
    assert torch_side["device_name"] and batched_side["device_name"]
    assert result["exact_fp32"] is True
    assert sides["jax"]["matmul_precision"] == "highest"
    assert torch_side["tf32"] == batched_side["tf32"] == {"matmul": False, "cudnn": False}
