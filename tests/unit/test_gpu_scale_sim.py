"""The GPU-scale rollout simulator: its roofline, its acceptance sampling, its policies."""

import numpy as np

from benchmarks.gpu_scale_sim import (ALPHA, GPUS, MODELS, FastGRPO, Hardware, Table, HAND_TABLE, accepted_tokens,
                                      make_policy, rollout_lengths, simulate)


def test_roofline_is_memory_bound_at_small_batch_and_compute_bound_at_large():
    hw = Hardware(MODELS["7B"], GPUS["H200"])
    ctx = 512.0
    assert hw.target_step(1, 4, ctx) <= 1.3 * hw.target_step(1, 0, ctx)  # verifying 5 tokens ~ free
    assert hw.target_step(512, 4, 512 * ctx) > 3.0 * hw.target_step(512, 0, 512 * ctx)  # not at B=512
    assert hw.draft_pass(1, ctx) < 0.2 * hw.target_step(1, 0, ctx)  # a draft pass is a small part of a step


def test_acceptance_sampling_matches_the_per_position_rates():
    rng = np.random.default_rng(0)
    got = accepted_tokens(rng, 200_000, 3)
    expected = 1 + ALPHA[0] + ALPHA[0] * ALPHA[1] + ALPHA[0] * ALPHA[1] * ALPHA[2]
    assert abs(got.mean() - expected) < 0.01
    assert (accepted_tokens(rng, 10, 0) == 1).all()


def test_policies_choose_as_specified():
    assert [FastGRPO(8).choose(b) for b in (1, 32, 80, 161)] == [8, 4, 1, 0]
    assert [Table(HAND_TABLE, 8).choose(b) for b in (1, 4, 5, 16, 17, 1000)] == [4, 4, 2, 2, 1, 1]


def test_simulation_is_deterministic_and_plain_has_no_drafts():
    hw = Hardware(MODELS["7B"], GPUS["H100-SXM"])
    lengths = rollout_lengths(4, 4, 128, seed=1)
    a = simulate(hw, make_policy("plain", 4, 16), lengths, seed=3)
    b = simulate(hw, make_policy("plain", 4, 16), lengths, seed=3)
    assert a["seconds"] == b["seconds"] and a["steps"] == int(lengths.max())
    ours = simulate(hw, make_policy("ours", 4, 16), lengths, seed=3)
    assert ours["steps"] < a["steps"] and ours["tokens"] == a["tokens"]


def test_planner_beats_every_static_k_and_the_hand_table_on_a_small_rollout():
    """256 requests at once on a simulated 7B / H200: the planner's cold start and exploration
    included, it finishes before every static K and the vLLM-style table (simulated seconds)."""
    hw = Hardware(MODELS["7B"], GPUS["H200"])
    lengths = rollout_lengths(32, 8, 1024, seed=0)
    seconds = {p: simulate(hw, make_policy(p, 8, len(lengths)), lengths, seed=0)["seconds"]
               for p in ["static-1", "static-2", "static-3", "vllm-table", "ours"]}
    others = min(v for p, v in seconds.items() if p != "ours")
    assert seconds["ours"] < others, seconds
    # Cold start: never K > 1 at the crowded start (B ~ 256: compute-bound).
    trace = simulate(hw, make_policy("ours", 8, len(lengths)), lengths, seed=0)["trace"]
    assert all(k <= 1 for b, k in trace if b >= 200), [t for t in trace if t[0] >= 200 and t[1] > 1]
