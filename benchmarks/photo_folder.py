"""The photo-folder run a new user makes, timed as a whole process: `deft-search --data DIR
--model efficientnet_lite0` on a folder of photographs in split folders.

    python benchmarks/photo_folder.py                                  # the default command
    python benchmarks/photo_folder.py --variant 128px="--image-size 128" --variant 224px="--image-size 224"

Lays out (once, under --work) `--per-class` photographs per class of
`../shared/data/sign_language_digits/` (10 classes, the first files of each class folder by
name) as `train/ validation/ test/` folders (`--split`, per class), then runs the search
command on it in a fresh process per variant (the default command first, then each
`--variant NAME="EXTRA ARGS"`) and records the whole process's wall seconds, what the run's
metrics.json says of its phases, the image size it chose, its test accuracy and the other
processes' load on the cores (`machine.OtherLoad`). Writes one JSON under
benchmarks/results/ (photo_folder-<date>-<machine>[-<tag>].json).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import machine

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "data" / "sign_language_digits"


def lay_out(source: Path, dest: Path, per_class: int, split: tuple[int, int, int]) -> int:
    """`per_class` photos of each class of `source` copied into dest/{train,validation,test}/<class>/
    (split[0] / split[1] / split[2] of them); returns the number of photos."""
    assert sum(split) == per_class, f"--split {split} must add up to --per-class {per_class}"
    if dest.exists():
        shutil.rmtree(dest)
    n = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file())[:per_class]
        if len(files) < per_class:
            sys.exit(f"error: {folder} has {len(files)} photos, fewer than --per-class {per_class}")
        bounds = [0, split[0], split[0] + split[1], per_class]
        for name, lo, hi in zip(("train", "validation", "test"), bounds, bounds[1:]):
            target = dest / name / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for f in files[lo:hi]:
                shutil.copy2(f, target / f.name)
                n += 1
    return n


def run_once(folder: Path, out: Path, extra: list[str]) -> dict:
    """The search command on `folder` in a fresh process; its wall seconds and what its run wrote."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "deft_jax.search", "--data", str(folder), "--model", "efficientnet_lite0",
           "--out", str(out), *extra]
    load = machine.OtherLoad()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    record = {"command": shlex.join(cmd[1:]), "returncode": proc.returncode, "wall_seconds": round(wall, 1),
              "other_load_cores": load.cores()}
    if proc.returncode != 0:
        record["stderr_tail"] = proc.stderr[-2000:]
        return record
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    record.update({"image_size": config["model"]["input_size"], "test_accuracy": metrics["test"]["accuracy"],
                   "test_n": metrics["test"]["n"], "fine_tune_epochs": metrics.get("fine_tune_epochs"),
                   "phases_seconds": metrics.get("seconds"), "final_model": metrics.get("final_model")})
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deft_photo_folder"))
    parser.add_argument("--per-class", type=int, default=70)
    parser.add_argument("--split", default="40,15,15", help="train,validation,test photos per class")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="ARGS"',
                        help="also time the command with these extra arguments")
    parser.add_argument("--no-default", action="store_true", help="time only the variants")
    parser.add_argument("--tag", default="", help="appended to the JSON's name (two sweeps on one day)")
    args = parser.parse_args()
    if not args.source.is_dir():
        print(f"error: {args.source} not found (the shared data set)", file=sys.stderr)
        return 2
    split = tuple(int(v) for v in args.split.split(","))
    folder = args.work / "photos"
    n = lay_out(args.source, folder, args.per_class, split)
    variants = ([] if args.no_default else [("default", [])]) + [
        (v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    results = {"machine": machine.cpu_info(), "versions": machine.versions(), "photos": n,
               "split_per_class": split, "loadavg_before": machine.loadavg(), "runs": {}}
    stamp = time.strftime("%Y-%m-%d")
    tag = f"-{args.tag}" if args.tag else ""
    path = ROOT / "benchmarks" / "results" / f"photo_folder-{stamp}-{machine.machine_slug()}{tag}.json"
    for name, extra in variants:  # the JSON is rewritten after each run: a cut-short sweep keeps its runs
        results["runs"][name] = run_once(folder, args.work / f"run-{name}", extra)
        print(name, json.dumps(results["runs"][name]), flush=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
