"""Where a K=0 step's time goes inside a speculative engine, next to plain decoding.

    python -m benchmarks.k0_profile [--testbed regime] [--batch-sizes 1,64] [--max-tokens 64] [--repeats 3]

One plain engine and one speculative engine (EAGLE-3 by default) run the same B requests of fixed
length (random token prompts, ignore_eos), the speculative one with its table pinned at K=0, with
and without the K=0 draft skip (``planner.skip_draft_at_k0``), interleaved, minimum over repeats
(load only adds time). Then one run of each under cProfile, whose cumulative times are split into
what the engine loop spends in: the target forward, the drafter (``propose``), the sampler /
rejection sampler, our scheduler's hooks (planner observation and re-planning), and the rest.
Per B in --batch-sizes; JSON (with provenance) and a PNG of each variant's step time over plain's.
Flags: benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time

from benchmarks.common import (add_common_args, engine_settings, int_list, make_engines, model_pair, out_path,
                               plot_path, provenance, set_k0_skip, write_json)
from verl_specrollout.progress import Progress

# Entry points whose cumulative time is one part of a step: (part, file path substring, function).
# Per part the largest cumulative time among matches counts (an outer call holds the inner ones).
PARTS = (
    ("target forward", "models/llama.py", "forward"),
    ("draft (propose)", "gpu_model_runner.py", "propose_draft_token_ids"),
    ("sampler", "v1/sample/sampler.py", "forward"),
    ("rejection sampler", "v1/sample/rejection_sampler.py", "forward"),
    ("our scheduler hooks", "vllm_adapter/scheduler.py", "_sr_after_step"),
    ("our scheduler hooks", "vllm_adapter/scheduler.py", "update_draft_token_ids"),
)
TOTAL = ("entrypoints/llm.py", "generate")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "k0_profile", max_k=None, batch_sizes="64", max_tokens=64, repeats=3)
    ap.add_argument("--method", default="eagle3", choices=["eagle3", "draft_model"])
    return ap.parse_args(argv)


def prompts(vocab: int, batch: int, length: int = 16):
    from vllm.inputs import TokensPrompt

    rnd = random.Random(1234)
    return [TokensPrompt(prompt_token_ids=[rnd.randrange(3, vocab) for _ in range(length)]) for _ in range(batch)]


def profile(llm, reqs, params) -> dict:
    """Seconds of one generate under cProfile per part of a step; "rest" is the engine loop's
    other work (scheduling, input preparation, output processing, the profiler's own cost)."""
    prof = cProfile.Profile()
    prof.enable()
    llm.generate(reqs, params, use_tqdm=False)
    prof.disable()
    stats = pstats.Stats(prof).stats

    def cum(path: str, func: str) -> float:
        return max((ct for (f, _l, fn), (_cc, _nc, _tt, ct, _c) in stats.items() if path in f and fn == func),
                   default=0.0)

    out = {}
    for part, path, func in PARTS:
        out[part] = out.get(part, 0.0) + cum(path, func)
    total = cum(*TOTAL)
    out["rest"] = total - sum(out.values())
    out["total"] = total
    return out


def measure(plain, spec, sched, reqs, params, steps: int, repeats: int, progress) -> tuple:
    """(ms per step per variant, min over repeats; cProfile split of one run per variant)."""
    variants = {"plain": (plain, None), "spec K=0, draft pass kept": (spec, False),
                "spec K=0, skipped (default)": (spec, True)}
    for llm, skip in variants.values():  # warm-up
        if skip is not None:
            set_k0_skip(spec, sched, skip)
        llm.generate(reqs[:4], params, use_tqdm=False)
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, (llm, skip) in variants.items():
            if skip is not None:
                set_k0_skip(spec, sched, skip)
            t0 = time.perf_counter()
            llm.generate(reqs, params, use_tqdm=False)
            best[name] = min(best[name], time.perf_counter() - t0)
            progress.update(note=name)
    parts = {}
    for name, (llm, skip) in variants.items():
        if skip is not None:
            set_k0_skip(spec, sched, skip)
        parts[name] = {k: round(1e3 * v / steps, 3) for k, v in profile(llm, reqs, params).items()}
        progress.update(note=f"cProfile {name}")
    return {k: round(1e3 * v / steps, 3) for k, v in best.items()}, parts


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoConfig
    from vllm import SamplingParams

    batches = int_list(args.batch_sizes, "--batch-sizes")
    pair = model_pair(args)
    max_b = max(max(batches), 8)
    plain, spec, sched = make_engines(pair, args.method, 1, max_b, args.draft_sampling, dtype=args.dtype,
                                      **engine_settings(args))
    sched.set_policy("static", [[1, max_b, 0]])
    vocab = int(AutoConfig.from_pretrained(pair.target_dir).vocab_size)
    params = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, ignore_eos=True)
    steps = args.max_tokens
    progress = Progress(len(batches) * 3 * (args.repeats + 1), "k0_profile", unit="run")
    rows = []
    for b in batches:
        ms, parts = measure(plain, spec, sched, prompts(vocab, b), params, steps, args.repeats, progress)
        print(f"B={b}, {steps} decode steps; per step (min of {args.repeats}):")
        for name, v in ms.items():
            print(f"  {name:32s} {v:7.2f} ms  ({ms['plain'] / v:.3f}x plain)")
        for name, p in parts.items():
            print(f"  cProfile {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in p.items()))
        rows.append({"batch": b, "ms_per_step": ms, "profile_ms_per_step": parts})
    out = out_path(args)
    payload = {"benchmark": "k0_profile", "provenance": provenance(args, pair), "tokens": args.max_tokens,
               "results": rows}
    if len(rows) == 1:  # the layout of one-B runs before --batch-sizes took a list
        payload.update(batch=rows[0]["batch"], ms_per_step=rows[0]["ms_per_step"],
                       profile_ms_per_step=rows[0]["profile_ms_per_step"])
    write_json(out, payload)
    png = plot_path(args)
    if png:
        plot(rows, png)
    print(f"[k0_profile] wrote {out}" + (f" and {png}" if png else ""), flush=True)
    return rows


def plot(rows: list, path: str) -> None:
    """Step time of each variant over plain decoding's, per B (grouped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0]["ms_per_step"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([j + i * width for j in range(len(rows))],
               [r["ms_per_step"][name] / r["ms_per_step"]["plain"] for r in rows], width, label=name)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [f"B={r['batch']}" for r in rows])
    ax.set_ylabel("decode step time / plain decoding's")
    ax.set_title("a K=0 step inside the speculative engine vs plain decoding")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
