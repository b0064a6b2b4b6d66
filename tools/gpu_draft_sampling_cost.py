"""What probabilistic draft sampling adds per draft pass, next to greedy drafting, on one GPU.

    python tools/gpu_draft_sampling_cost.py [--out results/gpu_draft_sampling_cost.json]
    python tools/gpu_draft_sampling_cost.py --device cpu --tiny      # toy sizes, seconds

A greedy draft takes the argmax of the draft's logits. A probabilistic one (vLLM's
``draft_sample_method="probabilistic"``, our ``draft_sampling=auto`` on vLLM >= 0.31) divides the logits
by the temperature, keeps the float32 softmax for the rejection sampler's ratio test and samples a
token by the exponential race (probs / Exp(1), argmax), as vLLM's ``compute_probs_and_sample_next_token``
does. Timed per draft pass for ``rows`` draft tokens over a ``--vocab`` wide vocabulary (Qwen2.5's
152,064 by default), bf16 logits, CUDA events (median), plus the float32 buffer the probabilities take.
torch only; no vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch


def greedy(logits):
    return logits.argmax(dim=-1)


def probabilistic(logits, temperature):
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    race = torch.empty_like(probs).exponential_()
    return probs.div(race).argmax(dim=-1), probs


def time_ms(fn, device, warmup=5, repeats=30):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for a, b in pairs:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) for a, b in pairs)
    import time

    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=152064)
    ap.add_argument("--rows", default="1,4,16,64,256,1024")
    ap.add_argument("--tiny", action="store_true", help="vocab 4096, rows up to 64")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "results"), "gpu_draft_sampling_cost.json"))
    args = ap.parse_args(argv)
    if args.tiny:
        args.vocab, args.rows = 4096, "1,4,16,64"
    device = torch.device(args.device)
    temperature = torch.tensor(1.0, device=device)
    points = []
    for rows in [int(r) for r in args.rows.split(",")]:
        logits = torch.randn(rows, args.vocab, device=device, dtype=torch.bfloat16)
        g = time_ms(lambda: greedy(logits), device)
        p = time_ms(lambda: probabilistic(logits, temperature), device)
        points.append({"rows": rows, "greedy_ms": round(g, 4), "probabilistic_ms": round(p, 4),
                       "extra_ms": round(p - g, 4), "probs_buffer_mb": round(rows * args.vocab * 4 / 2**20, 1)})
        print(f"rows {rows:5d}: greedy {g:.3f} ms, probabilistic {p:.3f} ms (+{p - g:.3f} ms), "
              f"probs buffer {points[-1]['probs_buffer_mb']} MiB", flush=True)
        del logits
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"device": name, "torch": torch.__version__, "vocab": args.vocab, "points": points}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
