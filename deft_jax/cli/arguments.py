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


def config_keys_epilog(sections, notes: dict[str, str] | None = None, exclude: tuple[str, ...] = (),
                       width: int = 96) -> str:
    """The config keys of dataclass `sections` (a Config, or one section class with its
    prefix, e.g. `(ExperimentConfig, "experiment")`) for a help epilog, each with its
    choices or default (`deft_jax.config.parsing.describe_keys`) and its note in `notes`,
    but not the sections in `exclude`; indented lines of at most `width` characters, an
    entry never split."""
    from deft_jax.config.parsing import describe_keys

    cls, prefix = sections if isinstance(sections, tuple) else (sections, "")
    notes = notes or {}
    entries = []
    for entry in describe_keys(cls, prefix):
        key = entry.split(" ", 1)[0]
        if key.split(".", 1)[0] in exclude:
            continue
        entries.append(f"{entry[:-1]}; {notes[key]})" if key in notes else entry)
    lines, line = [], []
    for entry in entries:
        if line and len("  " + ", ".join(line + [entry])) > width:
            lines.append("  " + ", ".join(line) + ",")
            line = []
        line.append(entry)
    lines.append("  " + ", ".join(line))
    return "\n".join(lines)
