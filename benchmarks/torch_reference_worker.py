"""The PyTorch side of `benchmarks/vs_pytorch.py`, in its own process: the reference
(`benchmarks/torch_reference.py`) replays the JAX side's masks in order and times them.

    python benchmarks/torch_reference_worker.py --inputs DIR --out result.json

where DIR holds `meta.json` (config, model, masks in order), `arrays.npz` (splits, batch
plan) and `variables.npz` (the JAX side's initial variables, '/'-joined keys). No JAX is
imported, so the process's peak memory is PyTorch's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `deft_jax` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.torch_reference import TorchReference, set_threads  # noqa: E402
from benchmarks.torch_twins.torch_models import torch_twin  # noqa: E402


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


class _Cfg:
    def __init__(self, raw: Mapping):
        self.__dict__.update(raw)


def run_worker(inputs: Path, out: Path, threads: int | None = None, cache_prefix: bool = False) -> dict:
    t_start = time.perf_counter()
    threads = set_threads(threads)
    meta = json.loads((inputs / "meta.json").read_text())
    arrays = np.load(inputs / "arrays.npz")
    with np.load(inputs / "variables.npz") as f:
        variables = _unflatten({k: f[k] for k in f.files})
    m = meta["model"]
    twin = torch_twin(m["name"], meta["num_classes"], variables, m["input_size"], m["granularity"],
                      meta["pretrained"])
    if tuple(twin.group_names) != tuple(meta["group_names"]):
        raise SystemExit(f"torch groups {twin.group_names} != deft_jax groups {meta['group_names']}")
    plan = list(arrays["plan"])
    cfg = _Cfg(meta["finetune"])
    ref = TorchReference(twin, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                         meta["num_classes"], cfg, plan, seed=meta["seed"], metric=meta["metric"],
                         cache_prefix=cache_prefix)
    group_names = meta["group_names"]
    masks = [{g: c == "1" for g, c in zip(group_names, key)} for key in meta["masks"]]
    setup_s = time.perf_counter() - t_start

    from benchmarks.machine import OtherLoad  # no JAX
    other = OtherLoad()
    t0 = time.perf_counter()
    fitness, finished = [], []
    for mask in masks:
        fitness.append(ref.evaluate_one(mask))
        finished.append(time.perf_counter() - t0)
    search_s = time.perf_counter() - t0
    other_cores = other.cores()

    step_profile = {}
    for label, key in meta.get("profile_masks", {}).items():
        times = ref.time_steps({g: c == "1" for g, c in zip(group_names, key)})
        step_profile[label] = {"mask": key, "median_step_s": float(np.median(times)),
                               "min_step_s": float(np.min(times))}
        if all(c == "1" for c in key):  # where a step's time goes: its forward alone
            step_profile[label]["median_forward_s"] = float(np.median(
                ref.time_forward({g: True for g in group_names})))
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "side": "pytorch", "torch": torch.__version__, "threads": threads, "cache_prefix": ref.cache_prefix,
        "setup_s": setup_s, "search_s": search_s, "evaluation_s": search_s,
        "first_result_s": finished[0] if finished else None,
        "masks": meta["masks"], "fitness": fitness, "finished_s": finished,
        "records": ref.records, "step_profile": step_profile,
        "cpu_s": cpu.ru_utime + cpu.ru_stime, "other_cores": other_cores,
        "peak_rss_mb": cpu.ru_maxrss / 1024,
    }
    out.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: all cores)")
    p.add_argument("--cache-prefix", action="store_true",
                   help="run each distinct frozen prefix once and train only the rest")
    args = p.parse_args(argv)
    run_worker(args.inputs, args.out, args.threads, args.cache_prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
