"""Validation of a whole config: every value checked before any work starts, so a bad
config fails with one line (`deft_jax.config.schema` calls it on every config it builds)."""

from __future__ import annotations

import math

from deft_jax.config.bounds import check_int_bounds
from deft_jax.config.parsing import check_choices
from deft_jax.config.sources import check_source
from deft_jax.errors import UserError
from deft_jax.models.registry import MODEL_NAMES, MODELS


def validate(cfg) -> None:
    """Raises a one-line UserError for the first invalid value of `cfg` (a schema.Config)."""
    def need(ok: bool, message: str):
        if not ok:
            raise UserError(f"invalid config: {message}")

    s, f, m = cfg.search, cfg.finetune, cfg.model
    check_int_bounds(cfg)
    need(m.name in MODEL_NAMES, f"model.name must be one of {', '.join(MODEL_NAMES)}, got {m.name!r}")
    check_choices(cfg)  # every Literal-typed key: one of its choices
    need(m.granularity in MODELS[m.name].granularities,
         f"model.granularity {m.granularity!r} does not apply to {m.name} "
         f"(choose from {', '.join(MODELS[m.name].granularities)})")
    need(m.weights != "", "model.weights must be default, none or a file path")
    need(0.0 <= s.differential_weight <= 2.0, f"search.differential_weight must be in [0, 2], got {s.differential_weight}")
    need(0.0 <= s.crossover_rate <= 1.0, f"search.crossover_rate must be in [0, 1], got {s.crossover_rate}")
    need(0.0 < s.threshold < 1.0, f"search.threshold must be in (0, 1), got {s.threshold}")
    need(0.0 < s.max_trainable_fraction <= 1.0, f"search.max_trainable_fraction must be in (0, 1], got {s.max_trainable_fraction}")
    need(0.0 < s.promote_fraction <= 1.0, f"search.promote_fraction must be in (0, 1], got {s.promote_fraction}")
    need(s.fidelity == "full" or s.schedule == "final",
         f"search.fidelity = halving needs search.schedule = final, got {s.schedule!r}")
    need(f.learning_rate > 0, f"finetune.learning_rate must be > 0, got {f.learning_rate}")
    need(0 <= f.warmup_epochs < max(f.epochs, cfg.final.epochs),
         f"finetune.warmup_epochs must be in [0, the training's epochs), got {f.warmup_epochs}")
    need(f.weight_decay >= 0, f"finetune.weight_decay must be >= 0, got {f.weight_decay}")
    need(0 <= f.momentum < 1, f"finetune.momentum must be in [0, 1), got {f.momentum}")
    need(cfg.final.learning_rate is None or cfg.final.learning_rate > 0, "final.learning_rate must be > 0")
    fr = cfg.data.fractions
    need(len(fr) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in fr) and abs(sum(fr) - 1) < 1e-6,
         f"data.fractions must be three positive numbers summing to 1, got {fr}")
    check_source(cfg.data.source)
    e = cfg.experiment
    need(all(isinstance(g, str) for g in e.handpicked), "experiment.handpicked must be a list of layer-group names")
    need(all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 and math.isfinite(r)
             for r in e.learning_rates), "experiment.learning_rates must be a list of positive numbers")
    need(isinstance(cfg.final.ensemble, int) and 1 <= cfg.final.ensemble <= 100,
         f"final.ensemble must be an integer in [1, 100], got {cfg.final.ensemble!r}")
    need(e.fastai_learning_rate > 0, f"experiment.fastai_learning_rate must be > 0, got {e.fastai_learning_rate}")
    need(e.fastai_lr_mult >= 1, f"experiment.fastai_lr_mult must be >= 1, got {e.fastai_lr_mult}")
    need(e.judged != "", "experiment.judged must name a method")
    need(s.folds == 1 or not e.learning_rates, "search.folds >= 2 trains the final model on train+val, so "
         "experiment.learning_rates has no validation split to pick a rate on; use one of them")
    need(cfg.final.member_masks == "search" or (cfg.final.data == "train+val" and cfg.final.ensemble >= 2
                                                 and s.folds == 1),
         "final.member_masks = full needs final.data = train+val, final.ensemble >= 2 and search.folds = 1")
    need(cfg.final.data == "train" or not e.learning_rates, "final.data = train+val leaves "
         "experiment.learning_rates no validation split to pick a rate on; use one of them")
    need(len(e.methods) > 0 and all(isinstance(m, str) for m in e.methods),
         "experiment.methods must be a non-empty list of method names")
