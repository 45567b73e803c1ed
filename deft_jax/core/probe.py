"""Linear probe to convergence: the head fitted on the frozen backbone's features.

Kumar et al. (ICLR 2022) probe with an L2-regularised logistic regression fitted to
convergence on fixed features (sklearn, C chosen on validation). Here: the backbone runs
once in inference mode over train and val (every stage below the head: its BatchNorms use
the running statistics, no augmentation), then the head alone is fitted full-batch with
L-BFGS (`optax.lbfgs`, a fixed number of iterations, one compiled program for the whole
L2 grid) from a zero head, minimising

    mean cross-entropy(train) + l2 / 2 * sum of the head's squared kernels

for each `l2` of the grid; the one with the lowest validation log-loss is kept (log-loss,
not accuracy: on a few validation images accuracy ties across most of the grid). The cost
is one forward pass over train and val plus the fit, far below one training epoch.

`linear-probe` is this probe; `lp-ft` and the search's `search.start = "probe"` start their
fine-tunes from its head.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deft_jax.core import training
from deft_jax.models.base import ModelSpec
from deft_jax.runtime.program_cache import ProgramCache

HEAD = "head"
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # per unit of mean loss; sklearn's C = 1 / (l2 * n)
ITERATIONS = 200


@dataclasses.dataclass
class Probe:
    variables: dict            # the input variables with the fitted head
    l2: float                  # the grid value kept (lowest validation log-loss)
    val_log_loss: dict         # l2 -> validation log-loss
    train_objective: float     # the kept fit's final training objective
    gradient_norm: float       # its gradient norm at the end (0 at the optimum)


def head_index(spec: ModelSpec) -> int:
    """Index of the head stage (the last one, named 'head')."""
    names = spec.stage_names
    if names[-1] != HEAD:
        raise ValueError(f"{spec.name}: the last stage is {names[-1]!r}, not the head")
    return len(names) - 1


def _objective(net, head_index_, variables, head, features, labels, l2):
    params = {**variables["params"], HEAD: head}
    logits = net.apply({**variables, "params": params}, features, train=False, start=head_index_)
    ce = training.cross_entropy(logits, labels)
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(head)
               if getattr(path[-1], "key", None) == "kernel"]
    return ce + 0.5 * l2 * sum(jnp.sum(k * k) for k in kernels)


def _fit_program(spec: ModelSpec, iterations: int):
    index = head_index(spec)

    def fit(variables, features, labels, l2):
        head0 = jax.tree.map(jnp.zeros_like, variables["params"][HEAD])
        loss = functools.partial(_objective, spec.net, index, variables, features=features,
                                 labels=labels, l2=l2)
        loss_of = lambda h: loss(h)  # noqa: E731 - one-argument objective for L-BFGS
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss_of)

        def body(_, carry):
            head, state = carry
            value, grad = value_and_grad(head, state=state)
            updates, state = opt.update(grad, state, head, value=value, grad=grad, value_fn=loss_of)
            return optax.apply_updates(head, updates), state

        head, _ = jax.lax.fori_loop(0, iterations, body, (head0, opt.init(head0)))
        value, grad = jax.value_and_grad(loss_of)(head)
        return head, value, jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grad)))

    return jax.jit(fit)


def _log_loss(spec: ModelSpec, variables, head, features, labels) -> float:
    params = {**variables["params"], HEAD: head}
    logits = spec.net.apply({**variables, "params": params}, jnp.asarray(features), train=False,
                            start=head_index(spec))
    return float(training.cross_entropy(logits, jnp.asarray(labels)))


def fit_head(spec: ModelSpec, variables: dict, x_train, y_train, x_val, y_val, *,
             l2_grid=L2_GRID, iterations: int = ITERATIONS, cache: ProgramCache | None = None) -> Probe:
    """The head fitted to convergence on the frozen features of (x_train, y_train) for each
    `l2` of the grid, the one with the lowest log-loss on (x_val, y_val) kept. Every other
    variable is returned unchanged (the same arrays)."""
    cache = ProgramCache() if cache is None else cache
    index = head_index(spec)
    features_train = training.logits(spec, variables, np.asarray(x_train), stop=index, cache=cache)
    features_val = training.logits(spec, variables, np.asarray(x_val), stop=index, cache=cache)
    fit = cache.get(("probe", index, iterations), lambda: _fit_program(spec, iterations))
    feats, labels = jnp.asarray(features_train), jnp.asarray(np.asarray(y_train), jnp.int32)
    fits, losses = {}, {}
    for l2 in l2_grid:
        head, value, norm = fit(variables, feats, labels, jnp.float32(l2))
        fits[l2] = (head, float(value), float(norm))
        losses[l2] = _log_loss(spec, variables, head, features_val, y_val)
    best = min(l2_grid, key=lambda l2: (losses[l2], l2_grid.index(l2)))
    head, value, norm = fits[best]
    fitted = {**variables, "params": {**variables["params"], HEAD: jax.device_get(head)}}
    return Probe(fitted, float(best), {str(k): v for k, v in losses.items()}, value, norm)
