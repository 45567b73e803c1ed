"""Progress of a long batch of items (predict over folders): a `rich` bar on a terminal,
otherwise plain lines, at most one per `every` seconds and one at the end, with an ETA
(as the search's progress, `deft_jax.evolution.progress`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from deft_jax.evolution.progress import format_duration


class ItemProgress:
    """`with ItemProgress(total, "classified") as bar: ...; bar.advance(n)`."""

    def __init__(self, total: int, what: str, stream: TextIO | None = None, live: bool | None = None,
                 every: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.what, self.every, self.clock = total, what, every, clock
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.done = 0
        self._start = self._printed = 0.0
        self._bar = self._task = None

    def __enter__(self) -> "ItemProgress":
        self._start = self._printed = self.clock()
        if self.live and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(self.what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def line(self) -> str:
        elapsed = self.clock() - self._start
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        eta = format_duration(left) if left is not None else "?"
        return f"{self.what} {self.done}/{self.total}, ETA {eta}"

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done, self.total))
            return
        now = self.clock()
        if now - self._printed >= self.every or self.done >= self.total:
            self._printed = now
            print(self.line(), file=self.stream, flush=True)
