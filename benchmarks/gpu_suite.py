"""GPU suite: deft_jax's population program against the PyTorch reference on one device.

    python benchmarks/gpu_suite.py [--out DIR] [--models resnet20,efficientnet_lite0]
                                   [--sizes 8,32,128] [--efficientnet-sizes 32]
                                   [--exact-fp32] [--tiny]

For each model (ResNet-20 at 32 px with its CIFAR-10 weights, EfficientNet-Lite0 at 96 px
with its ImageNet weights; `--tiny`: the small CNN at 16 px, for CPU and CI) on
scikit-learn's digits (offline), with the benchmark recipe (SGD, batch 32, 2 epochs):

1. deft_jax (`--side jax`, its own process): the `vmap` evaluator (one scanned, vmapped
   program per population) on P random layer-group masks per population size P. The first
   call at each P compiles ("warm-up"); the second call, on P *new* masks, is what a
   search generation costs ("steady", members/s). Then the same at P = 32 with
   `finetune.compute_dtype = "bfloat16"`, whose fitness is compared with float32's on the
   same masks. Peak device memory after each row (JAX reports the process's peak so far).
2. PyTorch (`--side torch`, its own process): `benchmarks/torch_reference.py`'s
   idiomatic sequential reference on the same device (`requires_grad=False` on frozen
   groups, one member after another), from the same initial variables and batches, on the
   first `--torch-members` masks: members/s does not depend on the population size for a
   sequential reference, so it is measured once per model.
3. Batched PyTorch (`--side torch_batched`, its own process):
   `benchmarks/torch_batched_peer.py`, the P members stacked (`torch.func.stack_module_state`)
   and trained together under `torch.func.vmap` + `torch.func.grad_and_value`, frozen
   groups' gradients masked to 0, from the same variables and batches, at each P on the JAX
   side's masks (first call, then a timed call on P new masks).

`speedup_vs_pytorch` at each P = deft_jax steady members/s / PyTorch members/s;
`speedup_vs_batched_pytorch` = deft_jax steady members/s / the batched peer's at the same
P. Fitness agreement: the masks both sides trained (mean |difference|, Spearman); the
batched peer against the sequential reference also by validation loss. `--exact-fp32`
turns TF32 off on every side (recorded per side). EfficientNet-Lite0 runs at
`--efficientnet-sizes` only (its population program compiles in ~3 min per size on an H200),
so that the default suite fits in 8 minutes.

The sides live in `benchmarks/gpu_suite_sides.py`; this module is the command line, the
orchestration and the report. Writes DIR/gpu_suite-<date>-<device>.json and prints a Markdown table and the JSON's path.
`benchmarks/gpu_suite.sh` runs it on a GPU machine without network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_suite_sides import agreement, run_jax, run_torch, run_torch_batched  # noqa: E402
from benchmarks.machine import nvidia_smi  # noqa: E402

TINY = {"models": "small_cnn", "sizes": "4,8", "torch_members": 4, "train": 64, "val": 32, "batch_size": 16,
        "torch_threads": 1}


# --- orchestration -----------------------------------------------------------------------------


def sizes_for(args, model: str) -> str:
    return args.efficientnet_sizes if model.startswith("efficientnet") and args.efficientnet_sizes else args.sizes


def _side(args, side: str, model: str, workdir: Path) -> dict:
    out = workdir / f"{side}-{model}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--model", model,
           "--workdir", str(workdir), "--sizes", sizes_for(args, model), "--torch-members", str(args.torch_members),
           "--torch-threads", str(args.torch_threads),
           "--train", str(args.train), "--val", str(args.val), "--batch-size", str(args.batch_size)]
    if args.resnet_weights:
        cmd += ["--resnet-weights", args.resnet_weights]
    if args.exact_fp32:
        cmd += ["--exact-fp32"]
    path = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONPATH": path}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(f"  {side} {model}: {time.perf_counter() - t0:.0f} s", flush=True)
    if proc.returncode != 0:
        tail = proc.stdout[-3000:]
        print(tail, file=sys.stderr)
        return {"error": f"{side} side failed (exit {proc.returncode}): {tail.strip().splitlines()[-1:]}"}
    return json.loads(out.read_text())


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(), "cpu_cores": os.cpu_count()}
    smi = nvidia_smi("name,memory.total,driver_version")
    if smi:
        info["nvidia_smi"] = smi
    return info


def combine(jax_side: dict, torch_side: dict, batched_side: dict) -> list[dict]:
    batched = {r["population"]: r for r in batched_side.get("rows", []) if "members_per_s" in r}
    rows = []
    for row in jax_side.get("rows", []):
        row = dict(row)
        if "members_per_s" in row and torch_side.get("members_per_s"):
            row["pytorch_members_per_s"] = torch_side["members_per_s"]
            row["speedup_vs_pytorch"] = round(row["members_per_s"] / torch_side["members_per_s"], 2)
        peer = batched.get(row.get("population"))
        if "members_per_s" in row and peer:
            row["batched_pytorch_members_per_s"] = peer["members_per_s"]
            row["speedup_vs_batched_pytorch"] = round(row["members_per_s"] / peer["members_per_s"], 2)
        rows.append(row)
    return rows


def headline_rows(rows: list[dict]) -> list[dict]:
    """Per model, its float32 row at P = 32 (else at its largest P): the headline speedups."""
    best: dict[str, dict] = {}
    for r in rows:
        if r.get("dtype") == "float32" and "members_per_s" in r:
            old = best.get(r["model"])
            if old is None or old["population"] != 32 and (r["population"] == 32 or r["population"] > old["population"]):
                best[r["model"]] = r
    return list(best.values())


def batched_vs_sequential(torch_side: dict, batched_side: dict) -> dict:
    """The batched peer against the sequential reference on the masks both trained."""
    common = [k for k in torch_side["masks"] if k in batched_side["fitness"]]
    seq_fitness = dict(zip(torch_side["masks"], torch_side["fitness"]))
    seq_loss = dict(zip(torch_side["masks"], torch_side["val_loss"]))
    out = agreement([batched_side["fitness"][k] for k in common], [seq_fitness[k] for k in common])
    out["max_abs_fitness_diff"] = max((abs(batched_side["fitness"][k] - seq_fitness[k]) for k in common), default=None)
    out["max_abs_val_loss_diff"] = max((abs(batched_side["val_loss"][k] - seq_loss[k]) for k in common), default=None)
    return out


def markdown(rows: list[dict], torch_rows: list[dict], batched_rows: list[dict]) -> str:
    lines = ["| model | P | dtype | deft_jax warm-up s | deft_jax steady s | members/s | PyTorch members/s "
             "| speedup_vs_pytorch | batched PyTorch members/s | speedup_vs_batched_pytorch | peak device MiB |",
             "|" + "---|" * 11]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['population']} | skipped: {r['skipped']} |" + " |" * 8)
            continue
        peak = f"{r['peak_device_bytes'] / 2**20:.0f}" if r.get("peak_device_bytes") else "-"
        lines.append(f"| {r['model']} | {r['population']} | {r['dtype']} | {r.get('warmup_s', '-')} | "
                     f"{r['steady_s']} | {r['members_per_s']} | {r.get('pytorch_members_per_s', '-')} | "
                     f"{r.get('speedup_vs_pytorch', '-')} | {r.get('batched_pytorch_members_per_s', '-')} | "
                     f"{r.get('speedup_vs_batched_pytorch', '-')} | {peak} |")
    for t in torch_rows:
        if "error" not in t:
            lines.append(f"\nPyTorch {t['model']}: {t['members']} members sequentially on {t['device_name']} "
                         f"in {t['seconds']} s ({t['members_per_s']} members/s)")
    for b in batched_rows:
        if "members_per_s" in b:
            peak = f", peak {b['peak_device_bytes'] / 2**20:.0f} MiB" if b.get("peak_device_bytes") else ""
            lines.append(f"PyTorch batched (torch.func.vmap) {b['model']} P = {b['population']} on "
                         f"{b['device_name']}: first call {b['warmup_s']} s, steady {b['steady_s']} s "
                         f"({b['members_per_s']} members/s{peak})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--models", default="resnet20,efficientnet_lite0")
    p.add_argument("--sizes", default="8,32,128")
    p.add_argument("--efficientnet-sizes", default="32",
                   help="population sizes for efficientnet_lite0 ('' = --sizes): each compiles for ~3 min")
    p.add_argument("--torch-members", type=int, default=16)
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    p.add_argument("--train", type=int, default=240)
    p.add_argument("--val", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resnet-weights", default="default",
                   help="CIFAR ResNet .th file or folder (default: ../shared/data/weights/cifar10_resnet)")
    p.add_argument("--tiny", action="store_true", help="small CNN, tiny sizes: runs on a CPU in a minute")
    p.add_argument("--exact-fp32", action="store_true",
                   help="no TF32 on either side (jax_default_matmul_precision=highest; torch allow_tf32 "
                        "off): separates TF32 rounding from real disagreement in the fitness comparison")
    p.add_argument("--side", choices=["jax", "torch", "torch_batched"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)

    if args.exact_fp32 and args.side == "jax":
        import jax
        jax.config.update("jax_default_matmul_precision", "highest")
    if args.exact_fp32 and args.side in ("torch", "torch_batched"):
        import torch
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.side == "jax":
        result = run_jax(args, args.model, args.workdir)
    elif args.side == "torch":
        result = run_torch(args.model, args.workdir, args.torch_threads or None)
    elif args.side == "torch_batched":
        result = run_torch_batched(args.model, args.workdir, args.torch_threads or None)
    else:
        return orchestrate(args)
    (args.workdir / f"{args.side}-{args.model}.json").write_text(json.dumps(result, indent=1))
    return 0


def orchestrate(args) -> int:
    """Each side of each model in its own process; the JSON is rewritten after every model,
    so a suite cut short keeps what it measured."""
    import tempfile

    t_start = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rows, torch_rows, batched_rows, sides, path = [], [], [], {}, None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for model in args.models.split(","):
            jax_side = _side(args, "jax", model, workdir)
            no_jax = {"error": "no jax side"}
            torch_side = _side(args, "torch", model, workdir) if "error" not in jax_side else no_jax
            batched_side = _side(args, "torch_batched", model, workdir) if "error" not in jax_side else no_jax
            sides[model] = {"jax": {k: v for k, v in jax_side.items() if k != "rows"}, "torch": torch_side,
                            "torch_batched": batched_side}
            rows += combine(jax_side, torch_side, batched_side)
            torch_rows.append({"model": model, **torch_side})
            batched_rows += batched_side.get("rows", [])
            if "error" not in torch_side and "error" not in batched_side:
                sides[model]["batched_vs_sequential_pytorch"] = batched_vs_sequential(torch_side, batched_side)
            if "error" not in jax_side and "error" not in torch_side:
                common = [k for k in torch_side["masks"] if jax_side["fitness"].get(k) is not None]
                sides[model]["fitness_vs_pytorch"] = agreement(
                    [jax_side["fitness"][k] for k in common],
                    [dict(zip(torch_side["masks"], torch_side["fitness"]))[k] for k in common])
            kind = next((s["jax"].get("device_kind") for s in sides.values() if s["jax"].get("device_kind")),
                        "unknown")
            if path is None:
                path = out_dir / f"gpu_suite-{stamp}-{kind.replace(' ', '_')}.json"
            at32 = headline_rows(rows)
            result = {"date": stamp, "machine": machine(), "argv": sys.argv[1:], "tiny": args.tiny,
                      "exact_fp32": args.exact_fp32, "rows": rows,
                      "sides": sides, "seconds": round(time.perf_counter() - t_start, 1),
                      "speedup_vs_pytorch": {r["model"]: r["speedup_vs_pytorch"] for r in at32
                                             if "speedup_vs_pytorch" in r} or None,
                      "speedup_vs_batched_pytorch": {r["model"]: r["speedup_vs_batched_pytorch"] for r in at32
                                                     if "speedup_vs_batched_pytorch" in r} or None,
                      "headline_population": {r["model"]: r["population"] for r in at32},
                      "batched_pytorch_rows": batched_rows,
                      "note": "sequential PyTorch reference: members/s measured once per model on "
                              f"{args.torch_members} masks; batched PyTorch peer (torch.func.vmap over "
                              "stacked members): members/s at each P on the JAX side's masks"}
            path.write_text(json.dumps(result, indent=1))
    print(markdown(rows, torch_rows, batched_rows))
    print(f"gpu suite JSON: {path}")
    return 0 if all("error" not in s[side] for s in sides.values() for side in ("jax", "torch", "torch_batched")) else 1


if __name__ == "__main__":
    sys.exit(main())
