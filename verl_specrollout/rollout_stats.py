"""What the rollout reports back to the trainer, as types (standard library only: no numpy, torch or vLLM).

Two records, each read by every consumer the way vLLM's ``SpecDecodingStats`` is
(v1/spec_decode/metrics.py: one dataclass per step, filled by the scheduler, read by the loggers):

* ``PlannerStats``: the planner's state and counts since the engine started. The scheduler
  (vllm_adapter/scheduler.py) takes one from ``Planner.stats()`` at every re-plan and at the end
  of a rollout and publishes it as JSON (the stats file, ``SPECROLLOUT_STATS_PATH``): the engine
  core runs in a child process of the rollout server, and that file is its channel back.
* ``RolloutStepStats``: what one rollout server did since the trainer's previous step (draft
  versions and reloads, vLLM's spec-decode counter deltas, per-request counts, the group
  drafter's counts, the planner's stats with the K histogram of the step, and the idle drafter's
  utilisation and counts with decoupled speculation on). The server
  (verl_adapter/server.py) answers it through Ray as ``to_dict()``; the trainer reads it back
  with ``from_dict`` and metrics.py flattens it once into the ``specrollout/*`` names.

``to_dict``/``from_dict`` are the only codecs across the two process hops: JSON turns the K
histogram's integer keys into strings, ``from_dict`` turns them back, and a field a sender
does not fill keeps its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

# batch size -> {K the step drafted: steps}
KHist = Dict[int, Dict[int, int]]


def k_hist_from(raw: Optional[Mapping]) -> KHist:
    """A K histogram with integer keys (JSON gives strings)."""
    return {int(b): {int(k): int(n) for k, n in (h or {}).items()} for b, h in (raw or {}).items()}


def k_hist_add(into: KHist, other: KHist) -> KHist:
    for b, h in other.items():
        acc = into.setdefault(int(b), {})
        for k, n in h.items():
            acc[int(k)] = acc.get(int(k), 0) + int(n)
    return into


def k_hist_delta(new: KHist, old: Optional[KHist]) -> KHist:
    """Steps counted in `new` and not yet in `old` (cells that did not grow are left out)."""
    out: KHist = {}
    for b, h in new.items():
        prev = (old or {}).get(b, {})
        d = {k: n - prev.get(k, 0) for k, n in h.items() if n - prev.get(k, 0) > 0}
        if d:
            out[b] = d
    return out


def _fields(cls, raw: Mapping) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names and v is not None}


@dataclass
class PlannerStats:
    mode: str = ""
    steps: int = 0  # engine steps the planner ticked
    replans: int = 0
    replans_skipped: int = 0  # postponed: the previous re-plan took more than its overhead budget
    last_replan_seconds: float = 0.0
    table_changes: int = 0
    table: List[List[int]] = field(default_factory=list)  # installed [min_bs, max_bs, K] rows (vLLM's form)
    k_hist: KHist = field(default_factory=dict)  # K drafted per batch size, every observed step
    alpha: List[float] = field(default_factory=list)  # conditional acceptance by draft position
    expected_tokens: List[float] = field(default_factory=list)  # E[tokens per request-step] for K = 0..max_k
    accepted_per_pos: List[float] = field(default_factory=list)  # P(position i accepted) per draft
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    cost_model: Dict[str, Any] = field(default_factory=dict)  # StepCostModel.describe()
    throughput_by_k: Dict[int, List[float]] = field(default_factory=dict)  # predicted tokens/s by K, per batch size

    @property
    def steps_observed(self) -> int:
        return sum(n for h in self.k_hist.values() for n in h.values())

    @property
    def spec_off_fraction(self) -> float:
        """Fraction of observed steps that drafted K = 0."""
        steps = self.steps_observed
        return sum(h.get(0, 0) for h in self.k_hist.values()) / steps if steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        """1 + accepted draft tokens per drafting step (vLLM's definition)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    def since(self, k_hist: Optional[KHist]) -> "PlannerStats":
        """These stats with the K histogram reduced to the steps not counted in `k_hist`."""
        return dataclasses.replace(self, k_hist=k_hist_delta(self.k_hist, k_hist))

    def to_dict(self) -> dict:
        """JSON-ready (the stats file); the derived rates are written too, for readers of the file."""
        d = dataclasses.asdict(self)
        d["spec_off_fraction"] = self.spec_off_fraction
        d["acceptance_rate"] = self.acceptance_rate
        return d

    @classmethod
    def from_dict(cls, raw: Optional[Mapping]) -> "PlannerStats":
        kw = _fields(cls, raw or {})
        if "k_hist" in kw:
            kw["k_hist"] = k_hist_from(kw["k_hist"])
        if "throughput_by_k" in kw:
            kw["throughput_by_k"] = {int(b): list(t) for b, t in kw["throughput_by_k"].items()}
        return cls(**kw)


@dataclass
class SpecCounters:
    """vLLM's own spec-decode counters (its Prometheus metrics), or their difference between two reads."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: List[int] = field(default_factory=list)

    @property
    def mean_acceptance_length(self) -> float:
        """1 + accepted draft tokens per verification step that drafted (vLLM's definition)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def per_position_acceptance(self) -> list:
        """Fraction of drafting steps whose i-th draft token was accepted."""
        return [a / self.num_drafts for a in self.accepted_per_pos] if self.num_drafts else []

    def __add__(self, other: "SpecCounters") -> "SpecCounters":
        return self._combine(other, 1)

    def __sub__(self, other: "SpecCounters") -> "SpecCounters":
        return self._combine(other, -1)

    def _combine(self, other: "SpecCounters", sign: int) -> "SpecCounters":
        n = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        a = self.accepted_per_pos + [0] * (n - len(self.accepted_per_pos))
        b = other.accepted_per_pos + [0] * (n - len(other.accepted_per_pos))
        return SpecCounters(
            self.num_drafts + sign * other.num_drafts,
            self.num_draft_tokens + sign * other.num_draft_tokens,
            self.num_accepted_tokens + sign * other.num_accepted_tokens,
            [x + sign * y for x, y in zip(a, b)],
        )

    def to_dict(self) -> dict:
        """A summary for reports (benchmarks); the wire form is dataclasses.asdict."""
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "mean_acceptance_length": self.mean_acceptance_length,
            "per_position_acceptance": self.per_position_acceptance,
        }


@dataclass
class RequestSpecStats:
    """Per finished request: draft tokens verified, accepted, and verification steps that drafted
    (the inputs of veRL's own rollout/spec_accept_* function)."""

    drafts: List[int] = field(default_factory=list)
    accepts: List[int] = field(default_factory=list)
    verifies: List[int] = field(default_factory=list)


@dataclass
class RolloutStepStats:
    draft_version: int = 0  # the draft the step's rollout ran (0 = draft_path)
    draft_version_live: int = 0  # the draft loaded now (after this step's weight sync)
    draft_reloads: int = 0  # cumulative
    draft_restores_after_sleep: int = 0  # cumulative
    draft_reload_failures: int = 0  # cumulative
    vllm: Optional[SpecCounters] = None  # delta of vLLM's counters; None where this server does not read them
    requests: Optional[RequestSpecStats] = None
    group: Dict[str, Any] = field(default_factory=dict)  # group drafter's count deltas (group_proposer.GroupDrafter.stats)
    planner: Optional[PlannerStats] = None  # the planner's latest stats; k_hist: the steps since the previous call
    # The idle drafter (decoupled speculation), since the previous record: "drafter/busy_s" (seconds
    # drafting), "drafter/idle_s" (seconds the replica was idle), "drafter/utilisation" (their ratio),
    # "drafter/running" (0/1, now) and count deltas "drafter/<count>" (decoupled.engine.IdleDrafter.stats).
    decoupled: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None and v != {}}

    @classmethod
    def read(cls, raw) -> "RolloutStepStats":
        """A server's answer as the type, whether it arrives as one or in its to_dict form."""
        return raw if isinstance(raw, cls) else cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Optional[Mapping]) -> "RolloutStepStats":
        kw = _fields(cls, raw or {})
        kw["vllm"] = SpecCounters(**_fields(SpecCounters, kw["vllm"])) if kw.get("vllm") else None
        kw["requests"] = RequestSpecStats(**_fields(RequestSpecStats, kw["requests"])) if kw.get("requests") else None
        kw["planner"] = PlannerStats.from_dict(kw["planner"]) if kw.get("planner") else None
        kw["group"] = dict(kw.get("group") or {})
        kw["decoupled"] = {str(k): float(v) for k, v in (kw.get("decoupled") or {}).items()}
        for name in ("draft_version", "draft_version_live", "draft_reloads", "draft_restores_after_sleep",
                     "draft_reload_failures"):
            if name in kw:
                kw[name] = int(kw[name])
        return cls(**kw)
