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
