"""The linear probe fits the head to convergence on frozen features: the same optimum as an
independent float64 solver (scipy's L-BFGS-B on the same objective), the L2 strength with the
lowest validation log-loss kept, and every variable but the head's untouched."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import tiny_overrides
from scipy.optimize import minimize
from scipy.special import logsumexp

from deft_jax.config.schema import load_config
from deft_jax.core import probe, training
from deft_jax.data.inputs import prepare_data
from deft_jax.experiment.runner import seed_config
from deft_jax.models import build_model


@pytest.fixture(scope="module")
def problem():
    cfg = seed_config(load_config(None, tiny_overrides(**{"data.source": '{"kind": "digits", "max_per_class": 10}'})), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    data = prepare_data(cfg, spec)
    return spec, spec.init(0), data.arrays


def pooled(spec, variables, x):
    """What the small CNN's head sees: the pooled features (its head is pool + dense)."""
    features = training.logits(spec, variables, np.asarray(x), stop=probe.head_index(spec))
    return np.asarray(features, np.float64).mean(axis=(1, 2))


def reference_objective(theta, f, y, l2, k):
    """Mean cross-entropy + l2/2 |W|^2 of a dense head, and its gradient, in float64."""
    w, b = theta[:f.shape[1] * k].reshape(f.shape[1], k), theta[f.shape[1] * k:]
    z = f @ w + b
    value = np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]) + 0.5 * l2 * np.sum(w * w)
    residual = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    residual[np.arange(len(y)), y] -= 1
    residual /= len(y)
    return value, np.concatenate([(f.T @ residual + l2 * w).ravel(), residual.sum(0)])


def test_the_probe_reaches_the_optimum_an_independent_float64_solver_finds(problem):
    spec, variables, a = problem
    l2 = 1e-2
    fitted = probe.fit_head(spec, variables, a.x_train, a.y_train, a.x_val, a.y_val, l2_grid=(l2,))
    f, y = pooled(spec, variables, a.x_train), np.asarray(a.y_train)
    k = 10
    ref = minimize(reference_objective, np.zeros(f.shape[1] * k + k), args=(f, y, l2, k),
                   jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-14})
    assert ref.success
    assert fitted.train_objective == pytest.approx(ref.fun, abs=1e-4)
    assert fitted.gradient_norm < 1e-2
    head = fitted.variables["params"]["head"]["fc"]
    ours = np.concatenate([np.asarray(head["kernel"], np.float64).ravel(), np.asarray(head["bias"], np.float64)])
    assert reference_objective(ours, f, y, l2, k)[0] == pytest.approx(ref.fun, abs=1e-4)


def test_the_probe_keeps_the_l2_with_the_lowest_validation_log_loss_and_leaves_the_backbone(problem):
    spec, variables, a = problem
    grid = (1e-4, 1e-2, 1.0)
    fitted = probe.fit_head(spec, variables, a.x_train, a.y_train, a.x_val, a.y_val, l2_grid=grid)
    losses = {}
    for l2 in grid:  # each grid value refitted alone, its validation log-loss computed here
        alone = probe.fit_head(spec, variables, a.x_train, a.y_train, a.x_val, a.y_val, l2_grid=(l2,))
        z = np.asarray(training.logits(spec, alone.variables, np.asarray(a.x_val)), np.float64)
        losses[l2] = float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(a.y_val)), a.y_val]))
    assert fitted.l2 == min(grid, key=losses.get)
    assert fitted.val_log_loss[str(fitted.l2)] == pytest.approx(losses[fitted.l2], rel=1e-4)
    assert len(set(np.round(list(losses.values()), 4))) == 3  # the grid values really differ
    for group, params in variables["params"].items():
        if group != "head":
            assert fitted.variables["params"][group] is params
    assert fitted.variables["batch_stats"] is variables["batch_stats"]
    assert not np.array_equal(np.asarray(jax.tree.leaves(fitted.variables["params"]["head"])[0]),
                              np.asarray(jax.tree.leaves(variables["params"]["head"])[0]))
