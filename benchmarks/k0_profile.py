"""Where a K=0 step's time goes inside a speculative engine, next to plain decoding.

    python -m benchmarks.k0_profile [--size regime] [--batch 64] [--tokens 64] [--repeats 3]

One plain engine and one speculative engine (EAGLE-3 by default) run the same B requests of fixed
length (random token prompts, ignore_eos), the speculative one with its table pinned at K=0, with
and without the K=0 draft skip (``planner.skip_draft_at_k0``), interleaved, minimum over repeats
(load only adds time). Then one run of each under cProfile, whose cumulative times are split into
what the engine loop spends in: the target forward, the drafter (``propose``), the sampler /
rejection sampler, our scheduler's hooks (planner observation and re-planning), and the rest.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time

from benchmarks.common import add_model_args, make_engines, model_pair, set_k0_skip, write_json

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
    ap.add_argument("--size", default="regime")
    ap.add_argument("--method", default="eagle3", choices=["eagle3", "draft_model"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    add_model_args(ap, dtype_default="bfloat16")
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


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoConfig
    from vllm import SamplingParams

    pair = model_pair(args)
    plain, spec, sched = make_engines(pair, args.method, 1, max(args.batch, 8), args.draft_sampling,
                                      dtype=args.dtype)
    sched.set_policy("static", [[1, max(args.batch, 8), 0]])
    vocab = int(AutoConfig.from_pretrained(pair.target_dir).vocab_size)
    reqs = prompts(vocab, args.batch)
    params = SamplingParams(temperature=1.0, max_tokens=args.tokens, ignore_eos=True)
    variants = {"plain": (plain, None), "spec K=0, draft pass kept": (spec, False),
                "spec K=0, skipped (default)": (spec, True)}
    for llm, skip in variants.values():  # warm-up
        if skip is not None:
            set_k0_skip(spec, sched, skip)
        llm.generate(reqs[:4], params, use_tqdm=False)
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeats):
        for name, (llm, skip) in variants.items():
            if skip is not None:
                set_k0_skip(spec, sched, skip)
            t0 = time.perf_counter()
            llm.generate(reqs, params, use_tqdm=False)
            best[name] = min(best[name], time.perf_counter() - t0)
    steps = args.tokens
    print(f"B={args.batch}, {steps} decode steps; per step (min of {args.repeats}):")
    for name, sec in best.items():
        print(f"  {name:32s} {1e3 * sec / steps:7.2f} ms  ({best['plain'] / sec:.3f}x plain)")
    parts = {}
    for name, (llm, skip) in variants.items():
        if skip is not None:
            set_k0_skip(spec, sched, skip)
        parts[name] = {k: round(1e3 * v / steps, 3) for k, v in profile(llm, reqs, params).items()}
        print(f"  cProfile {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in parts[name].items()))
    if args.out:
        write_json(args.out, {"benchmark": "k0_profile", "batch": args.batch, "tokens": args.tokens,
                              "ms_per_step": {k: round(1e3 * v / steps, 3) for k, v in best.items()},
                              "profile_ms_per_step": parts})
    return best, parts


if __name__ == "__main__":
    main()
