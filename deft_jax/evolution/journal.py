"""Per-evaluation resume: the finished evaluations of the generation in flight, on disk.

The search state is saved after every generation; a kill inside a generation would redo
all of its members. The journal (`search_state.journal.jsonl` beside the state) closes that
gap: every finished member's fitness is appended as one JSON line and fsynced before the
search goes on, so a resumed search takes those members' fitnesses from it and retrains at
most the member that was in flight. It is append-only (a kill can only tear its last
line, which is dropped on reading), and its lines carry the generation they belong to and
the config fingerprint of the search that wrote them, so a line of a generation already
in the state, or of another config, is never used. It is rewritten (only its valid lines
of the generation in flight) when a search resumes and removed after each saved state.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from deft_jax.errors import UserError
from deft_jax.runtime import rundir


def journal_path(state_path: Path) -> Path:
    return Path(state_path).with_suffix(".journal.jsonl")


class EvaluationJournal:
    """(mask key, fine-tune epochs or None for the whole budget) -> fitness of the members
    of `generation` finished so far; `record` appends and fsyncs one line."""

    def __init__(self, path: Path, fingerprint: str, generation: int):
        self.path, self.fingerprint, self.generation = Path(path), fingerprint, generation
        self.done: dict[tuple[str, int | None], float] = {}
        self.restored = 0  # members taken from the journal instead of trained

    def load(self) -> int:
        """Reads the finished members of this generation (dropping a torn last line and
        the lines of other generations), rewrites the file with only those, and returns
        how many there are. Lines of another config's search are a one-line UserError."""
        if not self.path.exists():
            return 0
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read the evaluation journal {self.path}: {err}") from None
        lines = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
                key, epochs, fitness = row["key"], row["epochs"], float(row["fitness"])
                generation, fingerprint = int(row["generation"]), row["fingerprint"]
            except (ValueError, KeyError, TypeError):  # torn by a kill while it was written
                continue
            if fingerprint != self.fingerprint:
                raise UserError(f"{self.path} was written by a search with another config (config.json "
                                "was changed since the search started); restore config.json or start a "
                                "new run with --out")
            if generation == self.generation:
                self.done[(key, epochs)] = fitness
                lines.append(line + "\n")
        rundir.write_text_atomic(self.path, "".join(lines))
        return len(self.done)

    def get(self, key: str, epochs: int | None) -> float | None:
        return self.done.get((key, epochs))

    def record(self, key: str, epochs: int | None, fitness: float) -> None:
        fitness = float(fitness)
        self.done[(key, epochs)] = fitness
        line = json.dumps({"generation": self.generation, "key": key, "epochs": epochs,
                           "fitness": fitness, "fingerprint": self.fingerprint}) + "\n"
        try:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            if rundir.is_disk_full(err):
                raise rundir.DiskFull(self.path) from None
            raise

    def next_generation(self, generation: int) -> None:
        """The state of the previous generation is saved: start `generation` empty."""
        self.generation, self.done = generation, {}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
