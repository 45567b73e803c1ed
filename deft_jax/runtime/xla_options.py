"""XLA compile options of the fitness programs (short fine-tunes and their inference).

On CPU a fitness program runs a few dozen steps and its compile costs as much as several
fine-tunes, so it is compiled at XLA's backend optimisation level 1 instead of the default:
measured on ResNet-20 (2-core EPYC, shared), about 25-40% less compile time and the same
step time (convolutions run in library kernels that the level does not touch).

    DEFT_JAX_CPU_OPT_LEVEL=default   XLA's own level (as `jax.jit` without options)
    DEFT_JAX_CPU_OPT_LEVEL=N         level N (0-3)
    (unset)                          1

The search's own small programs (evosax's DE ask and tell, the initial population) run in
microseconds: on CPU they compile at level 0 (`bookkeeping_compiler_options`; DE's ask
compiles in 1.2 s instead of 3.4 s, with bitwise the same genomes). Other backends get
XLA's defaults.
"""

from __future__ import annotations

import os

import jax

from deft_jax.errors import UserError

ENV = "DEFT_JAX_CPU_OPT_LEVEL"
CPU_LEVEL = 1


def fitness_compiler_options() -> dict | None:
    """`compiler_options` for `jax.jit` of a fitness program on this backend (None: XLA's)."""
    if jax.default_backend() != "cpu":
        return None
    setting = os.environ.get(ENV, "").strip().lower()
    if setting == "default":
        return None
    if setting and not (setting.isdigit() and int(setting) <= 3):
        raise UserError(f"{ENV}={setting!r}: expected a level 0-3 or 'default'")
    return {"xla_backend_optimization_level": int(setting) if setting else CPU_LEVEL}


def bookkeeping_compiler_options() -> dict | None:
    """`compiler_options` for programs whose run time does not matter (level 0 on CPU)."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
