"""The CPU depthwise convolution's kernel gradient, two ways, per layer and per training step:
one variadic reduction over the batch and then the pixels
(`deft_jax.models.convolutions.shifted_sum_variadic_grad`, what `DepthwiseConv` runs on CPU)
against autodiff's k*k separate reductions of sliced products (`convolutions.shifted_sum`).

Every depthwise convolution of the model's training forward is read by tracing it once (input
shape, kernel, stride, padding: the model's own shapes), deduplicated, and timed as a train
step sees it (output and both gradients, one jitted call) under each form, with the largest
relative difference of the outputs and gradients between them. Then one whole full-network
training step (forward, backward, SGD update; `conv_lowering.whole_step_counters`) is timed
with each form in fresh processes, alternating (A B A B ...), so drift on the machine hits
both arms alike:

    python benchmarks/depthwise_gradient.py                     # Lite0 @160 px, batch 32
    python benchmarks/depthwise_gradient.py --size 224 --rounds 3

The JSON goes to benchmarks/results/depthwise_gradient-DATE-MACHINE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FORMS = ("variadic", "autodiff")


def use_form(form: str) -> None:
    """Make `DepthwiseConv` trace its CPU form with this kernel gradient from now on."""
    from deft_jax.models import convolutions
    if form == "autodiff":
        convolutions.shifted_sum_variadic_grad = convolutions.shifted_sum
    elif form != "variadic":
        raise ValueError(f"unknown form {form!r}")


def depthwise_shapes(model: str, size: int, batch: int) -> list[dict]:
    """(input, kernel, stride, padding, count) of every depthwise convolution of the model's
    training forward, deduplicated."""
    import jax
    import jax.numpy as jnp
    from deft_jax.models import convolutions
    from deft_jax.models.registry import build_model

    seen: dict[tuple, int] = {}
    real = convolutions.shifted_sum_variadic_grad

    def record(x, kernel, stride, padding):
        key = (tuple(x.shape), tuple(kernel.shape), stride, tuple(tuple(p) for p in padding))
        seen[key] = seen.get(key, 0) + 1
        return real(x, kernel, stride, padding)

    spec = build_model(model, 10, weights="none", input_size=size)
    variables = spec.init(0)
    convolutions.shifted_sum_variadic_grad = record
    try:
        jax.eval_shape(lambda v, x: spec.net.apply(v, x, train=True, mutable=["batch_stats"]),
                       variables, jnp.zeros((batch, size, size, 3), jnp.float32))
    finally:
        convolutions.shifted_sum_variadic_grad = real
    return [{"input": list(k[0]), "kernel": list(k[1]), "stride": k[2],
             "padding": [list(p) for p in k[3]], "count": n} for k, n in seen.items()]


def time_layer(entry: dict, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from deft_jax.models import convolutions

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(entry["input"]), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(entry["kernel"]) * 0.1, jnp.float32)
    stride, padding = entry["stride"], tuple(tuple(p) for p in entry["padding"])
    functions = {"variadic": convolutions.shifted_sum_variadic_grad, "autodiff": convolutions.shifted_sum}
    g = None
    result, reference = {}, None
    for form in FORMS:
        fn = functions[form]

        def step(xx, kk, gg, fn=fn):
            y, pull = jax.vjp(lambda a, b: fn(a, b, stride, padding), xx, kk)
            return (y,) + pull(gg)

        if g is None:
            g = jnp.asarray(rng.standard_normal(jax.eval_shape(
                lambda a, b: convolutions.shifted_sum(a, b, stride, padding), x, kernel).shape), jnp.float32)
        compiled = jax.jit(step).lower(x, kernel, g).compile()
        outs = jax.block_until_ready(compiled(x, kernel, g))
        if reference is None:
            reference = outs
        err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
                  for a, b in zip(outs, reference))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(x, kernel, g))
            times.append(time.perf_counter() - t0)
        result[form] = {"median_s": float(np.median(times)), "max_rel_diff_vs_variadic": err}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per layer and per step process")
    ap.add_argument("--rounds", type=int, default=2, help="step processes per form, alternating")
    ap.add_argument("--child-step", choices=FORMS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.child_step:
        from conv_lowering import whole_step_counters  # noqa: E402
        use_form(args.child_step)
        print(json.dumps(whole_step_counters(args.model, args.size, args.batch, args.repeats)))
        return
    from machine import write_result  # noqa: E402

    layers = [dict(e, **time_layer(e, args.repeats)) for e in depthwise_shapes(args.model, args.size, args.batch)]
    for row in layers:
        print(f"in {row['input']} k {row['kernel'][0]} s {row['stride']} x{row['count']}: "
              + ", ".join(f"{f} {row[f]['median_s'] * 1e3:.2f} ms" for f in FORMS)
              + f" (max rel diff {row['autodiff']['max_rel_diff_vs_variadic']:.1e})")
    sums = {f: sum(r[f]["median_s"] * r["count"] for r in layers) for f in FORMS}
    print("depthwise layers per step: " + ", ".join(f"{f} {sums[f]:.3f} s" for f in FORMS))
    steps: dict[str, list[float]] = {f: [] for f in FORMS}
    env = dict(os.environ, DEFT_JAX_COMPILE_CACHE="off")
    for _ in range(args.rounds):
        for form in FORMS:
            proc = subprocess.run([sys.executable, __file__, "--child-step", form, "--model", args.model,
                                   "--size", str(args.size), "--batch", str(args.batch),
                                   "--repeats", str(args.repeats)],
                                  env=env, capture_output=True, text=True, check=True)
            steps[form].append(json.loads(proc.stdout.strip().splitlines()[-1])["median_s"])
    print("whole training step (median per process): "
          + "; ".join(f"{f} " + ", ".join(f"{t:.3f}" for t in steps[f]) + " s" for f in FORMS))
    write_result("depthwise_gradient", {"model": args.model, "size": args.size, "batch": args.batch,
                                        "repeats": args.repeats, "layers": layers, "sum_layers_s": sums,
                                        "whole_step_median_s": steps}, args.out)


if __name__ == "__main__":
    main()
