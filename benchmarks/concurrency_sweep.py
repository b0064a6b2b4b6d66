"""Throughput vs live concurrency B for plain decoding, every static K and the adaptive planner.

    python -m benchmarks.concurrency_sweep [--testbed regime] [--batch-sizes 1,4,16,64] [--max-k 4] [--out results/sweep.json]
    python -m benchmarks.concurrency_sweep --target DIR --draft DIR --method eagle3 --prompts-file p.txt

All B requests run the same number of tokens (ignore_eos) so concurrency stays B for the
whole measurement. Policies are interleaved inside one speculative engine (table rewritten
live); "plain" is an engine without speculation. Prints adaptive / best-static and
adaptive / plain per B, writes JSON (with provenance) and a PNG (speed-up over plain vs B; K chosen
vs B). Flags: benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import (add_common_args, engine_settings, int_list, load_prompts, make_engines, median,
                               model_pair, out_path, plot_path, provenance, run_policy, set_k0_skip, static_ks,
                               write_json)
from verl_specrollout.progress import Progress


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "concurrency_sweep", max_k=8, batch_sizes="1,2,4,8,16,32,64,128,256", max_tokens=32,
                    repeats=2)
    ap.add_argument("--method", default="eagle3")
    ap.add_argument("--ks", default=None, help="static K's timed, comma-separated (default 1..--max-k)")
    ap.add_argument("--min-run-tokens", type=int, default=512,
                    help="small B decode more tokens per request so one timed run is not a few ms (cap 256); "
                         "--max-tokens is the least per request")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--warmup-steps", type=int, default=96, help="adaptive warm-up engine steps per B")
    return ap.parse_args(argv)


class Sweep:
    """Engines, prompts and policies of one sweep; ``measure(b)`` times every policy at concurrency b."""

    def __init__(self, args):
        self.args = args
        self.batches = int_list(args.batch_sizes, "--batch-sizes")
        self.ks = static_ks(args)
        self.pair = pair = model_pair(args)
        self.prompts = load_prompts(pair, max(self.batches))
        self.plain, self.spec, self.sched = make_engines(pair, args.method, max(self.ks), max(self.batches),
                                                         args.draft_sampling, dtype=args.dtype, **engine_settings(args))
        # static-0: speculation on, nothing drafted (vLLM still runs one draft pass); adaptive-skip0:
        # the planner with that pass skipped at K=0 (planner.skip_draft_at_k0, vllm_adapter/k0_skip.py).
        self.policies = ["plain", "static-0"] + [f"static-{k}" for k in self.ks] + ["adaptive", "adaptive-skip0"]
        self.chosen_k, self.chosen_k_skip0 = {}, {}
        self.progress = Progress(len(self.batches) * args.repeats * len(self.policies), "concurrency_sweep",
                                 unit="run")

    def params_for(self, b):
        from vllm import SamplingParams

        n = min(256, max(self.args.max_tokens, self.args.min_run_tokens // b))
        return SamplingParams(temperature=self.args.temperature, max_tokens=n, ignore_eos=True)

    def run(self, policy, b, params):
        return run_policy(policy, self.plain, self.spec, self.sched, self.prompts[:b], params, max(self.batches))

    def measure(self, b) -> dict:
        """Median tokens/s per policy at concurrency b (policies interleaved over the repeats)."""
        params = self.params_for(b)
        warm = max(1, self.args.warmup_steps // params.max_tokens)  # adaptive learns online: warm it at b
        for p in ("adaptive", "adaptive-skip0"):
            for _ in range(warm):
                self.run(p, b, params)
        # One untimed run of every other policy at this B: the first batch of a new shape pays
        # allocator and kernel warm-up, which would otherwise land on whichever policy goes first.
        for p in self.policies:
            if not p.startswith("adaptive"):
                self.run(p, b, params)
        times, tokens = {p: [] for p in self.policies}, {}
        for _ in range(self.args.repeats):
            for p in self.policies:
                sec, tokens[p] = self.run(p, b, params)
                times[p].append(sec)
                self.progress.update(note=f"B={b} {p}")
        for flag in (True, False):  # K the planner picks at this B with and without the K=0 skip
            set_k0_skip(self.spec, self.sched, flag)
            self.sched.set_policy("adaptive")
            (self.chosen_k_skip0 if flag else self.chosen_k)[b] = self.sched.planner.k_for(b)
        return {p: (tokens[p], median(times[p])) for p in self.policies}


def result_rows(b, measured) -> list:
    return [{"policy": "static-K" if p.startswith("static") else p,
             "k": int(p.split("-")[1]) if p.startswith("static") else None,
             "concurrency": b, "tokens_per_s": round(n / sec, 2), "seconds": round(sec, 4)}
            for p, (n, sec) in measured.items()]


def print_row(b, measured, ks, chosen_k) -> None:
    row = {p: n / sec for p, (n, sec) in measured.items()}
    best_k = max(ks, key=lambda k: row[f"static-{k}"])
    best = row[f"static-{best_k}"]
    print(f"B={b:4d} plain {row['plain']:8.1f} tok/s | K=0 {row['static-0']:8.1f} | best static K={best_k} "
          f"{best:8.1f} | adaptive {row['adaptive']:8.1f} (K={chosen_k}) | adaptive-skip0 "
          f"{row['adaptive-skip0']:8.1f} | adaptive/best-static {row['adaptive'] / best:.3f} "
          f"| adaptive/plain {row['adaptive'] / row['plain']:.3f} | adaptive-skip0/best-static "
          f"{row['adaptive-skip0'] / best:.3f} | adaptive-skip0/plain {row['adaptive-skip0'] / row['plain']:.3f}",
          flush=True)


def main(argv=None):
    args = parse_args(argv)
    out = out_path(args)
    sweep = Sweep(args)
    prov = provenance(args, sweep.pair)
    results, t_start = [], time.perf_counter()
    for b in sweep.batches:
        measured = sweep.measure(b)
        results += result_rows(b, measured)
        print_row(b, measured, sweep.ks, sweep.chosen_k[b])
        write_json(out, {"benchmark": "concurrency_sweep", "partial": True, "provenance": prov, "results": results})

    summary = _ratios(results, sweep.batches)
    payload = {"benchmark": "concurrency_sweep", "provenance": prov, "testbed": None if args.target else args.testbed,
               "method": args.method, "max_k": max(sweep.ks), "ks": sweep.ks,
               "tokens_per_request": {b: sweep.params_for(b).max_tokens for b in sweep.batches},
               "temperature": args.temperature, "seconds_total": round(time.perf_counter() - t_start, 1),
               "chosen_k": sweep.chosen_k, "chosen_k_skip0": sweep.chosen_k_skip0, "summary": summary,
               "planner": _jsonable(sweep.sched.specrollout_stats()), "results": results}
    write_json(out, payload)
    png = plot_path(args)
    if png:
        _plot(png, results, sweep.batches, sweep.ks, sweep.chosen_k, sweep.chosen_k_skip0)
    for key in ("adaptive_over_best_static", "adaptive_over_plain", "adaptive_skip0_over_best_static",
                "adaptive_skip0_over_plain"):
        print("min %s over B: %.3f" % (key, min(s[key] for s in summary)))
    print(f"[concurrency_sweep] wrote {out}" + (f" and {png}" if png else ""), flush=True)
    return payload


def _ratios(results, batches):
    out = []
    for b in batches:
        rows = [r for r in results if r["concurrency"] == b]
        plain = next(r["tokens_per_s"] for r in rows if r["policy"] == "plain")
        adaptive = next(r["tokens_per_s"] for r in rows if r["policy"] == "adaptive")
        skip0 = next(r["tokens_per_s"] for r in rows if r["policy"] == "adaptive-skip0")
        best = max((r for r in rows if r["policy"] == "static-K" and r["k"] >= 1), key=lambda r: r["tokens_per_s"])
        out.append({"concurrency": b, "best_static_k": best["k"],
                    "adaptive_over_best_static": round(adaptive / best["tokens_per_s"], 3),
                    "adaptive_over_plain": round(adaptive / plain, 3),
                    "adaptive_skip0_over_best_static": round(skip0 / best["tokens_per_s"], 3),
                    "adaptive_skip0_over_plain": round(skip0 / plain, 3)})
    return out


def _jsonable(x):
    import json

    return json.loads(json.dumps(x, default=str))


def _plot(path, results, batches, ks, chosen_k, chosen_k_skip0):
    """Speed-up over plain decoding vs B (every static K, the adaptive planner), and the K chosen vs B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))

    def tps(b, pred):
        return next(r["tokens_per_s"] for r in results if r["concurrency"] == b and pred(r))

    def over_plain(pred):
        return [tps(b, pred) / tps(b, lambda r: r["policy"] == "plain") for b in batches]

    ax1.axhline(1.0, color="k", lw=1.5, label="plain")
    for k in [0] + ks:
        ax1.plot(batches, over_plain(lambda r, k=k: r["policy"] == "static-K" and r["k"] == k), "--", alpha=0.6,
                 label=f"static K={k}")
    ax1.plot(batches, over_plain(lambda r: r["policy"] == "adaptive"), "r-s", label="adaptive", lw=2)
    ax1.plot(batches, over_plain(lambda r: r["policy"] == "adaptive-skip0"), "m-^",
             label="adaptive, no draft pass at K=0", lw=2)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrency B"); ax1.set_ylabel("tokens/s over plain decoding"); ax1.legend(fontsize=7, ncol=2)
    ax1.set_title("speed-up vs live concurrency")
    best = [max(ks, key=lambda k: tps(b, lambda r, k=k: r["policy"] == "static-K" and r["k"] == k)) for b in batches]
    ax2.plot(batches, [chosen_k[b] for b in batches], "r-s", label="adaptive K")
    ax2.plot(batches, [chosen_k_skip0[b] for b in batches], "m-^", label="adaptive K (no draft pass at K=0)")
    ax2.plot(batches, best, "b:o", label="best static K (measured)")
    ax2.set_xscale("log", base=2); ax2.set_xlabel("concurrency B"); ax2.set_ylabel("K"); ax2.legend()
    ax2.set_title("draft length chosen vs B")
    fig.tight_layout(); fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
