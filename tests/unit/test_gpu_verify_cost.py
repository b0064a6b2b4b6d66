"""tools/gpu_verify_cost.py: the toy-shape CPU run writes a well-formed step-cost table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "gpu_verify_cost.py")

POINT_KEYS = {"batch", "k", "tokens", "target_ms", "body_ms", "head_ms", "body_min_ms",
              "body_max_ms", "draft_first_ms", "draft_ms", "step_ms", "est_weight_gb",
              "est_kv_gb", "est_tflop"}
SHAPE_KEYS = {"hidden", "layers", "q_heads", "kv_heads", "head_dim", "intermediate", "vocab",
              "draft_vocab"}


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("gpu_verify_cost", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while being built
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify_cost") / "cost.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, TOOL, "--device", "cpu", "--tiny", "--threads", "1", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        return json.load(f), proc.stdout


def test_top_level_schema(tiny_run):
    result, stdout = tiny_run
    assert result["schema"] == "specrollout.gpu_verify_cost/1"
    assert result["device"]["type"] == "cpu" and result["device"]["name"]
    assert result["torch"] == torch.__version__
    assert result["dtype"] == "bfloat16"
    assert result["complete"] is True and result["stopped_early"] is None
    assert result["settings"]["tiny"] is True and result["settings"]["threshold"] == 1.3
    assert [m["name"] for m in result["models"]] == ["tiny", "tiny-scaled"]
    assert "crossover" in stdout and "wrote" in stdout


def test_points_cover_the_grid_with_positive_times(tiny_run):
    result, _ = tiny_run
    for m in result["models"]:
        assert set(m["shape"]) == SHAPE_KEYS
        assert not m["errors"]
        grid = {(b, k) for b in m["batches"] for k in m["ks"]}
        assert {(p["batch"], p["k"]) for p in m["points"]} == grid
        for p in m["points"]:
            assert set(p) >= POINT_KEYS
            assert p["tokens"] == p["batch"] * (p["k"] + 1)
            for key in ("target_ms", "body_ms", "head_ms", "draft_first_ms", "step_ms"):
                assert p[key] > 0, (m["name"], p)
            assert p["draft_ms"] == 0 if p["k"] == 0 else p["draft_ms"] > 0
            assert p["target_ms"] == pytest.approx(p["body_ms"] * m["layer_scale"] + p["head_ms"])
        assert {r["batch"] for r in m["draft_next"]} == set(m["batches"])
        assert all(r["draft_next_ms"] > 0 for r in m["draft_next"])


def test_layer_scaling_is_recorded(tiny_run):
    result, _ = tiny_run
    scaled = result["models"][1]
    assert scaled["layers_timed"] < scaled["shape"]["layers"]
    assert scaled["layer_scale"] == scaled["shape"]["layers"] / scaled["layers_timed"]


def test_derived_numbers(tiny_run):
    result, _ = tiny_run
    m = result["models"][0]
    d = m["derived"]
    assert d["base_ms"] > 0 and d["verify5_over_decode1"] > 0
    assert d["crossover_tokens"] is None or d["crossover_tokens"] in {p["tokens"] for p in m["points"]}
    assert [r["batch"] for r in d["per_batch"]] == m["batches"]
    for r in d["per_batch"]:
        assert r["k0_ms"] > 0 and r["max_k_within_threshold"] in m["ks"]
        assert r["draft_first_frac"] > 0 and r["draft_next_frac"] > 0


def test_estimates_grow_with_tokens(tiny_run):
    # Timings at toy sizes are noise; the roofline estimates must still rise with tokens.
    result, _ = tiny_run
    for m in result["models"]:
        for b in m["batches"]:
            row = sorted((p for p in m["points"] if p["batch"] == b), key=lambda p: p["k"])
            flops = [p["est_tflop"] for p in row]
            assert flops == sorted(flops) and len(set(flops)) == len(flops)


def test_step_observations_load_into_the_cost_model(tiny_run):
    result, _ = tiny_run
    from verl_specrollout.planner.cost_model import StepCostModel

    for m in result["models"]:
        obs = m["step_observations"]
        assert len(obs) == len(m["points"])
        for tokens, requests, passes, seconds in obs:
            assert tokens >= requests >= 1 and passes >= 0 and seconds > 0
        StepCostModel().observe_many([tuple(o) for o in obs])


@pytest.mark.parametrize("kind", ["mask", "lower-right", "unmasked"])
def test_gqa_folded_attention_matches_reference(tool, kind):
    """Folding the q heads of a kv head into query rows, with the tiled mask, is exact; so is
    torch's bottom-right causal bias; the unmasked (timing) path is exact for the last new
    token of each request, which sees the whole span anyway."""
    torch.manual_seed(0)
    shape = tool.Shape(32, 1, 4, 2, 8, 64, 50, draft_vocab=20)
    plan = tool.ModelPlan("check", shape, 1, [2], [2])
    model = tool.Model(plan, 5, torch.device("cpu"), torch.float32)
    assert tool.choose_attention(model, kind) == kind  # lower-right: passed its own check
    layer, cache = model.layers[0], model.caches[0]
    inp = tool.StepInputs(model, 2, 3)
    x = torch.randn(inp.tokens, shape.hidden)
    got = tool.attention(model, layer, cache, x, inp)

    b, q, d, hq, hkv, ctx = 2, 3, shape.head_dim, shape.q_heads, shape.kv_heads, 5
    qh = torch.nn.functional.linear(x, layer["qkv"])[:, :hq * d].view(-1, hq, d)
    qh = tool.rope(qh, inp.cos, inp.sin).view(b, q, hq, d).transpose(1, 2)
    keys = cache[0][:b, :, :ctx + q].repeat_interleave(hq // hkv, dim=1)
    values = cache[1][:b, :, :ctx + q].repeat_interleave(hq // hkv, dim=1)
    scores = qh @ keys.transpose(-1, -2) / d ** 0.5
    allowed = torch.arange(ctx + q)[None, :] <= (ctx + torch.arange(q))[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    want = (scores.softmax(-1) @ values).transpose(1, 2).reshape(b * q, hq * d)
    if kind == "unmasked":
        last = torch.arange(b) * q + q - 1
        torch.testing.assert_close(got[last], want[last], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got, want, rtol=1e-4, atol=1e-5)  # earlier tokens saw later ones
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_crossover_uses_the_lower_envelope(tool):
    pts = [{"tokens": t, "target_ms": ms} for t, ms in
           [(1, 1.0), (2, 1.0), (4, 1.5), (8, 1.1), (16, 1.6), (32, 2.5)]]
    # 4 tokens is a noisy spike; from 16 tokens on every step is past 1.3x.
    assert tool.crossover_tokens(pts, 1.0, 1.3) == 16
    assert tool.crossover_tokens(pts[:2], 1.0, 1.3) is None


def test_budget_stops_early_and_still_writes(tool, tmp_path, capsys):
    out = tmp_path / "cost.json"
    threads = torch.get_num_threads()
    try:
        rc = tool.main(["--device", "cpu", "--tiny", "--threads", "1", "--models", "tiny",
                        "--budget-s", "0.000001", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["complete"] is False and "budget" in result["stopped_early"]
    assert result["skipped_models"] == [{"name": "tiny", "reason": "budget"}]
    # Nothing measured: no base point, so the run reports failure.
    assert rc != 0
    assert "stopping early" in capsys.readouterr().out
