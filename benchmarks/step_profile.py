"""Time and XLA FLOPs of one fine-tune train step on the deft_jax side of
`benchmarks/vs_pytorch.py`: the static-mask step of the sequential evaluator and the gated,
vmapped step of a population program."""

from __future__ import annotations

import time

import numpy as np


def step_inputs(spec, variables, features, data, mask, start: int, gated: bool, size: int = 1):
    """(step model, state, flags, x, y) of one train step from stage `start` (public core API)."""
    import jax
    import jax.numpy as jnp
    from deft_jax.core import optimizer, training

    tx = optimizer.make_optimizer(data["cfg"])
    model = training.StepModel.of(spec, tx, start, data["cfg"].compute_dtype)
    params = training.suffix(variables["params"], spec, start)
    stats = training.suffix(variables["batch_stats"], spec, start)
    flags = ({g: jnp.full((size,), 1.0 if on else 0.0, jnp.float32) for g, on in mask.items()}
             if gated else dict(mask))
    one = training.init_state(model, params, stats, {g: 0.5 for g in mask} if gated else mask)
    state = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (size,) + jnp.shape(a)), one) \
        if gated else jax.tree.map(jnp.asarray, one)
    bs = min(data["cfg"].batch_size, len(features))
    return model, state, flags, jnp.asarray(features[:bs]), jnp.asarray(data["y_train"][:bs])


def time_calls(fn, args, steps: int) -> list[float]:
    import jax
    times = []
    for i in range(steps + 2 if steps else 0):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def jax_step_profile(spec, variables, prefix, data: dict, masks: dict[str, str], steps: int = 10,
                     cache_prefix: bool = True) -> dict:
    """Per-step time and XLA FLOPs of one static-mask train step (`training.train_step` with
    Python-bool flags: only trainable leaves differentiated), from the mask's first trainable
    stage on cached features (`prefix`: a PrefixFeatureCache) when `cache_prefix`."""
    import jax
    import jax.numpy as jnp
    from deft_jax.core import training
    from deft_jax.core.masks import mask_from_key

    out = {}
    for label, key in masks.items():
        mask = mask_from_key(key, spec.group_names)
        start = training.first_trainable_stage(spec, mask) if cache_prefix else 0
        x_train, _ = prefix.features(start)
        model, state, flags, x, y = step_inputs(spec, variables, x_train, data, mask, start, gated=False)
        step = jax.jit(lambda s, xb, yb, m=model, f=flags: training.train_step(m, s, f, xb, yb))
        compiled = step.lower(state, x, y).compile()
        flops = full_flops = xla_flops(compiled)
        if start > 0:  # the same mask's step run from the input (what the PyTorch step does)
            m0, s0, f0, x0, y0 = step_inputs(spec, variables, data["x_train"], data, mask, 0, gated=False)
            full = jax.jit(lambda s, xb, yb: training.train_step(m0, s, f0, xb, yb))
            full_flops = xla_flops(full.lower(s0, x0, y0).compile())
        times = time_calls(compiled, (state, x, y), steps)
        out[label] = {"mask": key, "start_stage": start,
                      "median_step_s": float(np.median(times)) if times else None,
                      "min_step_s": float(np.min(times)) if times else None, "xla_flops": flops,
                      "xla_flops_from_input": full_flops}
        if start == 0 and steps:  # where a step's time goes: its forward alone (BN in train mode)
            net = spec.net
            fwd = jax.jit(lambda v, xb: net.apply(v, xb, train=True, mutable=["batch_stats"])[0])
            fwd_times = time_calls(fwd, ({"params": variables["params"], "batch_stats": variables["batch_stats"]},
                                    jnp.asarray(x_train[:x.shape[0]])), steps)
            out[label]["median_forward_s"] = float(np.median(fwd_times))
    return out


def population_step_profile(spec, variables, prefix, data: dict, masks: dict[str, str], static: dict,
                            members: int, steps: int = 10) -> dict:
    """Per-step time of the gated train step of a population program (`members` copies of
    the mask, traced gates, vmapped), from the mask's first trainable stage. FLOPs: the
    static step's XLA count times the members (the frozen groups' weight gradients that a
    gated step also computes are not counted)."""
    import jax
    from deft_jax.core import training
    from deft_jax.core.masks import mask_from_key

    out = {}
    for label, key in masks.items():
        mask = mask_from_key(key, spec.group_names)
        start = training.first_trainable_stage(spec, mask)
        x_train, _ = prefix.features(start)
        model, state, gates, x, y = step_inputs(spec, variables, x_train, data, mask, start, gated=True,
                                                 size=members)
        step = jax.jit(jax.vmap(lambda s, g, xb, yb: training.train_step(model, s, g, xb, yb),
                                in_axes=(0, 0, None, None)))
        times = time_calls(step, (state, gates, x, y), steps)
        flops = static.get(label, {}).get("xla_flops")
        out[label] = {"mask": key, "start_stage": start, "members_per_program": members,
                      "median_step_s": float(np.median(times)), "min_step_s": float(min(times)),
                      "xla_flops": flops * members if flops else None,
                      "static_xla_flops_from_input": static.get(label, {}).get("xla_flops_from_input")}
    return out


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")
