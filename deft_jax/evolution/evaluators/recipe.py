"""`FitnessRecipe`: what a candidate mask's fitness is, the same for every evaluator.

The fine-tune (optimizer, epochs, batches, augmentation), the validation metric, which
epoch's logits count (`keep`), the seed of the batch plan, whether masks carry per-group
learning-rate multipliers (`search.space = "mask+lr"`) and whether the frozen prefix's
features may be cached. How the fine-tunes run (one after another, vmapped, sharded) is
the evaluator's business; `deft_jax.evolution.evaluators.choice` picks one.
"""

from __future__ import annotations

import dataclasses

from deft_jax.config.schema import Config, FineTuneConfig, Keep, Metric


@dataclasses.dataclass(frozen=True)
class FitnessRecipe:
    """fitness = 1 - `metric` on the val split after the `finetune` of a mask."""

    finetune: FineTuneConfig
    metric: Metric = "accuracy"
    keep: Keep = "last"          # the last epoch's logits, or the best epoch's ("best-val")
    seed: int = 0                # the batch plan's seed (every member sees the same batches)
    lr_multipliers: bool = False  # masks carry per-group learning-rate multipliers
    cache_prefix: bool = True    # train on cached features entering the first trainable stage
    final_recipe: bool = False   # the final training's recipe (search.schedule = "final")

    @property
    def prefix_cached(self) -> bool:
        """Whether the prefix cache is used: asked for, and no augmentation (augmented
        images change the prefix's features every epoch)."""
        return self.cache_prefix and not self.finetune.augment


def fitness_recipe(cfg: Config) -> FitnessRecipe:
    """A run's fitness recipe: the paper's short fine-tune ([finetune], last epoch) or, with
    `search.schedule = "final"`, the final training's epochs, learning rate and `final.keep`."""
    common = {"metric": cfg.search.metric, "seed": cfg.seed,
              "lr_multipliers": cfg.search.space == "mask+lr"}
    if cfg.search.schedule == "short":
        return FitnessRecipe(cfg.finetune, keep="last", **common)
    lr = cfg.final.learning_rate if cfg.final.learning_rate is not None else cfg.finetune.learning_rate
    finetune = dataclasses.replace(cfg.finetune, epochs=cfg.final.epochs, learning_rate=lr)
    return FitnessRecipe(finetune, keep=cfg.final.keep, final_recipe=True, **common)
