"""Seconds per train step of the two static-mask steps (`finetune.step`): the gated program
(one jitted `training.train_step` per frozen pattern) against the chained per-stage programs
(`deft_jax.core.stages.StagePrograms`), on ResNet-20 with random weights, for the masks full,
last stage (+ head) and head only. Every step runs from stage 0 (no cached prefix features).

    python benchmarks/stage_programs.py [--batch 16] [--steps 10]

Prints one JSON object to stdout (per mask and step: compile seconds of the first step,
median / min seconds of the later steps); writes nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

MASKS = {"full": None, "last_stage": ["layer3_2"], "head_only": []}


def timed_steps(step, state, x, y, steps: int) -> dict:
    """`step(state, x, y) -> (state, loss)` called 1 + `steps` times, state threaded."""
    import jax

    t0 = time.perf_counter()
    state, loss = step(state, x, y)
    jax.block_until_ready((state, loss))
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, loss = step(state, x, y)
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - t0)
    return {"first_step_s": round(first, 4), "median_step_s": round(statistics.median(times), 4),
            "min_step_s": round(min(times), 4), "final_loss": float(loss)}


def benchmark(batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from deft_jax.config.schema import FineTuneConfig
    from deft_jax.core import optimizer, training
    from deft_jax.core.masks import frozen_pattern, mask_from_names
    from deft_jax.core.stages import StagePrograms
    from deft_jax.models.registry import build_model

    spec = build_model("resnet20", 10, "none", 32)
    variables = spec.init(0)
    cfg = FineTuneConfig(batch_size=batch, learning_rate=0.01, momentum=0.9)
    tx = optimizer.make_optimizer(cfg)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    model = training.StepModel.of(spec, tx)
    chain = StagePrograms(spec, tx)  # shared by the masks, as in a search
    out = {"model": "resnet20", "batch": batch, "steps_timed": steps, "backend": jax.default_backend(),
           "machine": platform.node(), "masks": {}}
    for label, names in MASKS.items():
        flags = frozen_pattern(mask_from_names(spec.group_names if names is None else names, spec.group_names))

        def fresh(init):
            return init(jax.tree.map(jnp.array, variables["params"]),
                        jax.tree.map(jnp.array, variables["batch_stats"]), flags)

        gated_step = jax.jit(lambda s, xb, yb, f=flags: training.train_step(model, s, f, xb, yb),
                             donate_argnums=(0,))
        gated = timed_steps(gated_step, fresh(lambda p, s, f: training.init_state(model, p, s, f)),
                            x, y, steps)
        stages = timed_steps(lambda s, xb, yb, f=flags: chain.train_step(s, f, xb, yb),
                             fresh(chain.init_state), x, y, steps)
        out["masks"][label] = {"gated": gated, "stages": stages,
                               "stages_over_gated": round(stages["median_step_s"] / gated["median_step_s"], 3)}
    out["stage_programs_compiled"] = chain.programs.compiles
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mask, after the first")
    args = parser.parse_args(argv)
    print(json.dumps(benchmark(args.batch, args.steps), indent=2))


if __name__ == "__main__":
    main()
