"""Real veRL 0.9.1 GRPO runs on CPU, shared by the integration tests of one pytest session.

``grpo_plain_run``: veRL's own vLLM rollout. ``grpo_spec_run``: our speculative rollout override
(EAGLE-3 head from the tiny testbed, online draft learner on). Both on veRL's default trainer (V1,
``sync``); same model, data, sizes and seeds, so both runs see the same prompts at every step and
start from the same weights. ``grpo_spec_run_colocate_async`` and ``grpo_spec_run_legacy``: the
spec run on the V1 ``colocate_async`` trainer and on the legacy ``RayPPOTrainer``. Each takes a few
minutes (veRL start-up dominates), so each is run at most once per session, lazily: a session that
only needs one of them runs only that one. Both dump every training rollout through veRL's
``trainer.rollout_data_dir`` (with per-sample log-probs, see verl_specrollout/e2e/rollout_dump.py)
and log vLLM at INFO, so the engine processes' own start-up lines are in ``train.log``.
"""

from __future__ import annotations

import os

import pytest

GRPO_STEPS = 3
GRPO_SIZES = dict(n=8, batch=8, response_length=64)  # 8 prompts x 8 samples = 64 samples per step
GRPO_TIMEOUT_S = 1500
# The same seeds in both runs (veRL's defaults, spelled out): data order, actor init, vLLM engine.
SEED_OVERRIDES = ["data.seed=1", "actor_rollout_ref.actor.fsdp_config.seed=42", "actor_rollout_ref.rollout.seed=42",
                  # vLLM returns per-token log-probs with the tokens; veRL compares them with the actor's.
                  "actor_rollout_ref.rollout.calculate_log_probs=True"]


SPEC_KEY = "+actor_rollout_ref.rollout.custom.specrollout."


def spec_overrides(eagle3_dir: str, learner_name: str, method: str = "eagle3") -> list[str]:
    p = SPEC_KEY
    return [f"{p}enable=true", f"{p}method={method}", f"{p}draft_path={eagle3_dir}", f"{p}learner.enable=true",
            f"{p}learner.actor_name={learner_name}"]


def _grpo(out_dir, extra: list[str], trainer: str = "sync", **sizes) -> dict:
    pytest.importorskip("verl")
    pytest.importorskip("vllm")
    from verl_specrollout.testing.e2e.grpo_cpu import run

    out_dir = str(out_dir)
    res = run(steps=GRPO_STEPS, out=out_dir, extra=SEED_OVERRIDES + extra, timeout=GRPO_TIMEOUT_S,
              rollout_data_dir=os.path.join(out_dir, "rollouts"), trainer=trainer,
              env={"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "INFO")}, **{**GRPO_SIZES, **sizes})
    res["rollout_dir"] = os.path.join(out_dir, "rollouts")
    res["out"] = out_dir
    return res


def _spec(tmp_path_factory, name: str, trainer: str, decoupled: bool = False, planner: str = "adaptive",
          **sizes) -> dict:
    from verl_specrollout.testing.testbed import build_testbed

    out = tmp_path_factory.mktemp(name)
    tb = build_testbed("tiny")
    learner = f"specrollout_learner_test_{out.name}_{os.getpid()}"
    if not decoupled:
        extra = spec_overrides(str(tb.eagle3_dir), learner) + [f"{SPEC_KEY}planner.mode={planner}"]
        return _grpo(out, extra, trainer=trainer, **sizes)
    # The group router with decoupled speculation on: the EAGLE-3 head coupled, the draft LM on idle
    # replicas, the job's exchange named after the learner.
    extra = spec_overrides(str(tb.eagle3_dir), learner, method="eagle3+group")
    extra += [f"{SPEC_KEY}decoupled.enable=true", f"{SPEC_KEY}decoupled.draft_lm_path={tb.draft_lm_dir}"]
    return _grpo(out, extra, trainer=trainer, **sizes)


@pytest.fixture(scope="module", autouse=True)
def _collect_engines_between_modules():
    """Engines a module dropped but left in reference cycles are collected when its tests end, not
    later in the middle of the next module's engine start-up, where the collected engine's shutdown
    would take vLLM's process-global tensor-parallel group away from the engine being built."""
    import gc

    yield
    gc.collect()


# veRL's default trainer (V1, sync mode): the plain / spec pair the lossless statistics compare.
@pytest.fixture(scope="session")
def grpo_plain_run(tmp_path_factory):
    return _grpo(tmp_path_factory.mktemp("grpo_plain"), [])


# Its planner is static (K = max_k every step): the lossless statistics need drafts verified at every
# step, and on this CPU the adaptive planner may rightly find K = 0 cheaper for a whole step (CI saw a
# step with no drafts). The other runs keep the adaptive planner.
@pytest.fixture(scope="session")
def grpo_spec_run(tmp_path_factory):
    return _spec(tmp_path_factory, "grpo_spec", "sync", planner="static")


# The other trainers, at half the batch (what they add is the trainer path, not statistics).
@pytest.fixture(scope="session")
def grpo_spec_run_colocate_async(tmp_path_factory):
    return _spec(tmp_path_factory, "grpo_spec_colocate_async", "colocate_async", batch=4)


@pytest.fixture(scope="session")
def grpo_spec_run_legacy(tmp_path_factory):
    return _spec(tmp_path_factory, "grpo_spec_legacy", "legacy", batch=4)


# Decoupled speculation through veRL's servers (test_verl_decoupled_grpo.py), on the default V1 trainer
# and the legacy one, at half the batch.
@pytest.fixture(scope="session")
def grpo_decoupled_run(tmp_path_factory):
    return _spec(tmp_path_factory, "grpo_decoupled", "sync", decoupled=True, batch=4)


@pytest.fixture(scope="session")
def grpo_decoupled_run_legacy(tmp_path_factory):
    return _spec(tmp_path_factory, "grpo_decoupled_legacy", "legacy", decoupled=True, batch=4)


def assert_grpo_ran(res: dict, min_steps: int) -> list:
    """The checks every veRL GRPO run must pass; returns its per-step metrics."""
    import math

    assert res["returncode"] == 0, f"veRL failed, see {res['log']}"
    steps = res["steps"]
    assert len(steps) >= min_steps and [s["step"] for s in steps] == list(range(1, len(steps) + 1)), steps
    for s in steps:
        assert math.isfinite(s["reward_mean"])
        assert s["training/rollout_probs_diff_mean"] < 0.02  # vLLM really runs the actor's weights
    return steps
