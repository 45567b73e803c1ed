"""What else could make a CPU training step of Lite0 faster: four variants of one whole
full-network step (forward, backward, SGD update; batch 32;
`conv_lowering.whole_step_counters`) against the float32 step the commands run, each in fresh
processes, alternating (A B C ... A B C ...).

- `float32`: the step as trained (the reference arm).
- `bfloat16`: the same step in bf16 compute (float32 master weights and BatchNorm
  statistics; `finetune.compute_dtype = "bfloat16"`).
- `batch-norm-closed-form`: BatchNorm's batch-statistics branch with a hand-written VJP
  (`dx = scale * rstd * (g - mean(g) - xhat * mean(g * xhat))`: two sibling reductions and
  one elementwise pass) in place of autodiff's; the same numbers. Defined here only.
- `batch-norm-inference`: every BatchNorm normalises with its running statistics (no batch
  statistics, no running-average update): a different training recipe, timed to show what
  BatchNorm's statistics cost a step, not a drop-in.
- `two-single-thread`: two float32 steps side by side, one process per core with one XLA
  thread each; its figure is seconds per step of the pair together (a step's median / 2),
  i.e. two ensemble members trained at once.

    python benchmarks/step_variants.py                  # Lite0 @160 px, 2 rounds
    python benchmarks/step_variants.py --size 128 --rounds 3

The JSON goes to benchmarks/results/step_variants-DATE-MACHINE.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = ("float32", "bfloat16", "batch-norm-closed-form", "batch-norm-inference", "two-single-thread")
SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def closed_form_batch_norm():
    """A GatedBatchNorm whose batch-statistics branch has the closed-form VJP (static flags)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from deft_jax.models.layers import GatedBatchNorm

    def statistics(x):
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        return mean, jnp.mean(jnp.square(x - mean), axis=axes)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def normalise(x, scale, bias, epsilon):
        mean, var = statistics(x)
        return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var

    def forward(x, scale, bias, epsilon):
        mean, var = statistics(x)
        rstd = jax.lax.rsqrt(var + epsilon)
        return ((x - mean) * rstd * scale + bias, mean, var), (x, mean, rstd, scale)

    def backward(epsilon, residuals, cotangents):
        x, mean, rstd, scale = residuals
        g, g_mean, g_var = cotangents
        axes = tuple(range(x.ndim - 1))
        m = x.size // x.shape[-1]
        xhat = (x - mean) * rstd
        g_bias, g_scale = jnp.sum(g, axis=axes), jnp.sum(g * xhat, axis=axes)
        g_x = (scale * rstd) * (g - g_bias / m - xhat * (g_scale / m))
        return g_x + (g_mean + 2.0 * g_var * (x - mean)) / m, g_scale, g_bias

    normalise.defvjp(forward, backward)

    class ClosedFormBatchNorm(GatedBatchNorm):
        @nn.compact
        def __call__(self, x, train):
            features = x.shape[-1]
            scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
            bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
            ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
            ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
            if train is False:
                return (x - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon) * scale + bias
            y, mean, var = normalise(x, scale, bias, self.epsilon)
            n = x.size // features
            if not self.is_initializing():
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * var * (n / max(n - 1, 1))
            return y

    return ClosedFormBatchNorm


def child_step(variant: str, size: int, batch: int, repeats: int) -> dict:
    """The variant's `conv_lowering.whole_step_counters` (median seconds, first loss)."""
    from conv_lowering import whole_step_counters
    from deft_jax.models import mbconv

    if variant == "batch-norm-closed-form":
        mbconv.GatedBatchNorm = closed_form_batch_norm()
    return whole_step_counters("efficientnet_lite0", size, batch, repeats,
                               compute_dtype="bfloat16" if variant == "bfloat16" else "float32",
                               batch_norm_train=variant != "batch-norm-inference")


def run_child(variant: str, args, env: dict, core: int | None = None) -> subprocess.Popen:
    command = [sys.executable, __file__, "--child", variant, "--size", str(args.size), "--batch",
               str(args.batch), "--repeats", str(args.repeats)]
    if core is not None:
        command = ["taskset", "-c", str(core)] + command
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"child failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=8, help="timed calls per process")
    ap.add_argument("--rounds", type=int, default=2, help="processes per variant, alternating")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.child:
        print(json.dumps(child_step(args.child, args.size, args.batch, args.repeats)))
        return
    from machine import write_result  # noqa: E402

    env = dict(os.environ, DEFT_JAX_COMPILE_CACHE="off", GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            if variant == "two-single-thread":
                single = dict(env, XLA_FLAGS=SINGLE_THREAD_FLAGS)
                pair = [run_child("float32", args, single, core) for core in (0, 1)]
                medians = [result_of(p)["median_s"] for p in pair]
                runs[variant].append({"median_s_per_process": medians,
                                      "seconds_per_step_of_the_pair": max(medians) / 2})
                print(f"{variant}: {medians[0]:.3f} / {medians[1]:.3f} s per step per process, "
                      f"{max(medians) / 2:.3f} s per step together", flush=True)
            else:
                runs[variant].append(result_of(run_child(variant, args, env)))
                print(f"{variant}: {runs[variant][-1]['median_s']:.3f} s per step", flush=True)
    reference = runs["float32"]
    for variant in ("batch-norm-closed-form",):  # same numbers as float32, by construction
        for a, b in zip(runs[variant], reference):
            a["first_loss_minus_float32"] = a["first_loss"] - b["first_loss"]
    write_result("step_variants", {"model": "efficientnet_lite0", "size": args.size, "batch": args.batch,
                                   "repeats": args.repeats, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
