"""What the planner costs the engine: one full re-plan, and the bookkeeping of every step.

    python -m benchmarks.replan_cost [--out results/replan_cost.json] [--steps 4096] [--repeats 7]

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

Also each as a fraction of the synthetic steps' median time (per step, and a re-plan spread over
``replan_interval`` = 16 steps): what the planner adds to a step. Prints one JSON line and writes it
(with provenance) to --out, and a PNG of those fractions. No engine, no torch: seconds on a CPU.
Flags: benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from benchmarks.common import add_common_args, int_list, out_path, plot_path, provenance, write_json
from verl_specrollout.planner.planner import Planner
from verl_specrollout.progress import Progress

MAX_K = 4
ZERO_K_PASSES = 1  # a model drafter: K = 0 still runs one draft pass
REPLAN_INTERVAL = 16  # the planner's default: tick() re-plans every this many steps


def step_seconds(tokens: int, requests: int, passes: int) -> float:
    """Synthetic step time: cheap tokens below a 256-token knee, 10x dearer above it."""
    return (5e-3 + 2e-5 * tokens + 5e-6 * requests + 2e-4 * max(0, tokens - 256)
            + passes * (1.7e-3 + 1e-5 * requests))


def synthetic_steps(max_batch: int, n_steps: int, seed: int = 0, max_k: int = MAX_K):
    """(batch size, K, seconds, per-request (drafted, accepted) pairs) for n_steps decode steps."""
    rnd = random.Random(seed)
    steps = []
    batch = max_batch
    while len(steps) < n_steps:
        # Rollouts finish a few requests per step, faster near the end of the long tail.
        batch = max_batch if batch <= 1 else max(1, batch - rnd.randint(0, max(1, batch // 40)))
        planned = max_k if batch <= 8 else min(max_k, 2) if batch <= 64 else min(max_k, 1) if batch <= 256 else 0
        k = min(max_k, max(0, planned + rnd.choice((-1, 0, 0, 0, 0, 1))))
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


def measure(max_batch: int, n_steps: int, repeats: int, max_k: int = MAX_K) -> dict:
    # replan_interval beyond the run: every tick() is a step between re-plans; replan() is timed apart.
    planner = Planner(max_k=max_k, max_batch=max_batch, zero_k_passes=ZERO_K_PASSES,
                      replan_interval=10 * n_steps, overhead_budget=None)
    steps = synthetic_steps(max_batch, n_steps, max_k=max_k)
    costs = feed(planner, steps)
    for _ in range(len(planner.explore_ks)):  # past the cold start (at most one re-plan per exploration K)
        planner.replan()
    big = [c for c, s in zip(costs, steps) if s[0] >= 256]
    step_s = statistics.median(s[2] for s in steps)
    replan_s = timed(planner.replan, repeats)
    return {
        "max_batch": max_batch,
        "steps": n_steps,
        "buckets": len(planner.cost.buckets()),
        "replan_ms": 1e3 * replan_s,
        "fit_ms": 1e3 * timed(planner.cost.fit, repeats),
        "plan_ms": 1e3 * timed(lambda: planner.plan(current=planner.lookup()), repeats),
        "observe_us": 1e6 * statistics.median(costs),
        "observe_us_batch_ge_256": 1e6 * statistics.median(big) if big else None,
        "median_step_ms": 1e3 * step_s,
        "observe_over_step": statistics.median(costs) / step_s,
        "replan_over_interval": replan_s / (REPLAN_INTERVAL * step_s),
    }


def plot(result: dict, path: str) -> None:
    """The planner's work as a fraction of a (synthetic) engine step, per max_batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    xs = range(len(rows))
    ax.bar([x - width / 2 for x in xs], [100 * r["observe_over_step"] for r in rows], width,
           label="per-step bookkeeping / step")
    ax.bar([x + width / 2 for x in xs], [100 * r["replan_over_interval"] for r in rows], width,
           label=f"one re-plan / {REPLAN_INTERVAL} steps")
    ax.set_xticks(list(xs), [f"max_batch {r['max_batch']}" for r in rows])
    ax.set_ylabel("% of the engine's step time")
    ax.set_title(f"planner cost on {rows[0]['steps']} synthetic decode steps (median step "
                 f"{rows[0]['median_step_ms']:.1f} ms)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "replan_cost", engine=False, max_k=MAX_K, batch_sizes="1024,256", repeats=7)
    ap.add_argument("--steps", type=int, default=4096, help="synthetic steps fed (the cost window is 4096)")
    args = ap.parse_args(argv)
    batches = int_list(args.batch_sizes, "--batch-sizes")
    progress = Progress(len(batches), "replan_cost", unit="max_batch")
    rows = []
    for mb in batches:
        rows.append(measure(mb, args.steps, args.repeats, args.max_k))
        progress.update(note=f"max_batch {mb}")
    result = {"max_k": args.max_k, "results": rows}
    print(json.dumps(result))
    out = out_path(args)
    write_json(out, {"provenance": provenance(args), **result})
    png = plot_path(args)
    if png:
        plot(result, png)
    print(f"[replan_cost] wrote {out}" + (f" and {png}" if png else ""), flush=True)
    return result


if __name__ == "__main__":
    main()
