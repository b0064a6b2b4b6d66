"""Hindsight replay: the planner against every static K on recorded step traces, in simulated time.

Each regime is an engine with known step costs and acceptance, recorded ACROSS K (every K at
every batch size the workload visits: planner/trace.py). The same workload is replayed through the
planner (its clock on simulated time, fed as the scheduler feeds it) and through each static K,
each step charged the next recorded step of the cell the policy chose. Checked per regime:

* the planner's total time, cold start and exploration included, is at least 0.97x as fast as the
  best static K's;
* its final plan picks, at every batch size it ran for a while, a K whose throughput in hindsight
  (the recorded cells) is within a few % of the best K in hindsight.

No wall-clock timing: every second here is a recorded (simulated) second.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.gpu_scale_sim import ALPHA, GPUS, MODELS, Hardware, rollout_lengths
from verl_specrollout.planner import Planner
from verl_specrollout.planner.decision import plan_grid
from verl_specrollout.planner.trace import PlannerPolicy, StaticPolicy, StepTrace, replay, synthetic_trace


def knee(b, k, passes_at_k0=1):
    """Memory-bound below 256 verified tokens, ten times dearer per token above (test_planner's)."""
    tokens = b * (1 + k)
    return 5e-3 + 2e-5 * tokens + 5e-6 * b + 2e-4 * max(0, tokens - 256) + max(k, passes_at_k0) * (1.7e-3 + 1e-5 * b)


def cpu_pair(b, k):
    """Shaped on the medium testbed's plain and K = 0 steps on 2 CPU cores (docs/benchmarks.md: 14,
    15, 19, 41, 71 ms at B = 1, 2, 4, 16, 64): every verified token costs, the dearest at small
    batches (a concave surface, which a linear cost model prices wrong at small B), and a draft
    pass ~3 ms, one even at K = 0."""
    return 11e-3 + 3e-3 * (b * (1 + k)) ** 0.75 + max(k, 1) * (2.8e-3 + 0.13e-3 * b)


H200_7B = Hardware(MODELS["7B"], GPUS["H200"])


def roofline(b, k):
    """benchmarks/gpu_scale_sim's 7B on an H200 at 600 tokens of context per request; no K = 0 pass."""
    return H200_7B.step(b, k, b * (256 + 600))


def _grpo_lengths(n, median, cap, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), 0.9, n), 4, cap).astype(int)


# name: (cost, alphas(B), batch sizes recorded, max_k, K=0 passes, lengths, concurrency, rollouts)
REGIMES = {
    # B = 4 throughout (4 running, 64 queued): verification nearly free, long drafts pay.
    "memory_bound_b4": (knee, lambda b: (0.8, 0.75, 0.7, 0.65), range(1, 5), 4, 1, [200] * 64, 4, 1),
    # B = 512: every K > 0 verifies past the knee; K = 0 is best, exploring K > 1 is what hurts.
    "compute_bound_b512": (knee, lambda b: (0.8, 0.75, 0.7, 0.65), range(1, 513), 4, 1, [100] * 2048, 512, 1),
    # GRPO: 1024 requests at once, batch decays to 1; gpu_scale_sim's roofline and acceptance, two rollouts.
    "grpo_1024_roofline": (roofline, lambda b: ALPHA, sorted(set(range(1, 33)) | set(plan_grid(1024))), 8, 0,
                           rollout_lengths(128, 8, 2048, 0), None, 2),
    # GRPO, 16 prompts x G=8 on a CPU-shaped pair (T=1): K = 1 best at every batch size, four rollouts.
    "grpo_128_cpu_pair": (cpu_pair, lambda b: (0.55, 0.45, 0.4, 0.35), range(1, 129), 4, 1,
                          _grpo_lengths(128, 40, 256), None, 4),
    # GRPO whose tail (B < 8: the longest responses, late in them) accepts far less than its start.
    "grpo_128_tail_accepts_less": (knee, lambda b: (0.4, 0.3, 0.25, 0.2) if b < 8 else (0.8, 0.75, 0.7, 0.65),
                                   range(1, 129), 4, 1, _grpo_lengths(128, 40, 256), None, 4),
}


def _replay(trace, policy, lengths, concurrency, rollouts):
    seconds, visits, cursor = 0.0, {}, {}
    for i in range(rollouts):
        r = replay(trace, policy, lengths, concurrency, seed=i, cursor=cursor)
        seconds += r.seconds
        for b, _ in r.ks:
            visits[b] = visits.get(b, 0) + 1
    return seconds, visits


@pytest.fixture(scope="module", params=sorted(REGIMES))
def regime(request):
    cost, alphas, batch_sizes, max_k, passes_at_k0, lengths, concurrency, rollouts = REGIMES[request.param]
    trace = synthetic_trace(cost, alphas, list(batch_sizes), max_k, steps_per_cell=8, requests_per_cell=2048, seed=1)
    static = {k: _replay(trace, StaticPolicy(k), lengths, concurrency, rollouts)[0] for k in range(max_k + 1)}
    planner = Planner(max_k=max_k, max_batch=max(batch_sizes), zero_k_passes=passes_at_k0, overhead_budget=None)
    seconds, visits = _replay(trace, PlannerPolicy(planner), lengths, concurrency, rollouts)
    return request.param, trace, static, planner, seconds, visits


def test_adaptive_total_time_within_3_percent_of_the_best_static_k(regime):
    name, _, static, _, seconds, _ = regime
    best = min(static, key=static.get)
    assert static[best] / seconds >= 0.97, (name, f"best static K={best}", static[best], seconds)


def test_final_plan_near_the_best_k_in_hindsight_where_it_ran(regime):
    name, trace, _, planner, _, visits = regime
    plan = planner.planned()
    checked, worst = 0, (1.0, ())
    for b, n in sorted(visits.items()):
        if n < 2 * planner.replan_interval or (b, plan[b]) not in trace.cells:
            continue  # a batch size it only passed through, or (nearest-recorded) not a cell
        ratio = trace.throughput(b, plan[b]) / trace.throughput(b, trace.best_k(b))
        worst = min(worst, (ratio, (b, plan[b], trace.best_k(b))))
        checked += 1
    assert checked >= 1, name
    assert worst[0] >= 0.95, (name, "hindsight throughput of the planned K / best K, at (B, K, best K):", worst)


def test_trace_round_trips_through_json_lines(tmp_path):
    trace = synthetic_trace(knee, lambda b: (0.7, 0.6), [1, 3], 2, steps_per_cell=2, seed=4)
    path = str(tmp_path / "trace.jsonl")
    trace.save(path)
    back = StepTrace.load(path)
    assert back.max_k == 2 and len(back) == len(trace) == 12
    for cell, steps in trace.cells.items():
        assert [(s, h.tolist()) for s, h in back.cells[cell]] == [(s, h.tolist()) for s, h in steps]
        assert back.throughput(*cell) == pytest.approx(trace.throughput(*cell))
    assert len(back.well_sampled(2).cells) == 6 and not back.well_sampled(3).cells


def test_recorder_hook_records_steady_steps_as_cells():
    """Planner.recorder gets every timed step that verified the K it drafts, with its requests'
    accepted counts (how a trace is recorded from a live engine's scheduler)."""
    trace = StepTrace(3)
    p = Planner(max_k=3, max_batch=8, zero_k_passes=1)
    p.recorder = trace.record
    p.observe_step(4, 4 * 3, 2, None)
    p.observe_time(4, 4 * 3, 2, 0.02)
    p.observe_drafts([(2, 0), (2, 2), (2, 1)])  # the 4th request verified nothing (counts as 0)
    p.observe_step(4, 4 * 3, 1, None)  # verified K=2, drafts K=1: a transition, not a cell
    p.observe_time(4, 4 * 3, 1, 0.02)
    p.observe_drafts([(2, 1)] * 4)
    assert list(trace.cells) == [(4, 2)]
    assert trace.step(4, 2, 0)[1].tolist() == [2, 1, 1]
    assert trace.throughput(4, 2) == pytest.approx((4 + 3) / 0.02)


def test_replay_charges_recorded_steps_and_finishes_every_request():
    """Static K replays are exact bookkeeping: K = 0 commits one token per request-step."""
    trace = synthetic_trace(lambda b, k: 0.01 * b + 0.001 * k, lambda b: (0.5,), [1, 2, 3], 1, steps_per_cell=3)
    r = replay(trace, StaticPolicy(0), [5, 3, 1], concurrency=2)
    # K = 0: request 0 runs 5 steps; 1 runs 3 beside it, then 2 joins for 1 step.
    assert r.steps == 5 and r.tokens == 9
    assert r.ks == [(2, 0)] * 4 + [(1, 0)]
    assert r.seconds == pytest.approx(sum(trace.step(2, 0, i)[0] for i in range(4)) + trace.step(1, 0, 0)[0])
