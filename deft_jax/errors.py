"""User-facing errors: one line, non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading


class UserError(Exception):
    """A problem with the user's input (path, data, config, weights), not a bug."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends before it kills a preempted job), raised
    like Ctrl-C so that a command stops the same way and says how to continue."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM raises `Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_on_user_error(main=None, *, on_interrupt: str = "interrupted"):
    """Decorator for CLI entry points: print `error: <message>` and exit 2 on UserError;
    on Ctrl-C or SIGTERM print `on_interrupt` (what the command can continue from, if
    anything) and exit 130 (Ctrl-C) or 143 (SIGTERM). Use as `@exit_on_user_error` or
    `@exit_on_user_error(on_interrupt=...)`."""

    def decorate(entry):
        @functools.wraps(entry)
        def wrapper(*args, **kwargs):
            try:
                with sigterm_as_interrupt():
                    return entry(*args, **kwargs)
            except UserError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt as err:
                print(on_interrupt, file=sys.stderr)
                sys.exit(143 if isinstance(err, Terminated) else 130)

        return wrapper

    return decorate if main is None else decorate(main)
