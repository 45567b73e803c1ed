"""User-facing errors: one line, non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the user's input (path, data, config, weights), not a bug."""


def exit_on_user_error(main=None, *, on_interrupt: str = "interrupted"):
    """Decorator for CLI entry points: print `error: <message>` and exit 2 on UserError;
    on Ctrl-C print `on_interrupt` (what the command can continue from, if anything) and
    exit 130. Use as `@exit_on_user_error` or `@exit_on_user_error(on_interrupt=...)`."""

    def decorate(entry):
        @functools.wraps(entry)
        def wrapper(*args, **kwargs):
            try:
                return entry(*args, **kwargs)
            except UserError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print(on_interrupt, file=sys.stderr)
                sys.exit(130)

        return wrapper

    return decorate if main is None else decorate(main)
