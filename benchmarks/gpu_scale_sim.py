"""A GRPO rollout at 7B / 32B / 70B on H100 / H200-class step costs, by simulation.

    python -m benchmarks.gpu_scale_sim --out results/gpu_scale_sim.json [--prompts 128 --group 8]
    python -m benchmarks.gpu_scale_sim --replicas auto --out results/decoupled_sim.json

With ``--replicas``: the rollout over R replicas under veRL's load balancer, plain / coupled /
decoupled speculation (benchmarks/replica_sim.py) instead of the policy grid on one engine.

Nothing here runs a model. Each engine step costs what a roofline says it costs, each request
accepts draft tokens with published-looking per-position rates, and the policies under comparison
choose the draft length K from the live batch size B:

* ``plain``: no speculation;
* ``static-K``: one K for the whole rollout;
* ``vllm-table``: the kind of batch-size -> K table users write for vLLM ([1-4: 4, 5-16: 2, 17+: 1]);
* ``fastgrpo``: FastGRPO's closed form: a verification budget of C = 160 tokens per step, V = C / B
  tokens per request, K = V - 1 (clamped to 0..max_k);
* ``tlt``: TLT's rule: speculation only while B <= 32, K picked by a UCB bandit on observed tokens/s;
* ``ours``: this project's planner (``verl_specrollout.planner.Planner``, the code the scheduler runs),
  fed the simulated step times and per-request acceptance exactly as the scheduler feeds it.

Assumptions (``benchmarks/gpu_calibration.Costs`` holds the constants; with ``--calibration FILE``
the bandwidth and FLOP efficiencies, the fixed kernel time and the draft pass's fixed cost are fitted
to a step-cost table that ``tools/gpu_smoke.sh`` measured on a GPU; the engine's own per-step time
stays an assumption, ``--engine-overhead-ms``):

* step time = max(memory time, compute time) + fixed kernel and engine time; memory = weights + the KV
  cache read (per request: prompt + tokens so far), over achieved HBM bandwidth; compute = 2 x params
  x tokens in the step over achieved dense bf16 FLOP/s; weights and FLOPs split over tensor-parallel
  ranks (7B TP1, 32B TP2, 70B TP4), all-reduce time ignored;
* an EAGLE-3 draft pass: one decoder layer + fc over 3 aux states + a 32k-vocabulary lm_head, same
  roofline, its own overhead; a K=0 step runs no draft pass (``planner.skip_draft_at_k0``);
* acceptance at T = 1: conditional per-position rates ``ALPHA`` (first position 0.75, decaying), the
  shape EAGLE-3 / FastGRPO report for chain drafting; each request samples its own outcome per step;
* lengths: G samples per prompt, lognormal (median max/6, sigma 0.9) capped at ``--max-tokens``, all
  requests submitted at once: the batch starts large and ends in a long tail.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import numpy as np

from benchmarks import gpu_calibration
from benchmarks.gpu_calibration import GPUS, Costs

# Measured with tools/gpu_smoke.sh on one H200 (Qwen2.5-7B, Llama-3-8B, Qwen2.5-32B shapes, 1024
# tokens of context per request, CUDA graphs).
DEFAULT_CALIBRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration", "h200.json")
DRAFT_VOCAB = 32000
ALPHA = (0.75, 0.70, 0.66, 0.62, 0.58, 0.55, 0.52, 0.50)
PROMPT_TOKENS = 256

MODELS = {  # Qwen2.5-7B, Qwen2.5-32B, Llama-3-70B shapes
    "7B": {"params": 7.6e9, "layers": 28, "hidden": 3584, "kv_heads": 4, "head_dim": 128, "tp": 1},
    "32B": {"params": 32.8e9, "layers": 64, "hidden": 5120, "kv_heads": 8, "head_dim": 128, "tp": 2},
    "70B": {"params": 70.6e9, "layers": 80, "hidden": 8192, "kv_heads": 8, "head_dim": 128, "tp": 4},
}
HAND_TABLE = ((1, 4, 4), (5, 16, 2), (17, 1 << 30, 1))


@dataclasses.dataclass
class Hardware:
    model: dict
    gpu: dict
    costs: Costs = Costs()

    def _roofline(self, params: float, tokens: int, kv_bytes: float) -> float:
        tp, c = self.model["tp"], self.costs
        memory = (2.0 * params + kv_bytes) / tp / (self.gpu["bandwidth"] * c.bandwidth_efficiency)
        compute = 2.0 * params * tokens / tp / (self.gpu["flops"] * c.flops_efficiency)
        return max(memory, compute)

    def kv_bytes(self, context_tokens: float) -> float:
        m = self.model
        return 2.0 * 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * context_tokens  # K and V, bf16

    def target_step(self, requests: int, k: int, context_tokens: float) -> float:
        return self._roofline(self.model["params"], requests * (k + 1), self.kv_bytes(context_tokens)) \
            + self.costs.kernel_s + self.costs.step_overhead_s

    def draft_pass(self, requests: int, context_tokens: float) -> float:
        m = self.model
        params = m["params"] / m["layers"] + 3 * m["hidden"] * m["hidden"] + m["hidden"] * DRAFT_VOCAB
        kv = self.kv_bytes(context_tokens) / m["layers"]  # one layer's cache
        return self._roofline(params, requests, kv) + self.costs.draft_overhead_s

    def step(self, requests: int, k: int, context_tokens: float) -> float:
        draft = k * self.draft_pass(requests, context_tokens) if k else 0.0
        return self.target_step(requests, k, context_tokens) + draft


def rollout_lengths(prompts: int, group: int, max_tokens: int, seed: int, median_div: float = 6.0,
                    sigma: float = 0.9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = rng.lognormal(math.log(max_tokens / median_div), sigma, size=prompts * group)
    return np.clip(n, 4, max_tokens).astype(int)


def accepted_tokens(rng, requests: int, k: int) -> np.ndarray:
    """Tokens each request commits this step: 1 + the accepted prefix of its k drafts."""
    if k == 0:
        return np.ones(requests, dtype=int)
    ok = rng.random((requests, k)) < np.asarray(ALPHA[:k])[None, :]
    prefix = np.cumprod(ok, axis=1).sum(axis=1)
    return 1 + prefix


# ----------------------------------------------------------------------------- policies
class Static:
    def __init__(self, k):
        self.k = k

    def choose(self, b):
        return self.k

    def observe(self, b, k, seconds, accepted):
        pass


class Table(Static):
    def __init__(self, rows, max_k):
        self.rows, self.max_k = rows, max_k

    def choose(self, b):
        return next(min(k, self.max_k) for lo, hi, k in self.rows if lo <= b <= hi)


class FastGRPO(Static):
    def __init__(self, max_k, budget=160):
        self.max_k, self.budget = max_k, budget

    def choose(self, b):
        return int(min(self.max_k, max(0, self.budget // max(b, 1) - 1)))


class TLT(Static):
    """Speculation only while B <= 32; K from a UCB bandit on committed tokens per second."""

    def __init__(self, max_k, threshold=32):
        self.ks = list(range(1, max_k + 1))
        self.threshold = threshold
        self.n = {k: 0 for k in self.ks}
        self.mean = {k: 0.0 for k in self.ks}
        self.t = 0

    def choose(self, b):
        if b > self.threshold:
            return 0
        self.t += 1
        for k in self.ks:
            if self.n[k] == 0:
                return k
        return max(self.ks, key=lambda k: self.mean[k] + math.sqrt(2 * math.log(self.t) / self.n[k]) * self.mean[k])

    def observe(self, b, k, seconds, accepted):
        if k == 0:
            return
        rate = accepted.sum() / seconds / b  # per request: comparable across batch sizes
        self.n[k] += 1
        self.mean[k] += (rate - self.mean[k]) / self.n[k]


class Ours(Static):
    """The project's planner, fed like vllm_adapter/scheduler.py feeds it, on simulated time
    (verl_specrollout.planner.trace.PlannerPolicy: the feed the hindsight replay tests use)."""

    def __init__(self, max_k, max_batch):
        from verl_specrollout.planner.planner import Planner
        from verl_specrollout.planner.trace import PlannerPolicy

        self.policy = PlannerPolicy(Planner(max_k=max_k, max_batch=max_batch, zero_k_passes=0, overhead_budget=None))
        self.planner = self.policy.planner

    def choose(self, b):
        return self.policy.choose(b)

    def observe(self, b, k, seconds, accepted):
        self.policy.observe(b, k, seconds, np.bincount(accepted - 1, minlength=k + 1))


def make_policy(name: str, max_k: int, max_batch: int):
    if name == "plain":
        return Static(0)
    if name.startswith("static-"):
        return Static(int(name.split("-")[1]))
    return {"vllm-table": lambda: Table(HAND_TABLE, max_k), "fastgrpo": lambda: FastGRPO(max_k),
            "tlt": lambda: TLT(max_k), "ours": lambda: Ours(max_k, max_batch)}[name]()


# ----------------------------------------------------------------------------- simulation
def simulate(hw: Hardware, policy, lengths: np.ndarray, seed: int) -> dict:
    """Seconds for the whole rollout and the (B, K) trace, every request decoding its length."""
    rng = np.random.default_rng(seed)
    left = lengths.astype(float).copy()
    done = np.zeros_like(left)
    seconds, steps, trace = 0.0, 0, []
    while True:
        active = np.flatnonzero(left > 0)
        if active.size == 0:
            break
        b = int(active.size)
        k = int(policy.choose(b))
        context = float((PROMPT_TOKENS + done[active]).sum())
        dt = hw.step(b, k, context)
        got = accepted_tokens(rng, b, k)
        take = np.minimum(got, left[active])
        left[active] -= take
        done[active] += take
        policy.observe(b, k, dt, got)
        seconds += dt
        steps += 1
        if steps % 8 == 0 or b <= 4:
            trace.append((b, k))
    return {"seconds": seconds, "steps": steps, "tokens": int(lengths.sum()), "trace": trace}


def run_grid(models, gpus, policies, prompts, group, max_tokens, max_k, seed, costs: Costs = Costs()) -> list:
    lengths = rollout_lengths(prompts, group, max_tokens, seed)
    rows = []
    for model in models:
        for gpu in gpus:
            hw = Hardware(MODELS[model], GPUS[gpu], costs)
            for name in policies:
                res = simulate(hw, make_policy(name, max_k, len(lengths)), lengths, seed)
                rows.append({"model": model, "gpu": gpu, "policy": name, "seconds": round(res["seconds"], 3),
                             "tokens_per_s": round(res["tokens"] / res["seconds"], 1), "steps": res["steps"],
                             "trace": res["trace"]})
    return rows


def ratios(rows: list) -> list:
    out = []
    for key in sorted({(r["model"], r["gpu"]) for r in rows}):
        group = {r["policy"]: r for r in rows if (r["model"], r["gpu"]) == key}
        plain = group["plain"]["seconds"]
        statics = {p: r for p, r in group.items() if p.startswith("static-")}
        best = min(statics, key=lambda p: statics[p]["seconds"])
        row = {"model": key[0], "gpu": key[1], "best_static": best}
        for p, r in group.items():
            row[f"{p}_speedup_vs_plain"] = round(plain / r["seconds"], 3)
        row["ours_over_best_static"] = round(statics[best]["seconds"] / group["ours"]["seconds"], 3)
        for p in ("vllm-table", "fastgrpo", "tlt"):
            row[f"ours_over_{p}"] = round(group[p]["seconds"] / group["ours"]["seconds"], 3)
        out.append(row)
    return out


def plot(rows: list, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = sorted({(r["model"], r["gpu"]) for r in rows})
    policies = [p for p in dict.fromkeys(r["policy"] for r in rows) if p != "plain"]
    statics = [p for p in policies if p.startswith("static-")]
    # Static K in shades of grey (darker = longer), the other policies in colours of their own.
    colours = {p: plt.cm.Greys(0.3 + 0.6 * i / max(len(statics) - 1, 1)) for i, p in enumerate(statics)}
    colours.update({"vllm-table": "tab:green", "fastgrpo": "tab:purple", "tlt": "tab:brown", "ours": "tab:red"})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(policies)
    for i, p in enumerate(policies):
        ys = []
        for key in keys:
            g = {r["policy"]: r for r in rows if (r["model"], r["gpu"]) == key}
            ys.append(g["plain"]["seconds"] / g[p]["seconds"])
        ax.bar([j + i * width for j in range(len(keys))], ys, width, label=p, color=colours.get(p))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 for j in range(len(keys))], [f"{m} {g}" for m, g in keys])
    ax.set_ylabel("rollout speed-up vs plain (simulated)")
    ax.legend(fontsize=7, ncol=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv=None):
    from benchmarks.replica_sim import Decoupled  # it builds on this module

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="7B,32B,70B")
    ap.add_argument("--gpus", default="H100-SXM,H200")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration", default=DEFAULT_CALIBRATION,
                    help="step-cost table of tools/gpu_verify_cost.py measured on a GPU: fit the roofline's "
                         "efficiencies and fixed kernel time to it (benchmarks/gpu_calibration.py); default: "
                         "the H200 table in benchmarks/calibration/; 'none': the assumed constants")
    ap.add_argument("--engine-overhead-ms", type=float, default=Costs.step_overhead_s * 1e3,
                    help="the engine's own time per step (scheduling, sampling): an assumption either way")
    rep = ap.add_argument_group("replicas and decoupled speculation (benchmarks/replica_sim.py)")
    rep.add_argument("--replicas", default=None,
                     help="'auto' (8 GPUs / TP: 7B 8, 32B 4, 70B 2) or a number: compare plain / coupled / "
                          "coupled draft LM / decoupled over R replicas instead of the policy grid")
    rep.add_argument("--transfer-ms", type=float, default=Decoupled.transfer_s * 1e3,
                     help="one-way latency of a commit to the drafter and of tails back")
    rep.add_argument("--guess-hit", type=float, default=Decoupled.guess_hit,
                     help="P(the drafter's guess is the target's token after a rejection): an assumption")
    rep.add_argument("--lm-alpha-scale", type=float, default=Decoupled.alpha_scale,
                     help="the draft LM's per-position acceptance relative to EAGLE-3's")
    rep.add_argument("--length-median-div", type=float, default=6.0,
                     help="median response length = max tokens / this (lognormal)")
    rep.add_argument("--length-sigma", type=float, default=0.9)
    return ap.parse_args(argv)


def main_replicas(args, costs: Costs) -> dict:
    from benchmarks import replica_sim
    from benchmarks.replica_sim import Decoupled

    lengths = rollout_lengths(args.prompts, args.group, args.max_tokens, args.seed, args.length_median_div,
                              args.length_sigma)
    assumptions = Decoupled(transfer_s=args.transfer_ms / 1e3, guess_hit=args.guess_hit, alpha_scale=args.lm_alpha_scale)
    rows = replica_sim.replica_grid(args.models.split(","), args.gpus.split(","), lengths, args.max_k, args.seed, costs,
                                    assumptions, None if args.replicas == "auto" else int(args.replicas))
    summary = replica_sim.replica_ratios(rows)
    for s in summary:
        print(json.dumps(s))
    print(replica_sim.table(summary))
    print(replica_sim.SPECACTOR)
    return {"benchmark": "gpu_scale_sim/replicas", "assumptions": {
        "costs": dataclasses.asdict(costs), "alpha": ALPHA, "decoupled": dataclasses.asdict(assumptions),
        "draft_lms": replica_sim.DRAFT_LMS, "models": MODELS, "capped": int((lengths >= args.max_tokens).sum())},
        "config": vars(args), "summary": summary, "results": rows}


def main(argv=None) -> dict:
    args = parse_args(argv)
    policies = ["plain"] + [f"static-{k}" for k in range(1, args.max_k + 1)] + ["vllm-table", "fastgrpo", "tlt", "ours"]
    overhead = args.engine_overhead_ms / 1e3
    costs = gpu_calibration.load(args.calibration, overhead) if args.calibration != "none" \
        else dataclasses.replace(Costs(), step_overhead_s=overhead)
    print(json.dumps({"costs": dataclasses.asdict(costs)}))
    if args.replicas:
        payload = main_replicas(args, costs)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(payload, f)
        return payload
    rows = run_grid(args.models.split(","), args.gpus.split(","), policies, args.prompts, args.group,
                    args.max_tokens, args.max_k, args.seed, costs)
    summary = ratios(rows)
    for s in summary:
        print(json.dumps(s))
    payload = {"benchmark": "gpu_scale_sim", "assumptions": {
        "costs": dataclasses.asdict(costs), "alpha": ALPHA,
        "draft_vocab": DRAFT_VOCAB, "prompt_tokens": PROMPT_TOKENS, "gpus": GPUS, "models": MODELS},
        "config": vars(args), "summary": summary, "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(payload, f)
    plot(rows, os.path.splitext(args.out)[0] + ".png")
    return payload


if __name__ == "__main__":
    main()
