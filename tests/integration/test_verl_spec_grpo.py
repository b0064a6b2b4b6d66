"""Real veRL 0.9.1 GRPO on CPU with EAGLE-3 speculative rollouts and the online draft learner.

Asserts the whole loop: capture during compute_log_prob -> learner trains and publishes ->
the rollout server reloads the new draft after the weight sync -> the next rollout runs it, and
the specrollout/* metrics reach veRL's logger. Slow: a few minutes.

The runs are conftest.py's (3 steps, so the draft can advance twice): ``grpo_spec_run`` on veRL's
default V1 ``sync`` trainer (shared with test_lossless_training.py), ``grpo_spec_run_colocate_async``
and ``grpo_spec_run_legacy``.
"""

import math

import pytest
from conftest import assert_grpo_ran

pytestmark = pytest.mark.integration


# Every trainer veRL 0.9 ships that runs here: V1 (veRL's default) in its sync and colocate_async modes
# and the legacy RayPPOTrainer. The ids carry "v1" so that `pytest -k v1` selects the V1 ones.
TRAINER_RUNS = {"v1_sync": "grpo_spec_run", "v1_colocate_async": "grpo_spec_run_colocate_async",
                "legacy": "grpo_spec_run_legacy"}


@pytest.mark.parametrize("trainer", list(TRAINER_RUNS))
def test_grpo_with_speculation_and_online_learner(trainer, request):
    res = request.getfixturevalue(TRAINER_RUNS[trainer])
    steps = assert_grpo_ran(res, 3)
    assert res["trainer"] == trainer.removeprefix("v1_")
    # In colocate_async a step's batch may have been generated before the previous log call (the
    # warm-up batch, partial rollouts), so a step's window can hold no rollout at all; the metrics
    # must then say so (no drafts), and every window that ran rollouts must show them.
    every_step_rolls_out = trainer != "v1_colocate_async"
    drafted = [s for s in steps if s.get("specrollout/num_drafts", 0) > 0]
    assert drafted and (len(drafted) == len(steps) or not every_step_rolls_out), steps
    assert steps[0] in drafted, steps[0]  # the first rollout runs the draft_path head at its start
    for s in steps:
        assert 0.0 <= s["specrollout/spec_off_fraction"] <= 1.0
        assert s["specrollout/draft_reload_failures"] == 0, s
        assert "specrollout/mean_k" in s or s.get("specrollout/num_drafts", 0) == 0, s
    for s in drafted:
        assert s["specrollout/mean_acceptance_length"] > 1.0, s
        assert "specrollout/accepted_per_draft/pos1" in s
    # veRL's own dashboard keys, filled from vLLM's per-request stats (by veRL's legacy trainer from
    # the batch, on V1 by our step hook with veRL's own function). veRL averages 1 + accepted / verify
    # steps over samples and counts a sample never verified (all its steps at K=0: the planner picks
    # K=0 more often once a K=0 step costs what plain decoding costs) as 0, so the mean can fall below
    # 1; it is > 0 as soon as one sample was drafted for.
    for s in drafted:
        assert 0.0 < s["rollout/spec_accept_length"] <= 5.0, s
        assert 0.0 < s["rollout/spec_accept_rate"] <= 1.0, s
    versions = [s["specrollout/draft_version"] for s in steps]
    # Step 1 runs the draft_path checkpoint (v0); the learner publishes after each compute_log_prob
    # and the server must really load it (the version is the one the vLLM workers confirmed).
    assert versions[0] == 0 and versions[-1] > versions[0], versions
    assert all(b >= a for a, b in zip(versions, versions[1:])), versions
    assert steps[-1]["specrollout/draft_version_live"] >= 2, steps[-1]
    assert math.isfinite(steps[-1]["specrollout/learner/loss"])
    # The learner's embedding / lm_head copies follow the policy (sent by the actor each step).
    assert steps[-1]["specrollout/learner/shared_policy_step"] >= len(steps) - 1, steps[-1]
    assert steps[-1]["specrollout/learner/shared_refresh_mb"] > 0, steps[-1]
