"""The batches of a fine-tune: a seeded plan of index batches per epoch, the same random
flips / rotations for every population member of a seed, materialised as stacked arrays
[steps, batch, ...] in chunks that one compiled program call consumes (`training.run_batches`)."""

from __future__ import annotations

import numpy as np

from deft_jax.config.schema import FineTuneConfig

AUGMENT_STREAM = 7  # augmentation draws come from default_rng([seed, AUGMENT_STREAM])
MAX_STEPS_BYTES = 512 << 20  # stacked batches per fine-tune program call (host + device)


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


def _augmented(x: np.ndarray, y: np.ndarray, cfg: FineTuneConfig, epochs: int, seed: int):
    plan = batch_plan(len(x), cfg.batch_size, epochs, seed)
    rng = np.random.default_rng([seed, AUGMENT_STREAM])
    return [augment_batch(x[idx], cfg, rng) for idx in plan], [y[idx] for idx in plan]


def _stacked_chunks(xs: list, ys: list) -> list[tuple[np.ndarray, np.ndarray]]:
    if not xs:
        return []
    per_chunk = max(1, MAX_STEPS_BYTES // max(xs[0].nbytes, 1))
    steps = len(xs)
    chunks = -(-steps // per_chunk)
    per_chunk = -(-steps // chunks)  # balanced: one program length for all but the last
    return [(np.stack(xs[i:i + per_chunk]), np.stack(ys[i:i + per_chunk]))
            for i in range(0, steps, per_chunk)]


def training_batches(x: np.ndarray, y: np.ndarray, cfg: FineTuneConfig, epochs: int,
                     seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The whole fine-tune's batches (plan + augmentation) as stacked arrays, in chunks of at
    most MAX_STEPS_BYTES: [(xs [steps, batch, ...], ys [steps, batch]), ...]. Equal-length
    chunks share one compiled program; only a shorter last chunk adds a second."""
    return _stacked_chunks(*_augmented(x, y, cfg, epochs, seed))


def epoch_batches(x: np.ndarray, y: np.ndarray, cfg: FineTuneConfig, epochs: int,
                  seed: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The same batches as `training_batches`, chunked per epoch: [epoch][chunk] -> (xs, ys),
    for fine-tunes that score the model after every epoch. The first k epochs of an
    E-epoch plan are the batches of a k-epoch plan (same permutations, same augmentation)."""
    xs, ys = _augmented(x, y, cfg, epochs, seed)
    per_epoch = len(x) // min(cfg.batch_size, len(x))
    return [_stacked_chunks(xs[e * per_epoch:(e + 1) * per_epoch], ys[e * per_epoch:(e + 1) * per_epoch])
            for e in range(epochs)]
