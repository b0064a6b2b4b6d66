"""The stats contract from the engine's scheduler to the trainer: PlannerStats through the stats file,
RolloutStepStats through Ray, flattened once by metrics.py (no vLLM engine, no Ray)."""

import asyncio
import json

import pytest

from verl_specrollout import metrics as M
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.planner import Planner
from verl_specrollout.rollout_stats import PlannerStats, RolloutStepStats, SpecCounters, k_hist_delta
from verl_specrollout.verl_adapter.draft_lifecycle import DraftLifecycle
from verl_specrollout.verl_adapter.rollout_metrics import RolloutMetrics


def _planner_after(steps):
    p = Planner(max_k=4, max_batch=16, zero_k_passes=1, replan_interval=4)
    for b, k in steps:
        p.observe_step(b, b * (1 + k), k, 0.01 * b)
        if k:
            p.observe_drafts([(k, 1)] * b, b)
        p.tick()
    return p


def test_planner_stats_survive_the_stats_file():
    st = _planner_after([(1, 4), (1, 4), (16, 0)] * 8).stats()
    back = PlannerStats.from_dict(json.loads(json.dumps(st.to_dict())))  # JSON: the K histogram's keys become str
    assert back == st
    assert back.k_hist == {1: {4: 16}, 16: {0: 8}}
    assert back.spec_off_fraction == pytest.approx(1 / 3)
    assert json.loads(json.dumps(st.to_dict()))["acceptance_rate"] == st.acceptance_rate  # for readers of the file


def test_step_stats_round_trip_and_unknown_fields():
    step = RolloutStepStats(draft_version=2, draft_version_live=3, vllm=SpecCounters(2, 8, 4, [2, 1, 1, 0]),
                            planner=PlannerStats(k_hist={4: {2: 3}}, alpha=[0.5]))
    wire = step.to_dict()
    assert "requests" not in wire and "group" not in wire  # what a server did not fill is not sent
    assert RolloutStepStats.from_dict(wire) == step
    assert RolloutStepStats.from_dict({"draft_version": 1, "from_a_newer_server": 1}).draft_version == 1
    assert k_hist_delta({1: {4: 5, 0: 1}, 8: {1: 2}}, {1: {4: 2, 0: 1}}) == {1: {4: 3}, 8: {1: 2}}


def test_step_metrics_sum_servers_once():
    a = RolloutStepStats(draft_version=2, draft_version_live=3, draft_reloads=1,
                         vllm=SpecCounters(4, 16, 8, [4, 2, 2, 0]),
                         planner=PlannerStats(k_hist={1: {4: 3}}, table=[[1, 16, 4]], alpha=[0.7, 0.5],
                                              cost_model={"fitted": False}))
    b = RolloutStepStats(draft_version=1, draft_version_live=3, draft_reloads=2,
                         vllm=SpecCounters(4, 16, 0, [0, 0, 0, 0]), planner=PlannerStats(k_hist={64: {0: 1}}))
    m = M.step_metrics([a.to_dict(), b])  # the wire form and the type read alike
    assert m[M.NUM_DRAFTS] == 8 and m[M.NUM_ACCEPTED_TOKENS] == 8
    assert m[M.MEAN_ACCEPTANCE_LENGTH] == pytest.approx(2.0)
    assert m[M.ACCEPTED_PER_POS.format(i=1)] == pytest.approx(0.5)
    assert m[M.SPEC_OFF_FRACTION] == pytest.approx(0.25) and m[M.MEAN_K] == pytest.approx(3.0)
    assert m[M.ALPHA_POS.format(i=2)] == 0.5 and m[M.TABLE_ROWS] == 1.0 and m[M.COST_FITTED] == 0.0
    assert m[M.DRAFT_VERSION] == 1.0 and m[M.DRAFT_RELOADS] == 3.0


class _Engine:
    def __init__(self, group):
        self.group = group

    async def collective_rpc(self, method, *args, **kwargs):
        return [dict(self.group)]


def test_rollout_metrics_send_the_steps_since_the_previous_call(tmp_path, monkeypatch):
    from verl_specrollout.vllm_adapter import spec_counters

    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "ngram"})
    counters = iter([SpecCounters(2, 8, 4, [2, 2]), SpecCounters(5, 20, 10, [5, 5]), SpecCounters(5, 20, 10, [5, 5])])
    monkeypatch.setattr(spec_counters, "snapshot_counters", lambda: next(counters))
    metrics = RolloutMetrics(cfg)
    metrics.stats_path = str(tmp_path / "stats.json")
    draft = DraftLifecycle(cfg, engine=lambda: None, lead=lambda: True, sleep_mode=lambda: False)
    p = _planner_after([(1, 4)] * 3)

    def publish():  # what the scheduler does at every re-plan
        (tmp_path / "stats.json").write_text(json.dumps(p.stats().to_dict()))

    publish()
    first = asyncio.run(metrics.step(draft, _Engine({}), lead=True))
    p.observe_step(8, 8, 0, None)
    publish()
    second = asyncio.run(metrics.step(draft, _Engine({}), lead=True))
    assert first.planner.k_hist == {1: {4: 3}} and second.planner.k_hist == {8: {0: 1}}
    assert second.vllm == SpecCounters(3, 12, 6, [3, 3])
    assert draft.failures is None and second.draft_reload_failures == 0  # no draft model: no reloader
    (tmp_path / "stats.json").write_text("{not json")
    assert asyncio.run(metrics.step(draft, _Engine({}), lead=False)).planner is None  # only node 0 reads
    assert asyncio.run(metrics.step(draft, _Engine({}), lead=True)).planner is None  # logged, skipped


def test_group_counts_are_sent_as_deltas_and_the_index_as_a_level():
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "group"})
    assert cfg.group_drafting
    metrics = RolloutMetrics(cfg)
    draft = DraftLifecycle(cfg, engine=lambda: None, lead=lambda: True, sleep_mode=lambda: False)
    counts = {"sources": {"siblings": {"proposed": 4, "accepted": 2, "chosen": 1}}, "request_steps": 5,
              "index": {"indexed_tokens": 100}}
    first = asyncio.run(metrics.step(draft, _Engine(counts), lead=True))
    later = dict(counts, sources={"siblings": {"proposed": 10, "accepted": 5, "chosen": 3}}, request_steps=9,
                 index={"indexed_tokens": 40})
    second = asyncio.run(metrics.step(draft, _Engine(later), lead=True))
    assert first.group["sources"]["siblings"]["proposed"] == 4
    assert second.group["sources"]["siblings"] == {"proposed": 6, "accepted": 3, "chosen": 2}
    assert second.group["request_steps"] == 4 and second.group["index"] == {"indexed_tokens": 40}
    m = M.step_metrics([second.to_dict()])
    assert m[M.SOURCE_SHARE.format(source="siblings")] == pytest.approx(0.5)
