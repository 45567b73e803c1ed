"""DEFT search: the command line.

    python -m deft_jax.search [--data PATH] [--model NAME] [--weights PATH|default|none]
                              [--image-size N] [--config FILE] [--out RUN_DIR] [--seed N]
                              [--resume RUN_DIR] [--set key=value ...]

Precedence: the defaults (`deft_jax.config.presets.DEFAULT_RECIPE`: three full fine-tunes on
train+val, averaged; `--config configs/declared_deft.toml` for the declared DEFT,
`--config configs/paper.toml` for the paper's) < `--config` < the flags (`--data`, `--model`, `--weights`,
`--image-size`) < `--set`. A new run's config is `deft_jax.api.search_config`, its run
`deft_jax.api.run_search`: the functions `deft_jax.search(...)` calls.

Searches with differential evolution (`deft_jax.evolution.loop`) for which layer groups of a
pretrained CNN to fine-tune, trains the winner and saves a checkpoint
(`deft_jax.run.pipeline.run_pipeline`). `--resume RUN_DIR` continues an interrupted run from
its last completed generation, with the same result as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import textwrap
from pathlib import Path
from typing import get_args

from deft_jax import api
from deft_jax.cli import arguments, logs
from deft_jax.config.presets import DEFAULT_RECIPE
from deft_jax.config.resume import check_resume_overrides, check_resumed_config
from deft_jax.config.schema import Config, Evaluation, apply_overrides, config_from_dict
from deft_jax.errors import UserError, exit_on_user_error
from deft_jax.runtime import huge_pages, rundir

KEY_NOTES = {  # what the dataclasses cannot say about a key
    "data.source.kind": "or data.source=tfds:NAME",
    "model.name": "a name of deft_jax.models.MODEL_NAMES, see docs/backbones.md",
    "model.weights": "default|none|PATH",
    "search.evaluation": "alias search.strategy",
    "final.learning_rate": "null: finetune.learning_rate",
    "data.train_per_class": "0 = all; at most k training images per class, seeded by data.split_seed",
    "data.val_per_class": "0 = all; at most k validation images per class, seeded by data.split_seed; "
                          "test untouched",
}


def declared_defaults_note(width: int = 96) -> str:
    """The help's lines on the keys where this command's defaults (DEFAULT_RECIPE) are
    not the listed ones."""
    values = ", ".join(f"{k}={json.dumps(v)}" for k, v in DEFAULT_RECIPE.items())
    text = (f"this command starts from three full fine-tunes on train+val, averaged, not the defaults "
            f"above: {values} (python -m deft_jax.experiment: the method full-trainval-ensemble); "
            "the declared DEFT: --config configs/declared_deft.toml; the paper's DEFT: "
            "--config configs/paper.toml")
    return "\n".join(textwrap.wrap(text, width, initial_indent="  ", subsequent_indent="  ",
                                    break_on_hyphens=False)) + "\n"


def build_parser() -> arguments.ArgumentParser:
    p = arguments.ArgumentParser(
        prog="python -m deft_jax.search",
        description="DEFT: search with differential evolution for which layer groups of a "
                    "pretrained CNN to fine-tune, then train the winner and save a checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (--set section.key=value; values parsed as JSON), with their choices "
               "or defaults:\n" + arguments.config_keys_epilog(Config, KEY_NOTES, exclude=("experiment",)) + "\n"
               + declared_defaults_note() +
               "examples:\n  python -m deft_jax.search --data photos/ --model efficientnet_lite0\n"
               "  python -m deft_jax.search --config configs/osteosarcoma_lite0.toml "
               "--set search.generations=8")
    p.add_argument("--data", metavar="PATH",
                   help="the images: a folder (photos/<class>/... or photos/<split>/<class>/...), "
                        "an .npz file, tfds:NAME or digits (default: the config's; the digits demo)")
    p.add_argument("--model", metavar="NAME", help="backbone, a name in docs/backbones.md "
                                                    "(default: the config's; efficientnet_lite0)")
    p.add_argument("--weights", metavar="PATH|default|none",
                   help="pretrained weights: a .pth/.safetensors file, default (the model's known "
                        "source) or none (random init)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="model input size in px (default: the config's; else for an ImageNet "
                        "backbone on a folder, .npz or TFDS source 160 on a CPU, 224 on a GPU/TPU; else 32)")
    p.add_argument("--config", help="TOML/JSON config file (default: the built-in digits demo)")
    p.add_argument("--out", help="run directory to create (default: runs/<time>-<model>)")
    p.add_argument("--seed", type=int, help="random seed for the search and fine-tunes")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override config values")
    p.add_argument("--evaluation", "--strategy", dest="evaluation", choices=get_args(Evaluation),
                   help="how fitness fine-tunes run (same as --set search.evaluation=...)")
    dist = p.add_argument_group("multi-process runs (all three, or none; every process runs the "
                                "same command, process 0 writes the run directory)")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    dist.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    return p


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The `--set` values of a parsed command line, `--evaluation` last."""
    overrides = list(args.overrides)
    if args.evaluation:
        overrides.append(f"search.evaluation={json.dumps(args.evaluation)}")
    return overrides


def new_run_config(args: argparse.Namespace) -> Config:
    """A new run's config: the defaults, `--config`, the flags, `--set`, `--evaluation`,
    `--seed` (`deft_jax.api.search_config`)."""
    return api.search_config(args.data, args.model, args.weights, args.image_size, args.config,
                             args.seed, overrides_of(args))


RESUME_REFUSES = ("config", "data", "model", "weights", "image_size")  # --resume uses config.json


def resumed_run_config(raw: dict, overrides: list[str]) -> Config:
    """A resumed run's config: its config.json (`raw`, an old one too: a source is a
    table of its kind and the options set) with `overrides` (already checked by
    `check_resume_overrides`)."""
    saved = config_from_dict(raw)
    cfg = config_from_dict(apply_overrides(copy.deepcopy(raw), overrides))
    check_resumed_config(saved, cfg)
    return cfg


@exit_on_user_error(on_interrupt="interrupted: completed generations are saved; "
                                 "continue with --resume RUN_DIR")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the process's own command line: start it again with huge pages
        huge_pages.restart_with_huge_pages()
    from deft_jax.runtime import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any JAX work
    with logs.printed(enabled=distributed.is_writer()):  # process 0 logs
        from deft_jax.runtime import compile_cache
        compile_cache.enable()
        from deft_jax.run.pipeline import run_pipeline
        overrides = overrides_of(args)
        with rundir.owned():  # the run directory's lock is held until the run ends
            if args.resume:
                run_dir = Path(args.resume)
                if not (run_dir / rundir.CONFIG).is_file():
                    raise UserError(f"{run_dir} is not a run directory (no {rundir.CONFIG}; a run stopped "
                                    "before writing it computed nothing: delete the folder and start again)")
                given = [f"--{k.replace('_', '-')}" for k in RESUME_REFUSES if getattr(args, k) is not None]
                if given or args.seed is not None:
                    raise UserError("--resume uses the run's own config.json; drop "
                                    + "/".join(given + ["--seed"] * (args.seed is not None)))
                check_resume_overrides(overrides)
                if distributed.is_writer():
                    rundir.lock(run_dir)
                cfg = resumed_run_config(rundir.read_json(run_dir / rundir.CONFIG), overrides)
                run_pipeline(cfg, run_dir, resume=True)
            else:
                api.run_search(new_run_config(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
