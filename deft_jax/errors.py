"""User-facing errors: one line, non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the user's input (path, data, config, weights), not a bug."""


def exit_on_user_error(main):
    """Decorator for CLI entry points: print `error: <message>` and exit 2 on UserError."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: completed generations are saved; continue with --resume RUN_DIR",
                  file=sys.stderr)
            sys.exit(130)

    return wrapper
