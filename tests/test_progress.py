"""Per-member progress with a search ETA: plain lines off a terminal, a rich bar on one."""

from __future__ import annotations

import io

from deft_jax.evolution.progress import SearchProgress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_report_each_member_and_an_eta_from_the_trained_members():
    out, clock = io.StringIO(), FakeClock()
    progress = SearchProgress(generations=3, population=2, stream=out, clock=clock)
    assert progress.live is False  # a StringIO is not a terminal
    with progress.generation(0, members=2) as gen:
        clock.now += 10
        gen.advance(1)   # 10 s per member; 1 left here + 2 generations x 2 members
        clock.now += 20
        gen.advance(1)   # 15 s per member; 0 left here + 4
    with progress.generation(1, members=1) as gen:  # one new member, one memo hit
        clock.now += 30
        gen.advance(1)   # 20 s per member; 0 left here + 1 generation x 2
    lines = out.getvalue().splitlines()
    assert lines == ["generation 0/2: 1/2 members trained, search ETA 50s",
                     "generation 0/2: 2/2 members trained, search ETA 1m00s",
                     "generation 1/2: 1/1 members trained, search ETA 40s"]
    assert progress.eta_seconds() == 40.0


def test_a_terminal_gets_a_live_bar_that_is_removed_when_the_generation_ends():
    out = io.StringIO()
    progress = SearchProgress(generations=1, population=3, stream=out, live=True)
    with progress.generation(0, members=3) as gen:
        for _ in range(3):
            gen.advance(1)
    assert "members trained" not in out.getvalue()  # no plain lines
    assert progress.trained == 3


def test_durations_read_as_seconds_minutes_or_hours():
    assert [format_duration(s) for s in (4.4, 75, 3600 * 2 + 60 * 5)] == ["4s", "1m15s", "2h05m"]
