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
- adaptive: plan from the fitted models every `replan_interval` steps, with hysteresis, after a
  short cold start, within a trust region, and with probes of a neighbouring K that cost little
  (below).
- static: the user's table, else max_k for every batch size. Never re-plans.
- off: K = 0 for every batch size (speculation configured but nothing drafted).

Cold start and exploration (adaptive). Trying a K is never free, and what it costs grows with the
batch: verifying B*(1+K) tokens is nearly free while the target is memory-bound (small B) and
costs in proportion once it is compute-bound (large B; a K=8 step at B ~ 1000 costs ~9x a K=0
one). So:

- Cold start (no identified cost model yet): one re-plan interval per K in `explore_ks`
  ([max_k, 0, 1, max_k // 2]), but at batch size B never above the cold cap
  max(1, cold_tokens // B - 1): K verifies at most ~`cold_tokens` tokens per step, a size that
  is memory-bound on any accelerator for a multi-billion-parameter target. Large batches try
  only K = 1 and 0 (what a hand table uses there; 1, 0, 1, 0 rather than 1, 0, 1, 1); long
  drafts are tried where the batch is small, the tail of a rollout. It ends after two or more
  intervals, once the window holds two K and the model fits. The first table the engine gets
  is the first of these (`initial_rows`, also vllm_adapter/engine_kwargs.initial_table).
- Trust region: the plan picks, at each batch size, among the K timed (min_probe_steps steps) in
  its batch-size class or the class above it, or within the cold cap (`trusted_max_k`). Probes
  may go one K beyond, and never verify more tokens per step than some timed step did: past
  both, the model extrapolates over a knee it has not seen (e.g. K = 2 at B = 128 past a
  256-token knee, after the cold start saw K = 0 and 1 there, priced as cheap and costing 2.5x).
- Probes only where the model predicts they cost little: every `explore_every`-th re-plan, K*+-1
  (the sign alternates) where the probe's predicted throughput is within `explore_tolerance` of
  K*'s (near-ties, where a measurement can change the choice); and at every re-plan, once per
  batch-size class, a neighbour K never timed in that class if predicted within
  `cover_tolerance` (`cover`), since a rollout visits each class for a few intervals only. A K
  the model prices far worse is not run again to find out: what it could gain is small next to
  what trying it costs at a compute-bound batch.
- Identifiability: the cost model separates drafting from verification only from steps at
  several K (tokens = B*(1+K) and passes = K move together at one K). The cold start runs K = 0
  and 1 at the batch sizes it meets, and up to max_k where B is small; afterwards the planned K
  itself changes with B (0-1 in the crowded start, larger in the tail), coverage probes add the
  neighbours of each class's K, and periodic probes those at the boundaries between K. When the
  window holds one K only (a long run at one batch size), StepCostModel.fit keeps the previous
  coefficients rather than fit an unidentified model; what the data cannot split between a
  draft pass's constant and per-token cost goes to per-token cost (StepCostModel's RIDGE).

Acceptance is estimated per batch-size class (planner/acceptance.py), so E[K] at B comes from
the steps at about that B (a rollout's tail is its long responses, late in them), shrunk toward
the next larger batches'.

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
from verl_specrollout.planner.acceptance import AcceptanceEstimator, batch_class
from verl_specrollout.planner.cost_model import StepCostModel

# The cold start verifies at most about this many tokens per step (cold_cap): memory-bound for any
# multi-billion-parameter target on an accelerator (a roofline knee sits at a few hundred tokens).
COLD_TOKENS = 64
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


def cold_cap(batch_size, cold_tokens: int):
    """Largest K the cold start tries at a batch size (an int or an array of them): verify at most
    ~cold_tokens tokens per step, but K = 1 always (large batches must see K = 0 and 1)."""
    return np.maximum(1, cold_tokens // np.maximum(batch_size, 1) - 1)


def cold_start_dense(k: int, max_batch: int, max_k: int, cold_tokens: int) -> List[int]:
    """Dense lookup of a cold-start interval that tries `k`: min(k, cold cap) at every batch size."""
    caps = cold_cap(np.arange(1, max_batch + 1), cold_tokens)
    return [0] + np.minimum(min(k, max_k), caps).tolist()


def default_explore_ks(max_k: int) -> List[int]:
    ks = [max_k, 0, 1, max(1, max_k // 2)]
    return [k for i, k in enumerate(ks) if k not in ks[:i]]


def initial_rows(max_k: int, max_batch: int, cold_tokens: int = COLD_TOKENS) -> List[List[int]]:
    """The adaptive planner's first table, as vLLM rows (what the engine starts with)."""
    return dense_to_rows(cold_start_dense(default_explore_ks(max_k)[0], max_batch, max_k, cold_tokens))


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
        explore_tolerance: float = 0.03,
        cover_tolerance: float = 0.05,
        cold_tokens: int = COLD_TOKENS,
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
        self.explore_ks = list(default_explore_ks(max_k) if explore_ks is None else explore_ks)
        # A periodic probe may lose at most this fraction of predicted throughput where it runs.
        self.explore_tolerance = explore_tolerance
        # A coverage probe of a K never timed near a batch size may lose at most this fraction.
        self.cover_tolerance = cover_tolerance
        # The cold start verifies at most ~cold_tokens tokens per step (cold_cap).
        self.cold_tokens = max(2, int(cold_tokens))
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
        self._plan: List[int] = self._cold_dense(0)  # the exploited plan
        self.dense: List[int] = self._initial_dense()  # what is installed
        self.steps = 0
        self.replans = 0
        self.table_changes = 0
        self._explore_phase = 0
        self._planned = False
        self._last_tps: Dict[int, List[float]] = {}
        # The last plan's grid and its predicted throughput by K (for probe tables).
        self._grid = np.zeros(0, dtype=np.int64)
        self._grid_tps = np.zeros((0, max_k + 1))
        self._probes = 0
        # Timed steps per (batch-size class, K): where a K has been measured (coverage probes).
        self._timed_steps: Dict[Tuple[int, int], int] = {}
        self.min_probe_steps = max(4, self.replan_interval // 2)
        self._max_tokens_timed = 0
        # recorder(batch_size, k, seconds, accepted per request), called for every timed step that
        # verified the K it drafts (e.g. planner/trace.py's StepTrace.record); None: off.
        self.recorder = None
        self._timed_step: Optional[Tuple[int, int, int, float]] = None
        self._requests_this_step: Optional[int] = None
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
        return self._cold_dense(0)

    def _cold_dense(self, phase: int) -> List[int]:
        """The cold-start table of exploration phase `phase` (cycles through explore_ks). Where the
        cap makes it repeat the previous phase's K (large batches: 1, 0, 1, 1), it takes K = 0
        instead: K = 1 costs most there, and one interval of it is enough."""
        n = len(self.explore_ks)
        dense = cold_start_dense(self.explore_ks[phase % n], self.max_batch, self.max_k, self.cold_tokens)
        if phase:
            before = cold_start_dense(self.explore_ks[(phase - 1) % n], self.max_batch, self.max_k, self.cold_tokens)
            dense = [0 if k == kb else k for k, kb in zip(dense, before)]
        return dense

    def rows(self) -> List[List[int]]:
        return dense_to_rows(self.dense)

    def lookup(self, max_batch: Optional[int] = None) -> List[int]:
        return resize_dense(self.dense, max_batch) if max_batch else list(self.dense)

    def k_for(self, b: int) -> int:
        return self.dense[min(max(b, 1), self.max_batch)]

    def planned(self) -> List[int]:
        """The dense lookup the planner exploits: the installed one without probes (adaptive;
        before the first plan, the cold-start table)."""
        return list(self._plan)

    def set_mode(self, mode: str, table: Optional[Sequence[Sequence[int]]] = None) -> List[int]:
        """Switch policy live (benchmarks: compare policies inside ONE engine)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.user_table = [list(r) for r in table] if table else None
        new = self._initial_dense()
        if mode == "adaptive" and not self.user_table and self.cost.fit() and self.cost.k_varied:
            new = self._plan = self.plan()
            self._planned = True
        elif mode == "adaptive":
            self._planned, self._explore_phase = False, 0
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
        self._requests_this_step = requests
        self.steps_observed += 1
        h = self.k_hist.setdefault(requests, {})
        h[drafted_k] = h.get(drafted_k, 0) + 1
        if drafted_k == 0:
            self.steps_with_spec_off += 1
        if seconds is not None:
            self._observe_cost(requests, tokens, drafted_k, seconds)

    def observe_time(self, requests: int, tokens: int, drafted_k: int, seconds: float) -> None:
        """Wall time of a pure-decode step measured apart from observe_step (the scheduler
        measures a step's full cycle between consecutive output updates: vllm_adapter/step_timer.py)."""
        if requests > 0:
            self._observe_cost(requests, tokens, drafted_k, seconds)

    def _observe_cost(self, requests: int, tokens: int, drafted_k: int, seconds: float) -> None:
        if tokens > 0 and seconds is not None and 0 < seconds < float("inf"):
            key = (batch_class(requests), int(drafted_k))
            self._timed_steps[key] = self._timed_steps.get(key, 0) + 1
            self._timed_step = (requests, tokens, int(drafted_k), float(seconds))
            self._max_tokens_timed = max(self._max_tokens_timed, int(tokens))
        self.cost.observe(tokens, requests, self.passes_for(drafted_k), seconds)

    def observe_drafts(self, pairs: Sequence[Tuple[int, int]], batch_size: Optional[int] = None) -> None:
        """The step's per-request (num_draft_tokens, num_accepted) verification results; the
        step's batch size defaults to the requests of the last observe_step (else len(pairs))."""
        self.acceptance.observe_requests(pairs, batch_size or self._requests_this_step)
        self._requests_this_step = None
        if self.recorder is not None and self._timed_step is not None:
            requests, tokens, k, seconds = self._timed_step
            if tokens == requests * (1 + k):  # a step that verified the K it drafts: one clean cell
                self.recorder(requests, k, seconds, [a for _, a in pairs])
        self._timed_step = None

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
        if not self._planned:
            # Cold start: one interval per exploration K (capped where the batch is large) until
            # the window holds steps at two or more K and a model fits; at least two intervals.
            fitted = self._explore_phase >= 1 and self.cost.fit() and self.cost.k_varied
            if not fitted:
                self._explore_phase += 1
                return self._changed(self._cold_dense(self._explore_phase))
        elif not self.cost.fit():
            return None
        self._plan = self.plan(current=self._plan if self._planned else None)
        self._planned = True
        if not self.explore_every:  # no exploration after the cold start
            return self._changed(list(self._plan))
        table = list(self._plan)
        if self.replans % self.explore_every == 0:
            self._probes += 1
            table = self.probe_table(1 if self._probes % 2 else -1)
        return self._changed(self.cover(table))

    def cover(self, table: List[int]) -> List[int]:
        """`table` with a coverage probe of K*+1 (else K*-1) wherever that K has not been timed in the
        batch size's class and the model predicts it within `cover_tolerance` of the plan's K*
        (and within the probe region: see plan). Such a cell is priced by extrapolation alone; a
        rollout's batch size visits each class for a few re-plan intervals only, so waiting for the
        periodic probe (explore_every) would leave most classes priced that way. Each (class, K) is
        probed once; later probes are the periodic ones."""
        out = list(table)
        if not len(self._grid):
            return out
        chosen = np.asarray([self._plan[b] for b in self._grid])
        floor = self._grid_tps[np.arange(len(chosen)), chosen] * (1.0 - self.cover_tolerance)
        ends = np.append(self._grid[1:], self.max_batch + 1).tolist()
        for i, b in enumerate(self._grid.tolist()):
            for cand in (chosen[i] + 1, chosen[i] - 1):
                if (0 <= cand <= self.max_k and self._grid_tps[i, cand] >= floor[i]
                        and self._timed_steps.get((batch_class(b), int(cand)), 0) < self.min_probe_steps):
                    out[b:ends[i]] = [int(cand)] * (ends[i] - b)
                    break
        return out

    def probe_table(self, sign: int) -> List[int]:
        """The last plan with K*+sign (else K*-sign) wherever that probe is predicted to lose at
        most `explore_tolerance` of the plan's throughput; K* elsewhere (see the module doc)."""
        if not len(self._grid):
            return list(self._plan)
        chosen = np.asarray([self._plan[b] for b in self._grid])
        probe = probe_k(self._grid_tps, chosen, sign, self.explore_tolerance)
        span = np.diff(np.append(self._grid, self.max_batch + 1))
        return [0] + np.repeat(probe, span).tolist()

    def _changed(self, dense: List[int]) -> Optional[List[int]]:
        return list(self.dense) if self._install(dense) else None

    def plan(self, current: Optional[Sequence[int]] = None) -> List[int]:
        """The best dense lookup under the current models (no exploration)."""
        if not self.cost.fitted:
            self.cost.fit()
        if not self.cost.fitted:
            return self._cold_dense(0)
        grid = np.array(plan_grid(self.max_batch))
        predicted = throughput_table(grid, self.expected_by_batch(grid), self.cost, self.max_k, self.zero_k_passes)
        self._last_tps = {int(b): row.tolist() for b, row in zip(grid, predicted) if b in REPORTED_BATCH_SIZES}
        # Trust region: the plan picks among K timed near a batch size (probes go one beyond).
        trusted_k = self.trusted_max_k(grid)
        ks = np.arange(self.max_k + 1)[None, :]
        tokens_per_second = np.where(ks <= trusted_k[:, None], predicted, -np.inf)
        current_k = np.full(len(grid), -1)
        if current is not None:
            inside = grid < len(current)
            current_k[inside] = np.asarray(current)[grid[inside]]
        chosen = best_k(tokens_per_second, current_k, self.hysteresis)
        # What probes may try: one K beyond the trust region, verifying no more tokens per step than
        # some step already did (past that the model extrapolates over a knee it may not know).
        seen = max(self._max_tokens_timed, self.cold_tokens)
        probe_ok = (ks <= trusted_k[:, None] + 1) & (grid[:, None] * (1 + ks) <= seen)
        self._grid, self._grid_tps = grid, np.where(probe_ok | (ks <= trusted_k[:, None]), predicted, -np.inf)
        # Sizes between grid points take the K of the grid point below (grid[0] is 1).
        span = np.diff(np.append(grid, self.max_batch + 1))
        return [0] + np.repeat(chosen, span).tolist()

    def trusted_max_k(self, batch_sizes: Sequence[int]) -> np.ndarray:
        """Largest K the plan may choose at each batch size: the largest K timed (for at least
        min_probe_steps steps) in its batch-size class or the class above it (a rollout's batch
        falls: that class ran just before), and at least the cold cap. A K beyond is priced by
        extrapolating the cost model in K, which a knee it has not seen makes wrong by multiples
        (e.g. K = 2 at B = 128 past a 256-token knee, after seeing K = 0 and 1 there); probes,
        gated by their predicted loss, extend the region one K at a time."""
        top: Dict[int, int] = {}
        for (c, k), n in self._timed_steps.items():
            if n >= self.min_probe_steps:
                top[c] = max(top.get(c, -1), k)
        out = []
        for b, cap in zip(batch_sizes, cold_cap(np.asarray(batch_sizes), self.cold_tokens).tolist()):
            c = batch_class(int(b))
            out.append(min(self.max_k, max(cap, top.get(c, -1), top.get(c + 1, -1))))
        return np.asarray(out)

    def expected_by_batch(self, batch_sizes: Sequence[int]) -> np.ndarray:
        """E[0..max_k] at each batch size (rows), from its batch-size class's acceptance."""
        by_class: Dict[int, List[float]] = {}
        rows = []
        for b in batch_sizes:
            c = batch_class(int(b))
            if c not in by_class:
                by_class[c] = self.acceptance.expected_table(int(b))
            rows.append(by_class[c])
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), self.max_k + 1)

    def min_token_gain(self, b: int, k: int) -> float:
        """Expected tokens one extra verified draft token must bring to pay for itself at
        batch size b and draft length k: marginal step cost of a token x current throughput."""
        if not self.cost.fitted:
            return 0.0
        tokens, passes = b * (1 + k), self.passes_for(k)
        seconds_per_token = self.cost.predict(tokens + 1, b, passes) - self.cost.predict(tokens, b, passes)
        tokens_per_second = throughput(b, k, self.acceptance.expected_table(b), self.cost, self.zero_k_passes)
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
            zero_k_passes = 0 if cfg.base_method == "ngram" or p.skip_draft_at_k0 else 1
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

