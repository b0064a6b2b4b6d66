"""The stratified permutation test behind tests/integration/test_lossless_training.py (no engine)."""

import numpy as np

from verl_specrollout.testing.e2e.lossless import Block, perm_max_test, token_weighted_mean

P, G = 8, 8  # prompts x samples per prompt and arm, as in the integration test


def _arm(rng, p_reward, mu_lp, shift=0.0):
    rows = []
    for i in range(P):
        for _ in range(G):
            rows.append({"input": f"prompt {i}", "score": float(rng.random() < p_reward[i]),
                         "old_logprob_mean": mu_lp[i] + shift + 0.17 * rng.standard_normal(),
                         "response_tokens": int(rng.integers(10, 60))})
    return rows


def _block(a, b):
    return Block.from_rows("step1", a, b, ["score", "old_logprob_mean", "response_tokens"])


def test_false_alarm_rate_is_at_most_alpha():
    """Both arms from one distribution: P(p <= alpha) <= alpha (alpha = 0.1, 300 data sets)."""
    rng = np.random.default_rng(0)
    p_reward = np.array([0.0, 0.0, 0.05, 0.1, 0.3, 0.5, 0.9, 1.0])  # binary, many all-0/all-1 strata
    mu = rng.uniform(-0.9, -0.2, P)
    ps = [perm_max_test([_block(_arm(rng, p_reward, mu), _arm(rng, p_reward, mu))], n_perm=400, seed=i).p_value
          for i in range(300)]
    rate = float(np.mean(np.array(ps) <= 0.1))
    # Normal 3-sigma bound (<= 45 of 300); scipy.stats.binom.isf(norm.sf(3), 300, 0.1) allows 47, looser, so it stays.
    assert rate <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 300), rate  # 0.152
    assert min(ps) >= 1 / 401


def test_detects_a_log_prob_shift():
    """0.15 nats/token lower mean log-prob in one arm (per-prompt sd 0.17): p < 1e-3."""
    rng = np.random.default_rng(1)
    p_reward = np.full(P, 0.2)
    mu = rng.uniform(-0.9, -0.2, P)
    res = perm_max_test([_block(_arm(rng, p_reward, mu, shift=-0.15), _arm(rng, p_reward, mu))], n_perm=5000)
    assert res.p_value < 1e-3, res.table()


def test_identical_arms_and_constant_quantities():
    rng = np.random.default_rng(2)
    a = _arm(rng, np.zeros(P), np.full(P, -0.5))
    res = perm_max_test([_block(a, [dict(r) for r in a])], n_perm=200)
    assert res.max_z == 0.0 and res.p_value == 1.0  # every reward 0: no evidence either way
    assert "score" in res.table()


def test_token_weighted_mean():
    rows = [{"response_tokens": 1, "x": 1.0}, {"response_tokens": 3, "x": 3.0}]
    assert token_weighted_mean(rows, "x") == 2.5
