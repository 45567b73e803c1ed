"""A finished run's model for inference, without the training data: the checkpoint
restored, with the preprocessing it was trained with. Inputs are image files or uint8
arrays; each becomes its samples (crops, as at training time), classified in chunks of
`CHUNK` inputs, and an input's probabilities are the mean over its samples. An ensemble
checkpoint's probabilities are the mean of its members' (`deft_jax.core.ensemble`), as the
run scored them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from deft_jax.core.ensemble import ensemble_logits
from deft_jax.data import LEGACY_RESIZE, Sampling, image_samples, preprocess
from deft_jax.data.images import array_samples
from deft_jax.errors import UserError
from deft_jax.run.checkpoint import ENSEMBLE, restore_models
from deft_jax.runtime import rundir
from deft_jax.runtime.program_cache import ProgramCache

CHUNK = 32  # inputs per forward pass (one compiled program per distinct chunk shape)


def checkpoint_sampling(meta: dict) -> Sampling:
    """How an image file becomes samples, as at training time, from checkpoint metadata.
    Checkpoints written before the resize mode was stored resized by stretching."""
    s = meta.get("sampling") or {}
    return Sampling(s.get("crop"), s.get("crop_stride") or s.get("crop"),
                    s.get("image_size") or meta["input_size"], s.get("resize", LEGACY_RESIZE))


class Predictor:
    """A restored model (or ensemble: `members`, the selected mask's first) plus its
    preprocessing."""

    def __init__(self, run_dir: Path):
        ckpt = Path(run_dir) / rundir.CHECKPOINT
        if not ckpt.is_dir():
            raise UserError(f"{run_dir} has no checkpoint/ (did the run finish?)")
        taken = rundir.lock(run_dir, shared=True)  # no run may be rewriting it while it is read
        try:
            self.spec, self.members, self.meta = restore_models(ckpt)
        finally:
            if taken:
                rundir.release(run_dir)
        self.variables = self.members[0]  # a single model's, or the ensemble's selected mask's
        self.class_names = list(self.meta["class_names"])
        self.sampling = checkpoint_sampling(self.meta)
        self._cache = ProgramCache()

    @property
    def ensemble_masks(self) -> list[dict] | None:
        """Each member's mask for an ensemble checkpoint; None for a single model."""
        ensemble = self.meta.get(ENSEMBLE)
        return [dict(m) for m in ensemble["masks"]] if ensemble else None

    def logits(self, images_uint8: np.ndarray) -> np.ndarray:
        """A single model's logits, or an ensemble's log mean probabilities (their softmax
        is the mean of the members' probabilities)."""
        x = preprocess(images_uint8, self.meta["input_size"], self.meta["mean"], self.meta["std"])
        return ensemble_logits(self.spec, self.members, x, cache=self._cache)

    def samples(self, item, index: int) -> list[np.ndarray]:
        """The samples of one input: a path (str or Path) or a uint8 array."""
        if isinstance(item, np.ndarray):
            return array_samples(item, self.sampling, f"image {index}")
        if isinstance(item, (str, Path)):
            return image_samples(item, self.sampling, str(item))
        raise UserError(f"input {index}: expected an image path or a uint8 array, got {type(item).__name__}")

    def probabilities_of(self, items: Sequence, on_done: Callable[[int], None] | None = None) -> np.ndarray:
        """[len(items), classes] probabilities; `on_done(n)` after each chunk of n inputs.
        A non-finite output (a diverged model) is a UserError, never printed as a number."""
        rows = []
        for start in range(0, len(items), CHUNK):
            chunk = [self.samples(item, start + i) for i, item in enumerate(items[start:start + CHUNK])]
            counts = [len(s) for s in chunk]
            probs = np.asarray(jax.nn.softmax(self.logits(np.stack([x for s in chunk for x in s])), axis=-1))
            means = np.add.reduceat(probs, np.cumsum([0] + counts[:-1]), axis=0) / np.asarray(counts)[:, None]
            bad = [i for i, row in enumerate(means) if not np.isfinite(row).all()]
            if bad:
                raise UserError(f"{describe(items[start + bad[0]], start + bad[0])}: the model's output "
                                "is not finite (a diverged model)")
            rows.append(means)
            if on_done is not None:
                on_done(len(chunk))
        return np.concatenate(rows) if rows else np.zeros((0, len(self.class_names)), np.float32)

    def probabilities(self, path: str) -> np.ndarray:
        """Class probabilities for one image file."""
        return self.probabilities_of([path])[0]

    def predict_files(self, paths: list[str]) -> list[tuple[str, str, float]]:
        """(path, predicted class, its probability) per file."""
        probs = self.probabilities_of(list(paths))
        return [(path, self.class_names[int(row.argmax())], float(row.max())) for path, row in zip(paths, probs)]


def describe(item, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"image {index}"
