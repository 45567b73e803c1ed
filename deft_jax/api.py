"""The Python API: the functions the commands run, for a notebook or a script.

    import deft_jax
    run = deft_jax.search(data="photos", model="resnet50", weights="r50.safetensors",
                          out="runs/a", search={"generations": 2})
    run.best_mask, run.metrics["test"]["accuracy"], run.run_dir
    model = deft_jax.load("runs/a")
    model.predict(["a.jpg", "b.png"])   # probabilities, one row per input
    model.class_names
    model.ensemble_masks                # None, or each member's mask (final.ensemble)

`search` takes the same inputs as `python -m deft_jax.search`: `data`, `model`,
`weights`, `image_size` (the flags), `config` (a TOML/JSON file), `seed`, `set` (a list of
`--set` strings) and config keys as keywords: a section as a table (`finetune={"epochs":
2}`) or a dotted key (`**{"final.epochs": 3}`). Precedence: defaults (three full fine-tunes on
train+val, `deft_jax.config.presets.DEFAULT_RECIPE`) < config file < flags < `set` and keywords. Like the library, it only logs (`logging.basicConfig` shows
the progress lines); a bad input raises `deft_jax.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from deft_jax.config.flags import flag_overrides, logged_default_input_size
from deft_jax.config.presets import DEFAULT_RECIPE
from deft_jax.config.schema import Config, load_config
from deft_jax.errors import UserError
from deft_jax.runtime import rundir


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A finished run: where it is, the layer groups it fine-tunes, its metrics."""

    run_dir: Path
    best_mask: dict[str, bool]  # layer group -> fine-tuned
    best_fitness: float | None  # None: no search ran (final.member_masks = full, the default)
    metrics: dict  # as metrics.json: "test", "val", "search", "seconds", ...
    config: Config

    @property
    def trained_groups(self) -> list[str]:
        return [g for g, on in self.best_mask.items() if on]

    def load(self) -> "Model":
        return load(self.run_dir)


def keyword_overrides(keywords: dict) -> list[str]:
    """Config keys given as keywords -> `--set` strings: a table is walked to its leaves
    (`data={"source": {"kind": "npz"}}` -> `data.source.kind="npz"`), a value is JSON."""
    out = []

    def walk(key: str, value):
        if isinstance(value, dict) and value:
            for name, inner in value.items():
                walk(f"{key}.{name}", inner)
        else:
            out.append(f"{key}={json.dumps(value, default=str)}")

    for key, value in keywords.items():
        walk(key, value)
    return out


def jax_backend() -> str:
    import jax
    return jax.default_backend()


def search_config(data: str | Path | None = None, model: str | None = None,
                  weights: str | Path | None = None, image_size: int | None = None,
                  config: str | Path | None = None, seed: int | None = None,
                  set: Sequence[str] = (), **keywords) -> Config:
    """A new run's config (see module doc); a photo model that no one gave a size gets
    `deft_jax.config.flags.default_input_size`, said in the log."""
    overrides = [*flag_overrides(None if data is None else str(data), model, weights, image_size),
                 *set, *keyword_overrides(keywords)]
    return load_config(config, overrides, seed, input_size_default=logged_default_input_size(jax_backend),
                       preset=DEFAULT_RECIPE)


def run_search(cfg: Config, out: str | Path | None = None) -> SearchResult:
    """Runs a whole search with `cfg` into the new run directory `out` (None:
    runs/<time>-<model>-seed<seed>)."""
    from deft_jax.run.pipeline import resolve_run_dir, run_pipeline

    run_dir = resolve_run_dir(None if out is None else str(out), cfg)
    with rundir.owned():  # the run directory's lock is held until the run ends
        metrics = run_pipeline(cfg, run_dir, resume=False)
    best_file = run_dir / rundir.BEST  # written by process 0 only
    best = rundir.read_json(best_file) if best_file.is_file() else {"mask": {}}
    fitness = metrics["search"]["best_fitness"]
    return SearchResult(run_dir, dict(best["mask"]), None if fitness is None else float(fitness), metrics, cfg)


def search(data: str | Path | None = None, model: str | None = None, weights: str | Path | None = None,
           image_size: int | None = None, out: str | Path | None = None, config: str | Path | None = None,
           seed: int | None = None, set: Sequence[str] = (), **keywords) -> SearchResult:
    """Search which layer groups of `model` to fine-tune on `data`, train the winner and
    save it in `out` (see module doc); returns the finished run."""
    cfg = search_config(data, model, weights, image_size, config, seed, set, **keywords)
    return run_search(cfg, out)


class Model:
    """A finished run's model: `predict(inputs)` -> probabilities, `class_names`."""

    def __init__(self, run_dir: str | Path):
        from deft_jax.run.predictor import Predictor

        self.run_dir = Path(run_dir)
        self.predictor = Predictor(self.run_dir)

    @property
    def class_names(self) -> list[str]:
        return list(self.predictor.class_names)

    @property
    def ensemble_masks(self) -> list[dict] | None:
        """Each member's mask when the run's model is an ensemble (`final.ensemble`), the
        selected mask's first; None for a single model. `predict` averages the members'
        probabilities."""
        return self.predictor.ensemble_masks

    def predict(self, inputs, on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 [N, classes] probabilities, one row per input: a path, a uint8 image
        (HxWxC) or a batch (NxHxWxC), or a list of paths and images. Each input is cut and
        resized as at training time (crops averaged); `on_progress(n)` after every n done."""
        return self.predictor.probabilities_of(as_items(inputs), on_progress).astype(np.float32)


def as_items(inputs) -> list:
    """`Model.predict`'s inputs as a list of single inputs (paths or HxWxC arrays)."""
    if isinstance(inputs, (str, Path)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 4:
            return list(inputs)
        if inputs.ndim in (2, 3):
            return [inputs]
        raise UserError(f"expected an image (HxWxC) or a batch (NxHxWxC), got shape {inputs.shape}")
    try:
        return list(inputs)
    except TypeError:
        raise UserError(f"expected image paths or uint8 arrays, got {type(inputs).__name__}") from None


def load(run_dir: str | Path) -> Model:
    """The model of a finished run directory (written by `search`)."""
    return Model(run_dir)
