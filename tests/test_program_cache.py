"""The experiment's shared program cache releases compiled programs when too many are alive."""

from __future__ import annotations

from deft_jax.methods.common import ProgramCache


class FakeTuner:
    def __init__(self, compiles):
        self.compiles = compiles


def test_program_cache_releases_programs_over_the_limit_and_keeps_counting_compiles():
    cache = ProgramCache()
    cache._tuners = {"a": FakeTuner(3), "b": FakeTuner(4)}
    cache.programs["jitted"] = object()
    assert not cache.release_if_over(7)
    assert cache.compiles() == 7 and len(cache._tuners) == 2
    assert cache.release_if_over(6)
    assert cache._tuners == {} and cache.programs == {}
    assert cache.compiles() == 7  # released compiles still count
    cache._tuners["c"] = FakeTuner(2)
    assert cache.compiles() == 9
