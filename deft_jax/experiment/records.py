"""The experiment's raw records: runs.jsonl (one JSON object per (seed, method),
appended and fsynced as each run finishes) and its flat copy runs.csv."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from deft_jax.runtime import rundir

RUNS, RUNS_CSV = "runs.jsonl", "runs.csv"
CSV_COLUMNS = ("seed", "method", "test_accuracy", "test_macro_f1", "test_auc", "val_accuracy",
               "val_macro_f1", "val_auc", "trainable_fraction", "wall_seconds",
               "fitness_evaluations", "mask", "train_seed", "split_seed", "split_sha")


def read_runs(path: Path) -> list[dict]:
    """Records of runs.jsonl; a torn last line (killed mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_run(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(rundir.json_text(record, indent=None) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_csv(path: Path, records: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in sorted(records, key=lambda r: (r["seed"], r["method"])):
        writer.writerow({
            "seed": r["seed"], "method": r["method"],
            **{f"{split}_{k}": r[split].get(k) for split in ("test", "val") for k in ("accuracy", "macro_f1", "auc")},
            "trainable_fraction": r["trainable_fraction"], "wall_seconds": r["wall_seconds"],
            "fitness_evaluations": r["fitness_evaluations"], "mask": r.get("mask_key") or "",
            "train_seed": r["train_seed"], "split_seed": r["split_seed"], "split_sha": r["split_sha"]})
    rundir.write_text_atomic(path, buf.getvalue())
