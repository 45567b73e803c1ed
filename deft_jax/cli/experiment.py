"""The command line of `python -m deft_jax.experiment` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from deft_jax.cli import logs
from deft_jax.cli.arguments import ArgumentParser, config_keys_epilog
from deft_jax.config.schema import ExperimentConfig, config_from_dict, load_config
from deft_jax.errors import UserError, exit_on_user_error
from deft_jax.experiment.runner import META, run_experiment
from deft_jax.methods import METHODS, get_method
from deft_jax.runtime import huge_pages, rundir


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m deft_jax.experiment",
        description="Compare DEFT with baselines (" + ", ".join(METHODS) + ") over repeated "
                    "grouped stratified splits, with paired statistics and plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys of [experiment], with their choices or defaults:\n"
               + config_keys_epilog((ExperimentConfig, "experiment"), {
                   "experiment.handpicked": "the layer groups the handpicked method trains",
                   "experiment.scratch_model": '"": model.name'}) + "\n"
               "plus the keys of a search (python -m deft_jax.search --help).\n"
               "example: python -m deft_jax.experiment --config configs/digits_experiment.toml "
               "--out runs/digits-exp")
    p.add_argument("--config", help="TOML/JSON config file (default: the built-in digits demo)")
    p.add_argument("--methods", help="comma-separated methods (default: experiment.methods)")
    p.add_argument("--seeds", type=int, help="number of seeds/splits (default: experiment.seeds)")
    p.add_argument("--out", help="output folder to create (default: runs/experiment-<time>-<model>)")
    p.add_argument("--resume", metavar="DIR", help="continue an experiment folder; finished runs are skipped")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override config values (not with --resume)")
    return p


@exit_on_user_error(on_interrupt="interrupted: finished runs are saved in runs.jsonl (and DEFT's "
                                 "completed generations); continue with --resume DIR")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the process's own command line: start it again with huge pages
        huge_pages.restart_with_huge_pages()
    from deft_jax.runtime import compile_cache
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in methods:
            get_method(m)
        if not methods:
            raise UserError("--methods is empty")
    with rundir.owned(), logs.printed():  # the output folder's lock is held until the experiment ends
        compile_cache.enable()
        return _run(args, methods)


def _run(args, methods: list[str] | None) -> int:
    if args.resume:
        if args.config or args.overrides or args.out:
            raise UserError("--resume uses the experiment's own config.json; drop --config/--set/--out")
        out = Path(args.resume)
        if not (out / rundir.CONFIG).is_file() or not (out / META).is_file():
            raise UserError(f"{out} is not an experiment folder (no {rundir.CONFIG} / {META})")
        try:
            cfg = config_from_dict(rundir.read_json(out / rundir.CONFIG))
        except (json.JSONDecodeError, TypeError) as err:
            raise UserError(f"cannot read {out / rundir.CONFIG}: {err}") from None
        run_experiment(cfg, out, methods, args.seeds, resume=True)
    else:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / (
            f"experiment-{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.name}")
        run_experiment(cfg, out, methods, args.seeds, resume=False)
    return 0

