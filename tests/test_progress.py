"""Per-member progress with a search ETA: plain lines off a terminal, a rich bar on one."""

from __future__ import annotations

import io

from deft_jax.progress import SearchProgress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_report_each_member_and_an_eta_from_the_evaluated_members():
    out, clock = io.StringIO(), FakeClock()
    progress = SearchProgress(generations=3, population=2, stream=out, clock=clock)
    assert progress.live is False  # a StringIO is not a terminal
    with progress.generation(0) as gen:
        clock.now += 10
        gen.member_done(0, 0.5)
        clock.now += 20
        gen.member_done(1, 0.75)
    with progress.generation(1) as gen:
        clock.now += 0.01
        gen.member_done(0, 0.75, cached=True)  # a memo hit does not lower the estimate
    lines = out.getvalue().splitlines()
    assert lines[0] == "generation 0/2 member 1/2: fitness 0.5000, search ETA 50s"
    assert lines[1] == "generation 0/2 member 2/2: fitness 0.7500, search ETA 1m00s"
    assert lines[2] == "generation 1/2 member 1/2: fitness 0.7500 (cached), search ETA 45s"
    assert progress.eta_seconds() == 45.0


def test_a_terminal_gets_a_live_bar_that_is_removed_when_the_generation_ends():
    out = io.StringIO()
    progress = SearchProgress(generations=1, population=3, stream=out, live=True)
    with progress.generation(0) as gen:
        for i in range(3):
            gen.member_done(i, 0.1 * i)
    assert "member 1/3" not in out.getvalue()  # no plain lines
    assert progress.done == 3


def test_durations_read_as_seconds_minutes_or_hours():
    assert [format_duration(s) for s in (4.4, 75, 3600 * 2 + 60 * 5)] == ["4s", "1m15s", "2h05m"]
