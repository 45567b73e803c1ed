"""Which XLA programs a piece of code compiled, and how long each took, from JAX's own
monitoring events (`jax.monitoring`): tracing to a jaxpr, lowering to MLIR and the XLA
(backend) compile, each reported with the jitted function's name.

    with CompileLog() as log:
        run_search(...)
    log.programs()     # {"run": 3, "forward": 2, ...}: XLA compiles per function
    log.summary()      # per function: programs, backend / trace / lower seconds

Each kind is also measured in CPU seconds of the process ("backend_compile_cpu_s", ...;
XLA compiles on a thread of its own, so not the caller's thread time): on a machine shared
with other jobs wall seconds grow with the load, CPU seconds much less. They are exact when
nothing else of the process runs meanwhile (not with background compiles beside training). A program loaded from JAX's persistent compilation cache still counts as a backend
compile (its seconds are the load's); `cache_hits` counts those. Benchmarks report it and tests count
programs with it: counts are deterministic where seconds are not.
"""

from __future__ import annotations

import threading
import time

import jax.monitoring

TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND = "/jax/core/compile/backend_compile_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"
KINDS = {TRACE: "trace_s", LOWER: "lower_s", BACKEND: "backend_compile_s"}
CPU_KINDS = {k: v.removesuffix("_s") + "_cpu_s" for k, v in KINDS.items()}

_active: list[CompileLog] = []
_lock = threading.Lock()
_registered = False
_started = threading.local()  # event -> [process CPU seconds at its start], innermost last


def _on_start(event: str, value: float, **kwargs) -> None:
    """JAX records a scalar (the wall start time) as each timed compile phase begins."""
    if event in KINDS:
        _started.__dict__.setdefault(event, []).append(time.process_time())


def _on_duration(event: str, duration: float, **kwargs) -> None:
    kind = KINDS.get(event)
    if kind is None:
        return
    starts = _started.__dict__.get(event)
    cpu = time.process_time() - starts.pop() if starts else None
    name = str(kwargs.get("fun_name", "?"))
    with _lock:
        for log in _active:
            log.events.append((name, kind, float(duration)))
            if cpu is not None:
                log.events.append((name, CPU_KINDS[event], cpu))


def _on_event(event: str, **kwargs) -> None:
    if event == CACHE_HIT:
        with _lock:
            for log in _active:
                log.cache_hits += 1


def _register() -> None:
    global _registered
    with _lock:
        if not _registered:  # JAX has no public way to remove a listener: one, for every log
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            jax.monitoring.register_event_listener(_on_event)
            jax.monitoring.register_scalar_listener(_on_start)
            _registered = True


def short_name(fun_name: str) -> str:
    """The jitted function's name without JAX's module prefix ("jit_run" -> "run")."""
    return fun_name.removeprefix("jit_").removeprefix("jit(").removesuffix(")")


class CompileLog:
    """The compile events of every thread while the log is active (a context manager;
    `start`/`stop` for a log that spans calls)."""

    def __init__(self):
        self.events: list[tuple[str, str, float]] = []  # (function, kind, seconds)
        self.cache_hits = 0

    def start(self) -> CompileLog:
        _register()
        with _lock:
            _active.append(self)
        return self

    def stop(self) -> None:
        with _lock:
            if self in _active:
                _active.remove(self)

    def __enter__(self) -> CompileLog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def programs(self) -> dict[str, int]:
        """XLA compiles per function (short name), most first."""
        counts: dict[str, int] = {}
        for name, kind, _ in self.events:
            if kind == "backend_compile_s":
                counts[short_name(name)] = counts.get(short_name(name), 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def total_programs(self) -> int:
        return sum(self.programs().values())

    def seconds(self, kind: str | None = None) -> float:
        """Seconds of one kind ("backend_compile_s", "trace_s", "lower_s", or their CPU
        seconds "backend_compile_cpu_s", ...), or the wall seconds of all three (tracing can
        nest: an inner jit traced inside an outer one is counted in both)."""
        return sum(s for _, k, s in self.events if k == kind or (kind is None and k in KINDS.values()))

    def summary(self) -> dict[str, dict]:
        """Per function (short name): programs compiled and seconds per kind, the most
        expensive first."""
        out: dict[str, dict] = {}
        for name, kind, s in self.events:
            row = out.setdefault(short_name(name), {"programs": 0, **{f: 0.0 for f in (
                *KINDS.values(), *CPU_KINDS.values())}})
            row[kind] += s
            row["programs"] += kind == "backend_compile_s"
        rows = {k: {f: round(x, 3) for f, x in v.items()} for k, v in out.items()}
        return dict(sorted(rows.items(), key=lambda kv: -(kv[1]["backend_compile_s"] + kv[1]["lower_s"])))
