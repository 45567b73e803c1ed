"""The commands' log: for a command's duration, the `deft_jax` loggers' records (INFO and
up) are printed as plain lines. The library only logs; used as a library, nothing below
WARNING is printed unless the caller configures `logging` (e.g. `logging.basicConfig`)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Literal


class CurrentStreamHandler(logging.StreamHandler):
    """Writes to `sys.stdout`/`sys.stderr` as they are at each record (a test's capture, or
    rich's live progress display, which redirects stdout while it draws)."""

    def __init__(self, name: Literal["stdout", "stderr"]):
        self.name_of_stream = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self.name_of_stream)

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ assigns one; the current one is used
        pass


@contextlib.contextmanager
def printed(stream: Literal["stdout", "stderr"] = "stdout", enabled: bool = True) -> Iterator[None]:
    """Print the `deft_jax` log on `stream` inside the block; `enabled=False` (the other
    processes of a multi-process run) prints nothing. The logger is restored afterwards."""
    logger = logging.getLogger("deft_jax")
    handler = CurrentStreamHandler(stream) if enabled else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the command owns the output (absl's root handler would repeat it)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
