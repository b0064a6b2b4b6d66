"""tools/gpu_draft_sampling_cost.py: the toy CPU run writes its table, and the probabilistic draft
token follows the softmax (the exponential race samples from the probabilities it keeps)."""

import importlib.util
import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "tools", "gpu_draft_sampling_cost.py")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("gpu_draft_sampling_cost", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_cpu_run_writes_the_table(tool, tmp_path):
    out = tmp_path / "cost.json"
    assert tool.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [p["rows"] for p in table["points"]] == [1, 4, 16, 64] and table["vocab"] == 4096
    assert all(p["greedy_ms"] > 0 and p["probabilistic_ms"] > 0 for p in table["points"])
    assert table["points"][-1]["probs_buffer_mb"] == 1.0  # 64 x 4096 float32


def test_probabilistic_draft_samples_from_its_softmax(tool):
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40_000, 1)
    tokens, probs = tool.probabilistic(logits, torch.tensor(1.0))
    freq = torch.bincount(tokens, minlength=4).float() / tokens.numel()
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    assert torch.equal(tool.greedy(logits), torch.zeros(40_000, dtype=torch.long))
