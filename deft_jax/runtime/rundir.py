"""The run directory: one owner at a time, created atomically, written atomically.

- `create_fresh` makes a new folder without a check-then-create window and locks it;
  `lock` locks an existing one (`--resume`). The lock is `fcntl.flock` on `.lock` inside
  the folder, held until `release` (or `owned()`'s end, or the process's end: the kernel
  drops it even after SIGKILL). A second process gets a one-line error naming the holder.
- Files are written to a temporary name, fsynced and renamed, so an interrupted run never
  leaves a torn file; JSON is strict (a non-finite number is written as null).
- A full disk is a one-line error that says `--resume` continues.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deft_jax.errors import UserError

# Files a finished run holds; a run missing metrics.json or report.md is not complete.
CONFIG, SPLITS, HISTORY, BEST, METRICS, REPORT = (
    "config.json", "splits.json", "history.jsonl", "best.json", "metrics.json", "report.md")
STATE, CHECKPOINT, REPORT_HTML = "search_state.msgpack", "checkpoint", "report.html"
LOCK = ".lock"

_held: dict[Path, int] = {}  # resolved folder -> file descriptor holding its lock


def lock(path: Path, what: str = "run directory", shared: bool = False) -> bool:
    """Take the folder's lock (exclusive; `shared=True` for a reader) or raise a one-line
    UserError naming the process that holds it. Returns False when nothing was taken: this
    process holds it already, or there is no lock file for a reader (a reader never creates
    or writes one). `.lock` is opened without following a symbolic link and must be a
    regular file; no file inside the folder may be a symbolic link (`refuse_linked_members`)."""
    path = Path(path)
    key = path.resolve()
    if key in _held:
        return False
    refuse_linked_members(path, what)
    # never through a link: a planted `.lock` symlink must not make us truncate its target
    flags = (os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT) | os.O_NOFOLLOW
    try:
        fd = os.open(path / LOCK, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{what} {path}: {LOCK} is a symbolic link; refusing to use it "
                            f"(remove it if you did not make it)") from None
        if shared:  # no lock file: a reader writes nothing, and nobody is writing this folder
            return False
        raise UserError(f"cannot lock {what} {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{what} {path}: {LOCK} is not a regular file; refusing to use it")
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{what} {path} is in use by process {holder}; wait for it to end "
                        "(or stop it) and try again") from None
    if not shared:  # the holder's pid, for the message above; a reader writes nothing
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            os.close(fd)
            if is_disk_full(err):
                raise UserError(f"the disk is full (locking {path}); free some space and run the "
                                "same command again") from None
            raise
    _held[key] = fd
    return True


def refuse_linked_members(path: Path, what: str = "run directory") -> None:
    """A one-line UserError if anything inside the folder (checkpoint included) is a symbolic
    link: a run reads and replaces only its own files, never a planted link's target. The
    folder itself may be a link (e.g. runs/latest)."""
    if not Path(path).is_dir():
        return
    for member in sorted(Path(path).rglob("*")):
        if member.is_symlink():
            raise UserError(f"{what} {path}: {member.relative_to(path)} is a symbolic link; a run "
                            "folder's files must be its own (refusing to read or replace it)")


def release(path: Path) -> None:
    fd = _held.pop(Path(path).resolve(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def owned() -> Iterator[None]:
    """Releases every lock taken inside the block when it ends (a CLI wraps its run in it)."""
    before = set(_held)
    try:
        yield
    finally:
        for key in set(_held) - before:
            release(key)


def _has_content(path: Path) -> bool:
    return any(p.name != LOCK for p in path.iterdir())


def create_fresh(path: Path, what: str = "run directory") -> None:
    """Create an empty output folder and lock it. An existing non-empty one is a user error
    (never overwritten: the user resumes it or picks another --out). The leaf is made with
    one `mkdir` (atomic); an existing empty folder is accepted only once it is locked and
    still empty, so two processes can never both start writing one folder."""
    path = Path(path)
    exists = f"{what} {path} already exists; use --resume {path} or another --out"
    made = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path)
        made = True
    except FileExistsError:
        if not path.is_dir() or _has_content(path):
            raise UserError(exists) from None
    except OSError as err:
        if is_disk_full(err):
            raise UserError(f"the disk is full (creating {path}); free some space and run the "
                            "same command again") from None
        raise UserError(f"cannot create {what} {path}: {err.strerror}") from None
    try:
        lock(path, what)
    except UserError:  # e.g. a full disk: the folder this call made goes again (it is empty)
        if made and not _has_content(path):
            with contextlib.suppress(OSError):
                (path / LOCK).unlink(missing_ok=True)
                path.rmdir()
        raise
    if _has_content(path):
        release(path)
        raise UserError(exists)


class DiskFull(UserError):
    """The disk filled up while a run file was written (`path`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        super().__init__(disk_full_message(self.path))


@contextlib.contextmanager
def first_files(path: Path) -> Iterator[None]:
    """The files that make a new folder a run (splits.json, then config.json, which marks it
    resumable): a full disk while they are written removes the folder again (nothing was
    computed), so the same command can simply be run again; `--resume` would not work,
    there is nothing to resume."""
    try:
        yield
    except DiskFull as err:
        release(path)
        for p in Path(path).iterdir():
            if p.is_file() and not p.is_symlink():
                p.unlink()
        with contextlib.suppress(OSError):
            os.rmdir(path)
        raise UserError(f"the disk is full (writing {err.path.name}); free some space and run the "
                        f"same command again (nothing was computed; {path} was removed)") from None


def disk_full_message(path: Path) -> str:
    return (f"the disk is full (writing {path}); free some space, then continue with "
            f"--resume {Path(path).parent}")


def is_disk_full(err: BaseException) -> bool:
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left on device" in str(err) or "RESOURCE_EXHAUSTED" in str(err)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and is_disk_full(err):
            raise DiskFull(path) from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def strict_json_value(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±inf) replaced by None and numpy scalars
    made Python ones (keys strings), so `json.dumps(..., allow_nan=False)` writes
    standard JSON."""
    if isinstance(obj, dict):
        return {str(k): strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json_value(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(strict_json_value(obj), indent=indent, allow_nan=False)


def fingerprint(obj: Any) -> str:
    """sha256 (hex) of `obj`'s canonical JSON (sorted keys, no spaces, non-finite as null):
    the same for equal content however it was built or read back."""
    text = json.dumps(strict_json_value(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json_text(obj) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file of a run; unreadable or invalid JSON is a one-line UserError."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        detail = err.strerror if isinstance(err, OSError) else err
        raise UserError(f"cannot read {path}: {detail}") from None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json_text(r, indent=None) + "\n" for r in rows))


def clear_results(run_dir: Path, config: dict | None = None) -> None:
    """Make a run unfinished just before its final model is replaced: metrics.json and
    report.md (and report.html) go first (a run without them is not complete), then config.json takes the
    config the new final model is trained with (`--resume --set final.epochs=...`), then
    the old checkpoint goes. Called only once the search has finished, so a resume that
    fails earlier (a torn state, a bad input) never turns a finished run into an
    unfinished one."""
    run_dir = Path(run_dir)
    for name in (METRICS, REPORT, REPORT_HTML):
        (run_dir / name).unlink(missing_ok=True)
    if config is not None:
        write_json(run_dir / CONFIG, config)
    if (run_dir / CHECKPOINT).exists():
        shutil.rmtree(run_dir / CHECKPOINT)
