"""Command-line parsing whose mistakes end like every other user error: one line
`error: ...` on stderr and exit status 2 (argparse's own format prints the usage first)."""

from __future__ import annotations

import argparse

from deft_jax.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises `UserError`, which `exit_on_user_error`
    prints as one line; `--help` still prints the usage and exits 0."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def top_level_parts(entry: str) -> list[str]:
    """`entry` cut at the ", " outside parentheses: `a: b (x, y), c (z)` -> `a: b (x, y)`, `c (z)`."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(entry):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and entry.startswith(", ", i):
            parts.append(entry[start:i])
            start = i + 2
    return parts + [entry[start:]]


def wrap_entries(entries: list[str], indent: str, width: int) -> list[str]:
    """`entries` packed, comma-separated, into lines of at most `width` characters."""
    lines, line = [], []
    for entry in entries:
        if line and len(indent + ", ".join(line + [entry])) > width:
            lines.append(indent + ", ".join(line) + ",")
            line = []
        line.append(entry)
    return lines + [indent + ", ".join(line)]


def config_keys_epilog(sections, notes: dict[str, str] | None = None, exclude: tuple[str, ...] = (),
                       width: int = 96) -> str:
    """The config keys of dataclass `sections` (a Config, or one section class with its
    prefix, e.g. `(ExperimentConfig, "experiment")`) for a help epilog, each with its
    choices or default (`deft_jax.config.parsing.describe_keys`) and its note in `notes`,
    but not the sections in `exclude`; indented lines of at most `width` characters, an
    entry never split, except one longer than a line (a tagged union's keys of one kind),
    which gets lines of its own, cut between its keys."""
    from deft_jax.config.parsing import describe_keys

    cls, prefix = sections if isinstance(sections, tuple) else (sections, "")
    notes = notes or {}
    entries = []
    for entry in describe_keys(cls, prefix):
        key = entry.split(" ", 1)[0]
        if key.split(".", 1)[0] in exclude:
            continue
        entries.append(f"{entry[:-1]}; {notes[key]})" if key in notes else entry)
    lines, packed = [], []
    for entry in entries:
        if len("  " + entry) <= width:
            packed.append(entry)
            continue
        if packed:
            lines += wrap_entries(packed, "  ", width)
            lines[-1] += ","
            packed = []
        first, *rest = wrap_entries(top_level_parts(entry), "    ", width)
        lines += [first.replace("    ", "  ", 1), *rest]
        lines[-1] += ","
    if packed:
        lines += wrap_entries(packed, "  ", width)
    else:
        lines[-1] = lines[-1].removesuffix(",")
    return "\n".join(lines)
