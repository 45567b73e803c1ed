"""The one cache of compiled device programs: key -> program, built on first use.

Every program-holding part of the package (static-mask fine-tunes, inference forwards,
prefix features, population programs and their memory fit, the experiment's methods)
keeps its programs in a `ProgramCache`, so "compiled once, reused" is one mechanism with
one counter: `compiles` (programs built, never reset, not even by `clear`) and
`builds(key)` (how often one key was built: 1 unless the cache was cleared in between).

An entry is either a jitted function (`jax.stages.Wrapped`, compiled by XLA at its first
call for the shapes it gets) or an ahead-of-time `jax.stages.Compiled` (lowered and
compiled for given argument shapes, e.g. to read XLA's memory analysis before running it).
`compile_ahead` turns a key's jitted entry into its `Compiled` in place, so the program
that is analysed is the one that runs; `is_compiled` tells the two apart by type.
`prefetch` does the same in a background thread (one per process: XLA compiles on one
core, so the next program compiles while the current one runs on the others); the first
`get` or `compile_ahead` of the key waits for it.

Not JAX's persistent compilation cache (`deft_jax.runtime.compile_cache`), which keeps
XLA executables on disk across processes; this one lives in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import jax

Program = jax.stages.Wrapped | jax.stages.Compiled

_compiler: ThreadPoolExecutor | None = None
_compiler_lock = threading.Lock()


def _background() -> ThreadPoolExecutor:
    """The process's one background compile thread (started on first use)."""
    global _compiler
    with _compiler_lock:
        if _compiler is None:
            _compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deft_jax-compile")
        return _compiler


class ProgramCache:
    """key -> program (jitted or ahead-of-time compiled), built on first use."""

    def __init__(self):
        self._entries: dict[Hashable, Program] = {}
        self._builds: dict[Hashable, int] = {}
        self._pending: dict[Hashable, Future] = {}  # key -> its Compiled, compiling in the background
        self.compiles = 0  # programs built so far, including those since cleared

    def get(self, key: Hashable, build: Callable[[], Program]) -> Program:
        """The program under `key`; `build()` makes it the first time (counted)."""
        self._settle(key)
        if key not in self._entries:
            self._entries[key] = build()
            self._builds[key] = self._builds.get(key, 0) + 1
            self.compiles += 1
        return self._entries[key]

    def compile_ahead(self, key: Hashable, build: Callable[[], jax.stages.Wrapped],
                      *arg_shapes) -> jax.stages.Compiled:
        """The key's program compiled ahead of time for `arg_shapes` (`jax.ShapeDtypeStruct`s):
        the jitted entry (built first if absent) is lowered and compiled once and replaced by
        its `Compiled`, which later `get`s return."""
        program = self.get(key, build)
        if not self.is_compiled(key):
            program = program.lower(*arg_shapes).compile()
            self._entries[key] = program
        return program

    def prefetch(self, key: Hashable, build: Callable[[], jax.stages.Wrapped], *arg_shapes) -> None:
        """Start `compile_ahead(key, build, *arg_shapes)` in the background thread, unless the
        key is compiled or compiling already. Errors surface at the key's next `get`."""
        if key in self._pending or self.is_compiled(key):
            return
        program = self.get(key, build)
        self._pending[key] = _background().submit(lambda: program.lower(*arg_shapes).compile())

    def _settle(self, key: Hashable) -> None:
        """Wait for the key's background compile, if any, and keep its `Compiled`."""
        future = self._pending.pop(key, None)
        if future is not None:
            self._entries[key] = future.result()

    def is_compiled(self, key: Hashable) -> bool:
        """Whether `key` holds an ahead-of-time `Compiled` (not a jitted function)."""
        return isinstance(self._entries.get(key), jax.stages.Compiled)

    def builds(self, key: Hashable) -> int:
        """How often `key`'s program was built (0: never asked for)."""
        return self._builds.get(key, 0)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every program (the counters keep counting)."""
        for key in list(self._pending):
            self._settle(key)
        self._entries.clear()
