"""Static-mask training as a chain of per-stage programs (`finetune.step = "stages"`).

The gated path (`deft_jax.core.training.train_step` with Python-bool flags) compiles one
program per frozen pattern. Here every stage of the network (`ModelSpec.stage_names`) has a
few small jitted programs, compiled once per (stage, variant, input shape) and shared by
every mask, chained on the host:

- forward: a trainable stage runs with its BatchNorms in training mode and returns its new
  statistics (`train_forward`); a frozen one in inference mode, statistics untouched
  (`frozen_forward`), as the gated program treats frozen groups. Each stage's input is
  kept: it is the residual of the backward pass.
- loss: softmax cross-entropy and its gradient w.r.t. the logits (`loss_gradient`).
- backward, top stage first, with `jax.vjp` of the stage's forward recomputed from the kept
  input: a trainable stage gets its weight and input gradients and applies its optimizer
  update in the same program (`train_backward`; the lowest trainable stage skips the input
  gradient: `lowest_backward`); a frozen stage gets its input gradient only, its weights
  closed over as constants, so no weight gradient is ever built (`frozen_backward`). Stages
  below the lowest trainable one run no backward.

Each trainable stage has its own optimizer state. That equals one optimizer over all the
trainable leaves for transforms that act leaf by leaf (every `finetune.optimizer`, the
schedules, `scale_by_leaf`); a transform mixing leaves (auto-rgn's global normalisation)
needs the gated program. Frozen leaves, statistics and optimizer states are never touched.
The price of the chain is one more forward per stage at or above the lowest trainable one
(the backward recomputes it) and a host round trip per stage and step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from deft_jax.core.optimizer import scale_by_leaf, set_leaf_scales
from deft_jax.core.training import COMPUTE_DTYPES, TrainState, cross_entropy
from deft_jax.models.base import ModelSpec
from deft_jax.models.groups import leaf_values
from deft_jax.runtime.program_cache import ProgramCache

TRAIN_FORWARD = "train_forward"
FROZEN_FORWARD = "frozen_forward"
TRAIN_BACKWARD = "train_backward"    # weight and input gradients, then the optimizer update
LOWEST_BACKWARD = "lowest_backward"  # weight gradients only (the lowest trainable stage)
FROZEN_BACKWARD = "frozen_backward"  # input gradient only
LOSS_GRADIENT = "loss_gradient"
VARIANTS = (TRAIN_FORWARD, FROZEN_FORWARD, TRAIN_BACKWARD, LOWEST_BACKWARD, FROZEN_BACKWARD)


def _shape_key(tree) -> tuple:
    return tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree))


class StagePrograms:
    """The per-stage programs of one network and optimizer, and the host loop chaining them.

    `programs` holds every compiled program under (variant, stage index, input shapes);
    `function(variant, index)` is the plain (unjitted) function of a program, e.g. for
    `jax.make_jaxpr`."""

    def __init__(self, spec: ModelSpec, tx: optax.GradientTransformation, compute_dtype: str = "float32",
                 leaf_scales: bool = False, compiler_options: dict | None = None):
        self.spec = spec
        self.tx = optax.chain(tx, scale_by_leaf()) if leaf_scales else tx
        self.dtype = COMPUTE_DTYPES[compute_dtype]
        self.compiler_options = compiler_options
        self.programs = ProgramCache()

    # --- the stage functions ---------------------------------------------------------------

    def _apply(self, index: int, params, stats, h, train: bool):
        """Stage `index` on input h: (output, its batch_stats after the call)."""
        name = self.spec.stage_names[index]
        if self.dtype != jnp.float32:  # mixed precision: float32 master weights and statistics
            params = jax.tree.map(lambda p: p.astype(self.dtype), params)
            h = h.astype(self.dtype)
        variables = {"params": {name: params}, "batch_stats": {name: stats} if stats is not None else {}}
        out, updated = self.spec.net.apply(variables, h, train=train, start=index, stop=index + 1,
                                           mutable=["batch_stats"])
        return out, dict(updated.get("batch_stats", {})).get(name, stats)

    def function(self, variant: str, index: int) -> Callable:
        """The plain function of one stage program (see the module docstring)."""
        apply, tx = self._apply, self.tx

        def train_forward(params, stats, h):
            return apply(index, params, stats, h, True)

        def frozen_forward(params, stats, h):
            return apply(index, params, stats, h, False)[0]

        def train_backward(params, stats, h, g, opt_state):
            _, pullback = jax.vjp(lambda p, x: apply(index, p, stats, x, True)[0], params, h)
            g_params, g_input = pullback(g)
            updates, opt_state = tx.update(g_params, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, g_input

        def lowest_backward(params, stats, h, g, opt_state):
            _, pullback = jax.vjp(lambda p: apply(index, p, stats, h, True)[0], params)
            (g_params,) = pullback(g)
            updates, opt_state = tx.update(g_params, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        def frozen_backward(params, stats, h, g):
            _, pullback = jax.vjp(lambda x: apply(index, params, stats, x, False)[0], h)
            return pullback(g)[0]

        functions = {TRAIN_FORWARD: train_forward, FROZEN_FORWARD: frozen_forward,
                     TRAIN_BACKWARD: train_backward, LOWEST_BACKWARD: lowest_backward,
                     FROZEN_BACKWARD: frozen_backward}
        if variant not in functions:
            raise ValueError(f"unknown stage program {variant!r} (choose from {', '.join(VARIANTS)})")
        return functions[variant]

    def program(self, variant: str, index: int, h) -> Callable:
        """The jitted program of `variant` for stage `index` on input `h` (cached per shape).
        Backward programs donate the stage's parameters and optimizer state."""
        donate = (0, 4) if variant in (TRAIN_BACKWARD, LOWEST_BACKWARD) else ()
        return self.programs.get((variant, index, _shape_key(h)), lambda: jax.jit(
            self.function(variant, index), donate_argnums=donate, compiler_options=self.compiler_options))

    def _loss_program(self, logits, y) -> Callable:
        def loss_gradient(out, labels):
            loss, g = jax.value_and_grad(lambda z: cross_entropy(z.astype(jnp.float32), labels))(out)
            return loss, g.astype(out.dtype)

        return self.programs.get((LOSS_GRADIENT, _shape_key((logits, y))),
                                 lambda: jax.jit(loss_gradient, compiler_options=self.compiler_options))

    # --- state and steps ---------------------------------------------------------------------

    def trains(self, index: int, flags: Mapping[str, bool]) -> bool:
        return bool(flags[self.spec.net.group_of_stage(index)])

    def init_state(self, params: Mapping, batch_stats: Mapping, flags: Mapping[str, bool],
                   lr_multipliers: Mapping[str, Any] | None = None) -> TrainState:
        """A state over the stages in `params` (the stages from the first one run): the
        optimizer state is {stage name: state over that stage's parameters} of every
        trainable stage. `lr_multipliers` (group -> float) need `leaf_scales=True`."""
        params, batch_stats = dict(params), dict(batch_stats)
        labels = self.spec.layer_groups.labels
        opt_state = {}
        for index, name in enumerate(self.spec.stage_names):
            if name in params and self.trains(index, flags):
                opt_state[name] = self.tx.init(params[name])
                if lr_multipliers is not None:
                    scales = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32),
                                          leaf_values(labels[name], lr_multipliers))
                    opt_state[name] = set_leaf_scales(opt_state[name], scales)
        return TrainState(params, batch_stats, opt_state)

    def _stages_run(self, state: TrainState) -> range:
        names = self.spec.stage_names
        start = min(names.index(n) for n in state.params)
        return range(start, len(names))

    def forward(self, state: TrainState, flags: Mapping[str, bool], x) -> tuple[list, Any, dict]:
        """The training-mode forward from the state's first stage: (every stage's input,
        the logits, the new batch_stats)."""
        names = self.spec.stage_names
        inputs, stats, h = [], dict(state.batch_stats), x
        for index in self._stages_run(state):
            name = names[index]
            inputs.append(h)
            args = (state.params[name], state.batch_stats.get(name), h)
            if self.trains(index, flags):
                h, new = self.program(TRAIN_FORWARD, index, h)(*args)
                if new is not None:
                    stats[name] = new
            else:
                h = self.program(FROZEN_FORWARD, index, h)(*args)
        return inputs, h, stats

    def train_step(self, state: TrainState, flags: Mapping[str, bool], x, y) -> tuple[TrainState, jax.Array]:
        """One optimizer step on batch (x, y): the new state and the batch loss."""
        names = self.spec.stage_names
        stages = self._stages_run(state)
        inputs, logits, stats = self.forward(state, flags, x)
        loss, g = self._loss_program(logits, y)(logits, y)
        trainable = [i for i in stages if self.trains(i, flags)]
        params, opt_state = dict(state.params), dict(state.opt_state)
        for index in reversed(range(trainable[0], stages.stop) if trainable else range(0)):
            name, h = names[index], inputs[index - stages.start]
            old_stats = state.batch_stats.get(name)
            if index not in trainable:
                g = self.program(FROZEN_BACKWARD, index, h)(params[name], old_stats, h, g)
            elif index == trainable[0]:
                params[name], opt_state[name] = self.program(LOWEST_BACKWARD, index, h)(
                    params[name], old_stats, h, g, opt_state[name])
            else:
                params[name], opt_state[name], g = self.program(TRAIN_BACKWARD, index, h)(
                    params[name], old_stats, h, g, opt_state[name])
        return TrainState(params, stats, opt_state), loss

    def run_batches(self, state: TrainState, flags: Mapping[str, bool],
                    batches: Iterable) -> tuple[TrainState, list]:
        """Every step of stacked batch chunks [(xs, ys), ...]: the final state and the loss
        of each step (as `training.run_batches` returns them step by step)."""
        losses = []
        for xs, ys in batches:
            for i in range(xs.shape[0]):
                state, loss = self.train_step(state, flags, xs[i], ys[i])
                losses.append(loss)
        return state, losses
