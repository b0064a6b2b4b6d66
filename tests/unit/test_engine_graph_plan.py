"""What the engine is started with around dynamic K: the graph plan, the capture ceiling, the memory
reserved for probabilistic drafts, and nothing run-specific in what vLLM hashes.

GPU-like settings are veRL 0.9.1's defaults (trainer/config/rollout/rollout.yaml: max_num_seqs 256,
max_num_batched_tokens 8192, enforce_eager False, gpu_memory_utilization 0.5; its server defaults the
cudagraph mode to FULL_AND_PIECEWISE after our _preprocess_engine_kwargs) on an 80 GiB GPU, with a
Qwen2.5-7B-sized vocabulary (152064).
"""

import json

import pytest

from verl_specrollout import compat
from verl_specrollout.config import RUN_SPECIFIC_KEYS, SpecRolloutConfig, SpecRolloutConfigError
from verl_specrollout.vllm_adapter.engine_kwargs import (
    CONTROL_PATH_ENV, SCHEDULER_CLS, STATS_PATH_ENV, EngineLimits, apply_channel_env, build_engine_kwargs,
    capture_ceilings, draft_probs_reserve_bytes, resolve_graph_plan)

TABLE = compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR
VOCAB = 152064
GIB = 1 << 30


def _ckpt(tmp_path, name, vocab=VOCAB):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"vocab_size": vocab}))
    return str(d)


def _cfg(tmp_path=None, **kw):
    base = {"enable": True, "method": "ngram", "max_k": 4}
    if tmp_path is not None:
        base.update(method="eagle3", draft_path=_ckpt(tmp_path, "draft"))
    base.update(kw)
    return SpecRolloutConfig.from_dict(base)


def _gpu(**kw):
    limits = dict(max_num_seqs=256, max_num_batched_tokens=8192, enforce_eager=False, gpu_memory_utilization=0.5,
                  cudagraph_capture_sizes=None, device_memory_bytes=80 * GIB, on_cpu=False)
    limits.update(kw)
    return EngineLimits(**limits)


# ----------------------------------------------------------------------------- graph plan

def test_default_plan_is_vllms_own_dynamic_k_path_until_a_gpu_run_validates_keep_user_mode():
    kw = build_engine_kwargs(_cfg(), env={})
    assert kw["speculative_config"][TABLE]  # vLLM's path: PIECEWISE graphs "for reliability"
    assert kw["scheduler_cls"] == SCHEDULER_CLS
    assert kw["speculative_config"]["num_speculative_tokens"] == 4


def test_keep_user_mode_keeps_the_users_graph_mode_and_our_scheduler_installs_k():
    kw = build_engine_kwargs(_cfg(engine={"graph_plan": "keep_user_mode"}), env={})
    assert TABLE not in kw["speculative_config"]  # vLLM then keeps FULL_AND_PIECEWISE (see the compile-key test)
    assert kw["scheduler_cls"] == SCHEDULER_CLS


@pytest.mark.parametrize("planner", [{"mode": "off"}, {"mode": "static", "table": [[1, 8, 4], [9, 1024, 1]]}])
def test_keep_user_mode_brings_our_scheduler_whenever_k_varies(planner):
    kw = build_engine_kwargs(_cfg(planner=planner, engine={"graph_plan": "keep_user_mode"}), env={})
    assert TABLE not in kw["speculative_config"] and kw["scheduler_cls"] == SCHEDULER_CLS


def test_max_k_everywhere_is_static_speculation_without_a_table():
    cfg = _cfg(planner={"mode": "static"})
    assert resolve_graph_plan(cfg, {}, {})[0] == "static"
    kw = build_engine_kwargs(cfg, env={})
    assert TABLE not in kw["speculative_config"] and "scheduler_cls" not in kw


def test_piecewise_sends_vllms_table():
    kw = build_engine_kwargs(_cfg(engine={"graph_plan": "piecewise"}), env={})
    assert kw["speculative_config"][TABLE] == [[1, 12, 4], [13, 16, 3], [17, 21, 2], [22, 1024, 1]]
    assert kw["scheduler_cls"] == SCHEDULER_CLS


def test_auto_falls_back_to_vllms_table_for_a_user_scheduler_or_the_v2_runner():
    static = {"mode": "static", "table": [[1, 8, 4], [9, 1024, 0]]}
    plan, why = resolve_graph_plan(_cfg(planner=static), {"scheduler_cls": "my.Scheduler"}, {})
    assert plan == "piecewise" and "scheduler_cls" in why
    kw = build_engine_kwargs(_cfg(planner=static), existing={"scheduler_cls": "my.Scheduler"}, env={})
    assert kw["speculative_config"][TABLE] == static["table"] and "scheduler_cls" not in kw
    plan, why = resolve_graph_plan(_cfg(), {}, {compat.VLLM_ENV_USE_V2_MODEL_RUNNER: "1"})
    assert plan == "piecewise" and "V2" in why
    keep = _cfg(engine={"graph_plan": "keep_user_mode"})
    assert resolve_graph_plan(keep, {}, {compat.VLLM_ENV_USE_V2_MODEL_RUNNER: "0"})[0] == "keep_user_mode"


def test_keep_user_mode_refuses_a_user_scheduler():
    cfg = _cfg(planner={"mode": "static", "table": [[1, 8, 4], [9, 1024, 0]]}, engine={"graph_plan": "keep_user_mode"})
    with pytest.raises(SpecRolloutConfigError, match="graph_plan=piecewise to keep yours"):
        build_engine_kwargs(cfg, existing={"scheduler_cls": "my.Scheduler"}, env={})


def test_plan_is_logged_once_per_engine(caplog):
    with caplog.at_level("INFO", logger="verl_specrollout.vllm_adapter.engine_kwargs"):
        build_engine_kwargs(_cfg(engine={"graph_plan": "keep_user_mode"}), limits=_gpu(), env={})
    lines = [r.getMessage() for r in caplog.records if "graph plan" in r.getMessage()]
    assert len(lines) == 1
    assert ("graph plan keep_user_mode (engine.graph_plan=keep_user_mode): cudagraph mode FULL_AND_PIECEWISE, "
            "capture sizes up to 1280 tokens" in lines[0]) and lines[0].endswith("dynamic K via scheduler lookup")


# ----------------------------------------------------------------------------- capture sizes

def test_capture_ceilings():
    # (vLLM's default, the one covering every K): vLLM's 512-token ceiling covers B <= 512 / (1 + K).
    assert capture_ceilings(256, 8192, 4) == (512, 1280)
    assert capture_ceilings(1024, 8192, 4) == (512, 2560)   # B <= 512 at every K, as a plain engine
    assert capture_ceilings(1024, 2048, 4) == (512, 2048)   # never above max_num_batched_tokens
    assert capture_ceilings(16, 8192, 4) == (160, 80)       # small engines: vLLM's default already covers
    assert capture_ceilings(256, 8192, 1) == (512, 512)


def test_gpu_like_verl_config_covers_every_k_with_graphs():
    kw = build_engine_kwargs(_cfg(), limits=_gpu(), env={})
    assert kw[compat.VLLM_ARG_COMPILATION_CONFIG] == {compat.VLLM_CC_MAX_CAPTURE_SIZE: 1280}
    # A job's own compilation settings are kept (veRL then adds its cudagraph_mode default).
    kw = build_engine_kwargs(_cfg(), existing={"compilation_config": json.dumps({"cudagraph_mode": "FULL_AND_PIECEWISE",
                                                                                  "mode": 3})},
                             limits=_gpu(), env={})
    assert kw["compilation_config"] == {"cudagraph_mode": "FULL_AND_PIECEWISE", "mode": 3,
                                        "max_cudagraph_capture_size": 1280}


@pytest.mark.parametrize("existing, limits, graph_capture", [
    ({}, {"enforce_eager": True}, "all_k"),                                      # no graphs
    ({"enforce_eager": True}, {}, "all_k"),                                      # engine_kwargs win
    ({"compilation_config": {"cudagraph_mode": "NONE"}}, {}, "all_k"),
    ({"compilation_config": {"cudagraph_capture_sizes": [1, 2, 4]}}, {}, "all_k"),  # the job chose sizes
    ({"compilation_config": {"max_cudagraph_capture_size": 256}}, {}, "all_k"),
    ({}, {"cudagraph_capture_sizes": [1, 8, 64]}, "all_k"),                      # veRL's rollout.cudagraph_capture_sizes
    ({}, {"max_num_seqs": 16}, "all_k"),                                         # vLLM's default already covers
    ({}, {}, "vllm"),
    ({}, {"max_num_seqs": None}, "all_k"),                                       # unknown: left to vLLM
])
def test_capture_sizes_left_to_the_job_or_vllm(existing, limits, graph_capture):
    kw = build_engine_kwargs(_cfg(engine={"graph_capture": graph_capture}), existing=existing, limits=_gpu(**limits),
                             env={})
    assert "compilation_config" not in kw


# ----------------------------------------------------------------------------- draft-probability memory

def test_draft_probs_reserve_arithmetic():
    # 256 requests x K=4 = 1024 draft tokens x 152k vocab x float32: 0.62 GB held, twice that at the peak.
    assert 256 * 4 * VOCAB * 4 == 622_854_144
    assert draft_probs_reserve_bytes(256, 4, VOCAB) == 2 * 622_854_144
    assert draft_probs_reserve_bytes(1, 1, 10) == 80


def test_probabilistic_drafts_lower_the_memory_share(tmp_path, caplog):
    cfg = _cfg(tmp_path, draft_sampling="probabilistic")
    with caplog.at_level("INFO", logger="verl_specrollout.vllm_adapter.engine_kwargs"):
        kw = build_engine_kwargs(cfg, limits=_gpu(), env={})
    assert kw["speculative_config"]["draft_sample_method"] == "probabilistic"
    reserve = draft_probs_reserve_bytes(256, 4, VOCAB)
    assert kw["gpu_memory_utilization"] == round(0.5 - reserve / (80 * GIB), 4) == 0.4855
    assert "1.16 GiB beyond vLLM's memory profile" in caplog.text and "0.5 -> 0.4855" in caplog.text


def test_draft_vocab_is_the_larger_of_target_and_draft(tmp_path):
    target = _ckpt(tmp_path, "target", 151936)
    cfg = _cfg(tmp_path, draft_sampling="probabilistic", skip_vocab_check=True)  # a padded draft vocabulary
    kw = build_engine_kwargs(cfg, target_path=target, limits=_gpu(), env={})
    assert kw["gpu_memory_utilization"] == round(0.5 - draft_probs_reserve_bytes(256, 4, VOCAB) / (80 * GIB), 4)


def test_an_explicit_kv_cache_budget_is_lowered_instead(tmp_path):
    cfg = _cfg(tmp_path, draft_sampling="probabilistic")
    kw = build_engine_kwargs(cfg, existing={"kv_cache_memory_bytes": 20 * GIB}, limits=_gpu(), env={})
    assert kw["kv_cache_memory_bytes"] == 20 * GIB - draft_probs_reserve_bytes(256, 4, VOCAB)
    assert "gpu_memory_utilization" not in kw
    with pytest.raises(SpecRolloutConfigError, match="cannot hold"):
        build_engine_kwargs(cfg, existing={"kv_cache_memory_bytes": GIB}, limits=_gpu(), env={})
    with pytest.raises(SpecRolloutConfigError, match="leaves no room"):
        build_engine_kwargs(cfg, limits=_gpu(gpu_memory_utilization=0.06), env={})


@pytest.mark.parametrize("draft_sampling, engine, limits, why", [
    ("greedy", {}, {}, None),
    ("probabilistic", {"reserve_draft_probs": False}, {}, "no memory reserved"),
    ("probabilistic", {}, {"on_cpu": True}, "not reserved on vLLM-CPU"),
    ("probabilistic", {}, {"device_memory_bytes": None}, "NOT reserved"),
])
def test_no_memory_change(tmp_path, caplog, draft_sampling, engine, limits, why):
    cfg = _cfg(tmp_path, draft_sampling=draft_sampling, engine=engine)
    with caplog.at_level("INFO", logger="verl_specrollout.vllm_adapter.engine_kwargs"):
        kw = build_engine_kwargs(cfg, limits=_gpu(**limits), env={})
    assert "gpu_memory_utilization" not in kw and "kv_cache_memory_bytes" not in kw
    assert (why is None and "probabilistic drafts" not in caplog.text) or why in caplog.text


def test_auto_draft_sampling_reserves_on_this_vllm(tmp_path):
    # draft_sampling=auto is probabilistic for eagle3 on every supported vLLM (0.31 installed here).
    kw = build_engine_kwargs(_cfg(tmp_path), limits=_gpu(), env={})
    assert kw["speculative_config"]["draft_sample_method"] == "probabilistic"
    assert kw["gpu_memory_utilization"] < 0.5


# ----------------------------------------------------------------------------- nothing run-specific hashed

def test_run_specific_paths_stay_out_of_additional_config(tmp_path):
    runs = [dict(planner={"stats_path": f"/tmp/s/replica{r}_node0_{pid}.json", "control_path": f"/tmp/c{pid}"},
                 learner={"publish_dir": f"/tmp/specrollout_drafts_{pid}", "state_dir": f"/tmp/st{pid}"})
            for r, pid in ((0, 101), (1, 202))]
    blobs = []
    for run in runs:
        extra = build_engine_kwargs(_cfg(**run), existing={"additional_config": {"other": 1}}, env={})["additional_config"]
        ours = extra["specrollout"]
        for dotted in RUN_SPECIFIC_KEYS:
            section, _, name = dotted.partition(".")
            assert ours[section][name] is None, dotted
        assert extra["other"] == 1
        blobs.append(json.dumps(extra, sort_keys=True))  # what VllmConfig.compute_hash hashes (vllm/config/vllm.py)
    assert blobs[0] == blobs[1]
    # What used to go in (the whole config) differs between the two processes.
    assert json.dumps(_cfg(**runs[0]).to_dict(), sort_keys=True) != json.dumps(_cfg(**runs[1]).to_dict(), sort_keys=True)


def test_file_channels_travel_in_the_environment():
    env = {STATS_PATH_ENV: "/old", CONTROL_PATH_ENV: "/old-control"}
    got = apply_channel_env(_cfg(planner={"control_path": "/ctl"}), stats_path="/tmp/s/replica0_node0_7.json", env=env)
    assert env == {STATS_PATH_ENV: "/tmp/s/replica0_node0_7.json", CONTROL_PATH_ENV: "/ctl"} and got == env
    apply_channel_env(_cfg(), env=env)  # an engine without channels does not inherit an earlier one's
    assert env == {}
    apply_channel_env(_cfg(planner={"stats_path": "/explicit.json"}), env=env)  # the user's path, kept
    assert env == {STATS_PATH_ENV: "/explicit.json"}
