"""Concurrency-aware choice of the draft length K (numpy; no torch / vLLM imports).

For every batch size B in 1..max_batch the planner picks K in 0..max_k maximising the
expected committed tokens per second of a decode step::

    throughput(B, K) = B * E[K] / (t_target(B*(1+K) tokens, B) + t_draft(passes(K), B))

with E[K] from `AcceptanceEstimator` and the times from `StepCostModel`, both fitted online
from the engine's own measurements. K = 0 means no speculation (E = 1, B tokens).

`passes(K)` is the number of draft forward passes the engine runs when it drafts K tokens.
In vLLM's dynamic-K path (0.31/0.32) a model drafter (eagle/eagle3/draft_model) still runs
its first forward when K = 0 ("to keep the drafter KV cache in sync", llm_base_proposer.py),
so for those `passes(0) = 1`; ngram drafting costs no model pass (`passes(0) = 0`).

Output is vLLM's format: `num_speculative_tokens_per_batch_size` rows
``[[min_bs, max_bs, K], ...]`` (inclusive, contiguous, first row starts at 1; K = 0 rows
ARE accepted by vLLM 0.31's `validate_and_normalize_dynamic_sd_schedule`, which only
requires K >= 0) and the dense 1-indexed lookup the scheduler reads
(`Scheduler.dynamic_sd_lookup[batch_size] -> K`, index 0 unused).

Modes (PlannerConfig.mode):
- adaptive: explore a few K values for one re-plan interval each (cold start: the cost
  model needs K to vary to separate draft from verification cost), then plan from the
  fitted model every `replan_interval` steps, with hysteresis and a small periodic
  +-1 exploration so the draft-cost terms stay identified.
- static: the user's table, else max_k for every batch size. Never re-plans.
- off: K = 0 for every batch size (speculation configured but nothing drafted).

A verification budget (`allocate_verification_budget`) splits a cap of draft tokens per
step across requests by their running acceptance: the j-th draft token of a request with
acceptance rate p is worth p**j expected tokens, so the greedy allocation by marginal gain
is optimal for the geometric model.
"""

from __future__ import annotations

import heapq
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from verl_specrollout.config import MODES
from verl_specrollout.policy.acceptance import AcceptanceEstimator
from verl_specrollout.policy.cost_model import StepCostModel

# Batch sizes whose throughput-by-K rows stats() reports.
REPORTED_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# ---------------------------------------------------------------- table formats
def dense_to_rows(dense: Sequence[int]) -> List[List[int]]:
    """1-indexed dense lookup (index 0 unused) -> contiguous [min_bs, max_bs, K] rows."""
    rows: List[List[int]] = []
    for b in range(1, len(dense)):
        k = int(dense[b])
        if rows and rows[-1][2] == k:
            rows[-1][1] = b
        else:
            rows.append([b, b, k])
    return rows


def rows_to_dense(rows: Sequence[Sequence[int]], max_batch: int, max_k: int) -> List[int]:
    """Same semantics as vLLM's build_dynamic_sd_schedule_lookup (gaps and the tail carry the
    previous K forward; K is capped at max_k)."""
    parsed = sorted((int(r[0]), int(r[1]), int(r[2])) for r in rows)
    if not parsed or parsed[0][0] != 1:
        raise ValueError("table must start at batch size 1")
    dense = [0] * (max_batch + 1)
    nxt, last = 1, parsed[0][2]
    for lo, hi, k in parsed:
        for b in range(nxt, min(lo, max_batch + 1)):  # gap: carry the previous K
            dense[b] = min(max_k, last)
        for b in range(max(lo, nxt), min(hi, max_batch) + 1):
            dense[b] = min(max_k, k)
        nxt, last = max(nxt, hi + 1), k
    for b in range(nxt, max_batch + 1):
        dense[b] = min(max_k, last)
    return dense


def resize_dense(dense: Sequence[int], max_batch: int) -> List[int]:
    """Truncate or extend (carrying the last K) a dense lookup to cover 1..max_batch."""
    out = list(dense[: max_batch + 1])
    last = out[-1] if len(out) > 1 else 0
    out.extend([last] * (max_batch + 1 - len(out)))
    out[0] = 0
    return out


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
    """throughput() for every batch size (rows) and K = 0..max_k (columns), in one model call."""
    batch = np.asarray(batch_sizes, dtype=np.float64)[:, None]
    k = np.arange(max_k + 1)[None, :]
    seconds = cost.predict_local(batch * (1 + k), batch, draft_passes(k, zero_k_passes))
    return batch * np.asarray(expected[: max_k + 1], dtype=np.float64) / seconds


def best_k(tokens_per_second: np.ndarray, current: np.ndarray, hysteresis: float) -> np.ndarray:
    """Per row, the K of highest throughput (the smaller K on exact ties), unless the row's
    `current` K (-1: none) is within `hysteresis` of it: switching on noise churns the table."""
    best = np.argmax(tokens_per_second, axis=1)  # first maximum: the smallest such K
    rows = np.arange(len(best))
    valid = (current >= 0) & (current < tokens_per_second.shape[1])
    current_tps = tokens_per_second[rows, np.where(valid, current, 0)]
    stay = valid & (tokens_per_second[rows, best] <= current_tps * (1.0 + hysteresis))
    return np.where(stay, current, best)


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
    self-limiting; see Planner.min_token_gain). Ties go to the earlier request.
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


# ---------------------------------------------------------------------- Planner
class Planner:
    def __init__(
        self,
        max_k: int,
        max_batch: int = 1024,
        mode: str = "adaptive",
        table: Optional[Sequence[Sequence[int]]] = None,
        replan_interval: int = 16,
        acceptance_decay: float = 0.98,
        prior_acceptance: float = 0.6,
        zero_k_passes: int = 0,
        hysteresis: float = 0.03,
        explore_every: int = 8,
        explore_ks: Optional[Sequence[int]] = None,
        cost_window: int = 4096,
        overhead_budget: Optional[float] = 0.02,
        clock=time.perf_counter,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_k < 1 or max_batch < 1:
            raise ValueError("max_k and max_batch must be >= 1")
        self.max_k = max_k
        self.max_batch = max_batch
        self.mode = mode
        self.user_table = [list(r) for r in table] if table else None
        self.replan_interval = max(1, int(replan_interval))
        self.zero_k_passes = zero_k_passes
        self.hysteresis = hysteresis
        self.explore_every = explore_every
        if explore_ks is None:
            ks = [max_k, 0, 1, max(1, max_k // 2)]
            explore_ks = [k for i, k in enumerate(ks) if k not in ks[:i]]
        self.explore_ks = list(explore_ks)
        self.cost = StepCostModel(window=cost_window)
        # Re-planning runs on the engine's critical path (inside the scheduler): when one
        # re-plan took longer than `overhead_budget` of the time since the previous one, the
        # next is postponed. A re-plan over a full window at max_batch 1024 costs ~25-60 ms on
        # two busy CPU cores (python -m benchmarks.replan_cost; 0.25-0.47 s when the fit was pure
        # Python): still several steps of a fast engine with tiny batches, so the budget stays.
        self.overhead_budget = overhead_budget
        self.clock = clock  # seconds; tests drive it with simulated step times
        self._last_replan_end: Optional[float] = None
        self._last_replan_seconds = 0.0
        self.replans_skipped = 0
        self.acceptance = AcceptanceEstimator(max_k, decay=acceptance_decay, prior=prior_acceptance)
        self._plan: List[int] = [0] + [max_k] * max_batch  # the exploited plan
        self.dense: List[int] = self._initial_dense()  # what is installed
        self.steps = 0
        self.replans = 0
        self.table_changes = 0
        self._explore_phase = 0
        self._planned = False
        self._last_tps: Dict[int, List[float]] = {}
        # metrics
        self.k_hist: Dict[int, Dict[int, int]] = {}
        self.steps_with_spec_off = 0
        self.steps_observed = 0

    # --------------------------------------------------------------- tables
    def _initial_dense(self) -> List[int]:
        if self.mode == "off":
            return [0] * (self.max_batch + 1)
        if self.mode == "static":
            if self.user_table:
                return rows_to_dense(self.user_table, self.max_batch, self.max_k)
            return [0] + [self.max_k] * self.max_batch
        if self.user_table:  # adaptive with a pinned table: the table wins
            return rows_to_dense(self.user_table, self.max_batch, self.max_k)
        return [0] + [self.explore_ks[0]] * self.max_batch

    def rows(self) -> List[List[int]]:
        return dense_to_rows(self.dense)

    def lookup(self, max_batch: Optional[int] = None) -> List[int]:
        return resize_dense(self.dense, max_batch) if max_batch else list(self.dense)

    def k_for(self, b: int) -> int:
        return self.dense[min(max(b, 1), self.max_batch)]

    def set_mode(self, mode: str, table: Optional[Sequence[Sequence[int]]] = None) -> List[int]:
        """Switch policy live (benchmarks: compare policies inside ONE engine)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.user_table = [list(r) for r in table] if table else None
        self._explore_phase = len(self.explore_ks) - 1 if self.cost.fitted else 0
        new = self._initial_dense()
        if mode == "adaptive" and not self.user_table and self.cost.fit():
            new = self._plan = self.plan()
            self._planned = True
        self._install(new)
        return self.dense

    def _install(self, dense: List[int]) -> bool:
        if dense != self.dense:
            self.dense = dense
            self.table_changes += 1
            return True
        return False

    # -------------------------------------------------------------- observe
    def passes_for(self, k: int) -> int:
        return draft_passes(k, self.zero_k_passes)

    def observe_step(self, requests: int, tokens: int, drafted_k: int, seconds: Optional[float]) -> None:
        """One engine step: `requests` scheduled, `tokens` target tokens, drafting `drafted_k`
        tokens for the next step (vLLM's num_spec_tokens_to_schedule), wall time `seconds`
        (None to skip timing, e.g. a step with prefills)."""
        if requests <= 0:
            return
        self.steps_observed += 1
        h = self.k_hist.setdefault(requests, {})
        h[drafted_k] = h.get(drafted_k, 0) + 1
        if drafted_k == 0:
            self.steps_with_spec_off += 1
        if seconds is not None:
            self.cost.observe(tokens, requests, self.passes_for(drafted_k), seconds)

    def observe_time(self, requests: int, tokens: int, drafted_k: int, seconds: float) -> None:
        """Wall time of a pure-decode step measured apart from observe_step (the scheduler
        measures a step's full cycle between consecutive output updates: vllm_adapter/step_timer.py)."""
        if requests > 0:
            self.cost.observe(tokens, requests, self.passes_for(drafted_k), seconds)

    def observe_drafts(self, pairs: Sequence[Tuple[int, int]]) -> None:
        """The step's per-request (num_draft_tokens, num_accepted) verification results."""
        self.acceptance.observe_requests(pairs)

    def tick(self) -> Optional[List[int]]:
        """Call once per engine step after observing it. Returns the new dense lookup when
        the installed table changed, else None."""
        self.steps += 1
        if self.mode != "adaptive" or self.user_table:
            return None
        if self.steps % self.replan_interval:
            return None
        now = self.clock()
        if (self.overhead_budget and self._last_replan_end is not None
                and self._last_replan_seconds > self.overhead_budget * (now - self._last_replan_end)):
            self.replans_skipped += 1
            return None
        out = self.replan()
        end = self.clock()
        self._last_replan_seconds, self._last_replan_end = end - now, end
        return out

    # ----------------------------------------------------------------- plan
    def replan(self) -> Optional[List[int]]:
        self.replans += 1
        n_explore = len(self.explore_ks)
        if self._explore_phase < n_explore - 1:
            # Cold start: one interval per exploration K (the cost model cannot separate
            # drafting from verification until K has varied).
            self._explore_phase += 1
            k = self.explore_ks[self._explore_phase]
            return self._changed([0] + [k] * self.max_batch)
        if not self.cost.fit():
            # Still not enough distinct measurements (e.g. no steps ran): keep cycling.
            k = self.explore_ks[self.replans % n_explore]
            return self._changed([0] + [k] * self.max_batch)
        self._plan = self.plan(current=self._plan if self._planned else None)
        self._planned = True
        if self.explore_every and self.replans % self.explore_every == 0:
            sign = 1 if (self.replans // self.explore_every) % 2 else -1
            probe = [0] + [min(self.max_k, max(0, k + sign)) for k in self._plan[1:]]
            return self._changed(probe)
        return self._changed(list(self._plan))

    def _changed(self, dense: List[int]) -> Optional[List[int]]:
        return list(self.dense) if self._install(dense) else None

    def plan(self, current: Optional[Sequence[int]] = None) -> List[int]:
        """The best dense lookup under the current models (no exploration)."""
        if not self.cost.fitted:
            self.cost.fit()
        if not self.cost.fitted:
            return [0] + [self.max_k] * self.max_batch
        grid = np.array(plan_grid(self.max_batch))
        tokens_per_second = throughput_table(
            grid, self.acceptance.expected_table(), self.cost, self.max_k, self.zero_k_passes)
        current_k = np.full(len(grid), -1)
        if current is not None:
            inside = grid < len(current)
            current_k[inside] = np.asarray(current)[grid[inside]]
        chosen = best_k(tokens_per_second, current_k, self.hysteresis)
        # Sizes between grid points take the K of the grid point below (grid[0] is 1).
        span = np.diff(np.append(grid, self.max_batch + 1))
        self._last_tps = {int(b): row.tolist() for b, row in zip(grid, tokens_per_second) if b in REPORTED_BATCH_SIZES}
        return [0] + np.repeat(chosen, span).tolist()

    def min_token_gain(self, b: int, k: int) -> float:
        """Expected tokens one extra verified draft token must bring to pay for itself at
        batch size b and draft length k: marginal step cost of a token x current throughput."""
        if not self.cost.fitted:
            return 0.0
        tokens, passes = b * (1 + k), self.passes_for(k)
        seconds_per_token = self.cost.predict(tokens + 1, b, passes) - self.cost.predict(tokens, b, passes)
        tokens_per_second = throughput(b, k, self.acceptance.expected_table(), self.cost, self.zero_k_passes)
        return max(0.0, seconds_per_token * tokens_per_second)

    # -------------------------------------------------------------- metrics
    def stats(self) -> dict:
        al = self.acceptance.alphas()
        acc = self.acceptance
        return {
            "mode": self.mode,
            "steps": self.steps,
            "replans": self.replans,
            "replans_skipped": self.replans_skipped,
            "last_replan_seconds": self._last_replan_seconds,
            "table_changes": self.table_changes,
            "table": self.rows(),
            "k_hist": {b: dict(h) for b, h in sorted(self.k_hist.items())},
            "spec_off_fraction": self.steps_with_spec_off / max(self.steps_observed, 1),
            "alpha": al,
            "expected_tokens": acc.expected_table(),
            "accepted_per_pos": [a / max(acc.total_drafts, 1) for a in acc.total_accepted_per_pos],
            "num_drafts": acc.total_drafts,
            "num_draft_tokens": acc.total_draft_tokens,
            "num_accepted_tokens": acc.total_accepted,
            "acceptance_rate": acc.total_accepted / max(acc.total_draft_tokens, 1),
            "cost_model": self.cost.describe(),
            "throughput_by_k": {b: list(t) for b, t in self._last_tps.items()},
        }

    @classmethod
    def from_config(cls, cfg, max_batch: Optional[int] = None, zero_k_passes: Optional[int] = None) -> "Planner":
        """From a SpecRolloutConfig (verl_specrollout.config)."""
        p = cfg.planner
        if zero_k_passes is None:
            zero_k_passes = 0 if cfg.method == "ngram" or p.skip_draft_at_k0 else 1
        return cls(
            max_k=cfg.max_k,
            max_batch=max_batch or p.max_batch,
            mode=p.mode,
            table=p.table,
            replan_interval=p.replan_interval,
            acceptance_decay=p.acceptance_decay,
            prior_acceptance=p.prior_acceptance,
            zero_k_passes=zero_k_passes,
            hysteresis=p.hysteresis,
            explore_every=p.explore_every,
        )

