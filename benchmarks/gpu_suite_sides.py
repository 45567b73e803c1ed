"""The three sides of the GPU suite (`benchmarks/gpu_suite.py`), each run in its own process:
deft_jax's `vmap` population program (`run_jax`, which also writes what the PyTorch sides
need, so they never import JAX), the idiomatic sequential PyTorch reference (`run_torch`)
and the batched PyTorch peer (`run_torch_batched`, `torch.func.vmap` over stacked
members); `agreement` compares fitness on the same masks.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

MODELS = {  # name -> (input size, layer-group granularity)
    "resnet20": (32, "block"),
    "efficientnet_lite0": (96, "block"),
    "small_cnn": (16, "block"),
}
RECIPE = {"optimizer": "sgd", "learning_rate": 0.02, "momentum": 0.9, "weight_decay": 0.0,
          "batch_size": 32, "epochs": 2}

# --- the JAX side ------------------------------------------------------------------------------


def _masks(spec, count: int, seed: int = 0) -> list[dict]:
    """`count` distinct random masks (the head always trains), in a seeded order."""
    from deft_jax.core.masks import decode_genome, mask_key, searchable_groups

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
    from deft_jax.config.sources import DigitsSource
    from deft_jax.data import load_dataset, preprocess

    dataset = load_dataset(DigitsSource())
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

    from deft_jax.config.schema import FineTuneConfig
    from deft_jax.evolution.evaluators.choice import build_evaluator, device_memory_limit
    from deft_jax.evolution.evaluators.recipe import FitnessRecipe
    from deft_jax.data.inputs import SplitArrays
    from deft_jax.core.masks import mask_key
    from deft_jax.models import build_model
    from deft_jax.data.batches import batch_plan

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
        evaluator = build_evaluator("vmap", spec, variables, data, FitnessRecipe(FineTuneConfig(**recipe)),
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
                                    FitnessRecipe(FineTuneConfig(**recipe, compute_dtype="bfloat16")),
                                    memory_limit_bytes=limit)
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
    population_masks = [mask_key(m) for m in masks[:2 * max(sizes)]]
    meta = {"model": model, "input_size": input_size, "granularity": granularity, "pretrained": spec.pretrained,
            "num_classes": classes, "group_names": list(spec.group_names), "recipe": recipe,
            "masks": torch_masks, "population_masks": population_masks, "sizes": sizes}
    (workdir / f"{model}-meta.json").write_text(json.dumps(meta))
    kind = jax.devices()[0].device_kind
    for row in rows:
        row["device_name"] = kind
    return {"rows": rows, "fitness": {k: fitness_by_mask.get(k) for k in torch_masks},
            "device": str(jax.devices()[0]), "device_kind": kind,
            "matmul_precision": jax.config.jax_default_matmul_precision,
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


# --- the PyTorch sides -------------------------------------------------------------------------


def _torch_setup(model: str, workdir: Path, threads: int | None = None):
    """The sequential reference on what the JAX side wrote, and the meta it wrote."""
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
    threads = set_threads(threads)
    twin = torch_twin(model, meta["num_classes"], variables, meta["input_size"], meta["granularity"],
                      meta["pretrained"])

    class Recipe:
        flip = rotate90 = False
        augment = False
    for k, v in meta["recipe"].items():
        setattr(Recipe, k, v)
    ref = TorchReference(twin, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                         meta["num_classes"], Recipe, list(arrays["plan"]), device=device)
    about = {"model": model, "device": device, "threads": threads, "torch": torch.__version__,
             "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
             "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}
    return meta, ref, about


def _decode(meta: dict, keys: list[str]) -> list[dict]:
    return [{g: c == "1" for g, c in zip(meta["group_names"], key)} for key in keys]


def fitness_and_loss(ref, logits: np.ndarray) -> tuple[float, float]:
    """1 - metric and the mean validation cross-entropy of one member's logits."""
    from deft_jax.core.metrics import metric_from_logits

    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-np.mean(log_p[np.arange(len(ref.y_val)), ref.y_val]))
    return 1.0 - metric_from_logits(ref.metric, logits, ref.y_val, ref.num_classes), loss


def _peak_torch(device: str, reset: bool = False) -> int | None:
    import torch
    if device != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.max_memory_allocated())


def run_torch(model: str, workdir: Path, threads: int | None = None) -> dict:
    """The sequential reference: one member after another on the first --torch-members masks."""
    meta, ref, about = _torch_setup(model, workdir, threads)
    masks = _decode(meta, meta["masks"])
    ref.evaluate_one(masks[0])  # warm-up: cuDNN autotuning, allocator, kernels
    _peak_torch(about["device"], reset=True)
    fitness, val_loss = [], []
    t0 = time.perf_counter()
    for mask in masks:  # what ref.evaluate does, keeping the logits for the validation loss
        tuned, _ = ref.fine_tune(mask)
        f, loss = fitness_and_loss(ref, ref.logits(tuned))
        fitness.append(f)
        val_loss.append(loss)
    seconds = time.perf_counter() - t0
    return {**about, "members": len(masks), "seconds": round(seconds, 3),
            "members_per_s": round(len(masks) / seconds, 3), "peak_device_bytes": _peak_torch(about["device"]),
            "masks": meta["masks"], "fitness": fitness, "val_loss": val_loss}


def run_torch_batched(model: str, workdir: Path, threads: int | None = None) -> dict:
    """The batched peer (`benchmarks/torch_batched_peer.py`) at each population size P: a
    first call on P masks, then the timed ("steady") call on P new ones, as the JAX side."""
    from benchmarks.torch_batched_peer import BatchedTorchPeer

    meta, ref, about = _torch_setup(model, workdir, threads)
    peer = BatchedTorchPeer(ref)
    keys = meta["population_masks"]
    rows, fitness, val_loss = [], {}, {}

    def evaluate(chunk: list[str]) -> float:
        t0 = time.perf_counter()
        _, logits = peer.evaluate_with_logits(_decode(meta, chunk))
        seconds = time.perf_counter() - t0
        for key, member_logits in zip(chunk, logits):
            f, loss = fitness_and_loss(ref, member_logits)
            fitness.setdefault(key, f)
            val_loss.setdefault(key, loss)
        return seconds

    for size in meta["sizes"]:
        if 2 * size > len(keys):
            rows.append({"model": model, "population": size, "skipped": "fewer distinct masks than 2P"})
            continue
        _peak_torch(about["device"], reset=True)
        warm_s = evaluate(keys[:size])
        steady_s = evaluate(keys[size:2 * size])
        rows.append({"model": model, "population": size, "side": "pytorch_batched", "dtype": "float32",
                     "warmup_s": round(warm_s, 3), "steady_s": round(steady_s, 3),
                     "members_per_s": round(size / steady_s, 3), "device_name": about["device_name"],
                     "peak_device_bytes": _peak_torch(about["device"])})
    return {**about, "rows": rows, "fitness": fitness, "val_loss": val_loss}
