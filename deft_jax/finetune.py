"""Short and full fine-tunes with a *static* layer-group mask.

Only trainable leaves are differentiated and handed to the optimizer; frozen leaves are
passed through untouched (bit-identical), and their groups' BatchNorm runs in inference
mode. A compiled train step is cached per (mask, first stage run), so a mask seen again
costs no compile. `start > 0` trains on cached features that enter stage `start` (see
`deft_jax.fitness.PrefixFeatureCache`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deft_jax.config import FineTuneConfig
from deft_jax.masks import mask_key, merge_flat, param_mask, split_by_mask
from deft_jax.models.base import ModelSpec


def make_optimizer(cfg: FineTuneConfig, learning_rate: float | None = None) -> optax.GradientTransformation:
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    if cfg.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                           optax.sgd(lr, momentum=cfg.momentum or None))
    if cfg.optimizer == "adam":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(lr))
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def batch_plan(n: int, batch_size: int, epochs: int, seed: int) -> list[np.ndarray]:
    """Index batches: a seeded permutation per epoch, full batches only (one shape, one
    compile). Identical for every population member given the seed."""
    batch_size = min(batch_size, n)
    steps = n // batch_size
    plan = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        plan.extend(order[i * batch_size:(i + 1) * batch_size] for i in range(steps))
    return plan


def augment_batch(x: np.ndarray, cfg: FineTuneConfig, rng: np.random.Generator) -> np.ndarray:
    """Random flips / 90-degree rotations per sample (square NHWC inputs)."""
    if not cfg.augment:
        return x
    x = x.copy()
    n = x.shape[0]
    if cfg.flip:
        h = rng.random(n) < 0.5
        v = rng.random(n) < 0.5
        x[h] = x[h, :, ::-1]
        x[v] = x[v, ::-1]
    if cfg.rotate90:
        k = rng.integers(0, 4, n)
        for r in (1, 2, 3):
            sel = k == r
            if sel.any():
                x[sel] = np.rot90(x[sel], r, axes=(1, 2))
    return x


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def first_trainable_stage(spec: ModelSpec, mask: Mapping[str, bool]) -> int:
    for i in range(len(spec.net.stages)):
        if mask[spec.net.group_of_stage(i)]:
            return i
    return len(spec.net.stages) - 1


class FineTuner:
    """Fine-tunes a model under static masks, with compiled steps cached per mask."""

    def __init__(self, spec: ModelSpec, cfg: FineTuneConfig, learning_rate: float | None = None,
                 epochs: int | None = None):
        self.spec = spec
        self.cfg = cfg
        self.epochs = cfg.epochs if epochs is None else epochs
        self.tx = make_optimizer(cfg, learning_rate)
        self._steps: dict = {}
        self._forward: dict = {}
        self.compiles = 0

    def _step(self, key: str, flags: dict, start: int):
        if (key, start) in self._steps:
            return self._steps[(key, start)]
        net, tx = self.spec.net, self.tx

        @jax.jit
        def step(trainable, frozen, batch_stats, opt_state, x, y):
            def loss_fn(tp):
                params = merge_flat(tp, frozen)
                logits, updated = net.apply({"params": params, "batch_stats": batch_stats}, x,
                                            train=flags, start=start, mutable=["batch_stats"])
                return cross_entropy(logits, y), updated["batch_stats"]

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            return trainable, new_stats, opt_state, loss

        self.compiles += 1
        self._steps[(key, start)] = step
        return step

    def fine_tune(self, variables: dict, mask: Mapping[str, bool], x: np.ndarray, y: np.ndarray,
                  seed: int, start: int = 0) -> tuple[dict, list[float]]:
        """Train `variables` under `mask` on (x, y); x enters stage `start`. Returns the new
        variables and the loss per step."""
        mask = dict(mask)
        leaf_mask = param_mask(variables["params"], self.spec.group_rules, mask)
        trainable, frozen = split_by_mask(variables["params"], leaf_mask)
        flags = {g: bool(v) for g, v in mask.items()}
        step = self._step(mask_key(mask), flags, start)
        opt_state = self.tx.init(trainable)
        batch_stats = variables["batch_stats"]
        rng = np.random.default_rng([seed, 7])
        losses = []
        for idx in batch_plan(len(x), self.cfg.batch_size, self.epochs, seed):
            xb = augment_batch(x[idx], self.cfg, rng)
            trainable, batch_stats, opt_state, loss = step(
                trainable, frozen, batch_stats, opt_state, jnp.asarray(xb), jnp.asarray(y[idx]))
            losses.append(loss)
        params = merge_flat(trainable, frozen)
        return {"params": params, "batch_stats": batch_stats}, [float(v) for v in losses]

    def logits(self, variables: dict, x: np.ndarray, start: int = 0, batch_size: int = 256) -> np.ndarray:
        """Inference-mode logits (all BatchNorms use running statistics)."""
        return forward(self.spec, variables, x, start=start, batch_size=batch_size, cache=self._forward)


def forward(spec: ModelSpec, variables: dict, x: np.ndarray, start: int = 0, stop: int | None = None,
            batch_size: int = 256, cache: dict | None = None) -> np.ndarray:
    """Run stages [start, stop) in inference mode over x in batches; returns numpy."""
    cache = {} if cache is None else cache
    key = (start, stop)
    if key not in cache:
        net = spec.net
        cache[key] = jax.jit(lambda v, xb: net.apply(v, xb, train=False, start=start, stop=stop))
    fn = cache[key]
    outputs = []
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        pad = batch_size - len(chunk) if len(x) > batch_size else 0
        if pad:  # keep one shape per call site: pad the last chunk, drop the padding
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out = np.asarray(fn(variables, jnp.asarray(chunk)))
        outputs.append(out[:len(out) - pad] if pad else out)
    return np.concatenate(outputs) if outputs else np.zeros((0,))
