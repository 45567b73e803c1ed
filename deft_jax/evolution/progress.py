"""Live progress of a search: an update as each population member's fine-tune finishes,
with an ETA for the whole search.

    progress = SearchProgress(generations=5, population=8)   # generations incl. generation 0
    with progress.generation(0, members=8) as gen:             # members to train (memo hits excluded)
        ...; gen.advance(1)                                    # after each member's fine-tune

`deft_jax.evolution.loop.run_search` drives it through the evaluators' `on_member_done` hook.
On a terminal it draws a `rich` progress bar (rich ships with flax); otherwise (logs, pipes,
CI) it prints one plain line per member. The ETA is the mean wall time of the members
trained so far times the members that may still be trained: the rest of this generation
and a whole population per generation left (an upper bound: memo hits cost nothing). The
first member of a run includes compilation and makes early estimates pessimistic.
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
    """Counts trained members across the whole search and estimates the time left."""

    def __init__(self, generations: int, population: int, stream: TextIO | None = None,
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.generations, self.population = generations, population
        self.stream = sys.stdout if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.clock = clock
        self.trained_seconds = 0.0
        self.trained = 0
        self.current = 0          # index of the generation in progress
        self.left_in_generation = 0

    def eta_seconds(self) -> float | None:
        """Seconds left, or None before the first trained member."""
        if not self.trained:
            return None
        later = max(self.generations - 1 - self.current, 0) * self.population
        return self.trained_seconds / self.trained * (self.left_in_generation + later)

    def generation(self, index: int, members: int) -> "GenerationProgress":
        return GenerationProgress(self, index, members)


class GenerationProgress:
    """Context for one generation; `advance(n)` after n more members are trained."""

    def __init__(self, search: SearchProgress, index: int, members: int):
        self.search, self.index, self.members = search, index, members
        self.done = 0
        self._last = 0.0
        self._bar = None
        self._task = None

    def __enter__(self) -> "GenerationProgress":
        self._last = self.search.clock()
        self.search.current, self.search.left_in_generation = self.index, self.members
        if self.search.live and self.members:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
            )

            console = Console(file=self.search.stream)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                 console=console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self._title(), total=self.members, status="")
        return self

    def __exit__(self, *exc) -> None:
        self.search.left_in_generation = 0
        if self._bar is not None:
            self._bar.stop()

    def _title(self) -> str:
        return f"generation {self.index}/{self.search.generations - 1}"

    def advance(self, n: int = 1) -> None:
        """n more members of this generation are trained (a fine-tune per member: halving
        trains some members twice, and each pass counts)."""
        now = self.search.clock()
        elapsed, self._last = now - self._last, now
        search = self.search
        self.done += n
        search.trained += n
        search.trained_seconds += elapsed
        search.left_in_generation = max(self.members - self.done, 0)
        eta = search.eta_seconds()
        status = f"search ETA {format_duration(eta) if eta is not None else '?'}"
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done, self.members), status=status)
        else:
            print(f"{self._title()}: {self.done}/{self.members} members trained, {status}",
                  file=search.stream, flush=True)
