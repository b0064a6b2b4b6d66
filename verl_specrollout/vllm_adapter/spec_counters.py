"""Read vLLM's own speculative-decoding counters (Prometheus metrics) into one small record.

We measure acceptance only from vLLM's counters, never from our own bookkeeping, so a
planner or reload bug cannot flatter itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from verl_specrollout import compat


@dataclass
class SpecCounters:
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list = field(default_factory=list)

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

    def __sub__(self, other: "SpecCounters") -> "SpecCounters":
        n = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        a = self.accepted_per_pos + [0] * (n - len(self.accepted_per_pos))
        b = other.accepted_per_pos + [0] * (n - len(other.accepted_per_pos))
        return SpecCounters(
            self.num_drafts - other.num_drafts,
            self.num_draft_tokens - other.num_draft_tokens,
            self.num_accepted_tokens - other.num_accepted_tokens,
            [x - y for x, y in zip(a, b)],
        )

    def to_dict(self) -> dict:
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "mean_acceptance_length": self.mean_acceptance_length,
            "per_position_acceptance": self.per_position_acceptance,
        }


def read_counters(llm) -> SpecCounters:
    """Snapshot from a `vllm.LLM` started with `disable_log_stats=False` (sums over engines)."""
    c = SpecCounters()
    for m in llm.get_metrics():
        if m.name == compat.VLLM_METRIC_NUM_DRAFTS:
            c.num_drafts += int(m.value)
        elif m.name == compat.VLLM_METRIC_NUM_DRAFT_TOKENS:
            c.num_draft_tokens += int(m.value)
        elif m.name == compat.VLLM_METRIC_NUM_ACCEPTED_TOKENS:
            c.num_accepted_tokens += int(m.value)
        elif m.name == compat.VLLM_METRIC_ACCEPTED_PER_POS:
            vals = list(m.values)
            if len(c.accepted_per_pos) < len(vals):
                c.accepted_per_pos += [0] * (len(vals) - len(c.accepted_per_pos))
            for i, v in enumerate(vals):
                c.accepted_per_pos[i] += int(v)
    return c


def counters_from_metrics(metrics) -> SpecCounters:
    """SpecCounters from a list of vLLM metric objects (``LLM.get_metrics()`` or
    ``vllm.v1.metrics.reader.get_metrics_snapshot()``), summed over engines."""
    class _L:
        def get_metrics(self):
            return metrics

    return read_counters(_L())


def snapshot_counters() -> SpecCounters:
    """vLLM's spec-decode counters of *this* process (an AsyncLLM server with log stats on)."""
    return counters_from_metrics(compat.resolve(compat.VLLM_METRICS_SNAPSHOT)())


def request_spec_fields(completion) -> dict:
    """veRL's per-rollout spec-decode fields from one finished sequence (a vLLM CompletionOutput
    whose engine ran with per_request_spec_decode_metrics on), or {} when it carries none.

    verify steps = sum of the acceptance histogram (one entry per verification step that drafted);
    accepted tokens = sum of j * histogram[j]."""
    m = getattr(completion, compat.VLLM_OUTPUT_SPEC_METRICS_ATTR, None)
    if m is None:
        return {}
    hist = list(getattr(m, compat.VLLM_REQUEST_SPEC_HISTOGRAM_ATTR, None) or [])
    return {compat.VERL_SPEC_DRAFT_TOKENS_FIELD: int(getattr(m, compat.VLLM_REQUEST_SPEC_DRAFT_TOKENS_ATTR, 0)),
            compat.VERL_SPEC_ACCEPTED_TOKENS_FIELD: int(sum(j * n for j, n in enumerate(hist))),
            compat.VERL_SPEC_VERIFY_STEPS_FIELD: int(sum(hist))}
