"""Transparent huge pages for XLA:CPU's buffers (Linux with glibc 2.35 or newer).

XLA:CPU gives each run of a compiled program one temporary buffer for its intermediates
(3.8 GB for a Lite0 training step at 160 px, batch 32) from `malloc`, which glibc serves
with a fresh `mmap` and hands back with `munmap` when the run ends: every step faults the
whole buffer in again, 4 KiB at a time (about 930,000 page faults and 1.7-2.1 s of kernel
CPU per step on 2 cores). With glibc's tunable `glibc.malloc.hugetlb=1` malloc asks for
transparent huge pages on its mappings and the same step takes about 4,000 faults and
2.2 s instead of 2.4-2.9 s (`benchmarks/huge_pages.py`, docs/benchmarks.md). Small
programs (ResNet-20 at 32 px) change within noise.

glibc reads its tunables when a process starts, so the command-line entry points start
themselves once more with the tunable added to `GLIBC_TUNABLES` (`restart_with_huge_pages`),
before any JAX work; the processes they start inherit it. The Python API cannot do this:
start Python with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` for the same effect.

    DEFT_JAX_HUGE_PAGES=off   leave the process as it started
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

ENV = "DEFT_JAX_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_page_mode(path: Path = THP_MODE) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"; None if unknown)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def tunables_with_huge_pages(environ, libc: tuple[str, str], thp_mode: str | None) -> str | None:
    """The `GLIBC_TUNABLES` to start again with, or None where a restart would change nothing:
    `DEFT_JAX_HUGE_PAGES=off`, a C library other than glibc >= 2.35, a kernel whose huge pages
    are not given on request (mode "madvise": "always" gives them anyway, "never" never), or
    `glibc.malloc.hugetlb` already set (by the user or by the restart itself)."""
    if environ.get(ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    name, version = libc
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    if name != "glibc" or numbers < MIN_GLIBC or thp_mode != "madvise":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if any(item.split("=", 1)[0].strip() == TUNABLE for item in current.split(":")):
        return None
    return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with huge pages on (see the module doc);
    returns without doing anything where `tunables_with_huge_pages` says so. Call it first
    in a command's entry point, never from library code."""
    if not sys.executable or not sys.orig_argv:
        return
    tunables = tunables_with_huge_pages(os.environ, platform.libc_ver(), transparent_huge_page_mode())
    if tunables is None:
        return
    logger.debug(f"restarting with GLIBC_TUNABLES={tunables}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, dict(os.environ, GLIBC_TUNABLES=tunables))
