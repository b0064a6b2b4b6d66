"""Lossless in training, not only in generation.

Two real veRL 0.9.1 GRPO runs on CPU, on veRL's default V1 trainer (``sync``), with the same seeds
(``conftest.py``: ``grpo_plain_run``
with veRL's vLLM rollout, ``grpo_spec_run`` with our EAGLE-3 speculative rollout and the online
draft learner; 3 steps, 8 prompts x 8 samples per step). veRL dumps every training sample
(``trainer.rollout_data_dir``) with its reward and log-probs. Same seeds -> same prompts at every
step, and step 1 runs the same weights in both.

1. Step 1, same policy: reward, the actor's mean log-prob per response token (``old_log_probs``:
   the policy's log-prob of what the rollout sampled) and response length come from the same
   distribution. Stratified (by prompt) permutation test, statistic max |z| over the three
   quantities; rejects when p <= ALPHA. False-alarm rate <= ALPHA = 1e-3, exactly, whatever the
   sample size (see verl_specrollout/e2e/lossless.py; calibration in tests/unit/test_lossless_stats.py).
   Power: a 0.15 nat/token shift of the mean log-prob is caught 81% of the time (simulated with
   the per-prompt spread seen here, sd 0.17).
2. Rollout log-probs are the target's: vLLM's per-token log-probs (``rollout_log_probs``) match the
   actor's recomputation as closely in the spec run as in the plain run: at every step, veRL's
   ``training/rollout_probs_diff_mean`` (mean |p_rollout - p_actor| over tokens) and the
   token-mean |log p_rollout - log p_actor| from the dump are <= 2 x plain's + 1e-3 and below an
   absolute cap (1e-2, resp. 5e-2; plain is ~2e-3, resp. ~5e-3, bf16 vLLM vs fp32 actor). Draft
   log-probs would be off by O(0.1-1).
   Why this must hold: vLLM 0.31 (v1) computes the log-probs of speculated tokens from the
   TARGET's verification logits, never from the draft's: ``RejectionSampler.forward`` ->
   ``_get_logprobs_tensors`` (vllm/v1/sample/rejection_sampler.py) builds ``final_logits`` from
   ``target_logits`` (the target logits at the draft positions, after temperature / top-k / top-p
   when ``logprobs_mode`` is ``processed_logprobs``, veRL's default) and the bonus-token logits,
   then gathers the log-prob of each emitted token; ``draft_probs`` only enters ``rejection_sample``.
3. Training curves: per step, the mean reward and the mean policy log-prob per token agree; the
   same permutation test over all steps at once (one stratum per step and prompt, statistic max
   over steps and both quantities of |delta| / sd, sd the permutation sd: for the reward, the
   pooled within-prompt binomial standard error of the difference). Equivalently |delta| < c * sd
   for every step and quantity, c the (1 - ALPHA) quantile of that max (printed as "+-tol").
   After step 1 the two policies differ by their own (tiny: lr 1e-5, one update per step) updates,
   so H0 is only approximate there. On the tiny testbed most rewards are 0, so the reward part has
   little power (a 0.06 difference in mean reward is within tolerance); the log-prob part has it.

Also checked: the vLLM-CPU ``expand_kernel`` fix (platforms/cpu) is what veRL's vLLM server
engine runs. ``SPECROLLOUT_CPU_FIX=0 pytest tests/integration/test_lossless_training.py`` runs
the spec arm without it (lossy speculative sampling at T=1): tests 1 and 2 must then fail.
"""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.v1]  # both arms run veRL's default V1 trainer (sync)

ALPHA = 1e-3
N_PERM = 20000
STEP1_QUANTITIES = ["score", "old_logprob_mean", "response_tokens"]
CURVE_QUANTITIES = ["score", "old_logprob_mean"]
FIX_LINE = "expand_kernel replaced by a dtype-preserving version"
FIX_NOT_NEEDED_LINE = "expand_kernel fix not needed"
FIX_OFF_LINE = "NOT fixing vLLM-CPU's expand_kernel"


def _ok(run) -> dict:
    from verl_specrollout.testing.e2e.grpo_cpu import read_metrics
    from verl_specrollout.testing.e2e.lossless import load_rollouts

    assert run["returncode"] == 0, f"veRL failed, see {run['log']}"
    rollouts = load_rollouts(run["rollout_dir"])
    metrics = {s["step"]: s for s in read_metrics(run["metrics_path"])}
    assert sorted(rollouts) == sorted(metrics) and len(rollouts) >= 3, (sorted(rollouts), sorted(metrics))
    return dict(rollouts=rollouts, metrics=metrics, log=run["log"])


@pytest.fixture(scope="module")
def arms(grpo_spec_run, grpo_plain_run):
    spec, plain = _ok(grpo_spec_run), _ok(grpo_plain_run)
    assert sorted(spec["rollouts"]) == sorted(plain["rollouts"])
    for step in spec["rollouts"]:  # same seeds -> the same prompts, the same number of samples each
        a = sorted(r["input"] for r in spec["rollouts"][step])
        b = sorted(r["input"] for r in plain["rollouts"][step])
        assert a == b, f"step {step}: the two runs got different prompts (seeds not shared?)"
    return dict(spec=spec, plain=plain)


def test_spec_run_speculates(arms):
    for step, m in sorted(arms["spec"]["metrics"].items()):
        assert m.get("specrollout/num_drafts", 0) > 0, (step, "the spec run did not speculate")
        assert "specrollout/num_drafts" not in arms["plain"]["metrics"][step]


def test_verl_vllm_server_runs_the_cpu_sampling_fix(arms):
    """The lossless-sampling fix must be active inside veRL's own vLLM server (EngineCore/worker)."""
    with open(arms["spec"]["log"], errors="replace") as f:
        log = f.read()
    assert FIX_OFF_LINE not in log, "SPECROLLOUT_CPU_FIX=0: vLLM-CPU speculative sampling is lossy in this run"
    assert FIX_LINE in log or FIX_NOT_NEEDED_LINE in log, \
        "no sign of the vLLM-CPU expand_kernel fix in veRL's vLLM server processes (VLLM_LOGGING_LEVEL=INFO?)"


def test_step1_same_policy_samples_the_same(arms):
    from verl_specrollout.testing.e2e.lossless import Block, perm_max_test

    block = Block.from_rows("step1", arms["spec"]["rollouts"][1], arms["plain"]["rollouts"][1], STEP1_QUANTITIES)
    res = perm_max_test([block], n_perm=N_PERM, seed=1)
    print("\nstep 1 (same weights in both runs), stratified permutation test:\n" + res.table(ALPHA))
    assert res.p_value > ALPHA, "spec and plain rollouts of the same policy differ:\n" + res.table(ALPHA)


def test_rollout_log_probs_are_the_targets(arms):
    from verl_specrollout.testing.e2e.lossless import token_weighted_mean

    lines, bad = [], []
    for step in sorted(arms["spec"]["metrics"]):
        got = {}
        for arm in ("spec", "plain"):
            m = arms[arm]["metrics"][step]
            rows = arms[arm]["rollouts"][step]
            probs_diff = m.get("training/rollout_probs_diff_mean")  # NaN is logged as null
            got[arm] = (math.nan if probs_diff is None else float(probs_diff),
                        token_weighted_mean(rows, "rollout_logprob_absdiff_mean"))
        lines.append(f"step {step}: mean|p_rollout-p_actor| spec {got['spec'][0]:.2e} plain {got['plain'][0]:.2e}; "
                     f"mean|logp_rollout-logp_actor| spec {got['spec'][1]:.2e} plain {got['plain'][1]:.2e}")
        if not all(math.isfinite(s) and s < cap and s <= 2.0 * p + 1e-3 and p < cap
                   for s, p, cap in zip(got["spec"], got["plain"], (1e-2, 5e-2))):
            bad.append(lines[-1])
    print("\n" + "\n".join(lines))
    assert not bad, "rollout log-probs of the spec run are not the target's:\n" + "\n".join(bad)


def test_training_curves_agree(arms):
    """Per step: mean reward and mean policy log-prob per token agree (all steps in one test)."""
    from verl_specrollout.testing.e2e.lossless import Block, perm_max_test

    steps = sorted(arms["spec"]["rollouts"])
    blocks = [Block.from_rows(f"step{s}", arms["spec"]["rollouts"][s], arms["plain"]["rollouts"][s], CURVE_QUANTITIES)
              for s in steps]
    res = perm_max_test(blocks, n_perm=N_PERM, seed=3)
    curve = {arm: [round(arms[arm]["metrics"][s]["critic/score/mean"], 4) for s in steps] for arm in ("spec", "plain")}
    print(f"\nreward curve spec {curve['spec']} plain {curve['plain']}\n" + res.table(ALPHA))
    for row in res.rows:  # the dump and veRL's own metric are the same numbers
        if row["col"] == "score":
            step = int(row["block"][len("step"):])
            assert abs(row["mean_a"] - arms["spec"]["metrics"][step]["critic/score/mean"]) < 1e-6
            assert abs(row["mean_b"] - arms["plain"]["metrics"][step]["critic/score/mean"]) < 1e-6
    assert res.p_value > ALPHA, "training curves of spec and plain differ:\n" + res.table(ALPHA)
