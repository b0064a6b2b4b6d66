"""A GRPO-shaped rollout timed end to end: many prompts x G samples, heavy-tailed lengths.

    python -m benchmarks.grpo_rollout [--testbed regime] [--prompts 2 --group 8 --ks 1,2,4] [--out results/grpo.json]
    python -m benchmarks.grpo_rollout --target DIR --draft DIR --method eagle3 --prompts-file p.jsonl

All P*G requests are submitted at once, so the engine starts compute-bound with P*G running
sequences and ends in a long tail of a few. Compares plain decoding, every single static K
(the best one is the baseline to beat), a vLLM-style hand-written batch-size -> K table, and
the adaptive planner; interleaved repeats inside one speculative engine, medians reported. Writes
JSON (with provenance), a PNG of each policy's tokens/s over plain and over the best static K, and
``<out>.timeline.png`` (running requests and K over the rollout). Flags: benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import math
import time

from benchmarks.common import (add_common_args, engine_settings, load_prompts, make_engines, median, model_pair,
                               out_path, plot_path, provenance, run_policy, static_ks, write_json)
from verl_specrollout.progress import Progress

# The kind of table a user writes by hand for vLLM's num_speculative_tokens_per_batch_size.
HAND_TABLE = [[1, 4, 4], [5, 16, 2], [17, 4096, 1]]


def heavy_tail_requests(prompts, group, max_tokens, temperature, seed=0):
    """P*G requests whose lengths follow a lognormal (median max_tokens/6, sigma 0.9) capped at
    max_tokens: most samples finish early, a few run to the cap -- the long tail of a GRPO rollout."""
    import random

    from vllm import SamplingParams

    rnd = random.Random(seed)
    reqs, params = [], []
    for p in prompts:
        for _ in range(group):
            n = int(min(max_tokens, max(4, rnd.lognormvariate(math.log(max_tokens / 6), 0.9))))
            reqs.append(p)
            params.append(SamplingParams(temperature=temperature, max_tokens=n, ignore_eos=True))
    return reqs, params


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "grpo_rollout", max_k=4, max_tokens=256, repeats=3)
    ap.add_argument("--method", default="eagle3")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--ks", default=None, help="static K's timed, comma-separated (default 1..--max-k)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--verify-budget", action="store_true",
                    help="also time adaptive with planner.verify_budget=auto (policy adaptive-vb)")
    ap.add_argument("--lengths", choices=("heavy-tail", "natural"), default="heavy-tail",
                    help="heavy-tail: each sample decodes a fixed, seeded length (lognormal, capped at "
                         "--max-tokens; ignore_eos) so every policy runs the same workload; natural: stop at EOS")
    return ap.parse_args(argv)


TIMELINE_POLICIES = ("adaptive", "adaptive-skip0", "table", "static-1")


def time_policies(policies, engines, prompts, params, max_bs, hand, repeats, timelines=None) -> dict:
    """Per policy: lists of seconds, tokens and acceptance length, policies interleaved per repeat.
    `timelines`, when a dict, gets each speculative policy's (seconds, running requests, K) per
    step of its last repeat."""
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    plain, spec, sched = engines
    runs = {p: {"seconds": [], "tokens": [], "acceptance": []} for p in policies}
    progress = Progress(repeats * len(policies), "grpo_rollout", unit="run")
    for rep in range(repeats):
        for p in policies:
            record = timelines is not None and rep == repeats - 1 and p in TIMELINE_POLICIES
            sched.record_timeline(record)
            c0 = read_counters(spec)
            sec, n = run_policy(p, plain, spec, sched, prompts, params, max_bs, hand)
            steps = sched.record_timeline(False)
            if record and steps:
                t0 = steps[0][0]
                timelines[p] = [[round(t - t0, 4), b, k] for t, b, k in steps]
            d = read_counters(spec) - c0
            runs[p]["seconds"].append(sec)
            runs[p]["tokens"].append(n)
            runs[p]["acceptance"].append(d.mean_acceptance_length)
            print(f"  rep {rep} {p:14s} {sec:7.2f}s {n / sec:8.1f} tok/s  acceptance length "
                  f"{d.mean_acceptance_length:.2f} ({d.num_drafts} drafts)", flush=True)
            progress.update()
    return runs


def summarise(runs: dict) -> list:
    results = []
    for p, r in runs.items():
        tps = median([n / s for n, s in zip(r["tokens"], r["seconds"])])
        results.append({"policy": "static-K" if p.startswith("static") else p,
                        "k": int(p.split("-")[1]) if p.startswith("static") else None,
                        "tokens_per_s": round(tps, 2), "seconds": round(median(r["seconds"]), 3),
                        "mean_acceptance_length": round(median(r["acceptance"]), 3)})
    return results


def ratios_of(results: list) -> dict:
    by = {(r["policy"], r["k"]): r for r in results}
    best = max((r for r in results if r["policy"] == "static-K" and r["k"] >= 1), key=lambda r: r["tokens_per_s"])
    plain, table = by[("plain", None)], by[("table", None)]
    ratios = {"best_static_k": best["k"],
              "best_static_over_plain": round(best["tokens_per_s"] / plain["tokens_per_s"], 3),
              "spec_k0_over_plain": round(by[("static-K", 0)]["tokens_per_s"] / plain["tokens_per_s"], 3)}
    for name in ("adaptive", "adaptive-skip0", "adaptive-vb"):
        if (name, None) not in by:
            continue
        ad, key = by[(name, None)], name.replace("-", "_")
        ratios[f"{key}_over_best_static"] = round(ad["tokens_per_s"] / best["tokens_per_s"], 3)
        ratios[f"{key}_over_plain"] = round(ad["tokens_per_s"] / plain["tokens_per_s"], 3)
        ratios[f"{key}_over_table"] = round(ad["tokens_per_s"] / table["tokens_per_s"], 3)
    return ratios


def main(argv=None):
    args = parse_args(argv)
    from vllm import SamplingParams

    out = out_path(args)
    ks = static_ks(args)
    pair = model_pair(args)
    prompts = load_prompts(pair, args.prompts, seed=4242)
    max_bs = max(256, args.prompts * args.group)
    engines = make_engines(pair, args.method, max(ks), max_bs, args.draft_sampling, dtype=args.dtype,
                           **engine_settings(args))
    plain, spec, sched = engines
    hand = [[lo, min(hi, max_bs), min(k, max(ks))] for lo, hi, k in HAND_TABLE if lo <= max_bs]
    if args.lengths == "natural":
        params = SamplingParams(n=args.group, temperature=args.temperature, max_tokens=args.max_tokens)
    else:  # one request per sample, each with its own length: the same tail shape for every policy
        prompts, params = heavy_tail_requests(prompts, args.group, args.max_tokens, args.temperature)

    # Warm-up: compile paths and give the planner its cold-start exploration.
    for p in ("adaptive", "adaptive-skip0") + (("adaptive-vb",) if args.verify_budget else ()):
        run_policy(p, plain, spec, sched, prompts, params, max_bs)
    plain.generate(prompts[:4], params[:4] if isinstance(params, list) else params, use_tqdm=False)

    # static-0: speculation on, nothing drafted; adaptive-skip0: no draft pass at K=0 steps.
    policies = ["plain", "static-0"] + [f"static-{k}" for k in ks] + ["table", "adaptive", "adaptive-skip0"]
    if args.verify_budget:  # adaptive-vb: the planner plus per-request draft trimming (planner.verify_budget=auto)
        policies.append("adaptive-vb")
    t_start = time.perf_counter()
    timelines = {}
    results = summarise(time_policies(policies, engines, prompts, params, max_bs, hand, args.repeats, timelines))
    ratios = ratios_of(results)
    for k, v in ratios.items():
        print(f"{k}: {v}")
    testbed = None if args.target else args.testbed
    write_json(out, {"benchmark": "grpo_rollout", "provenance": provenance(args, pair), "testbed": testbed,
                     "method": args.method, "draft_sampling": args.draft_sampling, "max_k": max(ks), "ks": ks,
                     "prompts": args.prompts, "group": args.group, "max_tokens": args.max_tokens,
                     "temperature": args.temperature, "lengths": args.lengths, "hand_table": hand,
                     "seconds_total": round(time.perf_counter() - t_start, 1),
                     "ratios": ratios, "planner_table": sched.planner.rows(), "results": results,
                     "timelines": timelines})
    title = f"{args.prompts} x {args.group} requests, {testbed or args.target}"
    png, timeline_png = plot_path(args), plot_path(args, ".timeline")
    if png:
        plot_ratios(results, png, title)
        plot_timelines(timelines, timeline_png, title)
    print(f"[grpo_rollout] wrote {out}" + (f", {png} and {timeline_png}" if png else ""), flush=True)
    return ratios


def plot_ratios(results: list, path: str, title: str) -> None:
    """Each policy's tokens/s over plain decoding and over the best single static K (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = [r["policy"] if r["k"] is None else f"K={r['k']}" for r in results]
    by = {(r["policy"], r["k"]): r["tokens_per_s"] for r in results}
    plain = by[("plain", None)]
    best = max(v for (p, k), v in by.items() if p == "static-K" and k and k >= 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    for ax, base, label in ((axes[0], plain, "tokens/s over plain decoding"),
                            (axes[1], best, "tokens/s over the best static K")):
        vals = [r["tokens_per_s"] / base for r in results]
        colors = ["tab:red" if r["policy"].startswith("adaptive") else "tab:gray" if r["policy"] == "plain"
                  else "tab:blue" for r in results]
        ax.bar(range(len(vals)), vals, color=colors)
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xticks(range(len(vals)), name, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label)
    fig.suptitle(f"GRPO-shaped rollout: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timelines(timelines: dict, path: str, title: str) -> None:
    """Running requests and K per step over wall time, one line per policy (the last repeat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for name, steps in timelines.items():
        t = [s[0] for s in steps]
        top.plot(t, [s[1] for s in steps], label=name, lw=1.2)
        bottom.step(t, [s[2] for s in steps], where="post", label=name, lw=1.0, alpha=0.8)
    top.set_ylabel("running requests")
    top.set_yscale("log")
    bottom.set_ylabel("K (draft tokens)")
    bottom.set_xlabel("seconds into the rollout")
    top.set_title(f"GRPO-shaped rollout: {title}")
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
