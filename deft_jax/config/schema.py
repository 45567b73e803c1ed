"""Run configuration: typed sections, TOML files in configs/, `--set key=value` overrides.

The dataclasses are the schema (`deft_jax.config.parsing` reads nested dicts into them):
string choices are `Literal` types, from which the validation, the argparse choices and
the help texts are derived. Every value is validated here, so a bad config fails with one
line before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Literal

from deft_jax.config.parsing import check_choices, from_dict, merge, set_values
from deft_jax.config.sources import DigitsSource, Source, check_source, tfds_shorthand
from deft_jax.errors import UserError
from deft_jax.models.groups import GRANULARITIES
from deft_jax.models.registry import MODEL_NAMES, MODELS

Granularity = Literal[GRANULARITIES]  # type: ignore[valid-type]  # the registry says which model has which
Optimizer = Literal["sgd", "adam", "adamw"]
ComputeDtype = Literal["float32", "bfloat16"]  # bfloat16: float32 weights, bf16 arithmetic
Metric = Literal["accuracy", "macro_f1"]
Evaluation = Literal["auto", "sequential", "vmap", "vmap-1", "sharded"]
Space = Literal["mask", "mask+lr"]
Schedule = Literal["short", "final"]
LrSchedule = Literal["constant", "cosine", "onecycle"]
Fidelity = Literal["full", "halving"]
Select = Literal["best", "smallest-within-1se"]
Keep = Literal["last", "best-val"]
Folds = Literal["repeated"]

# Larger inputs than any model here was built for; the memory check in `inputs` bounds
# what a dataset may need below this.
MAX_INPUT_SIZE = 1024
# `--resume --set` may change only these: they do not change the search's result (the
# strategies give the same fitnesses; more generations continue the same DE, equal to an
# uninterrupted run with that many) or only retrain the final model; the new values are
# recorded in config.json when the final model is written.
RESUME_SETTABLE = ("search.evaluation", "search.strategy", "search.generations", "final.epochs",
                   "final.learning_rate")


@dataclasses.dataclass
class DataConfig:
    # one of the kinds of `deft_jax.config.sources` (the digits demo by default)
    source: Source = dataclasses.field(default_factory=lambda: DigitsSource(max_per_class=60))
    fractions: list = dataclasses.field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 0
    # keep at most this many training images per class (seeded by split_seed; val and test
    # are untouched): the low-data setting on a large set. 0 = all.
    train_per_class: int = 0
    # keep at most this many validation images per class (seeded by split_seed, its own
    # stream; train and test are untouched): a validation set as small as the training one
    val_per_class: int = 0


@dataclasses.dataclass
class ModelConfig:
    name: str = "efficientnet_lite0"
    weights: str = "default"  # "default" (the model's known source), "none", or a file path
    input_size: int = 32
    granularity: Granularity = "block"


@dataclasses.dataclass
class FineTuneConfig:
    optimizer: Optimizer = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 1
    flip: bool = False  # random horizontal + vertical flips (same for every member)
    rotate90: bool = False  # random multiples of 90 degrees
    compute_dtype: ComputeDtype = "float32"
    # the learning rate over each training (every method alike; `deft_jax.core.optimizer`):
    # "constant" (the default, unchanged results), "cosine" (decay to 0) or "onecycle"
    # (fastai's: cosine up from lr/25 to lr, then down to lr/(25*1e5)); warmup_epochs: a linear
    # warmup from 0 (constant, cosine) or the one-cycle's rising part (0 = pct_start 0.3)
    schedule: LrSchedule = "constant"
    warmup_epochs: float = 0.0

    @property
    def augment(self) -> bool:
        return self.flip or self.rotate90


@dataclasses.dataclass
class SearchConfig:
    population_size: int = 8
    generations: int = 4  # after the initial population
    differential_weight: float = 0.5  # F
    crossover_rate: float = 0.7  # CR
    elitism: bool = True  # base vector: best member (True) or a random one (False)
    threshold: float = 0.5  # gene > threshold -> group trains
    metric: Metric = "accuracy"
    max_trainable_fraction: float = 1.0  # masks above it are penalised, never trained
    evaluation: Evaluation = "auto"  # "strategy" is an alias
    # what a gene sets: "mask" (the paper: train or freeze) or "mask+lr" (also the group's
    # learning-rate multiplier, 10^-2..1 of the base rate on a log scale)
    space: Space = "mask"
    # the fitness fine-tune's recipe: "short" ([finetune] epochs and learning rate, the
    # paper) or "final" (final.epochs, final.learning_rate and final.keep: the fitness is the
    # validation score the final training of that mask would reach)
    schedule: Schedule = "short"
    # "full": every new member gets the whole fitness budget; "halving": every new member
    # first trains finetune.epochs epochs of the fitness schedule, and only the best
    # promote_fraction of a generation's new members (at least one) the whole schedule
    fidelity: Fidelity = "full"
    promote_fraction: float = 0.34
    # start the initial population with the baselines' masks: head only, everything, the
    # last group, the last half of the groups (the search can then not end worse on
    # validation than the best of them)
    seed_baselines: bool = False
    # which evaluated mask wins: "best" fitness, or "smallest-within-1se": the fewest
    # trainable parameters among masks within one standard error (binomial, of the best
    # validation accuracy) of the best (only masks trained with the whole budget)
    select: Select = "best"


@dataclasses.dataclass
class FinalConfig:
    epochs: int = 5
    learning_rate: float | None = None  # None: the fine-tune learning rate
    # which model the final training returns: "last" (after the last epoch) or "best-val"
    # (the epoch with the best validation metric, earliest on ties)
    keep: Keep = "last"


DEFAULT_EXPERIMENT_METHODS = ("scratch", "linear-probe", "handpicked", "full", "auto-rgn", "deft",
                      "random-search")


@dataclasses.dataclass
class ExperimentConfig:
    """`python -m deft_jax.experiment`: methods compared on `seeds` repeated splits."""

    methods: list = dataclasses.field(default_factory=lambda: list(DEFAULT_EXPERIMENT_METHODS))
    seeds: int = 5  # seed s: split_seed + s, seed + s
    handpicked: list = dataclasses.field(default_factory=list)  # groups the `handpicked` method trains
    folds: Folds = "repeated"  # repeated grouped stratified splits (the only strategy so far)
    scratch_model: str = ""  # architecture of `scratch`; "" = model.name
    # learning-rate grid for every method's final training (each picks its rate on the
    # validation split); [] = final.learning_rate only
    learning_rates: list = dataclasses.field(default_factory=list)
    ensemble_size: int = 3  # full-ensemble: this many full fine-tunes (training seeds), averaged
    lp_ft_probe_epochs: int = 0  # lp-ft's linear-probe epochs; 0 = half of final.epochs (>= 1)
    fastai_lr_mult: float = 100.0  # fastai: the first group's rate is lr / lr_mult, the head's lr


@dataclasses.dataclass
class Config:
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    finetune: FineTuneConfig = dataclasses.field(default_factory=FineTuneConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    final: FinalConfig = dataclasses.field(default_factory=FinalConfig)
    experiment: ExperimentConfig = dataclasses.field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ALIASES = {SearchConfig: {"strategy": "evaluation"}}  # old key -> key


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` (value parsed as JSON, else taken as a string) into nested dict `raw`.
    `data.source=tfds:NAME` is short for `data.source={kind="tfds", name="NAME"}`; a later
    `data.source.data_dir=...` (or `.split`) adds to it. `data.source.kind=...` of another
    kind starts the source from that kind's defaults."""
    return set_values(raw, overrides, Config, expand=tfds_shorthand)


def check_resume_overrides(overrides: list[str]) -> None:
    """`--resume --set KEY=...` is refused for keys that would change the search's result."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in RESUME_SETTABLE:
            raise UserError(f"--resume cannot change {key}: it would change the search's result "
                            f"(settable on --resume: {', '.join(RESUME_SETTABLE)}); start a new run "
                            "with --out instead")


def check_resumed_config(saved: Config, resumed: Config) -> None:
    """A resumed search may run more generations, never fewer (fewer would disagree with
    the generations already done)."""
    old, new = saved.search.generations, resumed.search.generations
    if new < old:
        raise UserError(f"--resume can raise search.generations, not lower it ({old} -> {new}); "
                        "start a new run with --out instead")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                seed: int | None = None) -> Config:
    raw = Config().to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            text = path.read_text()
            loaded = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"cannot parse config {path}: {err}") from None
        raw = merge(raw, loaded, Config)
    raw = apply_overrides(raw, list(overrides or []))
    if seed is not None:
        raw["seed"] = seed
    cfg = from_dict(Config, raw, "", ALIASES)
    validate(cfg)
    return cfg


def config_from_dict(raw: dict) -> Config:
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a table of sections, got {type(raw).__name__}")
    cfg = from_dict(Config, raw, "", ALIASES)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise UserError(f"invalid config: {message}")

    s, f, m = cfg.search, cfg.finetune, cfg.model
    need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(cfg.data.split_seed >= 0, f"data.split_seed must be >= 0, got {cfg.data.split_seed}")
    need(m.name in MODEL_NAMES, f"model.name must be one of {', '.join(MODEL_NAMES)}, got {m.name!r}")
    check_choices(cfg)  # every Literal-typed key: one of its choices
    need(m.granularity in MODELS[m.name].granularities,
         f"model.granularity {m.granularity!r} does not apply to {m.name} "
         f"(choose from {', '.join(MODELS[m.name].granularities)})")
    need(8 <= m.input_size <= MAX_INPUT_SIZE,
         f"model.input_size must be in [8, {MAX_INPUT_SIZE}], got {m.input_size}")
    need(m.weights != "", "model.weights must be default, none or a file path")
    need(s.population_size >= 4, f"search.population_size must be >= 4 (DE needs 4), got {s.population_size}")
    need(s.generations >= 0, f"search.generations must be >= 0, got {s.generations}")
    need(0.0 <= s.differential_weight <= 2.0, f"search.differential_weight must be in [0, 2], got {s.differential_weight}")
    need(0.0 <= s.crossover_rate <= 1.0, f"search.crossover_rate must be in [0, 1], got {s.crossover_rate}")
    need(0.0 < s.threshold < 1.0, f"search.threshold must be in (0, 1), got {s.threshold}")
    need(0.0 < s.max_trainable_fraction <= 1.0, f"search.max_trainable_fraction must be in (0, 1], got {s.max_trainable_fraction}")
    need(0.0 < s.promote_fraction <= 1.0, f"search.promote_fraction must be in (0, 1], got {s.promote_fraction}")
    need(s.fidelity == "full" or (s.schedule == "final" and f.epochs < cfg.final.epochs),
         "search.fidelity = halving needs search.schedule = final and finetune.epochs (the short "
         f"budget) < final.epochs (the whole one), got {s.schedule!r}, {f.epochs} and {cfg.final.epochs}")
    need(cfg.data.train_per_class >= 0, f"data.train_per_class must be >= 0, got {cfg.data.train_per_class}")
    need(cfg.data.val_per_class >= 0, f"data.val_per_class must be >= 0, got {cfg.data.val_per_class}")
    need(f.learning_rate > 0, f"finetune.learning_rate must be > 0, got {f.learning_rate}")
    need(f.batch_size >= 1, f"finetune.batch_size must be >= 1, got {f.batch_size}")
    need(f.epochs >= 1, f"finetune.epochs must be >= 1, got {f.epochs}")
    need(0 <= f.warmup_epochs < max(f.epochs, cfg.final.epochs),
         f"finetune.warmup_epochs must be in [0, the training's epochs), got {f.warmup_epochs}")
    need(f.weight_decay >= 0, f"finetune.weight_decay must be >= 0, got {f.weight_decay}")
    need(0 <= f.momentum < 1, f"finetune.momentum must be in [0, 1), got {f.momentum}")
    need(cfg.final.epochs >= 1, f"final.epochs must be >= 1, got {cfg.final.epochs}")
    need(cfg.final.learning_rate is None or cfg.final.learning_rate > 0, "final.learning_rate must be > 0")
    fr = cfg.data.fractions
    need(len(fr) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in fr) and abs(sum(fr) - 1) < 1e-6,
         f"data.fractions must be three positive numbers summing to 1, got {fr}")
    check_source(cfg.data.source)
    e = cfg.experiment
    need(e.seeds >= 1, f"experiment.seeds must be >= 1, got {e.seeds}")
    need(all(isinstance(g, str) for g in e.handpicked), "experiment.handpicked must be a list of layer-group names")
    need(all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 and math.isfinite(r)
             for r in e.learning_rates), "experiment.learning_rates must be a list of positive numbers")
    need(e.ensemble_size >= 1, f"experiment.ensemble_size must be >= 1, got {e.ensemble_size}")
    need(e.lp_ft_probe_epochs >= 0, f"experiment.lp_ft_probe_epochs must be >= 0, got {e.lp_ft_probe_epochs}")
    need(e.fastai_lr_mult >= 1, f"experiment.fastai_lr_mult must be >= 1, got {e.fastai_lr_mult}")
    need(len(e.methods) > 0 and all(isinstance(m, str) for m in e.methods),
         "experiment.methods must be a non-empty list of method names")
