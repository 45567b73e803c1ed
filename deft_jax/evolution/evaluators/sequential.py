"""`SequentialEvaluator`: population members one after another, each a static-mask
fine-tune (`deft_jax.core.finetune.FineTuner`, compiled once per distinct frozen pattern):
no frozen-weight gradients, but a compile for every new mask."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from deft_jax.core import divergence, training
from deft_jax.core.best_epoch import BestEpoch
from deft_jax.core.finetune import FineTuner
from deft_jax.core.masks import GroupMask, mask_key
from deft_jax.data.inputs import SplitArrays
from deft_jax.evolution.evaluators.kept_models import FinalModelCandidates
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.fitness import PrefixFeatureCache
from deft_jax.models.base import ModelSpec
from deft_jax.runtime.xla_options import fitness_compiler_options


class SequentialEvaluator(FinalModelCandidates):
    """Evaluates masks one after another with static masks (compile cache per mask)."""

    name = "sequential"
    on_member_done = None  # callback(number of members just finished), e.g. progress
    on_member_scored = None  # callback(index in masks, fitness) as each member finishes
    can_keep_models = True  # `keep_final_models` (`FinalModelCandidates`)
    kept: dict | None = None  # a dict: mask key -> (kept epoch, -1 = the last; val logits) of each fine-tune

    def __init__(self, spec: ModelSpec, variables: dict, data: SplitArrays, recipe: FitnessRecipe):
        self.spec, self.variables, self.data, self.recipe = spec, variables, data, recipe
        self.metric, self.seed, self.keep = recipe.metric, recipe.seed, recipe.keep
        # a final-recipe fitness trains the final model itself (`final.reuse`): compiled as the
        # final training is; a short fitness with the cheaper compile
        self.tuner = FineTuner(spec, recipe.finetune,
                               compiler_options=None if recipe.final_recipe else fitness_compiler_options())
        self.cache_prefix = recipe.prefix_cached
        self.prefix = PrefixFeatureCache(spec, variables, data)
        self.tuner.forwards = self.prefix.forwards  # one set of per-stage inference programs
        super().__init__()  # self.models: mask key -> (fitness, variables)

    def _fine_tune_one(self, mask: GroupMask, epochs: int | None) -> tuple[np.ndarray, list[float], dict | None]:
        """Validation logits (of the epoch `keep` says), training losses and, with
        `keep_models` and the whole budget, the kept epoch's variables of the mask's fine-tune."""
        start = training.first_trainable_stage(self.spec, mask) if self.cache_prefix else 0
        x_train, x_val = self.prefix.features(start)
        kept = BestEpoch(self.keep, self.metric, self.data.y_val, self.data.num_classes)
        want = self.keep_models and epochs is None

        def val_logits(variables: dict) -> np.ndarray:
            return self.tuner.logits(variables, x_val, start=start, batch_size=self.prefix.chunk)

        variables, losses = self.tuner.fine_tune(
            self.variables, mask, x_train, self.data.y_train, seed=self.seed, start=start, epochs=epochs,
            after_epoch=None if self.keep == "last" else
            lambda epoch, v: kept.offer(0, val_logits(v), mask, epoch, (lambda: jax.device_get(v)) if want else None))
        if self.keep == "last":
            logits, epoch, model = val_logits(variables), -1, jax.device_get(variables) if want else None
        else:
            logits, epoch, model = kept.logits[0], kept.epoch[0], kept.payload.get(0)
        if self.kept is not None:
            self.kept[mask_key(mask)] = (epoch, logits)
        return logits, losses, model

    def evaluate_logits(self, masks: Sequence[GroupMask], epochs: int | None = None) -> np.ndarray:
        return np.stack([self._fine_tune_one(m, epochs)[0] for m in masks])

    def evaluate(self, masks: Sequence[GroupMask], epochs: int | None = None) -> list[float]:
        out = []
        for i, mask in enumerate(masks):
            logits, losses, model = self._fine_tune_one(mask, epochs)
            out.append(divergence.fitness_from_logits(self.metric, logits, self.data.y_val,
                                                      self.data.num_classes, mask,
                                                      losses if self.keep == "last" else None))
            if model is not None:
                self.store_model(mask_key(mask), out[-1], model)
            if self.on_member_scored is not None:
                self.on_member_scored(i, out[-1])
            if self.on_member_done is not None:
                self.on_member_done(1)
        return out

    def stats(self) -> dict:
        return {"compiles": self.tuner.compiles, **(self.prefix.stats() if self.cache_prefix else {})}

