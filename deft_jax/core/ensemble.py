"""The final model taken from a search's own models instead of trained again, and ensembles
of them (`final.reuse`, `final.ensemble`): shared by the search command and the experiment.

With `search.schedule = "final"` a mask's fitness fine-tune *is* its final training (the
final epochs, rate, `final.keep` and the run's seed), so the model it kept is the final
model: `final.reuse = true` scores the selected mask's fitness model on val and test with
no retraining. `final.ensemble = k` averages the softmax probabilities of k of those
models: the selected mask's and the next k - 1 by fitness. An ensemble's "logits" are the
log of its mean probabilities (`averaged_log_probabilities`), so everything that takes a
softmax of logits (scores, reports, predict) sees the mean probabilities.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core import training
from deft_jax.core.final import FinalModel, train_final
from deft_jax.core.finetune import FineTuner
from deft_jax.core.masks import GroupMask, full_mask_key, mask_from_key, mask_key
from deft_jax.core.metrics import softmax
from deft_jax.data.inputs import PreparedData
from deft_jax.models.base import ModelSpec
from deft_jax.runtime.program_cache import ProgramCache

FitnessModels = dict[str, tuple[float, dict]]  # mask key -> (fitness, kept variables)
SEED_STRIDE = 1000  # member j of an ensemble of training seeds trains with seed + j * SEED_STRIDE


def member_seed(cfg: Config, j: int) -> int:
    """The training seed of member j of an ensemble trained after the search:
    `final.member_seeds = "distinct"`: seed + j * SEED_STRIDE; "shared": the run's seed."""
    return cfg.seed + j * SEED_STRIDE if cfg.final.member_seeds == "distinct" else cfg.seed


def wanted(cfg: Config) -> bool:
    """Whether the search's models stand in for the final training."""
    return (cfg.search.schedule == "final" and (cfg.final.reuse or cfg.final.ensemble > 1)
            and not cfg.experiment.learning_rates)


def members(selected: str, models: FitnessModels, k: int) -> list[str]:
    """The selected mask's key, then the best others by fitness (earliest on ties), k in all."""
    others = sorted((key for key in models if key != selected), key=lambda key: models[key][0])
    return [selected, *others][:k]


def averaged_log_probabilities(logits: list[np.ndarray]) -> np.ndarray:
    """log of the mean softmax probabilities (a single model: its log-softmax)."""
    mean = np.mean([softmax(np.asarray(z, np.float64)) for z in logits], axis=0)
    return np.log(np.maximum(mean, 1e-300))


@dataclasses.dataclass
class Members:
    """The models a final model is made of, the selected mask's first."""

    keys: list[str]             # mask keys (`core.masks.mask_key`)
    masks: list[GroupMask]
    variables: list[dict]

    def __len__(self) -> int:
        return len(self.keys)


def members_from_models(mask: GroupMask, models: FitnessModels, k: int) -> Members | None:
    """The selected mask's model and the next best k - 1 kept ones, or None when the selected
    mask's model was not kept (restored from a journal, another evaluator)."""
    selected = mask_key(mask)
    if selected not in models:
        return None
    keys = members(selected, models, max(1, k))
    names = list(mask)
    masks = [dict(mask)] + [mask_from_key(key, names) for key in keys[1:]]
    return Members(keys, masks, [models[key][1] for key in keys])


def ensemble_logits(spec: ModelSpec, variables: list[dict], x: np.ndarray,
                    cache: ProgramCache | None = None) -> np.ndarray:
    """One model's logits, or an ensemble's averaged log-probabilities, on `x`."""
    logits = [training.logits(spec, v, x, cache=cache) for v in variables]
    return logits[0] if len(logits) == 1 else averaged_log_probabilities(logits)


def final_from_members(spec: ModelSpec, chosen: Members, x_val: np.ndarray, x_test: np.ndarray,
                       cache: ProgramCache | None = None) -> FinalModel:
    """The FinalModel of models already trained: scored on val and test, no training (its
    variables are the selected mask's model; the others are in `chosen`)."""
    test = ensemble_logits(spec, chosen.variables, x_test, cache)
    val = (ensemble_logits(spec, chosen.variables, x_val, cache) if len(x_val)  # none after train+val
           else np.zeros((0, test.shape[-1]), test.dtype))
    return FinalModel(chosen.variables[0], val, test, [],
                      spec.layer_groups.fraction(chosen.masks[0]), 0.0)


def retrained_member_masks(cfg: Config, mask: GroupMask, fitness: dict[str, float]) -> list[GroupMask]:
    """The masks an ensemble trained again after the search holds (`final.ensemble = k` with
    `final.data = "train+val"`): the selected mask, the full mask (the simple recipe), then
    the best others by `fitness` (earliest on ties), k in all; with `final.member_masks =
    "full"`, k full masks (`mask` must then be the full mask: no search ran)."""
    names = list(mask)
    full = full_mask_key(names, cfg.search.threshold, cfg.search.space)
    if cfg.final.member_masks == "full":
        assert mask_key(mask) == full, "final.member_masks = full: the members' mask is the full mask"
        return [dict(mask) for _ in range(max(1, cfg.final.ensemble))]
    selected = mask_key(mask)
    others = sorted((key for key in fitness if key not in (selected, full)), key=lambda key: fitness[key])
    keys = [selected, *([full] if full != selected else []), *others][:max(1, cfg.final.ensemble)]
    return [dict(mask)] + [mask_from_key(key, names) for key in keys[1:]]


def trained_members(cfg: Config, spec: ModelSpec, variables: dict, masks: list[GroupMask],
                    data: PreparedData, tuner: FineTuner | None = None) -> Members:
    """Each of `masks` trained from `variables` with the final recipe (or `tuner`'s) on `data`,
    member j with the training seed `member_seed(cfg, j)`; with a fresh head (`search.start =
    "head"`) and distinct seeds, member j >= 1 starts from a head of its own seed
    (`spec.init`), as full-ensemble's members do."""
    def start(j: int) -> dict:
        fresh = cfg.search.start == "head" and cfg.final.member_seeds == "distinct" and j > 0
        return spec.init(member_seed(cfg, j)) if fresh else variables

    trained = [train_final(dataclasses.replace(cfg, seed=member_seed(cfg, j)), spec, start(j), m, data,
                           tuner=tuner).variables for j, m in enumerate(masks)]
    return Members([mask_key(m) for m in masks], [dict(m) for m in masks], trained)
