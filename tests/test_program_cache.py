"""The experiment's shared program cache releases compiled programs when too many are alive."""

from __future__ import annotations

from deft_jax.methods import common
from deft_jax.methods.common import ProgramCache


class FakeTuner:
    """Stands in for FineTuner: `compiles` is set by the test, nothing is compiled."""

    def __init__(self, spec, cfg, learning_rate=None, epochs=None, tx=None):
        self.compiles = 0


def test_program_cache_releases_programs_over_the_limit_and_keeps_counting_compiles(monkeypatch):
    monkeypatch.setattr(common, "FineTuner", FakeTuner)
    spec, cfg = object(), "finetune config"
    cache = ProgramCache()
    a, b = cache.tuner(spec, cfg, learning_rate=0.1), cache.tuner(spec, cfg, learning_rate=0.2)
    a.compiles, b.compiles = 3, 4
    cache.programs["jitted"] = object()
    assert not cache.release_if_over(7)
    assert cache.compiles() == 7
    assert cache.tuner(spec, cfg, learning_rate=0.1) is a  # kept: the same tuner again
    assert cache.release_if_over(6)
    assert cache.programs == {}
    assert cache.compiles() == 7  # released compiles still count
    c = cache.tuner(spec, cfg, learning_rate=0.1)
    assert c is not a  # released: a fresh tuner, which compiles again
    c.compiles = 2
    assert cache.compiles() == 9
