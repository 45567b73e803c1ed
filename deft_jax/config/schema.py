"""Run configuration: typed sections, TOML files in configs/, `--set key=value` overrides.

The dataclasses are the schema (`deft_jax.config.parsing` reads nested dicts into them):
string choices are `Literal` types, from which the validation, the argparse choices and
the help texts are derived. Every value is validated here, so a bad config fails with one
line before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Literal

from deft_jax.config import presets
from deft_jax.config.parsing import from_dict, merge, set_values
from deft_jax.config.sources import (
    DigitsSource,
    Source,
    tfds_shorthand,
)
from deft_jax.config.validation import validate
from deft_jax.errors import UserError
from deft_jax.models.groups import GRANULARITIES

Granularity = Literal[GRANULARITIES]  # type: ignore[valid-type]  # the registry says which model has which
Optimizer = Literal["sgd", "adam", "adamw"]
ComputeDtype = Literal["float32", "bfloat16"]  # bfloat16: float32 weights, bf16 arithmetic
Metric = Literal["accuracy", "macro_f1", "nll"]  # nll: minus the mean validation log-loss
Evaluation = Literal["auto", "sequential", "vmap", "vmap-1", "sharded"]
Space = Literal["mask", "mask+lr"]
Schedule = Literal["short", "final"]
LrSchedule = Literal["constant", "cosine", "onecycle"]
Fidelity = Literal["full", "halving"]
Select = Literal["best", "smallest-within-1se", "full-unless-1se-better"]
Keep = Literal["last", "best-val"]
FinalData = Literal["train", "train+val"]
MemberSeeds = Literal["shared", "distinct"]
MemberMasks = Literal["search", "full"]
Folds = Literal["repeated"]
Start = Literal["head", "probe"]
TrainStep = Literal["gated", "stages"]

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
    # how a static-mask fine-tune (sequential evaluation, final training) runs each step:
    # "gated" (the default: one program per frozen pattern) or "stages" (per-stage programs
    # chained on the host, `deft_jax.core.stages`: compiled once per stage variant and shared
    # by every mask; frozen stages build no weight gradient, stages below the lowest
    # trainable one no backward). A custom optimizer (auto-rgn) always runs gated.
    step: TrainStep = "gated"

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
    # worker processes that score members, each pinned to its own CPU core and running the
    # evaluation mode above (sequential or vmap-1; `deft_jax.evolution.evaluators.workers`);
    # 1 = in this process; 0 = one per CPU core where they can run, else 1 (`pick_workers`)
    workers: int = 1
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
    # validation accuracy) of the best (only masks trained with the whole budget), or
    # "full-unless-1se-better": the full mask unless the best beats it by more than one SE
    select: Select = "best"
    # what every fitness fine-tune and the final training start from: the pretrained backbone
    # with a fresh random "head", or with the head of a linear "probe" fitted once per run
    # to convergence on the frozen features (`deft_jax.core.probe`, as lp-ft)
    start: Start = "head"
    # k >= 2: k-fold fitness over train+val (stratified, seeded by `seed`): a mask's fitness is
    # the mean over the folds of its fitness trained on the other folds and scored on this
    # one; the winner trains on train+val (with final.keep = best-val and schedule = final
    # for the rounded mean of the folds' best epoch counts), keeping its last epoch. 1: the
    # train/val split (the paper)
    folds: int = 1


@dataclasses.dataclass
class FinalConfig:
    epochs: int = 5
    learning_rate: float | None = None  # None: the fine-tune learning rate
    # which model the final training returns: "last" (after the last epoch) or "best-val"
    # (the epoch with the best validation metric, earliest on ties)
    keep: Keep = "last"
    # with search.schedule = "final" (any evaluation mode): score the selected mask's
    # fitness model instead of training it again (`reuse`), or average the probabilities of
    # the `ensemble` best models the search trained (the selected one first); the search
    # command saves them as one ensemble checkpoint, and the experiment's DEFT methods do the same
    reuse: bool = False
    ensemble: int = 1
    # what the final model trains on: "train", or "train+val" for `epochs`, the last epoch
    # kept (no validation split is left; the search still ranks masks on val; reuse and
    # ensemble do not apply). A k-fold search (search.folds >= 2) always trains on train+val
    data: FinalData = "train"
    # an ensemble trained on train+val (final.data = "train+val", final.ensemble = k >= 2):
    # member_seeds "shared" trains every member with the run's seed, "distinct" member j with
    # seed + 1000 j (its batch order; `core.ensemble.member_seed`); member_masks "search" takes
    # the members' masks from the search (the selected one, the full mask, then by fitness),
    # "full" makes every member the full mask and runs no search (the ablation of the masks)
    member_seeds: MemberSeeds = "shared"
    member_masks: MemberMasks = "search"


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
    fastai_lr_mult: float = 100.0  # fastai: the first group's rate is lr / lr_mult, the head's lr
    fastai_learning_rate: float = 2e-3  # fastai: fine_tune's base_lr (its Adam's rate)
    judged: str = "deft-default"  # the method the summary judges (summary.json "judged")


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                seed: int | None = None, input_size_default=None,
                preset: dict[str, object] | None = None) -> Config:
    """The defaults (with `preset`'s values, `deft_jax.config.presets`), the file at `path`,
    `overrides`, `seed`. `input_size_default(raw config dict) -> int`, when given, picks
    model.input_size if neither the file nor an override sets it
    (`deft_jax.config.flags.logged_default_input_size`); else it is 32."""
    raw = Config().to_dict()
    if preset:
        raw = presets.applied(raw, preset)
    if input_size_default is not None:
        raw["model"]["input_size"] = None  # "not given", until the file or an override sets it
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}" if not path.exists()
                            else f"config file {path} is not a regular file")
        try:
            text = path.read_text()
            loaded = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, UnicodeDecodeError, OSError) as err:  # syntax; 5000 digits; unreadable
            raise UserError(f"cannot parse config {path}: {str(err).split(';')[0]}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config {path} must be a table of sections, got {type(loaded).__name__}")
        raw = merge(raw, loaded, Config)
    raw = apply_overrides(raw, list(overrides or []))
    if seed is not None:
        raw["seed"] = seed
    model = raw.get("model")
    if input_size_default is not None and isinstance(model, dict) and model.get("input_size") is None:
        model["input_size"] = input_size_default(raw)
    cfg = from_dict(Config, raw, "", ALIASES)
    validate(cfg)
    return cfg


def config_from_dict(raw: dict) -> Config:
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a table of sections, got {type(raw).__name__}")
    cfg = from_dict(Config, raw, "", ALIASES)
    validate(cfg)
    return cfg
