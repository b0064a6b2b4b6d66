"""The main job on the embedded tiny default: a GRPO-shaped rollout with and without speculation.

    python -m verl_specrollout.quickstart [--size tiny] [--prompts 32] [--group 8]

Builds (or reuses) the testbed, samples G responses per prompt at T=1 with a plain
engine and with a speculative engine (EAGLE-3 head, adaptive K), and prints tokens/s,
acceptance length and speedup. The last line is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

from verl_specrollout.config import SpecRolloutConfig


def _rollout(llm, prompts, params, repeats):
    """Median wall time over `repeats` after one warm-up; returns (seconds, tokens, outputs)."""
    llm.generate(prompts[: max(1, len(prompts) // 4)], params, use_tqdm=False)  # warm-up
    times, outs = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        times.append(time.perf_counter() - t0)
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return statistics.median(times), tokens, outs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8, help="G samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--method", default="eagle3", choices=["eagle3", "draft_model", "ngram"])
    ap.add_argument("--mode", default="adaptive", choices=["adaptive", "static"])
    ap.add_argument("--max-k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args(argv)

    from vllm import SamplingParams

    from verl_specrollout.engine.local import make_llm
    from verl_specrollout.engine.spec_stats import read_counters
    from verl_specrollout.testbed import build_testbed
    from verl_specrollout.testbed.reward import compute_score
    from verl_specrollout.testbed.task import DATA_SOURCE, make_examples, prompt_messages
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    tb = build_testbed(args.size)
    print(f"[quickstart] testbed {args.size} ready in {time.perf_counter() - t0:.1f}s at {tb.root}", flush=True)
    tok = AutoTokenizer.from_pretrained(tb.target_dir)
    examples = make_examples(args.prompts, seed=12345)
    prompts = [tok.apply_chat_template(prompt_messages(ex), add_generation_prompt=True, tokenize=False) for ex in examples]
    params = SamplingParams(n=args.group, temperature=args.temperature, max_tokens=args.max_tokens, seed=0)

    def reward(outs):
        scores = [compute_score(DATA_SOURCE, c.text, str(ex.answer)) for ex, o in zip(examples, outs) for c in o.outputs]
        return sum(scores) / len(scores)

    # Plain engine.
    llm = make_llm(tb.target_dir)
    sec_plain, tok_plain, outs = _rollout(llm, prompts, params, args.repeats)
    reward_plain = reward(outs)
    del llm
    gc.collect()

    # Speculative engine, configured exactly as the veRL override would configure it.
    draft = {"eagle3": tb.eagle3_dir, "draft_model": tb.draft_lm_dir, "ngram": None}[args.method]
    spec = SpecRolloutConfig.from_dict(
        {"enable": True, "method": args.method, "draft_path": draft, "max_k": args.max_k,
         "planner": {"mode": args.mode, "max_batch": max(256, args.prompts * args.group)}}
    )
    llm = make_llm(tb.target_dir, spec)
    before = read_counters(llm)
    sec_spec, tok_spec, outs = _rollout(llm, prompts, params, args.repeats)
    counters = read_counters(llm) - before
    reward_spec = reward(outs)
    del llm
    gc.collect()

    summary = {
        "size": args.size,
        "method": args.method,
        "mode": args.mode,
        "prompts": args.prompts,
        "group": args.group,
        "temperature": args.temperature,
        "tokens_per_s_plain": round(tok_plain / sec_plain, 1),
        "tokens_per_s_spec": round(tok_spec / sec_spec, 1),
        "speedup": round((tok_spec / sec_spec) / (tok_plain / sec_plain), 3),
        "mean_acceptance_length": round(counters.mean_acceptance_length, 3),
        "per_position_acceptance": [round(x, 3) for x in counters.per_position_acceptance],
        "reward_plain": round(reward_plain, 3),
        "reward_spec": round(reward_spec, 3),
    }
    print(f"[quickstart] plain: {summary['tokens_per_s_plain']} tok/s ({tok_plain} tokens, {sec_plain:.2f}s)")
    print(f"[quickstart] spec ({args.method}, {args.mode}): {summary['tokens_per_s_spec']} tok/s "
          f"({tok_spec} tokens, {sec_spec:.2f}s), mean acceptance length {summary['mean_acceptance_length']}")
    print(f"[quickstart] speedup {summary['speedup']}x")
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
