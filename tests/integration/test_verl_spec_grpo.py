"""Real veRL 0.9.1 GRPO on CPU with EAGLE-3 speculative rollouts and the online draft learner.

Asserts the whole loop: capture during compute_log_prob -> learner trains and publishes ->
the rollout server reloads the new draft after the weight sync -> the next rollout runs it, and
the specrollout/* metrics reach veRL's logger. Slow: a few minutes.
"""

import math

import pytest

pytestmark = pytest.mark.integration


def test_grpo_with_speculation_and_online_learner(tmp_path):
    pytest.importorskip("verl")
    pytest.importorskip("vllm")
    from verl_specrollout.e2e.grpo_cpu import run
    from verl_specrollout.testbed import build_testbed

    tb = build_testbed("tiny")
    p = "+actor_rollout_ref.rollout.custom.specrollout."
    extra = [f"{p}enable=true", f"{p}method=eagle3", f"{p}draft_path={tb.eagle3_dir}", f"{p}learner.enable=true",
             f"{p}learner.actor_name=specrollout_learner_test_{tmp_path.name}"]
    # Small batch / short responses keep the run short; 3 steps so the draft can advance twice.
    res = run(steps=3, out=str(tmp_path), extra=extra, timeout=900, n=4, batch=2, response_length=64)
    assert res["returncode"] == 0, f"veRL failed, see {res['log']}"
    steps = res["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3], res
    for s in steps:
        assert math.isfinite(s["reward_mean"])
        assert s["training/rollout_probs_diff_mean"] < 0.02  # vLLM runs the actor's weights
        assert s["specrollout/num_drafts"] > 0, s
        assert s["specrollout/mean_acceptance_length"] > 1.0, s
        assert 0.0 <= s["specrollout/spec_off_fraction"] <= 1.0
        assert "specrollout/accepted_per_draft/pos1" in s
        assert s["specrollout/draft_reload_failures"] == 0, s
    versions = [s["specrollout/draft_version"] for s in steps]
    # Step 1 runs the draft_path checkpoint (v0); the learner publishes after each compute_log_prob
    # and the server must really load it (the version is the one the vLLM workers confirmed).
    assert versions[0] == 0 and versions[-1] > versions[0], versions
    assert all(b >= a for a, b in zip(versions, versions[1:])), versions
    assert steps[-1]["specrollout/draft_version_live"] >= 2, steps[-1]
    assert math.isfinite(steps[-1]["specrollout/learner/loss"])
