"""R replicas under veRL's balancer and decoupled speculation in the GPU-scale simulator
(benchmarks/replica_sim.py): properties that hold whatever the calibration."""

import json

import numpy as np
import pytest

from benchmarks.gpu_calibration import GPUS
from benchmarks.gpu_scale_sim import ALPHA, MODELS, Hardware, Static, main, rollout_lengths
from benchmarks.replica_sim import (DRAFT_LMS, Decoupled, Replica, ReplicaSim, assign_least_inflight,
                                    simulate_replicas)

HW = Hardware(MODELS["7B"], GPUS["H200"])
LM = Hardware(DRAFT_LMS["7B"], GPUS["H200"])
PERFECT = Decoupled(transfer_s=0.0, oracle=True, alpha_scale=1.0)


def static(k):
    return lambda n: Static(k)


def run(mode, lengths, replicas, a=Decoupled(), policy=static(4), seed=0):
    return simulate_replicas(HW, LM, policy, lengths, replicas, mode, seed, a)


def test_least_inflight_split_is_balanced_random_and_seeded():
    a = assign_least_inflight(1000, 8, seed=3)
    counts = np.bincount(a, minlength=8)
    assert counts.max() - counts.min() <= 1
    assert (a == assign_least_inflight(1000, 8, seed=3)).all()
    assert (a != assign_least_inflight(1000, 8, seed=4)).any()


def test_decoupled_equals_coupled_with_one_replica():
    lengths = rollout_lengths(8, 4, 256, seed=1)
    coupled, decoupled = run("coupled", lengths, 1), run("decoupled", lengths, 1, PERFECT)
    assert decoupled["seconds"] == coupled["seconds"] and decoupled["hit_share"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decoupled_never_slower_than_coupled_at_zero_transfer_with_idle_replicas(seed):
    lengths = rollout_lengths(16, 4, 512, seed=seed, median_div=12, sigma=1.2)
    coupled, decoupled = run("coupled", lengths, 4, seed=seed), run("decoupled", lengths, 4, PERFECT, seed=seed)
    assert coupled["idle_share"] > 0.1  # the premise: replicas drain unevenly
    assert decoupled["hit_share"] > 0.0
    assert decoupled["seconds"] < coupled["seconds"]


def test_tails_that_cannot_arrive_in_time_leave_coupled_unchanged():
    lengths = rollout_lengths(16, 4, 512, seed=0, median_div=12, sigma=1.2)
    late = Decoupled(transfer_s=10.0, fallback="coupled")
    decoupled, coupled = run("decoupled", lengths, 4, late), run("coupled", lengths, 4)
    assert decoupled["hit_share"] == 0.0 and decoupled["seconds"] == coupled["seconds"]


def test_plain_never_drafts_and_coupled_lm_pays_its_passes():
    lengths = rollout_lengths(8, 4, 256, seed=2)
    plain = run("plain", lengths, 2)
    assert plain["steps"] == sum(int(lengths[assign_least_inflight(len(lengths), 2, 0) == r].max()) for r in range(2))
    assert run("coupled-lm", lengths, 2)["seconds"] < plain["seconds"]


def test_guess_probability_follows_the_last_outcome_and_fan_out():
    sim = ReplicaSim(HW, LM, Decoupled(guess_hit=0.25, alpha_scale=1.0))
    rep = Replica(0, np.full(3, 10), Static(4), seed=0)
    rep.last_k[:] = [4, 4, 0]
    rep.last_acc[:] = [4, 1, 0]  # all accepted, a rejection, a step without drafts
    p1 = sim.guess_prob(rep, np.arange(3), fan=1)
    assert p1 == pytest.approx([ALPHA[4], 0.25, ALPHA[0]])
    p3 = sim.guess_prob(rep, np.arange(3), fan=3)
    assert p3 == pytest.approx(1 - (1 - p1) ** 3) and (p3 > p1).all()


def test_bad_inputs_are_refused():
    lengths = np.full(4, 8)
    with pytest.raises(ValueError, match="mode"):
        run("sideways", lengths, 2)
    with pytest.raises(ValueError, match="replicas"):
        run("coupled", lengths, 0)
    with pytest.raises(ValueError, match="fallback"):
        Decoupled(fallback="wait")
    with pytest.raises(ValueError, match="assumptions"):
        Decoupled(guess_hit=1.5)
    with pytest.raises(ValueError, match="drafter"):
        simulate_replicas(HW, None, static(2), lengths, 2, "decoupled", 0)


def test_replica_comparison_cli_writes_every_mode_and_the_ratios(tmp_path, capsys):
    out = tmp_path / "sim.json"
    payload = main(["--out", str(out), "--replicas", "2", "--models", "7B", "--gpus", "H200", "--prompts", "4",
                    "--group", "4", "--max-tokens", "96", "--max-k", "4"])
    row = payload["results"][0]
    assert {"plain", "coupled", "coupled-lm", "decoupled", "decoupled-ceiling"} <= set(row)
    assert payload["summary"][0]["replicas"] == 2
    assert json.loads(out.read_text())["summary"] == payload["summary"]
    assert "decoupled/coupled" in capsys.readouterr().out
