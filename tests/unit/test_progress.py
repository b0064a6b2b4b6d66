"""verl_specrollout/progress.py: i/N, elapsed, ETA and rate lines, bounded in number, line-based."""

import io

import pytest

from verl_specrollout.progress import Progress, fmt_duration, stage, track


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_carry_count_elapsed_eta_and_rate():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, "build", every_s=5, stream=out, clock=clock)
    clock.t += 2
    assert p.update(note="loss 1.0")  # the first item always prints
    assert out.getvalue() == "[build] 1/10 10%, 0:02 elapsed, ETA 0:18, 2 s/item loss 1.0\n"
    clock.t += 2
    assert not p.update(note=lambda: 1 / 0)  # 2 s since the last line: quiet, the note is not computed
    clock.t += 4
    assert p.update()  # 6 s since the last line
    assert "3/10 30%, 0:08 elapsed, ETA 0:19" in out.getvalue().splitlines()[-1]
    p.set(9)
    clock.t += 1
    assert p.update()  # the last item always prints, with no ETA
    assert out.getvalue().splitlines()[-1] == "[build] 10/10 100%, 0:09 elapsed, 1.11 item/s"
    assert "\r" not in out.getvalue()


def test_printed_lines_are_bounded_by_the_interval():
    clock, out = Clock(), io.StringIO()
    p = Progress(1000, "loop", every_s=10, stream=out, clock=clock)
    for _ in range(1000):
        clock.t += 0.1  # 100 s in all
        p.update()
    # first, one per 10 s, last
    assert 10 <= len(out.getvalue().splitlines()) <= 12


def test_unknown_total_and_track():
    clock, out = Clock(), io.StringIO()
    p = Progress(None, "stream", every_s=0, stream=out, clock=clock, unit="lines")
    clock.t += 1
    p.update(4)
    assert out.getvalue() == "[stream] 4, 0:01 elapsed, 4 lines/s\n"
    out = io.StringIO()
    assert list(track([1, 2, 3], "t", every_s=0, stream=out)) == [1, 2, 3]
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == ["[t] 1/3 33%", "[t] 2/3 66%", "[t] 3/3 100%"]


def test_stage_line_and_durations(capsys):
    stage(2, 3, "veRL GRPO, spec", "quickstart")
    assert capsys.readouterr().out == "[quickstart] part 2/3: veRL GRPO, spec\n"
    assert fmt_duration(83) == "1:23" and fmt_duration(3725) == "1:02:05"
    assert fmt_duration(None) == "?" and fmt_duration(float("inf")) == "?" and fmt_duration(float("nan")) == "?"


def test_warmup_items_leave_the_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(4, "grpo", every_s=0, stream=out, clock=clock, warmup=1)
    clock.t += 160  # step 1: start-up
    p.update()
    clock.t += 10
    p.update()
    assert out.getvalue().splitlines()[-1] == "[grpo] 2/4 50%, 2:50 elapsed, ETA 0:20, 10 s/item"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="total"):
        Progress(-1, "x")
    with pytest.raises(ValueError, match="every_s"):
        Progress(1, "x", every_s=-1)
