"""What the planner costs the engine: one full re-plan, and the bookkeeping of every step.

    python -m benchmarks.replan_cost [--out results.json] [--steps 4096] [--repeats 7]

Both run inside vLLM's scheduler, on the engine's critical path. The planner is fed the way
``vllm_adapter/scheduler.py`` feeds it (observe_step, observe_time, observe_drafts, tick) with
synthetic pure-decode steps: a GRPO rollout's batch size shrinking from max_batch to 1 as
requests finish, K around a plan that falls with the batch size plus +-1 probes, step times
from a memory-bound/compute-bound knee model with 3 % noise and the occasional slow step.
The data do not depend on the planner's choices, so runs of different code see the same steps.

Timed (time.perf_counter, median over repeats):

* ``replan_ms``: ``Planner.replan()`` after the cold-start exploration, i.e. what ``tick()``
  runs every ``replan_interval`` steps: a cost-model fit over the whole window plus a plan over
  the batch-size grid. Also split into ``fit_ms`` and ``plan_ms``.
* ``observe_us``: one step's observe_step + observe_time + observe_drafts + a tick that does not
  re-plan; median over steps, and the median at batch sizes >= 256 (acceptance bookkeeping is
  per request).

Prints one JSON line; ``--out`` also writes it to a file. No engine, no torch: seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from verl_specrollout.planner.planner import Planner

MAX_K = 4
ZERO_K_PASSES = 1  # a model drafter: K = 0 still runs one draft pass


def step_seconds(tokens: int, requests: int, passes: int) -> float:
    """Synthetic step time: cheap tokens below a 256-token knee, 10x dearer above it."""
    return (5e-3 + 2e-5 * tokens + 5e-6 * requests + 2e-4 * max(0, tokens - 256)
            + passes * (1.7e-3 + 1e-5 * requests))


def synthetic_steps(max_batch: int, n_steps: int, seed: int = 0):
    """(batch size, K, seconds, per-request (drafted, accepted) pairs) for n_steps decode steps."""
    rnd = random.Random(seed)
    steps = []
    batch = max_batch
    while len(steps) < n_steps:
        # Rollouts finish a few requests per step, faster near the end of the long tail.
        batch = max_batch if batch <= 1 else max(1, batch - rnd.randint(0, max(1, batch // 40)))
        planned = MAX_K if batch <= 8 else 2 if batch <= 64 else 1 if batch <= 256 else 0
        k = min(MAX_K, max(0, planned + rnd.choice((-1, 0, 0, 0, 0, 1))))
        passes = max(k, ZERO_K_PASSES) if k else ZERO_K_PASSES
        seconds = step_seconds(batch * (1 + k), batch, passes) * (1 + 0.03 * rnd.gauss(0, 1))
        if rnd.random() < 0.01:
            seconds *= rnd.uniform(3, 10)  # GC pause, another process
        pairs = [(k, _accepted(0.7, k, rnd)) for _ in range(batch)] if k else []
        steps.append((batch, k, seconds, pairs))
    return steps


def _accepted(alpha: float, k: int, rnd: random.Random) -> int:
    a = 0
    while a < k and rnd.random() < alpha:
        a += 1
    return a


def feed(planner: Planner, steps) -> list:
    """Drive the planner like the scheduler's update_from_output; per-step seconds of that work."""
    costs = []
    for batch, k, seconds, pairs in steps:
        tokens = batch * (1 + k)
        t0 = time.perf_counter()
        planner.observe_step(batch, tokens, k, None)
        planner.observe_time(batch, tokens, k, seconds)
        planner.observe_drafts(pairs)
        planner.tick()
        costs.append(time.perf_counter() - t0)
    return costs


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(max_batch: int, n_steps: int, repeats: int) -> dict:
    # replan_interval beyond the run: every tick() is a step between re-plans; replan() is timed apart.
    planner = Planner(max_k=MAX_K, max_batch=max_batch, zero_k_passes=ZERO_K_PASSES,
                      replan_interval=10 * n_steps, overhead_budget=None)
    steps = synthetic_steps(max_batch, n_steps)
    costs = feed(planner, steps)
    for _ in range(len(planner.explore_ks)):  # past the cold start (at most one re-plan per exploration K)
        planner.replan()
    big = [c for c, s in zip(costs, steps) if s[0] >= 256]
    return {
        "max_batch": max_batch,
        "steps": n_steps,
        "buckets": len(planner.cost.buckets()),
        "replan_ms": 1e3 * timed(planner.replan, repeats),
        "fit_ms": 1e3 * timed(planner.cost.fit, repeats),
        "plan_ms": 1e3 * timed(lambda: planner.plan(current=planner.lookup()), repeats),
        "observe_us": 1e6 * statistics.median(costs),
        "observe_us_batch_ge_256": 1e6 * statistics.median(big) if big else None,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4096, help="synthetic steps fed (the cost window is 4096)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    result = {"max_k": MAX_K, "results": [measure(mb, args.steps, args.repeats) for mb in (1024, 256)]}
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
