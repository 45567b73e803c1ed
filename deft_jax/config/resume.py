"""What `--resume` may change: the `--set` keys that leave a search's result as it was, the
config values the result depends on (their fingerprint is in the search state), and a
line naming what changed."""

from __future__ import annotations

import json

from deft_jax.config.schema import Config
from deft_jax.errors import UserError

# `--resume --set` may change only these: they do not change the search's result (the
# strategies and worker processes give the same fitnesses, to float rounding; more generations continue the same DE, equal to an
# uninterrupted run with that many) or only retrain the final model; the new values are
# recorded in config.json when the final model is written.
RESUME_SETTABLE = ("search.evaluation", "search.strategy", "search.workers", "search.generations",
                   "final.epochs", "final.learning_rate")

# keys added later -> their defaults (which leave the result as it was before them)
ADDED_LATER = {"search.start": "head", "final.reuse": False, "final.ensemble": 1,
               "finetune.step": "gated", "search.folds": 1, "final.data": "train"}


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


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def result_config(cfg: Config) -> dict:
    """The config values a search's result depends on, flat (`section.key`): everything but
    the keys `--resume --set` may change (`RESUME_SETTABLE`, whose policy says they change
    no fitness) and the experiment section (a search never reads it). With
    `search.schedule = "final"` the final training's epochs and rate are the fitness
    recipe, so they stay in."""
    flat = _flat(cfg.to_dict())
    # keys added after searches were first stored count only when set: a state written
    # before them (at their default) resumes
    flat = {k: v for k, v in flat.items() if k not in ADDED_LATER or v != ADDED_LATER[k]}
    free = set(RESUME_SETTABLE)
    if cfg.search.schedule == "final":
        free -= {"final.epochs", "final.learning_rate"}
    return {k: v for k, v in flat.items() if k not in free and not k.startswith("experiment.")}


def config_changes(old: dict, new: dict, limit: int = 3) -> str:
    """'a.b 1 -> 2, c.d ...' for the keys whose values differ between two `result_config`s."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "unset") != new.get(k, "unset"))
    text = ", ".join(f"{k} {json.dumps(old.get(k, 'unset'))} -> {json.dumps(new.get(k, 'unset'))}"
                     for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
