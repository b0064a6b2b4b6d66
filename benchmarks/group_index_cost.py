"""Per-step cost of the group suffix index on a GRPO-shaped synthetic rollout.

    python -m benchmarks.group_index_cost [--groups 8 --batch-sizes 64,256,1024 --length 500 --max-k 4]

Each group's responses follow a few shared templates with random deviations (a sibling copies a
stretch of another's text, then wanders), vocabulary 32k. Every engine step extends each live
request by `--tokens-per-step` tokens and asks for a k-token draft, as the engine does. Reports
milliseconds per step (wall: median and p90 over steps; CPU time of this process: median, less
disturbed by other jobs on a shared machine), per request, the CPU cost of the rollout's end (all
requests finished: responses become history), bytes per indexed token (tracemalloc) and the draft hit rate
against the true continuation (a rough check that proposals are sensible, not an acceptance).

Per B in --batch-sizes (live requests: --groups groups of B / groups siblings; --group-size sets one
B the old way). Writes JSON (with provenance) and a PNG: CPU cost per request-step relative to the
smallest B's (flat = the index scales linearly with the requests) and the draft hit fraction.
Flags: benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from benchmarks.common import add_common_args, int_list, out_path, plot_path, provenance, write_json
from verl_specrollout.group_draft.index import GroupSuffixIndex
from verl_specrollout.progress import Progress


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


def plot(rows: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = [r["requests"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(bs, [r["us_cpu_per_request_step"] / rows[0]["us_cpu_per_request_step"] for r in rows], "o-")
    a.axhline(1.0, color="k", lw=1)
    a.set_ylabel(f"CPU per request-step / at B={bs[0]}")
    b.plot(bs, [r["draft_hit_fraction"] for r in rows], "s-", color="tab:green")
    b.set_ylabel("draft tokens matching the continuation")
    b.set_ylim(0, 1)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("live requests B")
    fig.suptitle("group suffix index on a synthetic GRPO rollout", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "group_index_cost", engine=False, max_k=4, batch_sizes="256")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=None, help="siblings per group (sets B = groups x this)")
    ap.add_argument("--length", type=int, default=500)
    ap.add_argument("--tokens-per-step", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    batches = [args.groups * args.group_size] if args.group_size else int_list(args.batch_sizes, "--batch-sizes")
    if min(batches) < args.groups:
        raise SystemExit(f"--batch-sizes: each B must be >= --groups {args.groups}, got {batches}")
    progress = Progress(len(batches), "group_index_cost", unit="B")
    rows = []
    for b in batches:
        row = run(args.groups, b // args.groups, args.length, args.max_k, args.tokens_per_step, args.vocab, args.seed)
        row["bytes_per_indexed_token"] = bytes_per_token(args.length, args.vocab, args.seed)
        rows.append(row)
        progress.update(note=f"B={row['requests']} {row['step_cpu_ms_median']:.2f} ms CPU per step")
    out = rows[0] if len(rows) == 1 else {"results": rows}
    print(json.dumps(out, indent=1))
    path = out_path(args)
    write_json(path, {"provenance": provenance(args), **out})
    png = plot_path(args)
    if png:
        plot(rows, png)
    print(f"[group_index_cost] wrote {path}" + (f" and {png}" if png else ""), flush=True)
    return out


if __name__ == "__main__":
    main()
