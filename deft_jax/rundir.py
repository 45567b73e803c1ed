"""The run directory: atomic writes, so an interrupted run never leaves a torn file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from deft_jax.errors import UserError

# Files a finished run holds; a run missing metrics.json or report.md is not complete.
CONFIG, SPLITS, HISTORY, BEST, METRICS, REPORT = (
    "config.json", "splits.json", "history.jsonl", "best.json", "metrics.json", "report.md")
STATE, CHECKPOINT = "search_state.msgpack", "checkpoint"


def create_fresh(path: Path, what: str = "run directory") -> None:
    """Create an empty output folder; an existing non-empty one is a user error (never
    overwritten: the user resumes it or picks another --out)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{what} {path} already exists; use --resume {path} or another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {what} {path}: {err.strerror}") from None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
