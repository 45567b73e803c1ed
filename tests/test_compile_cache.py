"""The CLI's persistent compilation cache: a second identical search compiles nothing new
and computes the same result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from deft_jax.runtime import rundir



def search(out: Path, cache) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", DEFT_JAX_COMPILE_CACHE=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.run([sys.executable, "-m", "deft_jax.search", "--config", str(REPO / "configs" / "smoke.toml"),
                           "--out", str(out), "--set", "search.generations=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_a_second_identical_search_loads_every_program_from_the_compile_cache_and_gives_the_same_result(tmp_path):
    cache = tmp_path / "cache"
    log = search(tmp_path / "first", cache)
    assert f"compile cache: {cache}" in log
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first search wrote no cache entries"
    search(tmp_path / "second", cache)
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new was compiled
    first, second = (rundir.read_json(tmp_path / d / rundir.BEST) for d in ("first", "second"))
    assert first == second


@pytest.mark.slow
def test_the_compile_cache_can_be_switched_off(tmp_path):
    log = search(tmp_path / "run", "off")
    assert "compile cache" not in log
