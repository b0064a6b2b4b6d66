"""R rollout replicas under veRL's load balancer, and decoupled speculation on the idle ones.

    python -m benchmarks.gpu_scale_sim --replicas 8 --out results/decoupled_sim.json

veRL 0.9.1 sends every request of a GRPO rollout at once through ``GlobalRequestLoadBalancer``
(``verl/workers/rollout/router.py``): sticky by request id, else the least in-flight replica, ties
broken at random. Nothing finishes while the batch is being submitted, so each replica gets N/R
requests, a random share, and then drains on its own: the replicas that drew short requests go idle
long before the longest request finishes. Three modes run on that split, each replica with its own
planner (``gpu_scale_sim.Ours``: what every replica's scheduler runs):

* ``plain``: no speculation;
* ``coupled``: our adaptive EAGLE-3 speculation, each draft pass on the replica's critical path;
* ``coupled-lm``: the same with the draft LM instead of EAGLE-3 (SpecActor's coupled baseline);
* ``decoupled``: the same, and every replica with no work left runs a draft LM ahead for the
  requests still running elsewhere (the protocol of ``verl_specrollout/decoupled``). While the
  busy replica verifies step t, the drafter pre-drafts, from the prefix committed before t, one tail
  per possible outcome of t (accept length j = 0..K, each with its guess of the token the target
  adds) and sends them; a busy step uses a request's tail when the tail for the realised outcome is
  there (a *hit*), and otherwise drafts coupled (the replica's own EAGLE-3, its sync pass included)
  or verifies nothing for that request, whichever the step's expected tokens per second favour.

What decides a hit (assumptions; the CLI sets them):

* the guessed token: after K of K accepted, the target's bonus token is the drafter's next token
  with the draft LM's next-position acceptance rate; after a rejection, the target samples from the
  residual and the drafter's top guess hits with ``guess_hit`` (an assumption: no measured figure
  here). With F drafters per busy replica, F guesses per outcome (fastest-of-N):
  ``1 - (1 - p) ** F``;
* time: the drafter's work per busy step, K passes over b x (K + 1) branches on its own GPU, shared by
  the busy replicas it serves, must fit in the verify step minus two one-way transfers (commit out,
  tails back); the fraction that fits is the fraction of requests served.

The draft LM is the family's small model (``DRAFT_LMS``), priced by the same roofline on one GPU;
its per-position acceptance is EAGLE-3's times ``alpha_scale``. The verifier never waits for a tail.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional

import numpy as np

from benchmarks.gpu_scale_sim import ALPHA, PROMPT_TOKENS, Hardware

# Qwen2.5-0.5B for the Qwen shapes, Llama-3.2-1B for the Llama one (same tokenizers as the targets).
DRAFT_LMS = {
    "7B": {"params": 0.49e9, "layers": 24, "hidden": 896, "kv_heads": 2, "head_dim": 64, "tp": 1},
    "32B": {"params": 0.49e9, "layers": 24, "hidden": 896, "kv_heads": 2, "head_dim": 64, "tp": 1},
    "70B": {"params": 1.24e9, "layers": 16, "hidden": 2048, "kv_heads": 8, "head_dim": 64, "tp": 1},
}
MODES = ("plain", "coupled", "coupled-lm", "decoupled")


@dataclasses.dataclass(frozen=True)
class Decoupled:
    transfer_s: float = 2e-4      # one way, commit -> drafter and tails -> verifier (same node: shared memory)
    guess_hit: float = 0.25       # P(the drafter's top guess is the target's token after a rejection)
    alpha_scale: float = 0.9      # draft LM's per-position acceptance relative to EAGLE-3's
    fallback: str = "auto"        # requests without a tail: "auto", "coupled" (own EAGLE-3) or "none"
    fan_out: bool = True          # several drafters per busy replica guess several tokens
    oracle: bool = False          # ceiling: every tail that is ready in time is the right one

    def __post_init__(self):
        if self.fallback not in ("auto", "coupled", "none"):
            raise ValueError(f"fallback must be auto, coupled or none, not {self.fallback!r}")
        if self.transfer_s < 0 or not 0.0 <= self.guess_hit <= 1.0 or not 0.0 < self.alpha_scale <= 1.0:
            raise ValueError(f"bad decoupled assumptions: {self}")


def assign_least_inflight(n: int, replicas: int, seed: int) -> np.ndarray:
    """Replica of each of n requests submitted at once, as veRL's GlobalRequestLoadBalancer picks:
    the least in-flight replica, ties at random (nothing is released while submitting)."""
    rng = np.random.default_rng(seed)
    inflight = np.zeros(replicas, dtype=int)
    out = np.empty(n, dtype=int)
    for i in range(n):
        candidates = np.flatnonzero(inflight == inflight.min())
        out[i] = rng.choice(candidates)
        inflight[out[i]] += 1
    return out


def expected_accepted(alpha, k: int) -> float:
    return float(np.cumprod(np.asarray(alpha[:k])).sum()) if k else 0.0


class Replica:
    def __init__(self, index: int, lengths: np.ndarray, policy, seed: int):
        self.index = index
        self.left = lengths.astype(float).copy()
        self.done = np.zeros_like(self.left)
        self.policy = policy
        self.rng = np.random.default_rng([seed, index])       # acceptance draws: the same in every mode
        self.hit_rng = np.random.default_rng([seed, index, 1])  # decoupled hits: their own stream
        # Outcome of each request's last step: drafts verified and accepted (0, 0 before the first).
        self.last_k = np.zeros(len(lengths), dtype=int)
        self.last_acc = np.zeros(len(lengths), dtype=int)
        self.clock = 0.0
        self.steps = 0
        self.hits = 0
        self.served = 0
        self.finish = 0.0 if len(lengths) == 0 else None

    @property
    def busy(self) -> bool:
        return bool((self.left > 0).any())


class ReplicaSim:
    def __init__(self, hw: Hardware, lm_hw: Optional[Hardware], assumptions: Decoupled = Decoupled()):
        self.hw, self.lm_hw, self.a = hw, lm_hw, assumptions
        self.lm_alpha = np.asarray(ALPHA) * assumptions.alpha_scale

    def lm_pass(self, rows: int, context_tokens: float) -> float:
        """One forward of the whole draft LM over `rows` tokens (the branches share their prefix's cache)."""
        lm = self.lm_hw
        return lm._roofline(lm.model["params"], rows, lm.kv_bytes(context_tokens)) + lm.costs.draft_overhead_s

    def guess_prob(self, rep: Replica, active: np.ndarray, fan: int) -> np.ndarray:
        """P(the drafter pre-drafted the tail for the outcome each request is about to see), given
        the request's last step: all of its drafts accepted -> the bonus token is the drafter's next
        token; a rejection -> the residual sample is the drafter's guess."""
        if self.a.oracle:
            return np.ones(active.size)
        k, acc = rep.last_k[active], rep.last_acc[active]
        nxt = self.lm_alpha[np.minimum(acc, len(self.lm_alpha) - 1)]
        p = np.where(acc >= k, nxt, self.a.guess_hit)
        return 1.0 - (1.0 - p) ** fan

    def step(self, rep: Replica, mode: str, drafters: int, busy: int) -> None:
        hw, a = self.hw, self.a
        active = np.flatnonzero(rep.left > 0)
        b = int(active.size)
        k = 0 if mode == "plain" else int(rep.policy.choose(b))
        context = float((PROMPT_TOKENS + rep.done[active]).sum())
        u = rep.rng.random((b, k))  # one acceptance draw per draft position, shared by both sources
        model_acc = np.cumprod(u < np.asarray(ALPHA[:k])[None, :], axis=1).sum(axis=1) if k else np.zeros(b, int)
        if mode == "coupled-lm":  # SpecActor's baseline: the draft LM on the verifier's critical path
            lm_acc = np.cumprod(u < self.lm_alpha[:k][None, :], axis=1).sum(axis=1) if k else np.zeros(b, int)
            dt, got, ks = hw.target_step(b, k, context) + k * self.lm_pass(b, context), 1 + lm_acc, np.full(b, k)
        elif mode != "decoupled" or drafters == 0 or k == 0:
            dt, got, ks = hw.step(b, k, context), 1 + model_acc, np.full(b, k)
        else:
            dt, got, ks = self._decoupled_step(rep, active, k, context, u, model_acc, drafters, busy)
        take = np.minimum(got, rep.left[active])
        rep.left[active] -= take
        rep.done[active] += take
        rep.last_k[active], rep.last_acc[active] = ks, got - 1
        rep.policy.observe(b, k, dt, got)
        rep.clock += dt
        rep.steps += 1
        if not rep.busy:
            rep.finish = rep.clock

    def _decoupled_step(self, rep, active, k, context, u, model_acc, drafters, busy):
        hw, a, b = self.hw, self.a, int(active.size)
        share = max(1.0, busy / drafters)  # busy replicas each drafter serves
        fan = max(1, drafters // busy) if a.fan_out else 1
        verify_s = hw.target_step(b, k, context)
        work = k * self.lm_pass(b * (k + 1), context) * share
        ready = float(np.clip((verify_s - 2 * a.transfer_s) / work, 0.0, 1.0)) if work > 0 else 1.0
        hit = rep.hit_rng.random(b) < ready * self.guess_prob(rep, active, fan)
        lm_acc = np.cumprod(u < self.lm_alpha[:k][None, :], axis=1).sum(axis=1)
        n_hit, n_miss = int(hit.sum()), b - int(hit.sum())
        # Fastest-of-N per request: once the replica's own head runs this step (its first pass covers
        # the whole batch anyway), a hit takes the source with more expected accepted tokens.
        head_for_hits = expected_accepted(ALPHA, k) >= expected_accepted(self.lm_alpha, k)

        def plan(use_head: bool):
            """(expected tokens, seconds, accepted, drafted K) of the step: misses draft with the
            head (use_head) or verify nothing; hits use their tail or the head."""
            n_head = (b if head_for_hits else n_miss) if use_head else 0
            tokens = (n_hit + (n_miss if use_head else 0)) * (k + 1) + (0 if use_head else n_miss)
            t = hw._roofline(hw.model["params"], tokens, hw.kv_bytes(context)) + hw.costs.kernel_s \
                + hw.costs.step_overhead_s
            if use_head:  # the head's first pass over the batch keeps its cache in sync
                t += hw.draft_pass(b, context) + (k - 1) * hw.draft_pass(n_head, context)
            by_head = np.zeros(b, bool) if not use_head else (np.ones(b, bool) if head_for_hits else ~hit)
            acc = np.where(by_head, model_acc, np.where(hit, lm_acc, 0))
            e_tail, e_head = expected_accepted(self.lm_alpha, k), expected_accepted(ALPHA, k)
            expected = b + (n_head * e_head + (n_hit - (n_hit if use_head and head_for_hits else 0)) * e_tail)
            return expected, t, acc, np.where(by_head | hit, k, 0)

        if a.fallback == "auto":
            options = [plan(True), plan(False)]
            chosen = max(options, key=lambda o: o[0] / o[1])
        else:
            chosen = plan(a.fallback == "coupled")
        _, seconds, acc, ks = chosen
        rep.hits += n_hit
        rep.served += b
        return seconds, 1 + acc, ks


def simulate_replicas(hw: Hardware, lm_hw: Optional[Hardware], make_policy: Callable[[int], object],
                      lengths: np.ndarray, replicas: int, mode: str, seed: int,
                      assumptions: Decoupled = Decoupled()) -> dict:
    """Whole-rollout seconds with R replicas (the last to finish), each replica's drain, and for
    ``decoupled`` the share of busy request-steps a drafter's tail served."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, not {replicas}")
    if mode == "decoupled" and lm_hw is None:
        raise ValueError("decoupled mode needs the drafter's hardware (a draft LM shape)")
    where = assign_least_inflight(len(lengths), replicas, seed)
    reps = [Replica(r, lengths[where == r], make_policy(int((where == r).sum())), seed) for r in range(replicas)]
    sim = ReplicaSim(hw, lm_hw, assumptions)
    while True:
        live = [r for r in reps if r.busy]
        if not live:
            break
        rep = min(live, key=lambda r: (r.clock, r.index))
        # Idle at this moment: finished before the step starts. A replica still working (even one
        # whose clock runs ahead) is busy, not a drafter.
        drafters = sum(1 for r in reps if not r.busy and r.finish <= rep.clock)
        sim.step(rep, mode, drafters, len(live))
    seconds = max(r.finish for r in reps)
    served = sum(r.served for r in reps)
    return {"seconds": seconds, "tokens": int(lengths.sum()), "steps": sum(r.steps for r in reps),
            "finish": [round(r.finish, 4) for r in reps], "requests": [int((where == r).sum()) for r in range(replicas)],
            "hit_share": (sum(r.hits for r in reps) / served) if served else 0.0,
            "idle_share": 1.0 - sum(r.finish for r in reps) / (replicas * seconds) if seconds else 0.0}


# ----------------------------------------------------------------------------- the comparison
GPUS_PER_JOB = 8
SPECACTOR = "SpecActor (arXiv 2511.16193): 2.0-2.4x mean rollout vs plain, 1.1-2.6x vs coupled speculative rollout"


def replicas_for(model: dict, gpus: int = GPUS_PER_JOB) -> int:
    """Replicas an 8-GPU job runs: one per tensor-parallel group."""
    return max(1, gpus // model["tp"])


def replica_grid(models, gpus, lengths, max_k, seed, costs, assumptions: Decoupled = Decoupled(),
                 replicas: Optional[int] = None) -> list:
    from benchmarks.gpu_calibration import GPUS
    from benchmarks.gpu_scale_sim import MODELS, make_policy

    variants = [(m, m, assumptions) for m in MODES] + [("decoupled-ceiling", "decoupled", dataclasses.replace(
        assumptions, oracle=True, alpha_scale=1.0))]
    rows = []
    for model in models:
        r = replicas or replicas_for(MODELS[model])
        for gpu in gpus:
            hw = Hardware(MODELS[model], GPUS[gpu], costs)
            lm = Hardware(DRAFT_LMS[model], GPUS[gpu], costs)
            row = {"model": model, "gpu": gpu, "replicas": r}
            for name, mode, a in variants:
                res = simulate_replicas(hw, lm, lambda n: make_policy("ours", max_k, max(n, 1)), lengths, r, mode, seed, a)
                row[name] = {"seconds": round(res["seconds"], 3), "hit_share": round(res["hit_share"], 3),
                             "idle_share": round(res["idle_share"], 3), "finish": res["finish"]}
            rows.append(row)
    return rows


def replica_ratios(rows: list) -> list:
    out = []
    for row in rows:
        s = {k: v["seconds"] for k, v in row.items() if isinstance(v, dict)}
        out.append({"model": row["model"], "gpu": row["gpu"], "replicas": row["replicas"],
                    "coupled_vs_plain": round(s["plain"] / s["coupled"], 3),
                    "decoupled_vs_plain": round(s["plain"] / s["decoupled"], 3),
                    "decoupled_vs_coupled": round(s["coupled"] / s["decoupled"], 3),
                    "decoupled_vs_coupled_lm": round(s["coupled-lm"] / s["decoupled"], 3),
                    "ceiling_vs_coupled": round(s["coupled"] / s["decoupled-ceiling"], 3),
                    "idle_share": row["coupled"]["idle_share"], "hit_share": row["decoupled"]["hit_share"]})
    return out


def table(ratios: list) -> str:
    head = ("model", "gpu", "R", "coupled/plain", "decoupled/plain", "decoupled/coupled", "decoupled/coupled-lm",
            "ceiling/coupled", "idle", "hits")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ratios:
        lines.append("| " + " | ".join(str(x) for x in (
            r["model"], r["gpu"], r["replicas"], r["coupled_vs_plain"], r["decoupled_vs_plain"], r["decoupled_vs_coupled"],
            r["decoupled_vs_coupled_lm"], r["ceiling_vs_coupled"], f"{r['idle_share']:.0%}", f"{r['hit_share']:.0%}")) + " |")
    return "\n".join(lines)
