"""Multi-process runs: `jax.distributed` set-up and who writes the run directory.

Every process runs the same search (the DE is deterministic given the seed, and fitness
from the sharded population program is gathered to every process), so the processes
stay in lock-step; only process 0 writes files and logs.

    python -m deft_jax.search ... --coordinator HOST:PORT --num-processes N --process-id I

`initialize` must run before any JAX computation (it is the first thing the CLI does).
"""

from __future__ import annotations

import jax

from deft_jax.errors import UserError

_initialized = False


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Join a multi-process JAX run; all three arguments or none (single process: no-op).
    Returns whether `jax.distributed` was initialised."""
    global _initialized
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given):
        return False
    if not all(given):
        raise UserError("multi-process runs need all of --coordinator HOST:PORT, "
                        "--num-processes N and --process-id I (or none of them)")
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1:
        raise UserError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if _initialized:
        return True
    # CPU processes exchange data through gloo (JAX's default; set explicitly so a
    # different default in another JAX version cannot silently break CPU multi-process).
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # option renamed or removed in another JAX version
        pass
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except RuntimeError as err:  # e.g. called after JAX computations started
        raise UserError(f"cannot join the multi-process run at {coordinator}: {err}") from None
    _initialized = True
    return True


def is_writer() -> bool:
    """Whether this process writes the run directory and logs (process 0)."""
    return jax.process_index() == 0
