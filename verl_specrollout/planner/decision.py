"""The planner's decisions: pure functions from estimates (E[K] by batch size, the fitted step-cost
model, where K has been timed) to a KTable (numpy; no torch / vLLM imports). No state: the planner
(planner/planner.py) keeps the windows, the re-plan timing and what has been measured, and calls these.

The objective, the cold start, the trust region and the probes are described in planner/planner.py's
module docstring; `allocate_verification_budget` is the per-request split of a draft-token cap.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from verl_specrollout.planner.cost_model import StepCostModel
from verl_specrollout.planner.ktable import KTable

# The cold start verifies at most about this many tokens per step (cold_cap): memory-bound for any
# multi-billion-parameter target on an accelerator (a roofline knee sits at a few hundred tokens).
COLD_TOKENS = 64
# Batch sizes whose throughput-by-K rows a plan reports (PlannerStats.throughput_by_k).
REPORTED_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# ---------------------------------------------------------------- tables
def plan_grid(max_batch: int, exact_upto: int = 16, ratio: float = 1.05) -> List[int]:
    """Batch sizes the planner evaluates: every size up to `exact_upto`, then ~5 % apart
    (powers of two always included); sizes in between take the K of the grid point below.
    Keeps a re-plan to ~100 evaluations at max_batch 1024."""
    pts = set(range(1, min(exact_upto, max_batch) + 1))
    b = float(exact_upto)
    while b < max_batch:
        b *= ratio
        pts.add(min(max_batch, int(round(b))))
    p2 = 1
    while p2 <= max_batch:
        pts.add(p2)
        p2 *= 2
    return sorted(pts)


def cold_cap(batch_size, cold_tokens: int):
    """Largest K the cold start tries at a batch size (an int or an array of them): verify at most
    ~cold_tokens tokens per step, but K = 1 always (large batches must see K = 0 and 1)."""
    return np.maximum(1, cold_tokens // np.maximum(batch_size, 1) - 1)


def cold_start_table(k: int, max_batch: int, max_k: int, cold_tokens: int) -> KTable:
    """The table of a cold-start interval that tries `k`: min(k, cold cap) at every batch size."""
    caps = cold_cap(np.arange(1, max_batch + 1), cold_tokens)
    return KTable.of([0] + np.minimum(min(k, max_k), caps).tolist())


def default_explore_ks(max_k: int) -> List[int]:
    ks = [max_k, 0, 1, max(1, max_k // 2)]
    return [k for i, k in enumerate(ks) if k not in ks[:i]]


def initial_table(max_k: int, max_batch: int, cold_tokens: int = COLD_TOKENS) -> KTable:
    """The adaptive planner's first table (what the engine starts with)."""
    return cold_start_table(default_explore_ks(max_k)[0], max_batch, max_k, cold_tokens)


def initial_rows(max_k: int, max_batch: int, cold_tokens: int = COLD_TOKENS) -> List[List[int]]:
    """initial_table as vLLM rows (vllm_adapter/engine_kwargs.initial_table sends them)."""
    return initial_table(max_k, max_batch, cold_tokens).rows()


# ---------------------------------------------------------------- pure choices
def draft_passes(k, zero_k_passes: int):
    """Draft forward passes the engine runs to draft k tokens (an int or an array of them): k,
    but never fewer than a K = 0 step's (a model drafter keeps its KV cache in sync with one pass
    even at K = 0)."""
    return np.maximum(k, zero_k_passes) if isinstance(k, np.ndarray) else max(k, zero_k_passes)


def throughput(batch_size: int, k: int, expected: Sequence[float], cost: StepCostModel, zero_k_passes: int) -> float:
    """Committed tokens per second of a decode step of batch_size requests drafting k."""
    seconds = cost.predict_local(batch_size * (1 + k), batch_size, draft_passes(k, zero_k_passes))
    return batch_size * expected[k] / seconds


def throughput_table(
    batch_sizes: Sequence[int], expected: Sequence[float], cost: StepCostModel, max_k: int, zero_k_passes: int
) -> np.ndarray:
    """throughput() for every batch size (rows) and K = 0..max_k (columns), in one model call.
    `expected` is one [E[0..max_k]] list for all rows, or one per row."""
    batch = np.asarray(batch_sizes, dtype=np.float64)[:, None]
    k = np.arange(max_k + 1)[None, :]
    seconds = cost.predict_local(batch * (1 + k), batch, draft_passes(k, zero_k_passes))
    return batch * np.asarray(expected, dtype=np.float64)[..., : max_k + 1] / seconds


def best_k(tokens_per_second: np.ndarray, current: np.ndarray, hysteresis: float) -> np.ndarray:
    """Per row, the K of highest throughput (the smaller K on exact ties), unless the row's
    `current` K (-1: none) is within `hysteresis` of it: switching on noise churns the table."""
    best = np.argmax(tokens_per_second, axis=1)  # first maximum: the smallest such K
    rows = np.arange(len(best))
    valid = (current >= 0) & (current < tokens_per_second.shape[1])
    current_tps = tokens_per_second[rows, np.where(valid, current, 0)]
    stay = valid & (tokens_per_second[rows, best] <= current_tps * (1.0 + hysteresis))
    return np.where(stay, current, best)


def probe_k(tokens_per_second: np.ndarray, chosen: np.ndarray, sign: int, tolerance: float) -> np.ndarray:
    """Per row, the neighbour chosen+sign (else chosen-sign) whose throughput is within
    `tolerance` of the chosen K's; the chosen K itself where neither neighbour is."""
    rows = np.arange(len(chosen))
    n_k = tokens_per_second.shape[1]
    floor = tokens_per_second[rows, chosen] * (1.0 - tolerance)
    out = chosen.copy()
    undecided = np.ones(len(chosen), dtype=bool)
    for cand in (chosen + sign, chosen - sign):
        inside = (cand >= 0) & (cand < n_k)
        ok = undecided & inside & (tokens_per_second[rows, np.clip(cand, 0, n_k - 1)] >= floor)
        out[ok] = cand[ok]
        undecided &= ~ok
    return out


def choose_k(
    batch_size: int,
    expected: Sequence[float],
    cost: StepCostModel,
    max_k: int,
    zero_k_passes: int = 0,
    current: Optional[int] = None,
    hysteresis: float = 0.0,
) -> Tuple[int, List[float]]:
    """Best K for one batch size; keeps `current` unless another K is better by > hysteresis.
    Also returns the throughput of every K."""
    tokens_per_second = throughput_table([batch_size], expected, cost, max_k, zero_k_passes)
    k = best_k(tokens_per_second, np.array([-1 if current is None else current]), hysteresis)
    return int(k[0]), tokens_per_second[0].tolist()


def allocate_verification_budget(
    budget: int,
    rates: Sequence[float],
    max_lens: Sequence[int],
    min_gain: float = 0.0,
) -> List[int]:
    """Split `budget` draft tokens across requests to maximise expected accepted tokens.

    Request r with running acceptance rate rates[r] gets k_r <= max_lens[r] tokens; its j-th
    token is worth rates[r]**j (geometric model), so taking marginal gains greedily from a
    heap is optimal. Tokens worth less than `min_gain` are never verified (min_gain = the
    marginal step cost of one verified token times the current throughput makes the budget
    self-limiting; see Estimates.min_token_gain). Ties go to the earlier request.
    """
    n = len(rates)
    alloc = [0] * n
    if budget <= 0 or n == 0:
        return alloc
    heap = []
    for r in range(n):
        p = min(max(float(rates[r]), 0.0), 1.0)
        if max_lens[r] > 0 and p > 0 and p >= min_gain:
            heap.append((-p, r, p))
    heapq.heapify(heap)
    left = budget
    while heap and left > 0:
        neg_gain, r, p = heapq.heappop(heap)
        alloc[r] += 1
        left -= 1
        if alloc[r] < max_lens[r]:
            g = -neg_gain * p
            if g > 0 and g >= min_gain:
                heapq.heappush(heap, (-g, r, p))
    return alloc


# ---------------------------------------------------------------- one plan
@dataclass
class Plan:
    """One re-plan's decision: K* per batch size, and what the probes of the next intervals read."""

    table: KTable
    grid: np.ndarray  # batch sizes evaluated (grid[0] = 1); sizes in between take the K below
    probe_tps: np.ndarray  # predicted tokens/s by K at each grid size, -inf outside the probe region
    reported_tps: Dict[int, List[float]] = field(default_factory=dict)  # REPORTED_BATCH_SIZES rows

    def chosen(self) -> np.ndarray:
        return np.asarray([self.table[b] for b in self.grid])

    def spread(self, per_grid: np.ndarray) -> KTable:
        """A K per grid point -> a table (each size takes the K of the grid point at or below it)."""
        span = np.diff(np.append(self.grid, self.table.max_batch + 1))
        return KTable.of([0] + np.repeat(per_grid, span).tolist())


def decide(
    grid: np.ndarray,
    expected: np.ndarray,
    cost: StepCostModel,
    max_k: int,
    zero_k_passes: int,
    trusted_k: np.ndarray,
    max_tokens_seen: int,
    hysteresis: float,
    current: Optional[Sequence[int]] = None,
) -> Plan:
    """The best table for batch sizes 1..grid[-1] under the models: at each grid size the K of highest predicted throughput among
    K <= trusted_k (kept at `current`'s K within `hysteresis`). Probes may later try one K beyond the
    trust region, verifying no more tokens per step than `max_tokens_seen` (past that the model
    extrapolates over a knee it may not know)."""
    grid = np.asarray(grid)
    predicted = throughput_table(grid, expected, cost, max_k, zero_k_passes)
    reported = {int(b): row.tolist() for b, row in zip(grid, predicted) if b in REPORTED_BATCH_SIZES}
    ks = np.arange(max_k + 1)[None, :]
    trusted = ks <= trusted_k[:, None]
    current_k = np.full(len(grid), -1)
    if current is not None:
        inside = grid < len(current)
        current_k[inside] = np.asarray(list(current))[grid[inside]]
    chosen = best_k(np.where(trusted, predicted, -np.inf), current_k, hysteresis)
    probe_ok = (ks <= trusted_k[:, None] + 1) & (grid[:, None] * (1 + ks) <= max_tokens_seen)
    # Sizes between grid points take the K of the grid point below (grid[0] is 1; plan_grid ends at max_batch).
    span = np.diff(np.append(grid, int(grid[-1]) + 1))
    return Plan(KTable.of([0] + np.repeat(chosen, span).tolist()), grid,
                np.where(probe_ok | trusted, predicted, -np.inf), reported)


def probe_table(plan: Plan, sign: int, tolerance: float) -> KTable:
    """The plan with K*+sign (else K*-sign) wherever that probe is predicted to lose at most
    `tolerance` of the plan's throughput; K* elsewhere."""
    if not len(plan.grid):
        return plan.table
    return plan.spread(probe_k(plan.probe_tps, plan.chosen(), sign, tolerance))


def cover_table(table: KTable, plan: Plan, tolerance: float, untimed: Callable[[int, int], bool]) -> KTable:
    """`table` with a coverage probe of K*+1 (else K*-1) at each grid size where `untimed(b, K)` and
    the model predicts that K within `tolerance` of the plan's K* (and inside the probe region)."""
    if not len(plan.grid):
        return table
    out = list(table)
    chosen = plan.chosen()
    max_k = plan.probe_tps.shape[1] - 1
    floor = plan.probe_tps[np.arange(len(chosen)), chosen] * (1.0 - tolerance)
    ends = np.append(plan.grid[1:], table.max_batch + 1).tolist()
    for i, b in enumerate(plan.grid.tolist()):
        for cand in (chosen[i] + 1, chosen[i] - 1):
            if 0 <= cand <= max_k and plan.probe_tps[i, cand] >= floor[i] and untimed(b, int(cand)):
                out[b:ends[i]] = [int(cand)] * (ends[i] - b)
                break
    return KTable.of(out)
