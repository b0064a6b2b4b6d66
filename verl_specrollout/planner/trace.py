"""Step traces: recorded decode steps by (batch size, K), replayed through a policy in simulated
time, for hindsight evaluation of the planner (numpy; no torch / vLLM imports).

A trace holds, per cell (batch size B, draft length K), recorded steps: the step's wall seconds and
how many of its B requests accepted 0, 1, ..., K draft tokens (a histogram: a policy picks one K
per step, so which request got which outcome carries nothing it could use). Recorded ACROSS K (every
K at every B a workload visits), a trace says what any policy would have got: `replay` runs a
workload (requests with lengths, at most `concurrency` running) through a policy, charging each
step the next recorded step of the cell the policy chose, read cyclically, so every policy replays
the same recorded steps of a cell in the same order. The best K of a batch size in hindsight is the
cell with the most committed tokens per recorded second (`StepTrace.best_k`).

Sources: `synthetic_trace` (a step-time function and per-position acceptance: known truth),
`Planner.recorder` (set it to `StepTrace.record` on a live engine's planner; the scheduler feeds the
planner every step) and JSON lines on disk (`save` / `load`: one ``{"b", "k", "s", "acc"}`` per step).

Replay has no one-step lag: the K a step verifies is the K it drafts, as on a steady batch.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


class StepTrace:
    def __init__(self, max_k: int):
        if max_k < 1:
            raise ValueError("max_k must be >= 1")
        self.max_k = max_k
        # (B, K) -> list of (seconds, histogram of accepted draft tokens over the B requests)
        self.cells: Dict[Tuple[int, int], List[Tuple[float, np.ndarray]]] = {}

    def add(self, batch_size: int, k: int, seconds: float, hist: Sequence[int]) -> None:
        """One step: hist[j] of its batch_size requests accepted j draft tokens (j = 0..k)."""
        hist = np.asarray(hist, dtype=np.int64)
        if batch_size < 1 or not 0 <= k <= self.max_k or not 0 < seconds < float("inf"):
            raise ValueError(f"bad step: batch_size={batch_size} k={k} seconds={seconds}")
        if len(hist) != k + 1 or hist.sum() != batch_size or (hist < 0).any():
            raise ValueError(f"hist must count {batch_size} requests over 0..{k} accepted, got {hist.tolist()}")
        self.cells.setdefault((int(batch_size), int(k)), []).append((float(seconds), hist))

    def record(self, batch_size: int, k: int, seconds: float, accepted: Sequence[int]) -> None:
        """One step from per-request accepted counts (requests that verified nothing count as 0);
        the signature of Planner.recorder."""
        acc = np.clip(np.asarray(accepted, dtype=np.int64), 0, k)
        hist = np.bincount(acc, minlength=k + 1)[: k + 1]
        hist[0] += batch_size - len(acc)
        self.add(batch_size, k, seconds, hist)

    def well_sampled(self, min_steps: int) -> "StepTrace":
        """The cells with at least min_steps recorded steps (a live engine also records the few
        steps at the batch sizes its requests pass through as they finish)."""
        out = StepTrace(self.max_k)
        out.cells = {c: v for c, v in self.cells.items() if len(v) >= min_steps}
        return out

    def __len__(self) -> int:
        return sum(len(v) for v in self.cells.values())

    def batch_sizes(self) -> List[int]:
        return sorted({b for b, _ in self.cells})

    def ks(self, batch_size: int) -> List[int]:
        return sorted(k for b, k in self.cells if b == batch_size)

    def nearest_batch(self, batch_size: int, k: int) -> int:
        """The recorded batch size closest (in ratio) to `batch_size` that has K = k."""
        if (batch_size, k) in self.cells:
            return batch_size
        have = [b for b, kk in self.cells if kk == k]
        if not have:
            raise KeyError(f"no recorded step with K={k}")
        return min(have, key=lambda b: (abs(np.log(b / batch_size)), b))

    def step(self, batch_size: int, k: int, i: int) -> Tuple[float, np.ndarray]:
        """The i-th (cyclically) recorded step of the cell nearest (batch_size, k)."""
        steps = self.cells[self.nearest_batch(batch_size, k), k]
        return steps[i % len(steps)]

    def throughput(self, batch_size: int, k: int) -> float:
        """Committed tokens per second of the cell: sum of (B + accepted) over sum of seconds."""
        steps = self.cells[batch_size, k]
        tokens = sum(float(h.sum() + h @ np.arange(len(h))) for _, h in steps)
        return tokens / sum(s for s, _ in steps)

    def best_k(self, batch_size: int) -> int:
        return max(self.ks(batch_size), key=lambda k: self.throughput(batch_size, k))

    # ------------------------------------------------------------------ disk
    def save(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(json.dumps({"max_k": self.max_k}) + "\n")
            for (b, k), steps in sorted(self.cells.items()):
                for s, h in steps:
                    f.write(json.dumps({"b": b, "k": k, "s": s, "acc": h.tolist()}) + "\n")

    @classmethod
    def load(cls, path: str) -> "StepTrace":
        with open(path) as f:
            head = json.loads(f.readline())
            trace = cls(int(head["max_k"]))
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    trace.add(int(r["b"]), int(r["k"]), float(r["s"]), r["acc"])
        return trace


def synthetic_trace(
    step_seconds: Callable[[int, int], float],
    alphas: Callable[[int], Sequence[float]],
    batch_sizes: Sequence[int],
    max_k: int,
    steps_per_cell: int = 8,
    noise: float = 0.03,
    seed: int = 0,
    requests_per_cell: int = 0,
) -> StepTrace:
    """A trace of an engine with known costs and acceptance: step_seconds(B, K) (times a lognormal
    noise of relative size `noise`) and conditional per-position acceptance alphas(B)[0..max_k-1],
    each request drawing its own accepted prefix. A cell holds steps_per_cell steps, more at small
    batch sizes if needed to hold `requests_per_cell` requests (a hindsight answer, not noise)."""
    rng = np.random.default_rng(seed)
    trace = StepTrace(max_k)
    for b in batch_sizes:
        al = np.asarray(alphas(b), dtype=np.float64)
        for k in range(max_k + 1):
            # P(exactly j accepted) = prod_{i<j} a_i * (1 - a_j), the last one the prefix of all k.
            reach = np.concatenate([[1.0], np.cumprod(al[:k])])
            p = reach[:-1] * (1.0 - al[:k]) if k else np.zeros(0)
            p = np.append(p, reach[-1])
            t = step_seconds(b, k)
            for _ in range(max(steps_per_cell, -(-requests_per_cell // b))):
                hist = rng.multinomial(b, p / p.sum())
                trace.add(b, k, t * float(np.exp(noise * rng.standard_normal())), hist)
    return trace


# ------------------------------------------------------------------------ policies
class StaticPolicy:
    """One K whatever the batch size."""

    def __init__(self, k: int):
        self.k = k

    def choose(self, batch_size: int) -> int:
        return self.k

    def observe(self, batch_size: int, k: int, seconds: float, hist: np.ndarray) -> None:
        pass


class PlannerPolicy:
    """The planner, fed the way vllm_adapter/scheduler.py feeds it (observe_step, observe_time,
    observe_drafts, tick), with its clock on simulated time."""

    def __init__(self, planner):
        self.planner = planner
        self.now = 0.0
        planner.replan_budget.clock = lambda: self.now

    def choose(self, batch_size: int) -> int:
        return self.planner.k_for(batch_size)

    def observe(self, batch_size: int, k: int, seconds: float, hist: np.ndarray) -> None:
        p = self.planner
        self.now += seconds
        tokens = batch_size * (k + 1)
        p.observe_step(batch_size, tokens, k, None)
        p.observe_time(batch_size, tokens, k, seconds)
        p.observe_drafts([(k, a) for a, n in enumerate(hist.tolist()) for _ in range(n)] if k else [])
        p.tick()


# ------------------------------------------------------------------------ replay
@dataclasses.dataclass
class ReplayResult:
    seconds: float
    steps: int
    tokens: int
    # per step: (batch size, K)
    ks: List[Tuple[int, int]]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def replay(trace: StepTrace, policy, lengths: Sequence[int], concurrency: Optional[int] = None,
           seed: int = 0, cursor: Optional[Dict[Tuple[int, int], int]] = None) -> ReplayResult:
    """Decode every request to its length, at most `concurrency` at a time (default: all at once,
    a GRPO rollout), in simulated time: each step costs the next recorded step of the cell
    (running requests, the policy's K) and commits 1 + accepted tokens per request, the step's
    outcomes dealt to its requests in a seeded random order. `cursor` (cell -> steps read) carries
    the reading position over calls: pass the same dict to successive rollouts of one policy, or
    each rollout re-reads a cell's first steps."""
    rng = np.random.default_rng(seed)
    left = np.asarray(lengths, dtype=np.int64).copy()
    cap = len(left) if concurrency is None else int(concurrency)
    started = min(cap, len(left))
    running = list(range(started))
    cursor = {} if cursor is None else cursor
    seconds, steps, ks = 0.0, 0, []
    while running:
        b = len(running)
        k = int(policy.choose(b))
        cell = (trace.nearest_batch(b, k), k)
        i = cursor.get(cell, 0)
        cursor[cell] = i + 1
        dt, hist = trace.step(b, k, i)
        hist = _resize(hist, b)
        got = 1 + rng.permutation(np.repeat(np.arange(len(hist)), hist))
        idx = np.asarray(running)
        left[idx] -= np.minimum(got, left[idx])
        policy.observe(b, k, dt, hist)
        seconds += dt
        steps += 1
        ks.append((b, k))
        running = [r for r in running if left[r] > 0]
        while len(running) < cap and started < len(left):
            running.append(started)
            started += 1
    return ReplayResult(seconds, steps, int(np.sum(lengths)), ks)


def _resize(hist: np.ndarray, batch_size: int) -> np.ndarray:
    """A histogram of another batch size scaled to batch_size requests (largest remainders)."""
    total = int(hist.sum())
    if total == batch_size:
        return hist
    exact = hist * (batch_size / total)
    out = np.floor(exact).astype(np.int64)
    short = batch_size - int(out.sum())
    out[np.argsort(-(exact - out), kind="stable")[:short]] += 1
    return out
