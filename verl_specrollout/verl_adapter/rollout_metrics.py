"""What one rollout server reports to the trainer each training step (owned by
verl_adapter/server.py's SpecRolloutHttpServer; summed over servers by verl_adapter/trainer_hooks.py).

Per step, as a rollout_stats.RolloutStepStats: the draft versions and reload counts, deltas of
vLLM's spec-decode counters, per-request (drafted, accepted, verify steps) of the requests finished
since the previous call (for veRL's rollout/spec_* where the trainer does not read them), the
group drafter's per-source counts (group methods; read from the workers by ``collective_rpc``),
the planner's stats as the scheduler last published them, with the K histogram of the step, and
with decoupled speculation on, the idle drafter's utilisation and counts (verl_adapter/decoupled_hooks.py).
"""

from __future__ import annotations

import collections
import json
import logging
import os
from typing import Any, Optional

from verl_specrollout import compat
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.metrics import counts_delta
from verl_specrollout.rollout_stats import KHist, PlannerStats, RequestSpecStats, RolloutStepStats, SpecCounters
from verl_specrollout.verl_adapter.draft_lifecycle import DraftLifecycle

logger = logging.getLogger("verl_specrollout.verl_adapter.server")

# Per-request stats kept between two metric calls: bounded, so a trainer that never asks (metrics
# off, a foreign trainer) cannot grow the server's memory; far above a step's requests per server.
MAX_STEP_REQUESTS = 1 << 16


class RequestSpecTracker:
    """veRL 0.9 fills spec_num_* per rollout only for MTP, from a RequestOutput field vLLM does not
    have; so its rollout/spec_accept_* metrics stay empty with our rollout. We keep each finished
    request's per-request stats (vLLM's per_request_spec_decode_metrics) by request id as veRL's
    server iterates the engine's stream, hand them to the rollout's extra_fields, and keep them
    until the trainer's next step."""

    def __init__(self):
        self._by_request: dict = {}
        self._done: collections.deque = collections.deque(maxlen=MAX_STEP_REQUESTS)
        self._wrapped = None  # the engine whose generate is wrapped
        self._warned_none = False

    def watch(self, engine) -> None:
        """Wrap the engine's generate once, to see each request's last output."""
        if self._wrapped is engine:
            return
        from verl_specrollout.vllm_adapter.spec_counters import request_spec_fields

        engine_generate = engine.generate
        table = self._by_request

        async def generate(*args, **kwargs):
            request_id = kwargs.get("request_id")
            async for output in engine_generate(*args, **kwargs):
                if output.finished and request_id is not None and output.outputs:
                    fields = request_spec_fields(output.outputs[0])
                    if fields:
                        table[request_id] = fields
                yield output

        engine.generate = generate
        self._wrapped = engine

    def finished(self, request_id, out: Any) -> None:
        """veRL's generate returned `out` for `request_id`: keep its stats for the step, and add
        them to its extra_fields (veRL's own MTP path may have filled them: those win)."""
        fields = self._by_request.pop(request_id, None)
        if fields:
            self._done.append(fields)
        extra = getattr(out, "extra_fields", None)
        if fields and isinstance(extra, dict):
            for key, value in fields.items():
                extra.setdefault(key, value)
        elif not self._warned_none:
            self._warned_none = True
            logger.warning("verl-specrollout: no per-request spec-decode stats for request %s (%s); veRL's "
                           "rollout/spec_accept_* stay empty", request_id,
                           "extra_fields missing" if not isinstance(extra, dict) else "vLLM returned none")

    def take(self) -> Optional[RequestSpecStats]:
        """The requests finished since the previous call (None: none)."""
        done = list(self._done)
        self._done.clear()
        if not done:
            return None
        return RequestSpecStats(drafts=[int(f.get(compat.VERL_SPEC_DRAFT_TOKENS_FIELD, 0)) for f in done],
                                accepts=[int(f.get(compat.VERL_SPEC_ACCEPTED_TOKENS_FIELD, 0)) for f in done],
                                verifies=[int(f.get(compat.VERL_SPEC_VERIFY_STEPS_FIELD, 0)) for f in done])


class RolloutMetrics:
    """Deltas since the previous ``step()`` of what this server's engine counts."""

    def __init__(self, cfg: SpecRolloutConfig):
        self._cfg = cfg
        self.stats_path: Optional[str] = None  # the scheduler's stats file (set when the engine starts)
        self.requests = RequestSpecTracker()
        self._prev_counters: Optional[SpecCounters] = None
        self._prev_k_hist: KHist = {}
        self._prev_group: Optional[dict] = None
        self._warned_group_stats = False
        self._warned_group_off = False

    async def step(self, draft: DraftLifecycle, engine, lead: bool, decoupled=None) -> RolloutStepStats:
        out = RolloutStepStats(draft_version=draft.version_used(), draft_version_live=draft.live_version(),
                               draft_reloads=draft.reloads, draft_restores_after_sleep=draft.restores,
                               draft_reload_failures=draft.failures or 0)
        if decoupled is not None:  # the server's DecoupledHooks (node 0, decoupled on)
            out.decoupled = decoupled.step_stats()
        if not lead:  # the engine's counters and planner live with node 0's server
            return out
        out.vllm = self._counters()
        out.requests = self.requests.take()
        if self._cfg.group_drafting:
            out.group = await self._group(engine)
        out.planner = self._planner()
        return out

    def _counters(self) -> Optional[SpecCounters]:
        try:
            from verl_specrollout.vllm_adapter.spec_counters import snapshot_counters

            now = snapshot_counters()
        except Exception as exc:
            logger.warning("verl-specrollout: cannot read vLLM spec-decode counters: %r", exc)
            return None
        prev, self._prev_counters = self._prev_counters, now
        return now - prev if prev is not None else now

    def _planner(self) -> Optional[PlannerStats]:
        """The scheduler's last published stats, with the K histogram of the steps since the previous call."""
        if not self.stats_path or not os.path.isfile(self.stats_path):
            return None
        try:
            with open(self.stats_path) as f:
                stats = PlannerStats.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("verl-specrollout: cannot read planner stats %s: %r", self.stats_path, exc)
            return None
        step, self._prev_k_hist = stats.since(self._prev_k_hist), stats.k_hist
        return step

    async def _group(self, engine) -> dict:
        """Per-step delta of the group drafter's counts (group_proposer.GroupDrafter.stats). TP ranks
        hold identical drafters (same inputs), so the first worker's answer is the engine's."""
        try:
            results = await engine.collective_rpc(compat.WORKER_GROUP_STATS_METHOD)
        except Exception as exc:
            if not self._warned_group_stats:
                self._warned_group_stats = True
                logger.warning("verl-specrollout: cannot read the group drafter's counts: %r", exc)
            return {}
        now = next((r for r in results or [] if r), None)
        if not now:
            if not self._warned_group_off:
                self._warned_group_off = True
                logger.warning("verl-specrollout: method=%s but no worker runs the group drafter (async scheduling "
                               "or vLLM's V2 model runner; see the workers' log): drafts come from the base method "
                               "alone", self._cfg.method)
            return {}
        prev, self._prev_group = self._prev_group, now
        delta = counts_delta(now, prev) if prev is not None else now
        delta["index"] = dict(now.get("index") or {})  # index sizes are levels, not counts
        if isinstance(now.get("decoupled"), dict):  # the verifier link's counts; "alive" is a level
            delta.setdefault("decoupled", {})["alive"] = now["decoupled"].get("alive", 0)
        return delta
