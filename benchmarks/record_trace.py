"""Record a step trace across K from a real engine, then replay it through the planner and static K.

    python -m benchmarks.record_trace [--testbed regime --max-k 3 --batch-sizes 1,2,4,8,16] [--out results/trace.jsonl]

The speculative engine (our scheduler, so the planner sees every step) runs each static K in
0..max_k at each concurrency B (B requests of the same length, ignore_eos, so B stays B); the
planner's recorder (Planner.recorder = StepTrace.record) keeps every timed pure-decode step that
verified the K it drafts: its wall seconds and each request's accepted draft tokens. The trace is
written as JSON lines (planner/trace.py) and replayed: a GRPO-shaped rollout (all requests at once,
lognormal lengths) through the planner and every static K, in the trace's recorded seconds.

The seconds are this machine's: on a shared CPU they carry its load (on the project's 2 shared
cores one cell's steps ranged from 5 ms to 2.4 s, and the replay then mostly measures which cells
were lucky), so record on a quiet machine or a GPU before reading anything into the replay.
Writes the trace, ``<out>.replay.json`` (with provenance) and a PNG of each policy's replayed seconds
over the best static K's. Flags: benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from benchmarks.common import (add_common_args, engine_settings, int_list, load_prompts, model_pair, out_path,
                               plot_path, provenance, write_json)
from verl_specrollout.progress import Progress
from verl_specrollout.planner.planner import Planner
from verl_specrollout.planner.trace import PlannerPolicy, StaticPolicy, StepTrace, replay


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "record_trace", max_k=3, batch_sizes="1,2,4,8,16", max_tokens=48)
    ap.add_argument("--method", default="eagle3")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rollouts", type=int, default=4, help="GRPO-shaped rollouts replayed")
    return ap.parse_args(argv)


def record(args) -> StepTrace:
    from vllm import SamplingParams

    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    pair = model_pair(args)
    batches = int_list(args.batch_sizes, "--batch-sizes")
    max_b = max(batches)
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": args.method, "draft_path": pair.draft_for(args.method),
                                       "max_k": args.max_k, "planner": {"mode": "adaptive", "max_batch": max_b}})
    llm = make_llm(pair.target_dir, cfg, max_num_seqs=max_b, max_num_batched_tokens=max(2048, max_b * (args.max_k + 1)),
                   dtype=args.dtype, **engine_settings(args))
    sched = compat.in_process_scheduler(llm)
    prompts = load_prompts(pair, max_b)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, ignore_eos=True)
    trace = StepTrace(args.max_k)
    progress = Progress((args.max_k + 1) * len(batches), "record_trace", unit="cell")
    for k in range(args.max_k + 1):
        sched.set_policy("static", [[1, max_b, k]])
        for b in batches:
            sched.planner.recorder = None
            llm.generate(prompts[:b], params, use_tqdm=False)  # warm-up: shapes, caches
            sched.planner.recorder = trace.record
            llm.generate(prompts[:b], params, use_tqdm=False)
            progress.update(note=f"K={k} B={b}")
    sched.planner.recorder = None
    return trace, pair


def replay_summary(trace: StepTrace, rollouts: int, seed: int = 0, min_steps: int = 8) -> dict:
    """Seconds of `rollouts` GRPO-shaped rollouts (max B requests at once) per policy, over the
    cells recorded for at least min_steps steps (batch sizes between them read the nearest)."""
    trace = trace.well_sampled(min_steps)
    if not trace.cells:
        raise SystemExit(f"record_trace: no (B, K) cell has {min_steps} recorded decode steps to replay; "
                         "raise --max-tokens (each run decodes that many steps)")
    max_b = max(trace.batch_sizes())
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(40), 0.9, max_b), 4, 256).astype(int)
    policies = {f"static-{k}": StaticPolicy(k) for k in range(trace.max_k + 1)}
    planner = Planner(max_k=trace.max_k, max_batch=max_b, zero_k_passes=1, overhead_budget=None)
    policies["adaptive"] = PlannerPolicy(planner)
    seconds = {}
    for name, policy in policies.items():
        cursor = {}
        seconds[name] = sum(replay(trace, policy, lengths, seed=i, cursor=cursor).seconds for i in range(rollouts))
    best = min((s, p) for p, s in seconds.items() if p != "adaptive")
    hindsight = {b: trace.best_k(b) for b in trace.batch_sizes()}
    plan = planner.planned()
    return {"seconds": seconds, "best_static": best[1], "adaptive_over_best_static": best[0] / seconds["adaptive"],
            "best_k_in_hindsight": hindsight, "planned_k": {b: plan[b] for b in hindsight},
            "cells": {f"{b},{k}": len(v) for (b, k), v in sorted(trace.cells.items())}}


def plot(summary: dict, path: str) -> None:
    """Replayed seconds of each policy over the best static K's (below 1: faster than it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = summary["seconds"]
    best = secs[summary["best_static"]]
    names = list(secs)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(names)), [secs[n] / best for n in names],
           color=["tab:red" if n == "adaptive" else "tab:blue" for n in names])
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"replayed seconds / {summary['best_static']}'s")
    ax.set_title("GRPO-shaped rollouts replayed through the recorded trace", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # the trace is JSON lines; the replay summary goes next to it
    out = args.out or os.path.splitext(out_path(args))[0] + ".jsonl"
    trace, pair = record(args)
    trace.save(out)
    summary = replay_summary(trace, args.rollouts)
    print(json.dumps(summary))
    write_json(out + ".replay.json", {"provenance": provenance(args, pair), **summary})
    png = plot_path(args)
    if png:
        plot(summary, png)
    print(f"[record_trace] wrote {out}, {out}.replay.json" + (f" and {png}" if png else ""), flush=True)
    return summary


if __name__ == "__main__":
    main()
