"""Record a step trace across K from a real engine, then replay it through the planner and static K.

    python -m benchmarks.record_trace --out results/testbed_trace.jsonl [--size tiny --max-k 3 --batches 1,2,4,8,16]

The speculative engine (our scheduler, so the planner sees every step) runs each static K in
0..max_k at each concurrency B (B requests of the same length, ignore_eos, so B stays B); the
planner's recorder (Planner.recorder = StepTrace.record) keeps every timed pure-decode step that
verified the K it drafts: its wall seconds and each request's accepted draft tokens. The trace is
written as JSON lines (planner/trace.py) and replayed: a GRPO-shaped rollout (all requests at once,
lognormal lengths) through the planner and every static K, in the trace's recorded seconds.

The seconds are this machine's: on a shared CPU they carry its load (on the project's 2 shared
cores one cell's steps ranged from 5 ms to 2.4 s, and the replay then mostly measures which cells
were lucky), so record on a quiet machine or a GPU before reading anything into the replay.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import add_model_args, load_prompts, model_pair, write_json
from verl_specrollout.planner.planner import Planner
from verl_specrollout.planner.trace import PlannerPolicy, StaticPolicy, StepTrace, replay


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="trace JSON lines; the replay summary goes to <out>.replay.json")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--method", default="eagle3")
    ap.add_argument("--max-k", type=int, default=3)
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--tokens", type=int, default=48, help="tokens per request per run")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rollouts", type=int, default=4, help="GRPO-shaped rollouts replayed")
    add_model_args(ap)
    return ap.parse_args(argv)


def record(args) -> StepTrace:
    from vllm import SamplingParams

    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    pair = model_pair(args)
    batches = [int(b) for b in args.batches.split(",")]
    max_b = max(batches)
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": args.method, "draft_path": pair.draft_for(args.method),
                                       "max_k": args.max_k, "planner": {"mode": "adaptive", "max_batch": max_b}})
    llm = make_llm(pair.target_dir, cfg, max_num_seqs=max_b, max_num_batched_tokens=max(2048, max_b * (args.max_k + 1)),
                   dtype=args.dtype)
    sched = compat.in_process_scheduler(llm)
    prompts = load_prompts(pair, max_b)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.tokens, ignore_eos=True)
    trace = StepTrace(args.max_k)
    for k in range(args.max_k + 1):
        sched.set_policy("static", [[1, max_b, k]])
        for b in batches:
            sched.planner.recorder = None
            llm.generate(prompts[:b], params, use_tqdm=False)  # warm-up: shapes, caches
            sched.planner.recorder = trace.record
            llm.generate(prompts[:b], params, use_tqdm=False)
    sched.planner.recorder = None
    return trace


def replay_summary(trace: StepTrace, rollouts: int, seed: int = 0, min_steps: int = 8) -> dict:
    """Seconds of `rollouts` GRPO-shaped rollouts (max B requests at once) per policy, over the
    cells recorded for at least min_steps steps (batch sizes between them read the nearest)."""
    trace = trace.well_sampled(min_steps)
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    trace = record(args)
    trace.save(args.out)
    summary = replay_summary(trace, args.rollouts)
    print(json.dumps(summary))
    write_json(args.out + ".replay.json", summary)
    return summary


if __name__ == "__main__":
    main()
