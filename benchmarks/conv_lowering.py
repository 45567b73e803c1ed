"""Convolution lowering on CPU, per layer: XLA's convolution against the same arithmetic as a
matrix product, forward and backward, at the shapes of the real models.

Every (non-depthwise) convolution of a model's training forward is read from its jaxpr (so
the shapes are the model's, not a hand-made list), deduplicated, and timed three ways as a
train step sees it (output and the gradients for input and kernel, one jitted call):
- `conv`: `lax.conv_general_dilated` (what `nn.Conv` runs);
- `dot`: a 1x1 convolution as one `dot_general` over (N*H*W, Cin) x (Cin, Cout) (strided
  1x1 convolutions slice first);
- `im2col`: a k x k convolution as k*k strided slices concatenated on the channel axis,
  then one `dot_general` with the kernel reshaped to (k*k*Cin, Cout).
The shapes are read with XLA's convolution everywhere (`xla_convolutions()`): the models
themselves run 1x1 convolutions as `dot` on CPU (`deft_jax.models.convolutions.conv_lowering`).
`whole step` times one full-network training step (forward, backward, SGD update) of each
model with the models' lowering against XLA's convolution everywhere.
XLA flags change the process, so each flag set runs in its own subprocess:

    python benchmarks/conv_lowering.py                     # ResNet-20 @32 and Lite0 @160
    python benchmarks/conv_lowering.py --flags=--xla_cpu_use_xnnpack=true   # also with these flags

The JSON goes to benchmarks/results/conv_lowering-DATE-MACHINE.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODELS = {"resnet20@32": ("resnet20", 32, "none"), "lite0@160": ("efficientnet_lite0", 160, "none")}


@contextlib.contextmanager
def xla_convolutions():
    """Inside: the models trace every convolution as `lax.conv_general_dilated`."""
    from deft_jax.models import convolutions
    saved = convolutions.conv_lowering
    convolutions.conv_lowering = lambda: None
    try:
        yield
    finally:
        convolutions.conv_lowering = saved


def whole_step(name: str, size: int, batch: int, repeats: int, lowered: bool) -> float:
    """Median seconds of one jitted full-network training step (cross-entropy, gradients of
    every parameter, SGD update) at `size` px; `lowered`: the models' CPU lowering, else XLA's
    convolution everywhere."""
    return whole_step_counters(name, size, batch, repeats, lowered)["median_s"]


def whole_step_counters(name: str, size: int, batch: int, repeats: int, lowered: bool = True,
                        compute_dtype: str = "float32", batch_norm_train: bool = True) -> dict:
    """`whole_step`'s median seconds, with what the process spent per timed step: minor page
    faults, kernel and user CPU seconds (getrusage); and the first call's loss and sum of the
    updated parameters (to compare two forms of one step). `compute_dtype`: the forward's
    (float32 master weights); `batch_norm_train=False`: BatchNorm normalises with its running
    statistics (another recipe)."""
    import resource

    import jax
    import jax.numpy as jnp
    import optax
    from deft_jax.core.training import COMPUTE_DTYPES
    from deft_jax.models.registry import build_model

    spec = build_model(name, 10, weights="none", input_size=size)
    variables = spec.init(0)
    tx = optax.sgd(0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch))
    dtype = COMPUTE_DTYPES[compute_dtype]

    def step(params, stats, opt, xb, yb):
        def loss(p):
            cast = jax.tree.map(lambda a: a.astype(dtype), p)
            logits, new = spec.net.apply({"params": cast, "batch_stats": stats}, xb.astype(dtype),
                                         train=batch_norm_train, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), yb).mean(), new
        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), new.get("batch_stats", stats), opt, value

    params, stats = variables["params"], variables.get("batch_stats", {})
    with contextlib.nullcontext() if lowered else xla_convolutions():
        compiled = jax.jit(step).lower(params, stats, tx.init(params), x, y).compile()
    state = (params, stats, tx.init(params))
    first = jax.block_until_ready(compiled(*state, x, y))
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*state, x, y))
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"median_s": float(np.median(times)), "first_loss": float(first[-1]),
            "first_param_update_sum": float(sum(jnp.sum(a) for a in jax.tree.leaves(first[0]))),
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / repeats,
            "system_s_per_step": (after.ru_stime - before.ru_stime) / repeats,
            "user_s_per_step": (after.ru_utime - before.ru_utime) / repeats}


def conv_shapes(name: str, size: int, batch: int) -> list[dict]:
    """Distinct non-grouped convolutions of `name`'s training forward at `size` px."""
    import jax
    import jax.numpy as jnp
    from deft_jax.models.registry import build_model

    spec = build_model(name, 10, weights="none", input_size=size)
    variables = spec.init(0)
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    with xla_convolutions():
        jaxpr = jax.make_jaxpr(lambda v, xb: spec.net.apply(v, xb, train=True, mutable=["batch_stats"]))(
            dict(variables), x)
    found: dict[tuple, dict] = {}

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name in ("pjit", "jit", "closed_call", "custom_jvp_call", "custom_vjp_call"):
                inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))
            if eqn.primitive.name != "conv_general_dilated":
                continue
            p = eqn.params
            if p["feature_group_count"] != 1:
                continue
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            key = (tuple(lhs), tuple(rhs), tuple(p["window_strides"]), tuple(map(tuple, p["padding"])))
            entry = found.setdefault(key, {"input": list(lhs), "kernel": list(rhs),
                                           "stride": list(p["window_strides"]),
                                           "padding": [list(q) for q in p["padding"]], "count": 0})
            entry["count"] += 1

    walk(jaxpr.jaxpr)
    return list(found.values())


def _im2col(x, kernel, stride, padding):
    import jax
    import jax.numpy as jnp
    kh, kw, cin, cout = kernel.shape
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    n, h, w, c = x.shape
    oh, ow = (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1
    taps = [jax.lax.slice(x, (0, i, j, 0),
                          (n, i + stride[0] * (oh - 1) + 1, j + stride[1] * (ow - 1) + 1, c),
                          (1, stride[0], stride[1], 1))
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return jax.lax.dot_general(patches, kernel.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())))


def forms(entry: dict):
    import jax
    stride, padding = tuple(entry["stride"]), [tuple(p) for p in entry["padding"]]
    kh = entry["kernel"][0]

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, stride, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = {"conv": conv}
    if kh == 1 and all(p == (0, 0) for p in padding):
        def dot(x, k):
            if stride != (1, 1):
                x = x[:, ::stride[0], ::stride[1], :]
            return jax.lax.dot_general(x, k[0, 0], (((3,), (0,)), ((), ())))
        out["dot"] = dot
    else:
        out["im2col"] = lambda x, k: _im2col(x, k, stride, padding)
    return out


def time_entry(entry: dict, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(entry["input"]), jnp.float32)
    k = jnp.asarray(rng.standard_normal(entry["kernel"]) * 0.1, jnp.float32)
    result, reference = {}, None
    for label, fn in forms(entry).items():
        g = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, x, k).shape), jnp.float32) \
            if reference is None else reference[1]

        def step(xx, kk, fn=fn, g=g):
            y, pull = jax.vjp(fn, xx, kk)
            return (y,) + pull(g)

        compiled = jax.jit(step).lower(x, k).compile()
        outs = jax.block_until_ready(compiled(x, k))
        if reference is None:
            reference = (outs, g)
        err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
                  for a, b in zip(outs, reference[0]))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(x, k))
            times.append(time.perf_counter() - t0)
        result[label] = {"median_s": float(np.median(times)), "max_rel_err_vs_conv": err}
    return result


def run_child(batch: int, repeats: int) -> dict:
    out = {}
    for label, (name, size, _) in MODELS.items():
        rows = []
        for entry in conv_shapes(name, size, batch):
            entry = dict(entry, **time_entry(entry, repeats))
            rows.append(entry)
        total = {form: sum(r[form]["median_s"] * r["count"] for r in rows if form in r)
                 for form in ("conv", "dot", "im2col")}
        best = sum(min(r[f]["median_s"] for f in ("conv", "dot", "im2col") if f in r) * r["count"]
                   for r in rows)
        conv_where_alt = sum(r["conv"]["median_s"] * r["count"] for r in rows)
        steps = {"xla_conv_s": whole_step(name, size, batch, repeats, lowered=False),
                 "lowered_s": whole_step(name, size, batch, repeats, lowered=True)}
        out[label] = {"layers": rows, "sum_conv_s": conv_where_alt, "sum_best_s": best,
                      "sum_by_form_s": total, "whole_step": steps}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flags", action="append", default=[], metavar="=XLA_FLAGS",
                    help="also run with this XLA_FLAGS set (--flags=--xla_...; repeatable), each in its own subprocess")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.batch, args.repeats)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import write_result  # noqa: E402
    results = {}
    for flags in ["", *args.flags]:
        env = dict(os.environ, XLA_FLAGS=flags, DEFT_JAX_COMPILE_CACHE="off")
        proc = subprocess.run([sys.executable, __file__, "--child", "--batch", str(args.batch),
                               "--repeats", str(args.repeats)], env=env, capture_output=True,
                              text=True, check=True)
        results[flags or "(none)"] = json.loads(proc.stdout.strip().splitlines()[-1])
        for model, r in results[flags or "(none)"].items():
            print(f"[{flags or 'default flags'}] {model}: conv layers {r['sum_conv_s']:.3f} s per "
                  f"step, best form per layer {r['sum_best_s']:.3f} s; whole training step "
                  f"{r['whole_step']['xla_conv_s']:.3f} s with XLA's convolution, "
                  f"{r['whole_step']['lowered_s']:.3f} s lowered")
            for row in r["layers"]:
                alts = ", ".join(f"{f} {row[f]['median_s'] * 1e3:.2f} ms (err {row[f]['max_rel_err_vs_conv']:.1e})"
                                 for f in ("dot", "im2col") if f in row)
                print(f"   in {row['input']} k {row['kernel']} s {row['stride']} x{row['count']}: "
                      f"conv {row['conv']['median_s'] * 1e3:.2f} ms; {alts}")
    write_result("conv_lowering", {"batch": args.batch, "repeats": args.repeats, "results": results},
                 args.out)


if __name__ == "__main__":
    main()
