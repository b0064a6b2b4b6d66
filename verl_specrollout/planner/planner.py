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

Output is a KTable (planner/ktable.py): vLLM's dense lookup, which the scheduler installs as
`Scheduler.dynamic_sd_lookup` as it is, and which converts to vLLM's
`num_speculative_tokens_per_batch_size` rows (K = 0 rows ARE accepted by vLLM 0.31's
`validate_and_normalize_dynamic_sd_schedule`, which only requires K >= 0).

Three parts, one job each: estimation (planner/estimates.py: planner/acceptance.py's
AcceptanceEstimator and planner/cost_model.py's StepCostModel, fitted online, and which
(batch-size class, K) cells were timed), decision (planner/decision.py: pure functions from those
estimates to a KTable), and the bookkeeping here (`Planner`: modes, the cold-start phases, re-plan
timing, the K histogram, and its stats as rollout_stats.PlannerStats).

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

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from verl_specrollout.config import MODES, PlannerConfig
from verl_specrollout.planner.acceptance import AcceptanceEstimator
from verl_specrollout.planner.cost_model import StepCostModel
from verl_specrollout.planner.decision import (  # noqa: F401 (re-exported: the planner's public names)
    COLD_TOKENS,
    REPORTED_BATCH_SIZES,
    Plan,
    allocate_verification_budget,
    best_k,
    choose_k,
    cold_cap,
    cold_start_table,
    cover_table,
    decide,
    default_explore_ks,
    draft_passes,
    initial_rows,
    initial_table,
    plan_grid,
    probe_k,
    probe_table,
    throughput,
    throughput_table,
)
from verl_specrollout.planner.estimates import Estimates
from verl_specrollout.planner.ktable import KTable
from verl_specrollout.rollout_stats import PlannerStats


class ReplanBudget:
    """Re-planning runs on the engine's critical path (inside the scheduler): when one re-plan took
    longer than `overhead` of the engine time since the previous one ended, the next is postponed.
    A re-plan over a full window at max_batch 1024 costs ~25-60 ms on two busy CPU cores (python -m
    benchmarks.replan_cost; 0.25-0.47 s when the fit was pure Python): still several steps of a fast
    engine with tiny batches, so the budget stays. None or 0: never postponed."""

    def __init__(self, overhead: Optional[float], clock=time.perf_counter):
        self.overhead = overhead
        self.clock = clock  # seconds; tests and trace replays drive it with simulated step times
        self.last_seconds = 0.0  # what the last re-plan took
        self.skipped = 0
        self._last_end: Optional[float] = None

    def run(self, replan):
        """replan() unless the budget postpones it (then None)."""
        now = self.clock()
        if self.overhead and self._last_end is not None and self.last_seconds > self.overhead * (now - self._last_end):
            self.skipped += 1
            return None
        out = replan()
        end = self.clock()
        self.last_seconds, self._last_end = end - now, end
        return out


class Planner:
    """Bookkeeping around the estimators and the decision (see the module doc).

    Settings come from the typed PlannerConfig (`settings`, or its fields as keyword arguments);
    the rest are the planner's own tuning, fixed by the measurements cited at each.
    """

    def __init__(
        self,
        max_k: int,
        max_batch: Optional[int] = None,
        *,
        zero_k_passes: int = 0,
        settings: Optional[PlannerConfig] = None,
        explore_ks: Optional[Sequence[int]] = None,
        explore_tolerance: float = 0.03,
        cover_tolerance: float = 0.05,
        cold_tokens: int = COLD_TOKENS,
        cost_window: int = 4096,
        overhead_budget: Optional[float] = 0.02,
        clock=time.perf_counter,
        **config_fields,
    ):
        if settings is not None and config_fields:
            raise TypeError(f"Planner: give settings or PlannerConfig fields, not both ({sorted(config_fields)})")
        cfg = settings if settings is not None else PlannerConfig(**config_fields)
        max_batch = cfg.max_batch if max_batch is None else max_batch
        if cfg.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
        if max_k < 1 or max_batch < 1:
            raise ValueError("max_k and max_batch must be >= 1")
        self.settings = cfg
        self.max_k = max_k
        self.max_batch = max_batch
        # Live state (set_mode, the scheduler and benchmarks change these while the engine runs).
        self.mode = cfg.mode
        self.user_table = [list(r) for r in cfg.table] if cfg.table else None
        self.replan_interval = max(1, int(cfg.replan_interval))
        self.hysteresis = cfg.hysteresis
        self.explore_every = cfg.explore_every
        self.explore_ks = list(default_explore_ks(max_k) if explore_ks is None else explore_ks)
        # A periodic probe may lose at most this fraction of predicted throughput where it runs.
        self.explore_tolerance = explore_tolerance
        # A coverage probe of a K never timed near a batch size may lose at most this fraction.
        self.cover_tolerance = cover_tolerance
        # The cold start verifies at most ~cold_tokens tokens per step (cold_cap).
        self.cold_tokens = max(2, int(cold_tokens))
        self.estimates = Estimates(
            max_k, AcceptanceEstimator(max_k, decay=cfg.acceptance_decay, prior=cfg.prior_acceptance),
            StepCostModel(window=cost_window), zero_k_passes,
            min_probe_steps=max(4, self.replan_interval // 2), cold_tokens=self.cold_tokens)
        self.replan_budget = ReplanBudget(overhead_budget, clock)
        # --- decision state
        self._plan: KTable = self._cold_table(0)  # the exploited plan
        self._last_plan: Optional[Plan] = None  # the last decide(): its grid and prices (probe tables)
        self.table: KTable = self._initial_table()  # what is installed
        self.steps = 0
        self.replans = 0
        self.table_changes = 0
        self._explore_phase = 0
        self._planned = False
        self._probes = 0
        # recorder(batch_size, k, seconds, accepted per request), called for every timed step that
        # verified the K it drafts (e.g. planner/trace.py's StepTrace.record); None: off.
        self.recorder = None
        self._timed_step: Optional[Tuple[int, int, int, float]] = None
        self._requests_this_step: Optional[int] = None
        # --- counts for stats(): K drafted per batch size, every observed step
        self.k_hist: Dict[int, Dict[int, int]] = {}

    # --------------------------------------------------------------- tables
    def _initial_table(self) -> KTable:
        if self.mode == "off":
            return KTable.uniform(0, self.max_batch)
        if self.user_table:  # static with a table, or adaptive with a pinned table: the table wins
            return KTable.from_rows(self.user_table, self.max_batch, self.max_k)
        if self.mode == "static":
            return KTable.uniform(self.max_k, self.max_batch)
        return self._cold_table(0)

    def _cold_table(self, phase: int) -> KTable:
        """The cold-start table of exploration phase `phase` (cycles through explore_ks). Where the
        cap makes it repeat the previous phase's K (large batches: 1, 0, 1, 1), it takes K = 0
        instead: K = 1 costs most there, and one interval of it is enough."""
        n = len(self.explore_ks)
        table = cold_start_table(self.explore_ks[phase % n], self.max_batch, self.max_k, self.cold_tokens)
        if phase:
            before = cold_start_table(self.explore_ks[(phase - 1) % n], self.max_batch, self.max_k, self.cold_tokens)
            table = KTable.of(0 if k == kb else k for k, kb in zip(table, before))
        return table

    def rows(self) -> List[List[int]]:
        return self.table.rows()

    def lookup(self, max_batch: Optional[int] = None) -> List[int]:
        """The installed table in vLLM's dynamic_sd_lookup form, sized to max_batch (default: the planner's)."""
        return self.table.lookup(max_batch)

    def k_for(self, b: int) -> int:
        return self.table.k_for(b)

    def planned(self) -> KTable:
        """The table the planner exploits: the installed one without probes (adaptive; before the
        first plan, the cold-start table)."""
        return self._plan

    def set_mode(self, mode: str, table: Optional[Sequence[Sequence[int]]] = None) -> KTable:
        """Switch policy live (benchmarks: compare policies inside ONE engine)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.user_table = [list(r) for r in table] if table else None
        new = self._initial_table()
        if mode == "adaptive" and not self.user_table and self.cost.fit() and self.cost.k_varied:
            new = self._plan = self.plan()
            self._planned = True
        elif mode == "adaptive":
            self._planned, self._explore_phase = False, 0
        self._install(new)
        return self.table

    def _install(self, table: KTable) -> bool:
        if table != self.table:
            self.table = table
            self.table_changes += 1
            return True
        return False

    # ------------------------------------------------------------ estimates
    # The estimators, as the scheduler, the benchmarks and tests reach them.
    @property
    def cost(self) -> StepCostModel:
        return self.estimates.cost

    @cost.setter
    def cost(self, model: StepCostModel) -> None:
        self.estimates.cost = model

    @property
    def acceptance(self) -> AcceptanceEstimator:
        return self.estimates.acceptance

    @property
    def zero_k_passes(self) -> int:
        return self.estimates.zero_k_passes

    @zero_k_passes.setter
    def zero_k_passes(self, passes: int) -> None:
        self.estimates.zero_k_passes = passes

    def passes_for(self, k: int) -> int:
        return self.estimates.passes_for(k)

    # -------------------------------------------------------------- observe

    def observe_step(self, requests: int, tokens: int, drafted_k: int, seconds: Optional[float]) -> None:
        """One engine step: `requests` scheduled, `tokens` target tokens, drafting `drafted_k`
        tokens for the next step (vLLM's num_spec_tokens_to_schedule), wall time `seconds`
        (None to skip timing, e.g. a step with prefills)."""
        if requests <= 0:
            return
        self._requests_this_step = requests
        h = self.k_hist.setdefault(requests, {})
        h[drafted_k] = h.get(drafted_k, 0) + 1
        if seconds is not None:
            self._observe_cost(requests, tokens, drafted_k, seconds)

    def observe_time(self, requests: int, tokens: int, drafted_k: int, seconds: float) -> None:
        """Wall time of a pure-decode step measured apart from observe_step (the scheduler
        measures a step's full cycle between consecutive output updates: vllm_adapter/step_timer.py)."""
        if requests > 0:
            self._observe_cost(requests, tokens, drafted_k, seconds)

    def _observe_cost(self, requests: int, tokens: int, drafted_k: int, seconds: float) -> None:
        if self.estimates.observe_cost(requests, tokens, drafted_k, seconds):
            self._timed_step = (requests, tokens, int(drafted_k), float(seconds))  # for the recorder

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

    def tick(self) -> Optional[KTable]:
        """Call once per engine step after observing it. Returns the new table when the installed
        one changed, else None."""
        self.steps += 1
        if self.mode != "adaptive" or self.user_table:
            return None
        if self.steps % self.replan_interval:
            return None
        return self.replan_budget.run(self.replan)

    # ----------------------------------------------------------------- plan
    def replan(self) -> Optional[KTable]:
        self.replans += 1
        if not self._planned:
            # Cold start: one interval per exploration K (capped where the batch is large) until
            # the window holds steps at two or more K and a model fits; at least two intervals.
            fitted = self._explore_phase >= 1 and self.cost.fit() and self.cost.k_varied
            if not fitted:
                self._explore_phase += 1
                return self._changed(self._cold_table(self._explore_phase))
        elif not self.cost.fit():
            return None
        self._plan = self.plan(current=self._plan if self._planned else None)
        self._planned = True
        if not self.explore_every:  # no exploration after the cold start
            return self._changed(self._plan)
        table = self._plan
        if self.replans % self.explore_every == 0:
            self._probes += 1
            table = self.probe_table(1 if self._probes % 2 else -1)
        return self._changed(self.cover(table))

    def cover(self, table: KTable) -> KTable:
        """`table` with a coverage probe of K*+1 (else K*-1) wherever that K has not been timed in the
        batch size's class and the model predicts it within `cover_tolerance` of the plan's K*
        (and within the probe region: see plan). Such a cell is priced by extrapolation alone; a
        rollout's batch size visits each class for a few re-plan intervals only, so waiting for the
        periodic probe (explore_every) would leave most classes priced that way. Each (class, K) is
        probed once; later probes are the periodic ones."""
        if self._last_plan is None:
            return table
        return cover_table(table, self._last_plan, self.cover_tolerance, self.estimates.untimed)

    def probe_table(self, sign: int) -> KTable:
        """The last plan with K*+sign (else K*-sign) wherever that probe is predicted to lose at
        most `explore_tolerance` of the plan's throughput; K* elsewhere (see the module doc)."""
        if self._last_plan is None:
            return self._plan
        return probe_table(self._last_plan, sign, self.explore_tolerance)

    def _changed(self, table: KTable) -> Optional[KTable]:
        return self.table if self._install(table) else None

    def plan(self, current: Optional[Sequence[int]] = None) -> KTable:
        """The best table under the current models (no exploration)."""
        if not self.cost.fitted:
            self.cost.fit()
        if not self.cost.fitted:
            return self._cold_table(0)
        grid = np.array(plan_grid(self.max_batch))
        # Trust region: the plan picks among K timed near a batch size (probes go one beyond, and
        # verify no more tokens per step than some step already did).
        est = self.estimates
        self._last_plan = decide(grid, est.expected_by_batch(grid), est.cost, self.max_k, est.zero_k_passes,
                                 est.trusted_max_k(grid), max(est.max_tokens_timed, self.cold_tokens),
                                 self.hysteresis, current)
        return self._last_plan.table

    # -------------------------------------------------------------- metrics
    def stats(self) -> PlannerStats:
        acc = self.acceptance
        return PlannerStats(
            mode=self.mode,
            steps=self.steps,
            replans=self.replans,
            replans_skipped=self.replan_budget.skipped,
            last_replan_seconds=self.replan_budget.last_seconds,
            table_changes=self.table_changes,
            table=self.rows(),
            k_hist={b: dict(h) for b, h in sorted(self.k_hist.items())},
            alpha=acc.alphas(),
            expected_tokens=acc.expected_table(),
            accepted_per_pos=[a / max(acc.total_drafts, 1) for a in acc.total_accepted_per_pos],
            num_drafts=acc.total_drafts,
            num_draft_tokens=acc.total_draft_tokens,
            num_accepted_tokens=acc.total_accepted,
            cost_model=self.cost.describe(),
            throughput_by_k=dict(self._last_plan.reported_tps) if self._last_plan is not None else {},
        )

    @classmethod
    def from_config(cls, cfg, max_batch: Optional[int] = None, zero_k_passes: Optional[int] = None) -> "Planner":
        """From a SpecRolloutConfig (verl_specrollout.config): its planner block as the settings."""
        if zero_k_passes is None:
            zero_k_passes = 0 if not cfg.has_draft_model or cfg.planner.skip_draft_at_k0 else 1
        return cls(cfg.max_k, max_batch, zero_k_passes=zero_k_passes, settings=cfg.planner)
