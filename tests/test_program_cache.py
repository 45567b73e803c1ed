"""The one program cache (`deft_jax.runtime.program_cache`) builds a program once per key
and counts it; the experiment's shared cache releases compiled programs when too many are
alive."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deft_jax.methods import common
from deft_jax.methods.common import ExperimentCache
from deft_jax.runtime.program_cache import ProgramCache


def test_the_program_cache_builds_once_per_key_and_counts_every_build():
    cache = ProgramCache()
    built = []

    def build():
        built.append(1)
        return jax.jit(lambda x: x + 1)

    first = cache.get(("add", 1), build)
    assert cache.compiles == 1 and cache.builds(("add", 1)) == 1
    assert cache.get(("add", 1), build) is first  # a second lookup builds nothing
    assert cache.compiles == 1 and len(built) == 1
    cache.get(("add", 2), build)
    assert cache.compiles == 2 and cache.builds(("add", 2)) == 1 and cache.builds("never") == 0
    cache.clear()
    assert len(cache) == 0 and cache.compiles == 2  # the counter survives a clear
    cache.get(("add", 1), build)
    assert cache.builds(("add", 1)) == 2 and cache.compiles == 3


def test_compiling_ahead_replaces_the_jitted_entry_with_the_program_that_then_runs():
    cache = ProgramCache()
    key = ("double", 3)
    jitted = cache.get(key, lambda: jax.jit(lambda x: 2 * x))
    assert isinstance(jitted, jax.stages.Wrapped) and not cache.is_compiled(key)
    compiled = cache.compile_ahead(key, lambda: None, jax.ShapeDtypeStruct((3,), jnp.float32))
    assert isinstance(compiled, jax.stages.Compiled) and cache.is_compiled(key)
    assert compiled.memory_analysis() is not None
    assert cache.get(key, lambda: None) is compiled  # what runs is what was analysed
    assert cache.compile_ahead(key, lambda: None) is compiled  # compiled once
    assert cache.compiles == 1  # one program, one build
    assert jnp.array_equal(compiled(jnp.ones(3)), 2 * jnp.ones(3))


def test_a_prefetched_program_compiles_in_another_thread_once_and_is_the_one_that_runs():
    import threading

    from deft_jax.runtime.compile_log import CompileLog

    cache = ProgramCache()
    key = ("triple", 4)
    threads = []

    def triple(x):
        threads.append(threading.current_thread().name)  # runs while the program is traced
        return 3 * x

    shape = jax.ShapeDtypeStruct((4,), jnp.float32)
    with CompileLog() as log:
        cache.prefetch(key, lambda: jax.jit(triple), shape)
        cache.prefetch(key, lambda: None, shape)  # already compiling: nothing more
        program = cache.get(key, lambda: None)
    assert isinstance(program, jax.stages.Compiled) and cache.is_compiled(key)
    assert threads and threads[0].startswith("deft_jax-compile")
    assert log.programs()["triple"] == 1 and cache.compiles == 1
    assert cache.compile_ahead(key, lambda: None, shape) is program
    assert jnp.array_equal(program(jnp.ones(4)), 3 * jnp.ones(4))


class FakeTuner:
    """Stands in for FineTuner: `compiles` is set by the test, nothing is compiled."""

    def __init__(self, spec, cfg, learning_rate=None, epochs=None, tx=None):
        self.compiles = 0


def test_experiment_cache_releases_programs_over_the_limit_and_keeps_counting_compiles(monkeypatch):
    monkeypatch.setattr(common, "FineTuner", FakeTuner)
    spec, cfg = object(), "finetune config"
    cache = ExperimentCache()
    a, b = cache.tuner(spec, cfg, learning_rate=0.1), cache.tuner(spec, cfg, learning_rate=0.2)
    a.compiles, b.compiles = 3, 4
    assert not cache.release_if_over(7)
    assert cache.compiles() == 7
    assert cache.tuner(spec, cfg, learning_rate=0.1) is a  # kept: the same tuner again
    cache.programs.get("jitted", lambda: jax.jit(lambda x: x))  # a method's own program
    assert cache.compiles() == 8
    assert cache.release_if_over(6)
    assert len(cache.programs) == 0
    assert cache.compiles() == 8  # released compiles still count
    c = cache.tuner(spec, cfg, learning_rate=0.1)
    assert c is not a  # released: a fresh tuner, which compiles again
    c.compiles = 2
    assert cache.compiles() == 10
