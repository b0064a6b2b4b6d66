"""Metric names verl-specrollout logs (all under the `specrollout/` prefix) and the one
conversion of the rollout's stats (rollout_stats.PlannerStats: Planner.stats(),
SpecRolloutScheduler.specrollout_stats(); rollout_stats.RolloutStepStats: what each rollout
server answers per training step) into a flat {name: float} dict for veRL's tracking loggers."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Union

from verl_specrollout.rollout_stats import PlannerStats, RolloutStepStats, SpecCounters, k_hist_add

PREFIX = "specrollout/"

# Planner / dynamic K
SPEC_OFF_FRACTION = PREFIX + "spec_off_fraction"  # fraction of engine steps that drafted K=0
MEAN_K = PREFIX + "mean_k"  # mean drafted K over steps
MEAN_K_BY_BS = PREFIX + "mean_k/bs_{lo}-{hi}"  # mean drafted K for batch sizes in [lo, hi] (powers of 2)
K_FRACTION = PREFIX + "k_fraction/k{k}"  # fraction of steps that drafted K=k
TABLE_CHANGES = PREFIX + "table_changes"
REPLANS = PREFIX + "replans"
TABLE_ROWS = PREFIX + "table_rows"  # number of [min_bs, max_bs, K] rows installed
# Acceptance
ALPHA_POS = PREFIX + "alpha/pos{i}"  # conditional acceptance estimate at draft position i (1-based)
ACCEPTED_PER_POS = PREFIX + "accepted_per_draft/pos{i}"  # P(position i accepted) per draft (unconditional)
ACCEPTANCE_RATE = PREFIX + "acceptance_rate"  # accepted / proposed draft tokens
MEAN_ACCEPTANCE_LENGTH = PREFIX + "mean_acceptance_length"  # 1 + accepted / drafts
NUM_DRAFTS = PREFIX + "num_drafts"
NUM_DRAFT_TOKENS = PREFIX + "num_draft_tokens"  # proposed
NUM_ACCEPTED_TOKENS = PREFIX + "num_accepted_tokens"  # accepted
# Cost model
COST_FITTED = PREFIX + "cost/fitted"
COST_PER_TOKEN = PREFIX + "cost/per_token_s"
COST_PER_STEP = PREFIX + "cost/per_step_s"
COST_PER_DRAFT_PASS = PREFIX + "cost/per_draft_pass_s"
COST_KNOT_TOKENS = PREFIX + "cost/knot_tokens"


def _bs_bucket(b: int):
    lo = 1
    while lo * 2 <= b:
        lo *= 2
    return lo, lo * 2 - 1


def planner_metrics(stats: Union[PlannerStats, Mapping, None]) -> Dict[str, float]:
    """Flatten planner stats (a PlannerStats, or its to_dict form as the scheduler writes it) into
    specrollout/* scalars: the one place the names are given values. cost/* only when the stats
    carry the cost model."""
    if not isinstance(stats, PlannerStats):
        if not stats:
            return {}
        stats = PlannerStats.from_dict(stats)
    out: Dict[str, float] = {
        SPEC_OFF_FRACTION: stats.spec_off_fraction,
        TABLE_CHANGES: float(stats.table_changes),
        REPLANS: float(stats.replans),
        TABLE_ROWS: float(len(stats.table)),
    }
    tot_steps = 0
    k_steps: Dict[int, int] = {}
    by_bucket: Dict[tuple, list] = {}
    for b, h in stats.k_hist.items():
        acc = by_bucket.setdefault(_bs_bucket(b), [0, 0])
        for k, n in h.items():
            tot_steps += n
            k_steps[k] = k_steps.get(k, 0) + n
            acc[0] += k * n
            acc[1] += n
    if tot_steps:
        out[MEAN_K] = sum(k * n for k, n in k_steps.items()) / tot_steps
        for k, n in sorted(k_steps.items()):
            out[K_FRACTION.format(k=k)] = n / tot_steps
        for (lo, hi), (ks, n) in sorted(by_bucket.items()):
            out[MEAN_K_BY_BS.format(lo=lo, hi=hi)] = ks / max(n, 1)
    for i, a in enumerate(stats.alpha, start=1):
        out[ALPHA_POS.format(i=i)] = float(a)
    for i, a in enumerate(stats.accepted_per_pos, start=1):
        out[ACCEPTED_PER_POS.format(i=i)] = float(a)
    out[NUM_DRAFTS] = float(stats.num_drafts)
    out[NUM_DRAFT_TOKENS] = float(stats.num_draft_tokens)
    out[NUM_ACCEPTED_TOKENS] = float(stats.num_accepted_tokens)
    out[ACCEPTANCE_RATE] = stats.acceptance_rate
    out[MEAN_ACCEPTANCE_LENGTH] = stats.mean_acceptance_length
    cm = stats.cost_model
    if cm:
        out[COST_FITTED] = 1.0 if cm.get("fitted") else 0.0
    if cm.get("fitted"):
        out[COST_PER_TOKEN] = float(cm.get("tokens", 0.0))
        out[COST_PER_STEP] = float(cm.get("intercept", 0.0))
        out[COST_PER_DRAFT_PASS] = float(cm.get("passes", 0.0))
        if cm.get("knot") is not None:
            out[COST_KNOT_TOKENS] = float(cm["knot"])
    return out


# Online learning / live draft (per training step, from the rollout servers and the learner)
DRAFT_VERSION = PREFIX + "draft_version"  # draft version the step's rollout ran (0 = draft_path)
DRAFT_VERSION_LIVE = PREFIX + "draft_version_live"  # version loaded after this step's weight sync
DRAFT_RELOADS = PREFIX + "draft_reloads"  # cumulative successful reloads (summed over servers)
DRAFT_RELOAD_FAILURES = PREFIX + "draft_reload_failures"
DRAFT_RESTORES = PREFIX + "draft_restores_after_sleep"  # cumulative reloads of a draft sleep discarded
LEARNER = PREFIX + "learner/{name}"  # loss, lag, version, buffer_samples, train_seconds, train/*
# Seconds the trainer waited on the learner's metrics this step (after veRL's step timer, so it is
# not in timing_s/step); near 0 unless the learner is unreachable or overloaded.
LEARNER_WAIT_S = LEARNER.format(name="wait_s")
LEARNER_METRICS_MISSES = LEARNER.format(name="metrics_misses")  # cumulative steps without learner metrics
# Cumulative, from the actor worker (through the learner): rounds whose train call was skipped
# because the previous one still ran, and train calls that failed.
LEARNER_TRAIN_CALLS_SKIPPED = LEARNER.format(name="train_calls_skipped")
LEARNER_TRAIN_CALL_ERRORS = LEARNER.format(name="train_call_errors")
LEARNER_STATE_REFUSED = LEARNER.format(name="state_refused")  # 1: a saved state was refused, started fresh


def step_stats_summary(servers: List[RolloutStepStats]) -> PlannerStats:
    """One training step's planner-shaped stats over every server: the K histograms of the step
    summed, acceptance from vLLM's own counters (summed deltas), the table, alpha and cost model of
    the first server that sent its planner's stats."""
    counters = SpecCounters()
    k_hist: dict = {}
    planner = next((s.planner for s in servers if s.planner is not None), None) or PlannerStats()
    for s in servers:
        if s.vllm is not None:
            counters = counters + s.vllm
        if s.planner is not None:
            k_hist_add(k_hist, s.planner.k_hist)
    return dataclasses.replace(
        planner, k_hist=k_hist, num_drafts=counters.num_drafts, num_draft_tokens=counters.num_draft_tokens,
        num_accepted_tokens=counters.num_accepted_tokens, accepted_per_pos=counters.per_position_acceptance)


def step_metrics(server_results: list, learner: Mapping | None = None) -> Dict[str, float]:
    """Combine per-step results of ``SpecRolloutHttpServer.specrollout_step_metrics`` (one per
    server, RolloutStepStats or its to_dict form) and ``SpecLearner.metrics`` into flat
    specrollout/* scalars.

    Acceptance comes from vLLM's own counters (per-step deltas); the K-by-concurrency summary and
    the speculation-off fraction from the planner's per-step K histogram delta."""
    servers = [RolloutStepStats.read(r) for r in server_results or [] if r]
    out = planner_metrics(step_stats_summary(servers))
    if servers:
        out[DRAFT_VERSION] = float(min(s.draft_version for s in servers))
        out[DRAFT_VERSION_LIVE] = float(min(s.draft_version_live for s in servers))
        out[DRAFT_RELOADS] = float(sum(s.draft_reloads for s in servers))
        out[DRAFT_RELOAD_FAILURES] = float(sum(s.draft_reload_failures for s in servers))
        out[DRAFT_RESTORES] = float(sum(s.draft_restores_after_sleep for s in servers))
    for k, v in (learner or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[LEARNER.format(name=k)] = float(v)
    out.update(group_metrics(servers))
    out.update(decoupled_metrics(servers))
    return out


# Best-of-N group drafting (vllm_adapter/group_proposer.py), per training step, summed over servers.
GROUP_SOURCES = ("model", "siblings", "history", "prompt", "decoupled")
SOURCE_PROPOSED = PREFIX + "source/{source}/proposed"  # draft tokens of that source verified
SOURCE_ACCEPTED = PREFIX + "source/{source}/accepted"  # ... and accepted
SOURCE_SHARE = PREFIX + "source/{source}/share"  # share of request-steps (K > 0) drafted by it; "none": nothing
GROUP_INDEX = PREFIX + "group/{name}"  # the group index's size at the end of the step (indexed_tokens, ...)
# The engines' decoupled verifier links (decoupled/link.py VerifierLink.stats), summed over servers:
# link/* (exchange_errors, ...) and board/* (miss_empty, dropped_stale, ...) counts of the step.
DECOUPLED_VERIFIER = PREFIX + "decoupled/{name}"
DECOUPLED_LINKS_ALIVE = PREFIX + "decoupled/links_alive"  # verifier links whose exchange answers


def counts_delta(new: Mapping, old: Mapping) -> dict:
    """new - old for nested dicts of cumulative counts (a missing old entry counts 0)."""
    out = {}
    for key, v in (new or {}).items():
        prev = (old or {}).get(key)
        if isinstance(v, Mapping):
            out[key] = counts_delta(v, prev if isinstance(prev, Mapping) else {})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v - (prev if isinstance(prev, (int, float)) and not isinstance(prev, bool) else 0)
    return out


def group_metrics(server_results: list) -> Dict[str, float]:
    """specrollout/source/* and specrollout/group/* from the servers' per-step "group" deltas."""
    sources: Dict[str, Dict[str, float]] = {s: {"proposed": 0.0, "accepted": 0.0, "chosen": 0.0}
                                            for s in GROUP_SOURCES}
    steps = no_draft = 0.0
    index: Dict[str, float] = {}
    links: Dict[str, float] = {}
    seen = False
    for r in server_results or []:
        g = RolloutStepStats.read(r).group if r else None
        if not g:
            continue
        seen = True
        for src, c in (g.get("sources") or {}).items():
            acc = sources.setdefault(src, {"proposed": 0.0, "accepted": 0.0, "chosen": 0.0})
            for k in acc:
                acc[k] += float(c.get(k, 0))
        steps += float(g.get("request_steps", 0))
        no_draft += float(g.get("no_draft", 0))
        for k, v in (g.get("index") or {}).items():
            index[k] = index.get(k, 0.0) + float(v)
        for k, v in (g.get("decoupled") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                name = DECOUPLED_LINKS_ALIVE if k == "alive" else DECOUPLED_VERIFIER.format(name=k)
                links[name] = links.get(name, 0.0) + float(v)
    if not seen:
        return {}
    out: Dict[str, float] = {}
    for src, c in sources.items():
        out[SOURCE_PROPOSED.format(source=src)] = c["proposed"]
        out[SOURCE_ACCEPTED.format(source=src)] = c["accepted"]
        out[SOURCE_SHARE.format(source=src)] = c["chosen"] / steps if steps else 0.0
    out[SOURCE_SHARE.format(source="none")] = no_draft / steps if steps else 0.0
    for k, v in index.items():
        out[GROUP_INDEX.format(name=k)] = v
    out.update(links)
    return out


# Decoupled speculation's idle drafters (decoupled/engine.py IdleDrafter.stats), per training step over servers.
# Seconds drafting / seconds idle, over all drafters this step (busy_s and idle_s are summed first, so
# a drafter idle for a moment does not weigh like one idle all step); its counts and seconds below.
DECOUPLED_UTILISATION = PREFIX + "decoupled/drafter_utilisation"
DECOUPLED_RUNNING = PREFIX + "decoupled/drafter_running"  # drafters running when the trainer asked
DECOUPLED_COUNT = PREFIX + "decoupled/drafter_{name}"  # the drafters' counts this step, summed (tails, refused_*)


def decoupled_metrics(server_results: list) -> Dict[str, float]:
    """specrollout/decoupled/* from the servers' "decoupled" stats ({} when no server runs a drafter)."""
    stats = [s for s in (RolloutStepStats.read(r).decoupled if r else None for r in server_results or []) if s]
    if not stats:
        return {}
    busy = sum(float(s.get("drafter/busy_s", 0.0)) for s in stats)
    idle = sum(float(s.get("drafter/idle_s", 0.0)) for s in stats)
    if idle > 0:
        utilisation = busy / idle
    else:  # stats without seconds: the drafters' own ratios
        utilisation = sum(float(s.get("drafter/utilisation", 0.0)) for s in stats) / len(stats)
    out: Dict[str, float] = {DECOUPLED_UTILISATION: utilisation,
                             DECOUPLED_RUNNING: sum(float(s.get("drafter/running", 0.0)) for s in stats)}
    for s in stats:
        for k, v in s.items():
            if k in ("drafter/utilisation", "drafter/running"):
                continue
            name = DECOUPLED_COUNT.format(name=k.split("/", 1)[-1])
            out[name] = out.get(name, 0.0) + float(v)
    return out


DRAFT_STALE_STEPS = PREFIX + "draft_stale_steps"  # consecutive steps the live draft did not advance


class DraftStallDetector:
    """A draft that silently stops updating is a bug: count the consecutive training steps in
    which the learner is on but the live draft version did not advance, and warn loudly (once
    per stall) past `patience` steps. Also counts steps whose learner metrics were missing
    (dead or unreachable learner), which the rollouts survive on the last good draft."""

    def __init__(self, patience: int = 3):
        self.patience = patience
        self.last_version: Optional[int] = None
        self.stale = 0
        self.warned = False

    def update(self, live_version: Optional[int], learner_alive: bool) -> Dict[str, float]:
        import logging

        advanced = live_version is not None and (self.last_version is None or live_version > self.last_version)
        if advanced:
            self.last_version, self.stale, self.warned = live_version, 0, False
        else:
            self.stale += 1
        if self.stale >= self.patience and not self.warned:
            self.warned = True
            logging.getLogger("verl_specrollout").warning(
                "verl-specrollout: the rollout draft has not advanced for %d steps (live version %s, learner %s); "
                "rollouts keep the last good draft. Check the learner actor and specrollout/learner/lag.",
                self.stale, self.last_version, "alive" if learner_alive else "UNREACHABLE")
        return {DRAFT_STALE_STEPS: float(self.stale), PREFIX + "learner/alive": float(learner_alive)}
