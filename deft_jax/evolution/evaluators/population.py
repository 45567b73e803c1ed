"""Population-parallel fitness: one compiled program fine-tunes many members at once.

Masks enter the program as *traced* per-group gates (`deft_jax.core.training.train_step`):
the BatchNorm `train` flags of `StagedNet` (a gated-off group keeps its running statistics
bit-identical) and the last transform of the optimizer's updates (zeroed for frozen leaves,
their optimizer state left as it was). A program's whole fine-tune is `lax.scan` over the
batches on the device, `jax.vmap` over the members, all seeing the same batches: a member's
result equals the static-mask evaluator's to float tolerance. `sharded=True` runs it under
`shard_map` over all devices, the population padded (with copies of a real mask, never
reported) to a size that divides the device count. `members_per_program=k`: programs of k
members per device, each from its members' first trainable stage (`vmap-1` on CPU;
`member_plan`); `memory_limit_bytes` fits them to the device (`memory_fit`). With augmentation
off the stages below a program's lowest trainable stage run once (`PrefixFeatureCache`). With
`keep_models` (`FinalModelCandidates`) whole-budget members' kept-epoch variables are kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from deft_jax.core import divergence, epoch_count, optimizer, training
from deft_jax.core.best_epoch import BestEpoch
from deft_jax.core.masks import GroupMask, lr_multiplier, mask_key, trains
from deft_jax.data import batches
from deft_jax.data.inputs import SplitArrays
from deft_jax.evolution.evaluators import memory_fit
from deft_jax.evolution.evaluators.kept_models import FinalModelCandidates
from deft_jax.evolution.evaluators.member_plan import MemberPlan
from deft_jax.evolution.evaluators.programs import (AXIS, logits_program, member_variables, put, to_host,
                                                    train_program)
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.fitness import PrefixFeatureCache
from deft_jax.models.base import ModelSpec
from deft_jax.models.groups import leaf_values
from deft_jax.runtime.program_cache import ProgramCache


class PopulationEvaluator(FinalModelCandidates):
    """Fitness of many masks from one vmapped (or sharded) fine-tune program."""
    can_keep_models = True  # `keep_final_models` (`FinalModelCandidates`)

    def __init__(self, spec: ModelSpec, variables: dict, data: SplitArrays, recipe: FitnessRecipe,
                 sharded: bool = False, pad_to: int | None = None, eval_images_per_call: int = 2048,
                 members_per_program: int | None = None, memory_limit_bytes: int | None = None,
                 compile_after: int = 3):
        """`recipe.lr_multipliers`: masks carry per-group learning-rate multipliers
        (`mask+lr`), which enter the program as traced per-member scales (no recompiles)."""
        super().__init__()
        self.spec, self.data, self.recipe, self.cfg = spec, data, recipe, recipe.finetune
        self.metric, self.seed, self.keep = recipe.metric, recipe.seed, recipe.keep
        self.lr_multipliers, self.sharded = recipe.lr_multipliers, sharded
        self.on_member_done = self.on_member_scored = self.kept = None  # see `Evaluator`; `kept`: `_chunk_logits`
        self.name = "sharded" if sharded else ("vmap-1" if members_per_program == 1 else "vmap")
        self.variables = {"params": dict(variables["params"]),
                          "batch_stats": dict(variables.get("batch_stats", {}))}
        self.cache_prefix = recipe.prefix_cached
        self.prefix = PrefixFeatureCache(spec, variables, data)
        n_train = len(data.x_train)  # the rate schedule (if any) spans the whole fitness training
        self.base_tx = optimizer.make_optimizer(self.cfg, steps_per_epoch=n_train // min(self.cfg.batch_size, n_train))
        self.groups = spec.group_names
        self.eval_images_per_call = eval_images_per_call
        self.memory = memory_fit.MemoryFit(memory_limit_bytes)
        if sharded:
            self.mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
            self.num_devices = self.mesh.size
        else:
            self.mesh, self.num_devices = None, 1
        self.plan = MemberPlan(spec, self.cache_prefix, self.num_devices, members_per_program,
                               compile_after, pad_to)
        self.programs = ProgramCache()  # ("train", size, start, steps) / ("logits", size, start)
        self._batch_cache: dict = {}
        self.seconds = 0.0

    @property
    def members_per_program(self) -> int | None:
        return self.plan.members_per_program

    def evaluate(self, masks: Sequence[GroupMask], epochs: int | None = None) -> list[float]:
        """Fitness (1 - metric on the val split) per mask, in order; `epochs` (default: the
        fine-tune config's) trains the first epochs of the same batch plan."""
        out: list[float | None] = [None] * len(masks)

        def scored(idx: Sequence[int], logits: np.ndarray, models: list | None) -> None:  # a program is done
            for j, (i, l) in enumerate(zip(idx, logits)):
                out[i] = divergence.fitness_from_logits(self.metric, l, self.data.y_val, self.data.num_classes, masks[i])
                if models is not None:
                    self.store_model(mask_key(masks[i]), out[i], models[j])
                if self.on_member_scored is not None:
                    self.on_member_scored(i, out[i])
        self.evaluate_logits(masks, epochs, on_chunk=scored)
        return out

    def evaluate_logits(self, masks: Sequence[GroupMask], epochs: int | None = None,
                        on_chunk=None) -> np.ndarray:
        """Validation logits [len(masks), n_val, classes] after each member's fine-tune (last
        epoch, or best with keep = "best-val"); `on_chunk(indices, logits, models)` after each
        program (models: the kept epoch's variables per member with `keep_models` and the
        whole budget, else None)."""
        if not masks:
            return np.zeros((0, len(self.data.y_val), self.data.num_classes), np.float32)
        t0 = time.perf_counter()
        out: list[np.ndarray | None] = [None] * len(masks)
        for start, idx, chunks in self._programs_for(masks):
            _, x_val = self.prefix.features(start)
            done = 0
            logits = []
            for chunk in chunks:
                chunk_logits, models = self._chunk_logits(chunk, start, x_val, epochs)
                logits.append(chunk_logits)
                real = min(len(chunk), len(idx) - done)  # padding members are not reported (nor counted)
                epoch_count.TOTAL.add(self.cfg.epochs if epochs is None else epochs, real)
                if on_chunk is not None and real > 0:
                    on_chunk(idx[done:done + real], chunk_logits[:real], models and models[:real])
                done += real
                if self.on_member_done is not None and real > 0:
                    self.on_member_done(real)
            logits = np.concatenate(logits)
            for j, i in enumerate(idx):
                out[i] = logits[j]
        self.seconds += time.perf_counter() - t0
        return np.stack(out)

    def _chunk_logits(self, chunk: Sequence[GroupMask], start: int, x_val: np.ndarray,
                      epochs: int | None) -> tuple[np.ndarray, list | None]:
        """The chunk's validation logits and, with `keep_models` and the whole budget, its
        members' variables of the kept epoch; `kept` (`FoldedEvaluator`) gets each mask's
        (kept epoch, -1 = the last; val logits)."""
        want, kept = self.keep_models and epochs is None, BestEpoch(self.keep, self.metric, self.data.y_val,
                                                                    self.data.num_classes)

        def after_epoch(epoch: int, state: training.TrainState) -> None:
            logits, host = self._val_logits(start, state, x_val), []  # host: the state fetched once

            def variables(j: int) -> dict:
                host[:] = host or [to_host(state, self._mesh())]
                return member_variables(self.variables, host[0], j)
            for j, mask in enumerate(chunk):
                kept.offer(j, logits[j], mask, epoch, payload=(lambda j=j: variables(j)) if want else None)
        state = self._train(chunk, start, epochs, None if self.keep == "last" else after_epoch)
        if self.keep == "last":
            host = to_host(state, self._mesh()) if want else None
            logits = self._val_logits(start, state, x_val)
            models = [member_variables(self.variables, host, j) for j in range(len(chunk))] if want else None
        else:
            logits = np.stack([kept.logits[j] for j in range(len(chunk))])
            models = [kept.payload[j] for j in range(len(chunk))] if want else None
        if self.kept is not None:
            self.kept.update((mask_key(m), (kept.epoch.get(j, -1), logits[j])) for j, m in enumerate(chunk))
        return logits, models

    def fine_tune(self, masks: Sequence[GroupMask]) -> list[dict]:
        """Fine-tuned variables {'params', 'batch_stats'} (numpy) per mask, in order."""
        out: list[dict | None] = [None] * len(masks)
        for start, idx, chunks in self._programs_for(masks):
            members = []
            for chunk in chunks:
                state = to_host(self._train(chunk, start), self._mesh())
                epoch_count.TOTAL.add(self.cfg.epochs, min(len(chunk), len(idx) - len(members)))
                members += [member_variables(self.variables, state, i) for i in range(len(chunk))]
            for j, i in enumerate(idx):
                out[i] = members[j]
        return out

    def stats(self) -> dict:
        plan = self.plan
        out = {"compiles": self.programs.compiles, "population_calls": plan.calls,
               "members_per_program": plan.members_per_program,
               "members_evaluated": plan.members, "members_padded": plan.padded,
               "devices": self.num_devices, "population_seconds": round(self.seconds, 3),
               "stages_trained": sum(plan.stages_trained)}
        if self.memory.decision:
            out["memory_fit"] = self.memory.decision
        return {**out, **(self.prefix.stats() if self.cache_prefix else {})}

    def _programs_for(self, masks: Sequence[GroupMask]):
        """(start, member indices, chunks of padded masks) per program group, in turn (see
        `member_plan`), each fitted to the memory limit just before it runs. With several
        groups, the later groups' programs compile in the background meanwhile."""
        groups = self.plan.groups(masks)
        if not self.members_per_program:
            self._fit_to_memory(len(masks), groups[0][0])
        for start, _ in groups[1:]:
            self.programs.prefetch(*self._train_key_and_shapes(self.plan.unit(), start))
        for start, idx in groups:
            if self.memory.limit_bytes and self.members_per_program:
                self._fit_to_memory(len(idx), start)
            yield start, idx, self.plan.padded_chunks([masks[i] for i in idx], start)

    def _mesh(self) -> Mesh | None:
        return self.mesh if self.sharded else None

    def _put(self, x, spec: P):
        return put(x, self._mesh(), spec)

    def _step_model(self, start: int) -> training.StepModel:
        return training.StepModel.of(self.spec, self.base_tx, start, self.cfg.compute_dtype,
                                     leaf_scales=self.lr_multipliers)

    def _batches(self, start: int) -> list[list[tuple]]:
        """This seed's stacked training batches of the features entering stage `start`, per
        epoch, on the device (replicated when sharded); kept for the whole search."""
        if start not in self._batch_cache:
            x_train, _ = self.prefix.features(start)
            self._batch_cache[start] = [
                [(self._put(xs, P()), self._put(ys, P())) for xs, ys in epoch]
                for epoch in batches.epoch_batches(x_train, self.data.y_train, self.cfg,
                                                    self.cfg.epochs, self.seed)]
        return self._batch_cache[start]

    def _fit_to_memory(self, n_masks: int, start: int) -> None:
        """With a memory limit, choose the members per program so that the program fits: the
        whole (padded) population if it does, else fewer (`MemoryFit`)."""
        if not self.memory.limit_bytes:
            return
        if self.members_per_program is None:  # the whole population, padded as the plan will
            per_device = -(-max(n_masks, self.plan.pad_to) // self.num_devices)
        else:
            per_device = self.members_per_program
        fitted = self.memory.members_per_device(
            per_device, start, self.members_per_program,
            lambda k: self.program_bytes(k * self.num_devices, start))
        if fitted != per_device:
            self.plan.members_per_program = fitted

    def _member_state(self, start: int) -> training.TrainState:
        """One member's initial state from stage `start` (pretrained suffix, fresh optimizer
        state over every leaf: the gates do not enter it)."""
        return training.init_state(self._step_model(start),
                                   training.suffix(self.variables["params"], self.spec, start),
                                   training.suffix(self.variables["batch_stats"], self.spec, start),
                                   {g: 0.5 for g in self.groups})

    def program_bytes(self, size: int, start: int) -> int:
        """Per-device bytes of the fine-tune program for `size` members from stage `start`
        (XLA memory analysis); the program is compiled ahead of time into the cache, under
        the key it runs from."""
        return memory_fit.compiled_bytes(self.programs.compile_ahead(*self._train_key_and_shapes(size, start)))

    def _train_key_and_shapes(self, size: int, start: int) -> tuple:
        """(cache key, builder, argument shapes...) of the train program for `size` members from `start`."""
        xs, ys = self._batches(start)[0][0]
        steps = xs.shape[0] if training.scan_steps() else 1
        if not training.scan_steps():  # one step per call: one batch per argument
            xs, ys = xs[0], ys[0]
        member_state = jax.eval_shape(lambda: self._member_state(start))
        return (("train", size, start, steps), lambda: train_program(self._step_model(start), self._mesh(), size),
                *memory_fit.train_argument_shapes(member_state, size, self.groups, xs, ys, self._mesh()))

    def _train_program(self, size: int, start: int, steps: int):
        return self.programs.get(("train", size, start, steps),
                                 lambda: train_program(self._step_model(start), self._mesh(), size))

    def _logits_program(self, size: int, start: int):
        return self.programs.get(("logits", size, start),
                                 lambda: logits_program(self.spec, start, self._mesh()))

    def _train(self, masks: Sequence[GroupMask], start: int, epochs: int | None = None,
               after_epoch=None) -> training.TrainState:
        """Fine-tune `masks` (one program's worth) on the features entering stage `start`
        for the first `epochs` epochs of the plan (default all); returns the TrainState, each
        leaf with a leading member axis. `after_epoch(epoch, state)` runs after each epoch."""
        size = len(masks)
        one = jax.tree.map(np.asarray, self._member_state(start))
        state = jax.tree.map(
            lambda a: self._put(np.broadcast_to(a, (size,) + np.shape(a)), P(AXIS)), one)
        gates = {g: self._put(np.asarray([1.0 if trains(m[g]) else 0.0 for m in masks], np.float32), P(AXIS))
                 for g in self.groups}
        if self.lr_multipliers:
            per_group = {g: np.asarray([lr_multiplier(m[g]) for m in masks], np.float32) for g in self.groups}
            scales = leaf_values(self._step_model(start).labels, per_group)
            state = state._replace(opt_state=optimizer.set_leaf_scales(
                state.opt_state, jax.tree.map(lambda a: self._put(a, P(AXIS)), scales)))
        plan = self._batches(start)
        for epoch, chunks in enumerate(plan[:len(plan) if epochs is None else epochs]):
            for xs, ys in chunks:
                compiled = self._train_program(size, start, xs.shape[0] if training.scan_steps() else 1)
                state, _ = training.run_batches(compiled, state, gates, [(xs, ys)])
            if after_epoch is not None:
                after_epoch(epoch, state)
        return state

    def _val_logits(self, start: int, state: training.TrainState, x_val: np.ndarray) -> np.ndarray:
        size = jax.tree.leaves(state.params)[0].shape[0]
        if size == 1 and not self.sharded:  # the prefix cache's per-stage programs, shared by all
            member = jax.tree.map(lambda a: np.asarray(a)[0], dict(params=state.params, batch_stats=state.batch_stats))
            return training.logits(self.spec, member, x_val, start=start, batch_size=self.prefix.chunk,
                                   cache=self.prefix.forwards)[None]
        fn = self._logits_program(size, start)
        chunk = max(1, min(len(x_val), self.eval_images_per_call // size))
        outputs = []
        for xb, n in training.padded_chunks(x_val, chunk):
            out = fn(state.params, state.batch_stats, self._put(xb, P()))
            out = np.asarray(out.addressable_data(0)) if self.sharded else np.asarray(out)
            outputs.append(out[:, :n])
        return np.concatenate(outputs, axis=1)
