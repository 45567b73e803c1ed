"""Live progress of a search: one update per population member, with an ETA for the search.

    progress = SearchProgress(generations=5, population=8)      # generations incl. gen 0
    for g in range(5):
        with progress.generation(g) as gen:
            for i, mask in enumerate(masks):
                gen.member_done(i, fitness, cached=was_memo_hit)

On a terminal it draws a `rich` progress bar (rich ships with flax); otherwise (logs, pipes,
CI) it prints one plain line per member. The ETA is the mean wall time of the members
evaluated so far (memo hits excluded: they cost nothing) times the members left in the
search, so it settles after the first few evaluations; the first member of a run includes
compilation and makes early estimates pessimistic.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SearchProgress:
    """Counts evaluated members across the whole search and estimates the time left."""

    def __init__(self, generations: int, population: int, stream: TextIO | None = None,
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.generations, self.population = generations, population
        self.stream = sys.stdout if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.clock = clock
        self.evaluated_seconds = 0.0
        self.evaluated = 0
        self.done = 0

    @property
    def total(self) -> int:
        return self.generations * self.population

    def eta_seconds(self) -> float | None:
        """Seconds left, or None before the first evaluated member."""
        if not self.evaluated:
            return None
        return self.evaluated_seconds / self.evaluated * (self.total - self.done)

    def generation(self, index: int) -> "GenerationProgress":
        return GenerationProgress(self, index)


class GenerationProgress:
    """Context for one generation; `member_done` after each member's fitness is known."""

    def __init__(self, search: SearchProgress, index: int):
        self.search, self.index = search, index
        self.members = 0
        self._last = None
        self._bar = None
        self._task = None

    def __enter__(self) -> "GenerationProgress":
        self._last = self.search.clock()
        if self.search.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            console = Console(file=self.search.stream)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                 console=console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self._title(), total=self.search.population,
                                            status="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _title(self) -> str:
        return f"generation {self.index}/{self.search.generations - 1}"

    def member_done(self, index: int, fitness: float, cached: bool = False) -> None:
        """Member `index` of this generation has its `fitness` (`cached`: a memo hit)."""
        now = self.search.clock()
        elapsed, self._last = now - self._last, now
        search = self.search
        search.done += 1
        self.members += 1
        if not cached:
            search.evaluated += 1
            search.evaluated_seconds += elapsed
        eta = search.eta_seconds()
        status = (f"fitness {fitness:.4f}{' (cached)' if cached else ''}, "
                  f"search ETA {format_duration(eta) if eta is not None else '?'}")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.members, status=status)
        else:
            print(f"{self._title()} member {index + 1}/{search.population}: {status}",
                  file=search.stream, flush=True)
