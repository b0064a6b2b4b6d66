"""SpecRolloutScheduler's own start: the K lookup it installs with or without vLLM's table, the
data-parallel guard, the start-up line on graphs, and the file channels read from the environment.

vLLM's Scheduler.__init__ is replaced by a stand-in that sets what the real one sets for us
(vllm_config, scheduler_config, num_spec_tokens, and dynamic_sd_lookup from the speculative config's
table through vLLM's own build_dynamic_sd_schedule_lookup, v1/core/sched/scheduler.py:292-299 in 0.31);
the live engine is tests/integration/test_scheduler_dynamic_k.py.
"""

from types import SimpleNamespace

import pytest

from verl_specrollout import compat
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.vllm_adapter import scheduler as sched_mod
from verl_specrollout.vllm_adapter.engine_kwargs import CONTROL_PATH_ENV, STATS_PATH_ENV

MAX_BS = 16


def _base_init(self, *args, vllm_config=None, **kwargs):
    self.vllm_config = vllm_config
    self.scheduler_config = vllm_config.scheduler_config
    self.num_spec_tokens = vllm_config.speculative_config.num_speculative_tokens
    self.requests, self.running, self.waiting = {}, [], []
    table = getattr(vllm_config.speculative_config, compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR)
    self.dynamic_sd_lookup = compat.resolve(compat.VLLM_DYNAMIC_SD_BUILD)(
        table, vllm_max_batch_size=MAX_BS, vllm_num_speculative_tokens=self.num_spec_tokens) if table else None


def _vllm_config(table=None, dp=1, graph="FULL_AND_PIECEWISE", top=160, **planner):
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "ngram", "max_k": 4, "planner": planner})
    spec = SimpleNamespace(num_speculative_tokens=4, method="ngram", **{compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR: table})
    return SimpleNamespace(
        speculative_config=spec, scheduler_config=SimpleNamespace(max_num_seqs=MAX_BS, async_scheduling=False),
        parallel_config=SimpleNamespace(data_parallel_size=dp),
        compilation_config=SimpleNamespace(cudagraph_mode=SimpleNamespace(name=graph), max_cudagraph_capture_size=top),
        additional_config={"specrollout": cfg.engine_dict()})


@pytest.fixture
def make(monkeypatch):
    monkeypatch.setattr(sched_mod.Scheduler, "__init__", _base_init)
    monkeypatch.delenv(STATS_PATH_ENV, raising=False)
    monkeypatch.delenv(CONTROL_PATH_ENV, raising=False)
    return lambda **kw: sched_mod.SpecRolloutScheduler(vllm_config=_vllm_config(**kw))


def test_installs_the_planners_lookup_without_vllms_table(make, caplog):
    with caplog.at_level("INFO", logger="verl_specrollout.scheduler"):
        s = make(mode="static", table=None)
    assert compat.get_dynamic_lookup(s) == s.planner.lookup(MAX_BS) and len(s.dynamic_sd_lookup) == 17
    assert ("cudagraph mode FULL_AND_PIECEWISE, capture sizes up to 160 tokens (B <= 32 at K=4, B <= 16 at K=0), "
            "dynamic K via scheduler lookup") in caplog.text
    assert "WARNING" not in [r.levelname for r in caplog.records]
    s.set_policy("static", [[1, 4, 4], [5, 16, 0]])
    assert s.dynamic_sd_lookup[1:] == [4] * 4 + [0] * 12


def test_rewrites_vllms_table_when_it_is_there(make, caplog):
    with caplog.at_level("INFO", logger="verl_specrollout.scheduler"):
        s = make(table=[[1, 16, 1]])  # adaptive: the planner's cold start replaces vLLM's table
    assert s.dynamic_sd_lookup[1] == 4
    assert "dynamic K via vLLM's num_speculative_tokens_per_batch_size" in caplog.text


def test_eager_engines_say_so(make, caplog):
    with caplog.at_level("INFO", logger="verl_specrollout.scheduler"):
        make(graph="NONE", top=0)
    assert "cudagraph mode NONE (eager), dynamic K via scheduler lookup" in caplog.text


@pytest.mark.parametrize("table", [None, [[1, 16, 2]]])
def test_no_dynamic_k_across_data_parallel_ranks(make, caplog, table):
    with caplog.at_level("WARNING", logger="verl_specrollout.scheduler"):
        s = make(dp=2, table=table)
    # vLLM 0.24-0.25 keep their table with DP > 1 (0.26+ drop it): we clear the lookup either way.
    assert s.dynamic_sd_lookup is None and s.planner is None
    assert "data_parallel_size=2: dynamic K off" in caplog.text


def test_file_channels_come_from_the_environment(make, monkeypatch, tmp_path):
    monkeypatch.setenv(STATS_PATH_ENV, str(tmp_path / "stats.json"))
    monkeypatch.setenv(CONTROL_PATH_ENV, str(tmp_path / "control.json"))
    s = make()
    assert s._sr_stats_path == str(tmp_path / "stats.json") and s._sr_control_path == str(tmp_path / "control.json")
    s._sr_write_stats()
    assert (tmp_path / "stats.json").is_file()
