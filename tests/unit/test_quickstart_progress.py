"""The quickstart echoes each veRL step as it lands in veRL's metrics log, and draws the RL plot."""

import json

from verl_specrollout.testing import quickstart
from verl_specrollout.testing.rl_plot import plot, read_steps, rollout_ratio, series


def _line(step, **data):
    return json.dumps({"step": step, "data": data}) + "\n"


def test_follower_echoes_steps_with_i_of_n(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quickstart._MetricsFollower, "POLL_S", 0.01)
    path = tmp_path / "metrics.jsonl"
    path.write_text(_line(9, **{"timing_s/gen": 1.0}))  # a previous run's log: removed, never echoed
    with quickstart._MetricsFollower(str(path), "GRPO spec", 2):
        with open(path, "a") as f:
            f.write(_line(1, **{"timing_s/gen": 2.5, "timing_s/step": 9.0, "critic/score/mean": 0.25,
                                "specrollout/mean_acceptance_length": 2.31, "specrollout/mean_k": 3.0,
                                "specrollout/draft_version": 1}))
            f.write(_line(2, **{"timing_s/gen": 2.0})[:-5])  # torn: the writer is mid-line
            f.flush()
            f.write(_line(2, **{"timing_s/gen": 2.0})[-5:])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[GRPO spec]")]
    assert len(lines) == 2
    assert lines[0].startswith("[GRPO spec] 1/2 50%") and "ETA" in lines[0]
    assert "rollout 2.50s step 9.00s reward 0.250 acc.len 2.31 K 3.00 draft v1" in lines[0]
    assert lines[1].startswith("[GRPO spec] 2/2 100%") and "rollout 2.00s step -s reward -" in lines[1]
    assert "acc.len" not in lines[1]  # a plain run's step has no speculative metrics


def test_rl_plot_reads_both_runs_and_writes_a_png(tmp_path):
    spec, plain = tmp_path / "spec", tmp_path / "plain"
    spec.mkdir(), plain.mkdir()
    (spec / "metrics.jsonl").write_text(
        "".join(_line(s, **{"timing_s/gen": 3.0, "rollout/spec_accept_length": 1.5 + s,
                            "specrollout/mean_k": 2.0, "specrollout/draft_version": s}) for s in (2, 1))
        + '{"step": 3, "da')  # torn last line of a run still writing
    (plain / "metrics.jsonl").write_text(_line(1, **{"timing_s/gen": 2.0}) + _line(2, **{"timing_s/gen": 4.0}))
    steps = read_steps(str(spec))
    assert rollout_ratio(steps, read_steps(str(plain))) == ([2], [0.75])  # step 1 (start-up) left out
    assert [s["step"] for s in steps] == [1, 2]
    assert series(steps, ("specrollout/mean_acceptance_length", "rollout/spec_accept_length")) == ([1, 2], [2.5, 3.5])
    out = plot(steps, read_steps(str(plain)), str(tmp_path / "rl.png"))
    assert (tmp_path / "rl.png").stat().st_size > 10_000 and out.endswith("rl.png")
