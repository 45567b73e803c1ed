"""Population-parallel fitness: one compiled program fine-tunes every member at once.

Layer-group masks enter the program as *traced* per-group gates (one float per member
and group), so masks never change the program; they are used twice:
- as the BatchNorm `train` flags of `StagedNet` (a gated-off group runs in inference mode
  and keeps its running statistics bit-identical), and
- as optimizer update gates: `optax.chain(make_optimizer(cfg), gate_updates(gates))`,
  the gate last, so momentum and weight decay cannot move a frozen leaf.

Parameters, BatchNorm statistics and optimizer states carry a leading population axis
(`jax.vmap` of a per-member train step); the batches are shared: every member sees the
batches of `batch_plan` with the augmentation of `FineTuner.fine_tune`, so a member's
result equals the sequential evaluator's to float tolerance.

`sharded=True` runs the same per-member code under `shard_map` over a one-axis mesh
("pop") of all devices, across processes too: member state and gates are split over the
devices, batches are replicated, and validation logits are all-gathered so every process
gets every member's fitness. Populations are padded (with copies of a real mask) to a
fixed size that divides the device count, so one program serves every generation; the
padding is never reported.

`members_per_program=k` runs the padded population as consecutive programs of k members
per device instead (one compile for every population size; k=1 avoids XLA:CPU's slow
batched-kernel convolutions while still compiling once for all masks).

Memory: with `memory_limit_bytes` (what `auto` passes on an accelerator: 90% of the
device's free memory), the step program's size is read from XLA's memory analysis of the
compiled program (arguments + outputs + temporaries, per device) before it runs; when the
whole population does not fit, it runs as programs of fewer members (halving until it
fits), so a large model or population degrades to more programs instead of running out of
memory. The compiled program of the analysis is the one that runs (no second compile).

Frozen prefix: when augmentation is off, the stages below the lowest trainable stage of
*all* members are run once (`PrefixFeatureCache`) and the program trains the suffix only;
programs are compiled per (padded population size, first stage run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deft_jax import divergence
from deft_jax.config import FineTuneConfig
from deft_jax.errors import UserError
from deft_jax.fitness import PrefixFeatureCache, SplitArrays
from deft_jax.finetune import (augment_batch, batch_plan, cross_entropy, first_trainable_stage,
                               make_optimizer)
from deft_jax.masks import GroupMask, gate_updates, param_gates
from deft_jax.models.base import ModelSpec

AXIS = "pop"


class PopulationEvaluator:
    """Fitness of many masks from one vmapped (or sharded) fine-tune program."""

    def __init__(self, spec: ModelSpec, variables: dict, data: SplitArrays, cfg: FineTuneConfig,
                 metric: str = "accuracy", seed: int = 0, sharded: bool = False,
                 cache_prefix: bool = True, pad_to: int | None = None,
                 eval_images_per_call: int = 2048, members_per_program: int | None = None,
                 memory_limit_bytes: int | None = None):
        self.spec, self.data, self.cfg = spec, data, cfg
        self.metric, self.seed, self.sharded = metric, seed, sharded
        self.name = "sharded" if sharded else "vmap"
        self.variables = {"params": dict(variables["params"]),
                          "batch_stats": dict(variables.get("batch_stats", {}))}
        self.cache_prefix = cache_prefix and not cfg.augment
        self.prefix = PrefixFeatureCache(spec, variables, data)
        self.base_tx = make_optimizer(cfg)
        self.groups = spec.group_names
        self.eval_images_per_call = eval_images_per_call
        # None: the whole (padded) population in one program; k: programs of k members per
        # device, run one after another (one compile serves every population size)
        self.members_per_program = members_per_program
        self.memory_limit_bytes = memory_limit_bytes
        self.memory_fit: dict | None = None  # what fitting the program to memory decided
        self._fitted: set[tuple[int, int]] = set()
        if sharded:
            self.mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
            self.num_devices = self.mesh.size
        else:
            self.mesh, self.num_devices = None, 1
        self.pad_to = self._round_up(pad_to) if pad_to else 0  # grows to the largest call
        self._programs: dict = {}
        self.compiles = 0
        self.calls = self.members = self.padded = 0
        self.seconds = 0.0

    # --- public API ------------------------------------------------------------------------

    def evaluate(self, masks: Sequence[GroupMask]) -> list[float]:
        """Fitness (1 - metric on the val split) per mask, in order."""
        logits = self.evaluate_logits(masks)
        return [divergence.fitness_from_logits(self.metric, l, self.data.y_val, self.data.num_classes, m)
                for l, m in zip(logits, masks)]

    def evaluate_logits(self, masks: Sequence[GroupMask]) -> np.ndarray:
        """Validation logits [len(masks), n_val, classes] after each member's fine-tune."""
        if not masks:
            return np.zeros((0, len(self.data.y_val), self.data.num_classes), np.float32)
        t0 = time.perf_counter()
        start = self._start(masks)  # padding repeats masks[0]: the same first stage
        self._fit_to_memory(len(masks), start)
        padded = self._pad(masks)
        _, x_val = self.prefix.features(start)
        logits = [self._val_logits(start, self._train(chunk, start), x_val)
                  for chunk in self._chunks(padded)]
        self.seconds += time.perf_counter() - t0
        return np.concatenate(logits)[:len(masks)]

    def fine_tune(self, masks: Sequence[GroupMask]) -> list[dict]:
        """Fine-tuned variables {'params', 'batch_stats'} (numpy) per mask, in order."""
        start = self._start(masks)
        self._fit_to_memory(len(masks), start)
        padded = self._pad(masks)
        out = []
        for chunk in self._chunks(padded):
            params, stats, _ = (self._to_host(t) for t in self._train(chunk, start))
            for i in range(len(chunk)):
                member = {"params": dict(self.variables["params"]),
                          "batch_stats": dict(self.variables["batch_stats"])}
                member["params"].update(jax.tree.map(lambda a: a[i], params))
                member["batch_stats"].update(jax.tree.map(lambda a: a[i], stats))
                out.append(member)
        return out[:len(masks)]

    def stats(self) -> dict:
        out = {"compiles": self.compiles, "population_calls": self.calls,
               "members_per_program": self.members_per_program,
               "members_evaluated": self.members, "members_padded": self.padded,
               "devices": self.num_devices, "population_seconds": round(self.seconds, 3)}
        if self.memory_fit:
            out["memory_fit"] = self.memory_fit
        return {**out, **(self.prefix.stats() if self.cache_prefix else {})}

    # --- the population program -----------------------------------------------------------

    def _unit(self) -> int:
        """Program sizes are multiples of this: the device count (x members per program)."""
        return self.num_devices * (self.members_per_program or 1)

    def _round_up(self, n: int) -> int:
        return -(-n // self._unit()) * self._unit()

    def _pad(self, masks: Sequence[GroupMask]) -> list[GroupMask]:
        """Pad with copies of the first mask: to the largest population seen so far (one
        program for every generation), or to whole programs of `members_per_program`."""
        size = self._round_up(len(masks))
        if not self.members_per_program:
            self.pad_to = size = max(self.pad_to, size)
        padded = list(masks) + [masks[0]] * (size - len(masks))
        self.calls += 1
        self.members += len(masks)
        self.padded += len(padded) - len(masks)
        return padded

    def _chunks(self, masks: list[GroupMask]) -> list[list[GroupMask]]:
        if not self.members_per_program:
            return [masks]
        unit = self._unit()
        return [masks[i:i + unit] for i in range(0, len(masks), unit)]

    def _start(self, masks: Sequence[GroupMask]) -> int:
        if not self.cache_prefix:
            return 0
        return min(first_trainable_stage(self.spec, m) for m in masks)

    def _suffix(self, collection: str, start: int) -> dict:
        names = set(self.spec.stage_names[start:])
        return {k: v for k, v in self.variables[collection].items() if k in names}

    def _put(self, x, spec: P):
        """Host array -> device array: plain on one device, NamedSharding(mesh, spec) when
        sharded (built from per-shard slices, so it works when the mesh spans processes)."""
        if not self.sharded:
            return jnp.asarray(x)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, NamedSharding(self.mesh, spec),
                                            lambda index: np.array(x[index]))

    def _to_host(self, tree):
        if not self.sharded or jax.process_count() == 1:
            return jax.tree.map(np.asarray, tree)
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)

    def _fit_to_memory(self, n_masks: int, start: int) -> None:
        """With a memory limit, choose the members per program so that the step program
        fits: the whole (padded) population if it does, else halve until it does. The
        candidates are compiled ahead of time; the one that fits is the program that runs.
        Checked once per (members per device, first stage run)."""
        if not self.memory_limit_bytes:
            return
        if self.members_per_program is None:  # the whole population, padded as `_pad` will
            per_device = -(-max(n_masks, self.pad_to) // self.num_devices)
        else:
            per_device = self.members_per_program
        if (per_device, start) in self._fitted:
            return
        while True:
            needed = self._step_bytes(per_device * self.num_devices, start)
            if needed <= self.memory_limit_bytes:
                break
            if per_device == 1:
                raise UserError(
                    f"one population member's fine-tune needs {needed / 2**30:.2f} GiB per device, more "
                    f"than the {self.memory_limit_bytes / 2**30:.2f} GiB available; lower finetune.batch_size "
                    "or model.input_size")
            per_device = -(-per_device // 2)
            self.members_per_program = per_device
        self._fitted.add((per_device, start))
        self.memory_fit = {"members_per_program": self.members_per_program, "program_bytes": int(needed),
                           "limit_bytes": int(self.memory_limit_bytes)}

    def _step_bytes(self, size: int, start: int) -> int:
        """Per-device bytes of the step program for `size` members (XLA memory analysis:
        arguments + outputs + temporaries - donated aliases); caches the compiled program."""
        key = ("step", size, start)
        if key not in self._programs or not hasattr(self._programs[key], "memory_analysis"):
            x_train, _ = self.prefix.features(start)
            bs = min(self.cfg.batch_size, len(x_train))
            params = self._suffix("params", start)
            stats = self._suffix("batch_stats", start)
            opt = jax.eval_shape(optax.chain(self.base_tx, gate_updates({})).init, params)
            member = NamedSharding(self.mesh, P(AXIS)) if self.sharded else None
            shared = NamedSharding(self.mesh, P()) if self.sharded else None

            def members(tree):
                return jax.tree.map(lambda a: jax.ShapeDtypeStruct((size,) + tuple(np.shape(a)), a.dtype,
                                                                   sharding=member), tree)

            args = (members(params), members(stats), members(opt),
                    {g: jax.ShapeDtypeStruct((size,), jnp.float32, sharding=member) for g in self.groups},
                    jax.ShapeDtypeStruct((bs,) + x_train.shape[1:], jnp.float32, sharding=shared),
                    jax.ShapeDtypeStruct((bs,), jnp.asarray(self.data.y_train).dtype, sharding=shared))
            self._programs[key] = self._program("step", size, start).lower(*args).compile()
        m = self._programs[key].memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes)

    def _member_step(self, start: int):
        net, rules, base_tx = self.spec.net, self.spec.group_rules, self.base_tx

        def step(params, batch_stats, opt_state, gates, x, y):
            flags = dict(gates)  # group -> traced float; > 0.5 trains (and uses batch stats)

            def loss_fn(p):
                logits, updated = net.apply({"params": p, "batch_stats": batch_stats}, x,
                                            train=flags, start=start, mutable=["batch_stats"])
                return cross_entropy(logits, y), updated.get("batch_stats", {})

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            tx = optax.chain(base_tx, gate_updates(param_gates(params, rules, gates)))
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, dict(new_stats), opt_state, loss

        return step

    def _member_logits(self, start: int):
        net = self.spec.net

        def logits(params, batch_stats, x):
            return net.apply({"params": params, "batch_stats": batch_stats}, x, train=False,
                             start=start)

        return logits

    def _program(self, kind: str, size: int, start: int):
        key = (kind, size, start)
        if key in self._programs:
            return self._programs[key]
        if kind == "step":
            fn = jax.vmap(self._member_step(start), in_axes=(0, 0, 0, 0, None, None))
            if self.sharded:
                member = P(AXIS)
                fn = jax.shard_map(fn, mesh=self.mesh, in_specs=(member,) * 4 + (P(), P()),
                                   out_specs=(member,) * 4)
            fn = jax.jit(fn, donate_argnums=(0, 1, 2))
        else:
            fn = jax.vmap(self._member_logits(start), in_axes=(0, 0, None))
            if self.sharded:  # logits come back replicated: every process gets every member's
                fn = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(AXIS), P(AXIS), P()),
                                   out_specs=P(AXIS))
                fn = jax.jit(fn, out_shardings=NamedSharding(self.mesh, P()))
            else:
                fn = jax.jit(fn)
        self.compiles += 1
        self._programs[key] = fn
        return fn

    def _train(self, masks: Sequence[GroupMask], start: int):
        """Fine-tune `masks` (one program's worth) on the features entering stage `start`;
        returns (params, stats, opt_state), each leaf with a leading member axis."""
        size = len(masks)
        x_train, _ = self.prefix.features(start)
        y_train = self.data.y_train

        def per_member(tree):
            return jax.tree.map(
                lambda a: self._put(np.broadcast_to(np.asarray(a), (size,) + np.shape(a)), P(AXIS)),
                tree)

        params = self._suffix("params", start)
        stats = self._suffix("batch_stats", start)
        # the state of chain(base_tx, gate_updates): the gates do not enter init
        opt_state = jax.tree.map(np.asarray, optax.chain(self.base_tx, gate_updates({})).init(params))
        gates = {g: np.asarray([1.0 if m[g] else 0.0 for m in masks], np.float32)
                 for g in self.groups}
        state = (per_member(params), per_member(stats), per_member(opt_state))
        gates = {g: self._put(v, P(AXIS)) for g, v in gates.items()}

        step = self._program("step", size, start)
        rng = np.random.default_rng([self.seed, 7])  # as FineTuner.fine_tune
        for idx in batch_plan(len(x_train), self.cfg.batch_size, self.cfg.epochs, self.seed):
            xb = augment_batch(x_train[idx], self.cfg, rng)
            params_, stats_, opt_, _ = step(*state, gates, self._put(xb, P()),
                                            self._put(y_train[idx], P()))
            state = (params_, stats_, opt_)
        return state

    def _val_logits(self, start: int, state, x_val: np.ndarray) -> np.ndarray:
        params, stats, _ = state
        size = jax.tree.leaves(params)[0].shape[0]
        fn = self._program("logits", size, start)
        n = len(x_val)
        chunk = max(1, min(n, self.eval_images_per_call // size))
        outputs = []
        for i in range(0, n, chunk):
            xb = x_val[i:i + chunk]
            pad = chunk - len(xb)
            if pad:  # one shape per program: pad the last chunk, drop the padding
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            out = fn(params, stats, self._put(xb, P()))
            out = np.asarray(out.addressable_data(0)) if self.sharded else np.asarray(out)
            outputs.append(out[:, :chunk - pad])
        return np.concatenate(outputs, axis=1)
