"""A finished run's model for inference, without the training data: the checkpoint
restored, with the preprocessing it was trained with."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from deft_jax.core.training import logits as model_logits
from deft_jax.data import LEGACY_RESIZE, Sampling, image_samples, preprocess
from deft_jax.errors import UserError
from deft_jax.run.checkpoint import restore_model
from deft_jax.runtime import rundir
from deft_jax.runtime.program_cache import ProgramCache


def checkpoint_sampling(meta: dict) -> Sampling:
    """How an image file becomes samples, as at training time, from checkpoint metadata.
    Checkpoints written before the resize mode was stored resized by stretching."""
    s = meta.get("sampling") or {}
    return Sampling(s.get("crop"), s.get("crop_stride") or s.get("crop"),
                    s.get("image_size") or meta["input_size"], s.get("resize", LEGACY_RESIZE))


class Predictor:
    """A restored model plus its preprocessing."""

    def __init__(self, run_dir: Path):
        ckpt = Path(run_dir) / rundir.CHECKPOINT
        if not ckpt.is_dir():
            raise UserError(f"{run_dir} has no checkpoint/ (did the run finish?)")
        taken = rundir.lock(run_dir, shared=True)  # no run may be rewriting it while it is read
        try:
            self.spec, self.variables, self.meta = restore_model(ckpt)
        finally:
            if taken:
                rundir.release(run_dir)
        self.class_names = list(self.meta["class_names"])
        self.sampling = checkpoint_sampling(self.meta)
        self._cache = ProgramCache()

    def logits(self, images_uint8: np.ndarray) -> np.ndarray:
        x = preprocess(images_uint8, self.meta["input_size"], self.meta["mean"], self.meta["std"])
        return model_logits(self.spec, self.variables, x, cache=self._cache)

    def probabilities(self, path: str) -> np.ndarray:
        """Class probabilities for one image file: its samples (crops, as at training time)
        are classified and their probabilities averaged."""
        samples = image_samples(path, self.sampling, str(path))
        probs = np.asarray(jax.nn.softmax(self.logits(np.stack(samples)), axis=-1))
        return probs.mean(axis=0)

    def predict_files(self, paths: list[str]) -> list[tuple[str, str, float]]:
        results = []
        for path in paths:
            probs = self.probabilities(path)
            if not np.isfinite(probs).all():  # never print nan as a probability
                raise UserError(f"{path}: the model's output is not finite (a diverged model)")
            i = int(probs.argmax())
            results.append((path, self.class_names[i], float(probs[i])))
        return results
