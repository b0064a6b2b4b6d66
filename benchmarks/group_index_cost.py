"""Per-step cost of the group suffix index on a GRPO-shaped synthetic rollout.

    python -m benchmarks.group_index_cost [--groups 8 --group-size 32 --length 500 --k 4]

Each group's responses follow a few shared templates with random deviations (a sibling copies a
stretch of another's text, then wanders), vocabulary 32k. Every engine step extends each live
request by `--tokens-per-step` tokens and asks for a k-token draft, as the engine does. Reports
milliseconds per step (wall: median and p90 over steps; CPU time of this process: median, less
disturbed by other jobs on a shared machine), per request, the CPU cost of the rollout's end (all
requests finished: responses become history), bytes per indexed token (tracemalloc) and the draft hit rate
against the true continuation (a rough check that proposals are sensible, not an acceptance).
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from verl_specrollout.group_draft.index import GroupSuffixIndex


def synthetic_group(rng, n_req: int, length: int, vocab: int, n_templates: int = 4, stay: float = 0.97):
    """n_req responses: follow a template token by token; with prob 1-stay jump to a random place
    in a random template or emit a random token."""
    templates = rng.integers(0, vocab, size=(n_templates, length * 2))
    out = []
    for _ in range(n_req):
        tpl, pos, seq = int(rng.integers(n_templates)), int(rng.integers(0, length)), []
        for _ in range(length):
            u = rng.random()
            if u > stay:
                tpl, pos = int(rng.integers(n_templates)), int(rng.integers(0, length))
            if u > 1 - (1 - stay) / 3:
                seq.append(int(rng.integers(vocab)))
            else:
                seq.append(int(templates[tpl, pos]))
                pos += 1
        out.append(seq)
    return out


def run(groups: int, group_size: int, length: int, k: int, tokens_per_step: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = GroupSuffixIndex()
    prompts = [rng.integers(0, vocab, size=200).tolist() for _ in range(groups)]
    responses = [synthetic_group(rng, group_size, length, vocab) for _ in range(groups)]
    reqs = [(f"{g}-{i}", g, i) for g in range(groups) for i in range(group_size)]
    for rid, g, _ in reqs:
        idx.add_request(rid, prompts[g])
    step_ms, cpu_ms, hits, proposed = [], [], 0, 0
    for step in range(0, length, tokens_per_step):
        t0, c0 = time.perf_counter(), time.process_time()
        for rid, g, i in reqs:
            idx.extend(rid, responses[g][i][step:step + tokens_per_step])
        drafts = [idx.propose(rid, k) for rid, _, _ in reqs]
        step_ms.append((time.perf_counter() - t0) * 1e3)
        cpu_ms.append((time.process_time() - c0) * 1e3)
        nxt = step + tokens_per_step
        for d, (_, g, i) in zip(drafts, reqs):
            truth = responses[g][i][nxt:nxt + k]
            proposed += len(d.tokens)
            for a, b in zip(d.tokens, truth):
                if a != b:
                    break
                hits += 1
    entries_stats = idx.stats()
    c0 = time.process_time()
    for rid, _, _ in reqs:
        idx.finish(rid)
    finish_ms = (time.process_time() - c0) * 1e3
    return {
        "requests": len(reqs), "step_ms_median": float(np.median(step_ms)),
        "step_ms_p90": float(np.percentile(step_ms, 90)),
        "step_cpu_ms_median": float(np.median(cpu_ms)),
        "us_cpu_per_request_step": float(np.median(cpu_ms)) * 1e3 / len(reqs),
        "finish_all_cpu_ms": finish_ms, "indexed_tokens": entries_stats["indexed_tokens"],
        "entries": entries_stats["entries"], "draft_hit_fraction": hits / max(1, proposed),
        "stats_after": idx.stats(),
    }


def bytes_per_token(length: int, vocab: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, vocab, size=200).tolist()
    resps = synthetic_group(rng, 32, length, vocab)
    tracemalloc.start()
    idx = GroupSuffixIndex()
    base = tracemalloc.get_traced_memory()[0]
    for i, r in enumerate(resps):
        idx.add_request(str(i), prompt)
        idx.extend(str(i), r)
    for i in range(len(resps)):
        idx.finish(str(i))
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / idx.stats()["indexed_tokens"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--length", type=int, default=500)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--tokens-per-step", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = run(args.groups, args.group_size, args.length, args.k, args.tokens_per_step, args.vocab, args.seed)
    out["bytes_per_indexed_token"] = bytes_per_token(args.length, args.vocab, args.seed)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
