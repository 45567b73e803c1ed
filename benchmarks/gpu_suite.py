"""GPU suite: deft_jax's population program against the PyTorch reference on one device.

    python benchmarks/gpu_suite.py [--out DIR] [--models resnet20,efficientnet_lite0]
                                   [--sizes 8,32,128] [--tiny]

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

`speedup_vs_pytorch` at each P = deft_jax steady members/s / PyTorch members/s. Fitness
agreement: the masks both sides trained (mean |difference|, Spearman).

Writes DIR/gpu_suite-<date>-<device>.json and prints a Markdown table and the JSON's path.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.machine import nvidia_smi  # noqa: E402

MODELS = {  # name -> (input size, layer-group granularity)
    "resnet20": (32, "block"),
    "efficientnet_lite0": (96, "block"),
    "small_cnn": (16, "block"),
}
RECIPE = {"optimizer": "sgd", "learning_rate": 0.02, "momentum": 0.9, "weight_decay": 0.0,
          "batch_size": 32, "epochs": 2}
TINY = {"models": "small_cnn", "sizes": "4,8", "torch_members": 4, "train": 64, "val": 32, "batch_size": 16}


# --- the JAX side ------------------------------------------------------------------------------


def _masks(spec, count: int, seed: int = 0) -> list[dict]:
    """`count` distinct random masks (the head always trains), in a seeded order."""
    from deft_jax.masks import decode_genome, mask_key, searchable_groups

    rng = np.random.default_rng([seed, 11])
    genes = len(searchable_groups(spec.group_names))
    out, seen = [], set()
    while len(out) < count and len(seen) < 2 ** genes:
        mask = decode_genome(rng.random(genes), spec.group_names)
        if mask_key(mask) not in seen:
            seen.add(mask_key(mask))
            out.append(mask)
    return out


def _digits(input_size: int, train: int, val: int, spec):
    """scikit-learn's 8x8 digits upscaled to the model's input (offline), split train/val."""
    from deft_jax.data import load_dataset, preprocess

    dataset = load_dataset({"kind": "digits"})
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dataset.labels))[:train + val]
    x = preprocess(dataset.images[order], input_size, spec.mean, spec.std)
    y = dataset.labels[order].astype(np.int32)
    return x[:train], y[:train], x[train:], y[train:], len(dataset.class_names)


def _peak_bytes() -> int | None:
    import jax
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def run_jax(args, model: str, workdir: Path) -> dict:
    import jax

    from deft_jax.config import FineTuneConfig
    from deft_jax.evaluators import build_evaluator, device_memory_limit
    from deft_jax.inputs import SplitArrays
    from deft_jax.masks import mask_key
    from deft_jax.models import build_model
    from deft_jax.training import batch_plan

    input_size, granularity = MODELS[model]
    weights = args.resnet_weights if model.startswith("resnet") else ("none" if model == "small_cnn" else "default")
    probe = build_model(model, 10, weights, input_size, granularity)
    x_train, y_train, x_val, y_val, classes = _digits(input_size, args.train, args.val, probe)
    spec = build_model(model, classes, weights, input_size, granularity)
    variables = spec.init(0)
    data = SplitArrays(x_train, y_train, x_val, y_val, classes)
    recipe = {**RECIPE, "batch_size": args.batch_size}
    sizes = [int(s) for s in args.sizes.split(",")]
    masks = _masks(spec, 2 * max(sizes) + 64)
    limit = device_memory_limit()

    rows, fitness_by_mask = [], {}
    for size in sizes:
        if 2 * size > len(masks):
            rows.append({"model": model, "population": size, "skipped": "fewer distinct masks than 2P"})
            continue
        evaluator = build_evaluator("vmap", spec, variables, data, FineTuneConfig(**recipe),
                                    memory_limit_bytes=limit)
        t0 = time.perf_counter()
        warm = evaluator.evaluate(masks[:size])
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        steady = evaluator.evaluate(masks[size:2 * size])
        steady_s = time.perf_counter() - t0
        for m, f in zip(masks[:2 * size], warm + steady):
            fitness_by_mask.setdefault(mask_key(m), f)
        stats = evaluator.stats()
        rows.append({"model": model, "input_size": input_size, "population": size, "dtype": "float32",
                     "warmup_s": round(warm_s, 3), "steady_s": round(steady_s, 3),
                     "members_per_s": round(size / steady_s, 3),
                     "members_per_program": stats.get("members_per_program") or size,
                     "compiles": stats["compiles"], "peak_device_bytes": _peak_bytes()})
        del evaluator
    bf16 = None
    size16 = 32 if 32 in sizes else sizes[-1]
    if 2 * size16 <= len(masks):
        evaluator = build_evaluator("vmap", spec, variables, data,
                                    FineTuneConfig(**recipe, compute_dtype="bfloat16"), memory_limit_bytes=limit)
        evaluator.evaluate(masks[:size16])
        t0 = time.perf_counter()
        f16 = evaluator.evaluate(masks[size16:2 * size16])
        steady_s = time.perf_counter() - t0
        f32 = [fitness_by_mask[mask_key(m)] for m in masks[size16:2 * size16]]
        bf16 = {"model": model, "population": size16, "dtype": "bfloat16", "steady_s": round(steady_s, 3),
                "members_per_s": round(size16 / steady_s, 3), "peak_device_bytes": _peak_bytes(),
                "fitness_vs_float32": agreement(f16, f32)}
        rows.append(bf16)

    # what the PyTorch side needs, so it never imports JAX
    plan = np.stack(batch_plan(len(x_train), args.batch_size, recipe["epochs"], 0))
    np.savez(workdir / f"{model}-arrays.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
             plan=plan)
    flat = {"/".join(k): np.asarray(v) for k, v in _flatten(jax.device_get(variables)).items()}
    np.savez(workdir / f"{model}-variables.npz", **flat)
    torch_masks = [mask_key(m) for m in masks[:args.torch_members]]
    meta = {"model": model, "input_size": input_size, "granularity": granularity, "pretrained": spec.pretrained,
            "num_classes": classes, "group_names": list(spec.group_names), "recipe": recipe,
            "masks": torch_masks}
    (workdir / f"{model}-meta.json").write_text(json.dumps(meta))
    return {"rows": rows, "fitness": {k: fitness_by_mask.get(k) for k in torch_masks},
            "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "pretrained": spec.pretrained}


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def agreement(a, b) -> dict:
    from scipy.stats import spearmanr
    a, b = np.asarray(a, float), np.asarray(b, float)
    rho = None
    if len(a) > 1 and not np.all(a == a[0]) and not np.all(b == b[0]):
        rho = float(spearmanr(a, b).statistic)
    return {"masks": len(a), "mean_abs_diff": float(np.mean(np.abs(a - b))), "spearman": rho}


# --- the PyTorch side --------------------------------------------------------------------------


def run_torch(model: str, workdir: Path) -> dict:
    import torch

    from benchmarks.torch_reference import TorchReference, set_threads
    from benchmarks.torch_twins.torch_models import torch_twin

    meta = json.loads((workdir / f"{model}-meta.json").read_text())
    arrays = np.load(workdir / f"{model}-arrays.npz")
    with np.load(workdir / f"{model}-variables.npz") as f:
        variables: dict = {}
        for key in f.files:
            node = variables
            *parents, leaf = key.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = f[key]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = set_threads()
    twin = torch_twin(model, meta["num_classes"], variables, meta["input_size"], meta["granularity"],
                      meta["pretrained"])

    class Recipe:
        flip = rotate90 = False
        augment = False
    for k, v in meta["recipe"].items():
        setattr(Recipe, k, v)
    ref = TorchReference(twin, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                         meta["num_classes"], Recipe, list(arrays["plan"]), device=device)
    masks = [{g: c == "1" for g, c in zip(meta["group_names"], key)} for key in meta["masks"]]
    ref.evaluate_one(masks[0])  # warm-up: cuDNN autotuning, allocator, kernels
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fitness = ref.evaluate(masks)
    seconds = time.perf_counter() - t0
    return {"model": model, "device": device, "threads": threads, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
            "members": len(masks), "seconds": round(seconds, 3), "members_per_s": round(len(masks) / seconds, 3),
            "peak_device_bytes": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
            "masks": meta["masks"], "fitness": fitness}


# --- orchestration -----------------------------------------------------------------------------


def _side(args, side: str, model: str, workdir: Path) -> dict:
    out = workdir / f"{side}-{model}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--model", model,
           "--workdir", str(workdir), "--sizes", args.sizes, "--torch-members", str(args.torch_members),
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


def combine(jax_side: dict, torch_side: dict) -> list[dict]:
    rows = []
    for row in jax_side.get("rows", []):
        row = dict(row)
        if "members_per_s" in row and torch_side.get("members_per_s"):
            row["pytorch_members_per_s"] = torch_side["members_per_s"]
            row["speedup_vs_pytorch"] = round(row["members_per_s"] / torch_side["members_per_s"], 2)
        rows.append(row)
    return rows


def markdown(rows: list[dict], torch_rows: list[dict]) -> str:
    lines = ["| model | P | dtype | deft_jax warm-up s | deft_jax steady s | members/s | PyTorch members/s "
             "| speedup_vs_pytorch | peak device MiB |", "|" + "---|" * 9]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['population']} | skipped: {r['skipped']} | | | | | | |")
            continue
        peak = f"{r['peak_device_bytes'] / 2**20:.0f}" if r.get("peak_device_bytes") else "-"
        lines.append(f"| {r['model']} | {r['population']} | {r['dtype']} | {r.get('warmup_s', '-')} | "
                     f"{r['steady_s']} | {r['members_per_s']} | {r.get('pytorch_members_per_s', '-')} | "
                     f"{r.get('speedup_vs_pytorch', '-')} | {peak} |")
    for t in torch_rows:
        if "error" not in t:
            lines.append(f"\nPyTorch {t['model']}: {t['members']} members sequentially on {t['device_name']} "
                         f"in {t['seconds']} s ({t['members_per_s']} members/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--models", default="resnet20,efficientnet_lite0")
    p.add_argument("--sizes", default="8,32,128")
    p.add_argument("--torch-members", type=int, default=16)
    p.add_argument("--train", type=int, default=240)
    p.add_argument("--val", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resnet-weights", default="default",
                   help="CIFAR ResNet .th file or folder (default: ../shared/data/weights/cifar10_resnet)")
    p.add_argument("--tiny", action="store_true", help="small CNN, tiny sizes: runs on a CPU in a minute")
    p.add_argument("--exact-fp32", action="store_true",
                   help="no TF32 on either side (jax_default_matmul_precision=highest; torch allow_tf32 "
                        "off): separates TF32 rounding from real disagreement in the fitness comparison")
    p.add_argument("--side", choices=["jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)

    if args.exact_fp32 and args.side == "jax":
        import jax
        jax.config.update("jax_default_matmul_precision", "highest")
    if args.exact_fp32 and args.side == "torch":
        import torch
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.side == "jax":
        result = run_jax(args, args.model, args.workdir)
    elif args.side == "torch":
        result = run_torch(args.model, args.workdir)
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
    rows, torch_rows, sides, path = [], [], {}, None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for model in args.models.split(","):
            jax_side = _side(args, "jax", model, workdir)
            torch_side = _side(args, "torch", model, workdir) if "error" not in jax_side else {"error": "no jax side"}
            sides[model] = {"jax": {k: v for k, v in jax_side.items() if k != "rows"}, "torch": torch_side}
            rows += combine(jax_side, torch_side)
            torch_rows.append({"model": model, **torch_side})
            if "error" not in jax_side and "error" not in torch_side:
                common = [k for k in torch_side["masks"] if jax_side["fitness"].get(k) is not None]
                sides[model]["fitness_vs_pytorch"] = agreement(
                    [jax_side["fitness"][k] for k in common],
                    [dict(zip(torch_side["masks"], torch_side["fitness"]))[k] for k in common])
            kind = next((s["jax"].get("device_kind") for s in sides.values() if s["jax"].get("device_kind")),
                        "unknown")
            if path is None:
                path = out_dir / f"gpu_suite-{stamp}-{kind.replace(' ', '_')}.json"
            at32 = [r for r in rows if r.get("population") == 32 and r.get("dtype") == "float32"
                    and "speedup_vs_pytorch" in r]
            result = {"date": stamp, "machine": machine(), "argv": sys.argv[1:], "tiny": args.tiny,
                      "exact_fp32": args.exact_fp32, "rows": rows,
                      "sides": sides, "seconds": round(time.perf_counter() - t_start, 1),
                      "speedup_vs_pytorch": {r["model"]: r["speedup_vs_pytorch"] for r in at32} or None,
                      "note": "sequential PyTorch reference: members/s measured once per model on "
                              f"{args.torch_members} masks; a batched PyTorch peer (torch.func vmap) is not "
                              "included"}
            path.write_text(json.dumps(result, indent=1))
    print(markdown(rows, torch_rows))
    print(f"gpu suite JSON: {path}")
    return 0 if all("error" not in s["jax"] and "error" not in s["torch"] for s in sides.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
