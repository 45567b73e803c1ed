"""A persistent XLA compilation cache for the command-line entry points.

A DEFT search compiles its fine-tune programs once per process: per (population size,
first trainable stage) for the gated strategies, per distinct mask for `sequential`. With
JAX's persistent cache a second search of the same model and input shapes (another seed,
a resumed run, an experiment's next invocation, `predict`) loads those programs from disk
instead of compiling them again.

    DEFT_JAX_COMPILE_CACHE=off     no persistent cache
    DEFT_JAX_COMPILE_CACHE=DIR     cache in DIR
    (unset)                        $XDG_CACHE_HOME/deft_jax/xla, else ~/.cache/deft_jax/xla

A cache directory set through JAX itself (JAX_COMPILATION_CACHE_DIR) is left alone. JAX
caches only programs whose compile took at least `jax_persistent_cache_min_compile_time_secs`
(1 s by default). A cache that cannot be created is skipped with a warning, never an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

logger = logging.getLogger(__name__)

ENV = "DEFT_JAX_COMPILE_CACHE"
OFF = ("off", "0", "no", "none", "false")


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deft_jax" / "xla"


def enable() -> Path | None:
    """Point JAX's persistent compilation cache at the configured folder; returns it, or
    None when the cache is off or unavailable; logs one line saying which."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:  # the user configured JAX directly
        path = Path(current)
    else:
        path = Path(setting).expanduser() if setting else default_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            logger.warning(f"warning: compile cache {path} unavailable ({err.strerror}); compiling without it")
            return None
        jax.config.update("jax_compilation_cache_dir", str(path))
    logger.info(f"compile cache: {path} ({ENV}=off disables it)")
    return path
