"""Fine-tunes with a *static* layer-group mask (sequential evaluation, final training,
baseline methods).

Only trainable leaves are differentiated and handed to the optimizer; frozen leaves pass
through bit-identical and their groups' BatchNorm runs in inference mode
(`deft_jax.core.training.train_step` with Python-bool flags). The whole fine-tune is one compiled
program (`training.fine_tune_program`), cached per (mask, first stage run, steps), so a
mask seen again costs no compile. `start > 0` trains on cached features entering stage
`start` (see `deft_jax.evolution.fitness.PrefixFeatureCache`).

With `finetune.step = "stages"` (and the configured optimizer) every step is instead a
chain of per-stage programs shared by all masks (`deft_jax.core.stages.StagePrograms`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deft_jax.config.schema import FineTuneConfig
from deft_jax.core import epoch_count, optimizer, training
from deft_jax.core.masks import (
    frozen_pattern,
    has_lr_multipliers,
    lr_multiplier,
    mask_key,
)
from deft_jax.core.stages import StagePrograms
from deft_jax.data import batches
from deft_jax.models.base import ModelSpec
from deft_jax.runtime.program_cache import ProgramCache

log = logging.getLogger(__name__)


class FineTuner:
    """Fine-tunes a model under static masks, with compiled programs cached per mask."""

    def __init__(self, spec: ModelSpec, cfg: FineTuneConfig, learning_rate: float | None = None,
                 epochs: int | None = None, tx: optax.GradientTransformation | None = None,
                 compiler_options: dict | None = None):
        """`tx` replaces the optimizer made from `cfg` (e.g. auto-rgn's per-tensor scaling);
        `compiler_options` go to `jax.jit` of the fine-tune programs (fitness fine-tunes:
        `deft_jax.runtime.xla_options`).
        With a `finetune.schedule` that needs the step counts, the optimizer is made for the
        training set of the first `fine_tune` (and remade, programs dropped, if it changes)."""
        self.spec = spec
        self.cfg = cfg
        self.compiler_options = compiler_options
        self.epochs = cfg.epochs if epochs is None else epochs
        self.learning_rate = learning_rate
        self.scheduled = tx is None and optimizer.needs_steps(cfg)
        self.steps_per_epoch: int | None = None
        self._dropped_compiles = 0  # of programs dropped when the step counts changed
        self.tx = optimizer.make_optimizer(cfg, learning_rate) if tx is None and not self.scheduled else tx
        self.last_state: training.TrainState | None = None  # of the latest fine_tune
        self.programs = ProgramCache()  # fine-tune programs, per (frozen pattern, scales, start)
        self.forwards = ProgramCache()  # inference forwards, per first stage
        # finetune.step = "stages": per-stage programs, one set per leaf_scales; a custom
        # optimizer may mix leaves across stages, so it keeps the gated program
        self.uses_stages = cfg.step == "stages" and tx is None
        if cfg.step == "stages" and tx is not None:
            log.info("finetune.step = stages applies to the configured optimizer only: "
                     "this fine-tune's custom optimizer runs the gated program")
        self.stage_programs: dict[bool, StagePrograms] = {}

    @property
    def compiles(self) -> int:
        """Fine-tune programs built so far (forwards not counted)."""
        return (self.programs.compiles + self._dropped_compiles
                + sum(p.programs.compiles for p in self.stage_programs.values()))

    def step_model(self, start: int, leaf_scales: bool = False) -> training.StepModel:
        """`leaf_scales`: the optimizer ends in `scale_by_leaf` (per-group learning rates)."""
        return training.StepModel.of(self.spec, self.tx, start, self.cfg.compute_dtype, leaf_scales)

    def program(self, mask: Mapping, start: int):
        """The jitted program of `mask`'s frozen pattern from stage `start` (cached): the
        whole fine-tune on accelerators, one step on CPU (see `training.scan_steps`).
        Per-group learning-rate multipliers live in the optimizer state, so masks that differ
        only in them share the program."""
        flags = frozen_pattern(mask)
        scaled = has_lr_multipliers(mask)
        key = (mask_key(flags), scaled, start)
        return self.programs.get(key, lambda: jax.jit(training.program(self.step_model(start, scaled), flags),
                                                      donate_argnums=(0,), compiler_options=self.compiler_options))

    def stages(self, leaf_scales: bool = False) -> StagePrograms:
        """The per-stage programs (`finetune.step = "stages"`) of this tuner's optimizer."""
        if leaf_scales not in self.stage_programs:
            self.stage_programs[leaf_scales] = StagePrograms(
                self.spec, self.tx, self.cfg.compute_dtype, leaf_scales, self.compiler_options)
        return self.stage_programs[leaf_scales]

    def fine_tune(self, variables: dict, mask: Mapping, x: np.ndarray, y: np.ndarray,
                  seed: int, start: int = 0, epochs: int | None = None,
                  after_epoch: Callable[[int, dict], None] | None = None) -> tuple[dict, list[float]]:
        """Train `variables` under `mask` on (x, y); x enters stage `start`. Returns the new
        variables (the stages below `start` unchanged) and the loss per step. `epochs`
        overrides the tuner's; `after_epoch(epoch, variables)` is called after every epoch
        (the variables are the live device arrays: copy what must outlive the call)."""
        flags = frozen_pattern(mask)
        epochs = self.epochs if epochs is None else epochs
        if self.scheduled:
            self._schedule_for(len(x))
        params = training.suffix(variables["params"], self.spec, start)
        stats = training.suffix(variables["batch_stats"], self.spec, start)
        multipliers = ({g: lr_multiplier(v) for g, v in mask.items()} if has_lr_multipliers(mask)
                       else None)
        # copies: the program donates its state, never the caller's variables
        params, stats = jax.tree.map(jnp.array, params), jax.tree.map(jnp.array, stats)
        if self.uses_stages:
            chain = self.stages(has_lr_multipliers(mask))
            state = chain.init_state(params, stats, flags, multipliers)

            def run(state, on_device):
                return chain.run_batches(state, flags, on_device)
        else:
            state = training.init_state(self.step_model(start, has_lr_multipliers(mask)),
                                        params, stats, flags, multipliers)
            program = self.program(mask, start)

            def run(state, on_device):
                return training.run_batches(program, state, None, on_device)

        def merged(state: training.TrainState) -> dict:
            return {"params": {**variables["params"], **state.params},
                    "batch_stats": {**variables["batch_stats"], **state.batch_stats}}

        losses: list = []
        if after_epoch is None:
            on_device = [(jnp.asarray(xs), jnp.asarray(ys))
                         for xs, ys in batches.training_batches(x, y, self.cfg, epochs, seed)]
            state, losses = run(state, on_device)
        else:
            for epoch, chunks in enumerate(batches.epoch_batches(x, y, self.cfg, epochs, seed)):
                on_device = [(jnp.asarray(xs), jnp.asarray(ys)) for xs, ys in chunks]
                state, epoch_losses = run(state, on_device)
                losses += epoch_losses
                after_epoch(epoch, merged(state))
        losses = [np.atleast_1d(np.asarray(loss)) for loss in losses]
        epoch_count.TOTAL.add(epochs)
        self.last_state = state
        return merged(state), [float(v) for v in np.concatenate(losses)] if losses else []

    def _schedule_for(self, n: int) -> None:
        steps = n // min(self.cfg.batch_size, n)
        if steps != self.steps_per_epoch:
            self.steps_per_epoch = steps
            self.tx = optimizer.make_optimizer(self.cfg, self.learning_rate, steps, self.epochs)
            self._dropped_compiles += self.programs.compiles + sum(
                p.programs.compiles for p in self.stage_programs.values())
            self.programs = ProgramCache()  # compiled with the old step counts
            self.stage_programs = {}

    def logits(self, variables: dict, x: np.ndarray, start: int = 0, batch_size: int = 256) -> np.ndarray:
        """Inference-mode logits (all BatchNorms use running statistics)."""
        return training.logits(self.spec, variables, x, start=start, batch_size=batch_size,
                               cache=self.forwards)
