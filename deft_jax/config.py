"""Run configuration: typed sections, TOML files in configs/, `--set key=value` overrides.

Every value is validated here, so a bad config fails with one line before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any, get_type_hints

from deft_jax.errors import UserError


GRANULARITIES = ("block", "stage")
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
    source: dict = dataclasses.field(default_factory=lambda: {"kind": "digits", "max_per_class": 60})
    fractions: list = dataclasses.field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 0
    # keep at most this many training images per class (seeded by split_seed; val and test
    # are untouched): the low-data setting on a large set. 0 = all.
    train_per_class: int = 0


@dataclasses.dataclass
class ModelConfig:
    name: str = "efficientnet_lite0"
    weights: str = "default"  # "default" (the model's known source), "none", or a file path
    input_size: int = 32
    granularity: str = "block"  # "block" or "stage" (all models but small_cnn and CIFAR ResNets)


@dataclasses.dataclass
class FineTuneConfig:
    optimizer: str = "sgd"  # sgd | adam | adamw
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 1
    flip: bool = False  # random horizontal + vertical flips (same for every member)
    rotate90: bool = False  # random multiples of 90 degrees
    compute_dtype: str = "float32"  # float32 | bfloat16 (float32 weights, bf16 arithmetic)

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
    metric: str = "accuracy"  # accuracy | macro_f1
    max_trainable_fraction: float = 1.0  # masks above it are penalised, never trained
    evaluation: str = "auto"  # auto | sequential | vmap | vmap-1 | sharded ("strategy" is an alias)
    # what a gene sets: "mask" (the paper: train or freeze) or "mask+lr" (also the group's
    # learning-rate multiplier, 10^-2..1 of the base rate on a log scale)
    space: str = "mask"
    # the fitness fine-tune's recipe: "short" ([finetune] epochs and learning rate, the
    # paper) or "final" (final.epochs, final.learning_rate and final.keep: the fitness is the
    # validation score the final training of that mask would reach)
    schedule: str = "short"
    # "full": every new member gets the whole fitness budget; "halving": every new member
    # first trains finetune.epochs epochs of the fitness schedule, and only the best
    # promote_fraction of a generation's new members (at least one) the whole schedule
    fidelity: str = "full"
    promote_fraction: float = 0.34
    # start the initial population with the baselines' masks: head only, everything, the
    # last group, the last half of the groups (the search can then not end worse on
    # validation than the best of them)
    seed_baselines: bool = False
    # which evaluated mask wins: "best" fitness, or "smallest-within-1se": the fewest
    # trainable parameters among masks within one standard error (binomial, of the best
    # validation accuracy) of the best (only masks trained with the whole budget)
    select: str = "best"


@dataclasses.dataclass
class FinalConfig:
    epochs: int = 5
    learning_rate: float | None = None  # None: the fine-tune learning rate
    # which model the final training returns: "last" (after the last epoch) or "best-val"
    # (the epoch with the best validation metric, earliest on ties)
    keep: str = "last"


DEFAULT_EXPERIMENT_METHODS = ("scratch", "linear-probe", "handpicked", "full", "auto-rgn", "deft",
                      "random-search")


@dataclasses.dataclass
class ExperimentConfig:
    """`python -m deft_jax.experiment`: methods compared on `seeds` repeated splits."""

    methods: list = dataclasses.field(default_factory=lambda: list(DEFAULT_EXPERIMENT_METHODS))
    seeds: int = 5  # seed s: split_seed + s, seed + s
    handpicked: list = dataclasses.field(default_factory=list)  # groups the `handpicked` method trains
    folds: str = "repeated"  # repeated grouped stratified splits (the only strategy so far)
    scratch_model: str = ""  # architecture of `scratch`; "" = model.name
    # learning-rate grid for every method's final training (each picks its rate on the
    # validation split); [] = final.learning_rate only
    learning_rates: list = dataclasses.field(default_factory=list)


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


def _coerce(value: Any, typ: Any, where: str) -> Any:
    name = getattr(typ, "__name__", str(typ))
    if typ is float or name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config {where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"config {where} must be a finite number, got {value!r}")
        return float(value)
    if typ is int or name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config {where} must be an integer, got {value!r}")
        return value
    if typ is bool or name == "bool":
        if not isinstance(value, bool):
            raise UserError(f"config {where} must be true or false, got {value!r}")
        return value
    if typ is str or name == "str":
        if not isinstance(value, str):
            raise UserError(f"config {where} must be a string, got {value!r}")
        return value
    if str(typ) == "float | None":
        return None if value is None else _coerce(value, float, where)
    if typ is dict or name == "dict":
        if not isinstance(value, dict):
            raise UserError(f"config {where} must be a table, got {value!r}")
        return value
    if typ is list or name == "list":
        if not isinstance(value, list):
            raise UserError(f"config {where} must be a list, got {value!r}")
        return value
    return value


ALIASES = {SearchConfig: {"strategy": "evaluation"}}  # old key -> key


def _from_dict(cls, raw: dict, where: str):
    for old, new in ALIASES.get(cls, {}).items():
        if old in raw:
            raw = dict(raw)
            value = raw.pop(old)
            if new in raw and raw[new] != value and raw[new] != getattr(cls(), new):
                raise UserError(f"config {where}.{old} is an alias of {where}.{new}: set one of them")
            raw[new] = value
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(f"unknown config key {prefix}{sorted(unknown)[0]} "
                        f"(known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in raw.items():
        typ = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise UserError(f"config {key} must be a table")
            kwargs[name] = _from_dict(typ, value, key)
        else:
            kwargs[name] = _coerce(value, typ, key)
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """JSON; else a TOML inline table or array (`{kind="folder", path="x"}`); else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.strip()[:1] in ("{", "["):
        try:
            return tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            pass
    return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` (value parsed as JSON, else taken as a string) into nested dict `raw`.
    `data.source=tfds:NAME` is short for `data.source={kind="tfds", name="NAME"}`; a later
    `data.source.data_dir=...` (or `.split`) adds to it."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {part} is not a table")
        value = _parse_value(text)
        if parts == ["data", "source"] and isinstance(value, str) and value.startswith("tfds:"):
            value = {"kind": "tfds", "name": value[len("tfds:"):]}  # the tfds:NAME shorthand
        node[parts[-1]] = value
    return raw


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


def _numbers(tree: Any):
    """Every number inside nested dicts/lists (for the finite check of free-form tables)."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "source" else v
    return out


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
        raw = merge(raw, loaded)
    raw = apply_overrides(raw, list(overrides or []))
    if seed is not None:
        raw["seed"] = seed
    cfg = _from_dict(Config, raw, "")
    validate(cfg)
    return cfg


def config_from_dict(raw: dict) -> Config:
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a table of sections, got {type(raw).__name__}")
    cfg = _from_dict(Config, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise UserError(f"invalid config: {message}")

    from deft_jax.models import MODEL_NAMES  # the registry's names (no model is built)

    s, f, m = cfg.search, cfg.finetune, cfg.model
    need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(cfg.data.split_seed >= 0, f"data.split_seed must be >= 0, got {cfg.data.split_seed}")
    need(m.name in MODEL_NAMES, f"model.name must be one of {', '.join(MODEL_NAMES)}, got {m.name!r}")
    need(m.granularity in GRANULARITIES,
         f"model.granularity must be {' or '.join(GRANULARITIES)}, got {m.granularity!r}")
    need(8 <= m.input_size <= MAX_INPUT_SIZE,
         f"model.input_size must be in [8, {MAX_INPUT_SIZE}], got {m.input_size}")
    need(m.weights != "", "model.weights must be default, none or a file path")
    need(s.population_size >= 4, f"search.population_size must be >= 4 (DE needs 4), got {s.population_size}")
    need(s.generations >= 0, f"search.generations must be >= 0, got {s.generations}")
    need(0.0 <= s.differential_weight <= 2.0, f"search.differential_weight must be in [0, 2], got {s.differential_weight}")
    need(0.0 <= s.crossover_rate <= 1.0, f"search.crossover_rate must be in [0, 1], got {s.crossover_rate}")
    need(0.0 < s.threshold < 1.0, f"search.threshold must be in (0, 1), got {s.threshold}")
    need(s.metric in ("accuracy", "macro_f1"), f"search.metric must be accuracy or macro_f1, got {s.metric!r}")
    need(0.0 < s.max_trainable_fraction <= 1.0, f"search.max_trainable_fraction must be in (0, 1], got {s.max_trainable_fraction}")
    need(s.evaluation in ("sequential", "vmap", "vmap-1", "sharded", "auto"),
         f"search.evaluation must be auto, sequential, vmap, vmap-1 or sharded, got {s.evaluation!r}")
    need(s.space in ("mask", "mask+lr"), f"search.space must be mask or mask+lr, got {s.space!r}")
    need(s.schedule in ("short", "final"), f"search.schedule must be short or final, got {s.schedule!r}")
    need(s.fidelity in ("full", "halving"), f"search.fidelity must be full or halving, got {s.fidelity!r}")
    need(0.0 < s.promote_fraction <= 1.0, f"search.promote_fraction must be in (0, 1], got {s.promote_fraction}")
    need(s.select in ("best", "smallest-within-1se"),
         f"search.select must be best or smallest-within-1se, got {s.select!r}")
    need(s.fidelity == "full" or (s.schedule == "final" and f.epochs < cfg.final.epochs),
         "search.fidelity = halving needs search.schedule = final and finetune.epochs (the short "
         f"budget) < final.epochs (the whole one), got {s.schedule!r}, {f.epochs} and {cfg.final.epochs}")
    need(cfg.final.keep in ("last", "best-val"), f"final.keep must be last or best-val, got {cfg.final.keep!r}")
    need(cfg.data.train_per_class >= 0, f"data.train_per_class must be >= 0, got {cfg.data.train_per_class}")
    need(f.compute_dtype in ("float32", "bfloat16"),
         f"finetune.compute_dtype must be float32 or bfloat16, got {f.compute_dtype!r}")
    need(f.optimizer in ("sgd", "adam", "adamw"), f"finetune.optimizer must be sgd, adam or adamw, got {f.optimizer!r}")
    need(f.learning_rate > 0, f"finetune.learning_rate must be > 0, got {f.learning_rate}")
    need(f.batch_size >= 1, f"finetune.batch_size must be >= 1, got {f.batch_size}")
    need(f.epochs >= 1, f"finetune.epochs must be >= 1, got {f.epochs}")
    need(f.weight_decay >= 0, f"finetune.weight_decay must be >= 0, got {f.weight_decay}")
    need(0 <= f.momentum < 1, f"finetune.momentum must be in [0, 1), got {f.momentum}")
    need(cfg.final.epochs >= 1, f"final.epochs must be >= 1, got {cfg.final.epochs}")
    need(cfg.final.learning_rate is None or cfg.final.learning_rate > 0, "final.learning_rate must be > 0")
    fr = cfg.data.fractions
    need(len(fr) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in fr) and abs(sum(fr) - 1) < 1e-6,
         f"data.fractions must be three positive numbers summing to 1, got {fr}")
    need(isinstance(cfg.data.source.get("kind"), str), "data.source.kind must be set")
    need(all(math.isfinite(x) for x in _numbers(cfg.data.source)),
         "data.source numbers must be finite")
    e = cfg.experiment
    need(e.seeds >= 1, f"experiment.seeds must be >= 1, got {e.seeds}")
    need(e.folds == "repeated", f"experiment.folds must be repeated, got {e.folds!r}")
    need(all(isinstance(g, str) for g in e.handpicked), "experiment.handpicked must be a list of layer-group names")
    need(all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 and math.isfinite(r)
             for r in e.learning_rates), "experiment.learning_rates must be a list of positive numbers")
    need(len(e.methods) > 0 and all(isinstance(m, str) for m in e.methods),
         "experiment.methods must be a non-empty list of method names")
