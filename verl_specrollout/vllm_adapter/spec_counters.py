"""Read vLLM's own speculative-decoding counters (Prometheus metrics) into one small record
(rollout_stats.SpecCounters, the type the rollout servers send the trainer).

We measure acceptance only from vLLM's counters, never from our own bookkeeping, so a
planner or reload bug cannot flatter itself.
"""

from __future__ import annotations

from verl_specrollout import compat
from verl_specrollout.rollout_stats import SpecCounters

__all__ = ["SpecCounters", "read_counters", "counters_from_metrics", "snapshot_counters", "request_spec_fields"]


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
