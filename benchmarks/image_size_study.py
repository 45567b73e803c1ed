"""One method of an experiment at several input sizes, each size its own experiment folder
over the same seeds and splits: mean test accuracy, mean wall seconds per seed, and each size
against the one before it and against the first (fixed-split statistics: the paired t over
seeds and the paired item bootstrap, `deft_jax.experiment.stats.fixed_split_comparison`).

    python benchmarks/image_size_study.py --method full-trainval-ensemble \\
        64=results/trainval/bloodcells64_lite0_tpc25 \\
        128=results/image_size/bloodcells64_lite0_tpc25_128px \\
        160=results/image_size/bloodcells64_lite0_tpc25_160px \\
        224=results/image_size/bloodcells64_lite0_tpc25_224px

Every folder's rows of `--method` must share split and test hashes seed by seed with the
first folder's (else the sizes were not run on the same data, and the script stops). Seeds
missing from a folder are left out of that folder's comparisons and said in the table.
Prints a markdown table and writes the JSON to benchmarks/results/image_size-<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from deft_jax.experiment.stats import fixed_split_comparison
from deft_jax.experiment.summary import correct_items

ROOT = Path(__file__).resolve().parent.parent


def rows_of(folder: Path, method: str) -> dict[int, dict]:
    """The folder's finished rows of `method`, by seed."""
    rows = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines() if line.strip()]
    return {r["seed"]: r for r in rows if r["method"] == method}


def compare(a: dict[int, dict], b: dict[int, dict]) -> dict:
    """Size A - size B over their common seeds."""
    seeds = sorted(set(a) & set(b))
    out = fixed_split_comparison([a[s]["test"]["accuracy"] for s in seeds],
                                 [b[s]["test"]["accuracy"] for s in seeds],
                                 [correct_items(a[s]) for s in seeds], [correct_items(b[s]) for s in seeds])
    return {**out, "seeds": seeds}


def interval(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sizes", nargs="+", help="SIZE=FOLDER, smallest first")
    p.add_argument("--method", required=True)
    p.add_argument("--tag", default="bloodcells64_lite0_tpc25")
    args = p.parse_args(argv)
    sizes = []
    for item in args.sizes:
        size, _, folder = item.partition("=")
        sizes.append((int(size), ROOT / folder if not Path(folder).is_absolute() else Path(folder)))
    by_size = {size: rows_of(folder, args.method) for size, folder in sizes}
    first = sizes[0][0]
    for size, rows in by_size.items():
        for seed, r in rows.items():
            ref = by_size[first].get(seed)
            if ref is not None and (r["split_sha"], r["test_sha"]) != (ref["split_sha"], ref["test_sha"]):
                sys.exit(f"error: {size} px seed {seed} has other splits than {first} px")
    result = {"method": args.method, "folders": {str(s): str(f.relative_to(ROOT)) if f.is_relative_to(ROOT)
                                                   else str(f) for s, f in sizes}, "sizes": []}
    lines = [f"| input size | seeds | mean test accuracy | mean s per seed | - previous size: mean, t 95% CI; "
             f"item bootstrap | - {first} px: mean, t 95% CI; item bootstrap |",
             "|---:|---:|---:|---:|---|---|"]
    previous = None
    for size, _ in sizes:
        rows = by_size[size]
        seeds = sorted(rows)
        entry = {"size": size, "seeds": seeds,
                 "mean_accuracy": float(np.mean([rows[s]["test"]["accuracy"] for s in seeds])) if seeds else None,
                 "mean_wall_s": float(np.mean([rows[s]["wall_seconds"] for s in seeds])) if seeds else None}
        cells = []
        for other, key in ((previous, "vs_previous"), (first if size != first else None, "vs_first")):
            if other is None or not seeds:
                cells.append("-")
                continue
            c = compare(rows, by_size[other])
            entry[key] = {"other": other, **c}
            cells.append(f"{c['mean_difference']:+.3f}, {interval(c['ci95'])}; {interval(c['ci95_bootstrap'])}: "
                         f"{c['verdict']}")
        result["sizes"].append(entry)
        acc = "-" if entry["mean_accuracy"] is None else f"{entry['mean_accuracy']:.3f}"
        wall = "-" if entry["mean_wall_s"] is None else f"{entry['mean_wall_s']:.0f}"
        lines.append(f"| {size} px | {len(seeds)} | {acc} | {wall} | {cells[0]} | {cells[1]} |")
        previous = size if seeds else previous
    result["markdown"] = "\n".join(lines)
    print(result["markdown"])
    out = ROOT / "benchmarks" / "results" / f"image_size-{args.tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
