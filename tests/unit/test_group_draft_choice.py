"""Per-request choice between the draft model and the group suffix draft (no vLLM)."""

from __future__ import annotations

import logging
import random

import pytest

from verl_specrollout.group_draft.choice import MODEL, NONE, SourceChooser
from verl_specrollout.group_draft.index import SOURCES, SuffixDraft


def draft(probs, source="siblings"):
    return SuffixDraft(list(range(len(probs))), source, 4, list(probs))


def test_k0_drafts_nothing():
    ch = SourceChooser()
    assert ch.choose("r", 0, draft([1.0, 1.0])) == ("", 0)
    assert ch.counters()[NONE]["chosen"] == 1


def test_reliable_suffix_is_chosen_and_stays_chosen():
    ch = SourceChooser()
    for _ in range(20):
        src, n = ch.choose("r", 4, draft([1.0] * 6), model_alpha=0.7)
        assert (src, n) == ("siblings", 4)  # never more than the planner's k
        ch.observe("r", src, n, n)
    assert ch.calibration("r", "siblings") >= 1.0


def test_failing_suffix_loses_to_the_model():
    ch = SourceChooser()
    choices = []
    for _ in range(10):
        src, n = ch.choose("r", 4, draft([1.0] * 4), model_alpha=0.6)
        choices.append(src)
        ch.observe("r", src, n if src != MODEL else 4, 0 if src != MODEL else 2)
    assert choices[0] == "siblings"  # trusted at first: 4 expected vs 1.3 for the model
    assert choices[-5:] == [MODEL] * 5
    assert ch.calibration("r", "siblings") < 0.5


def test_overconfidence_learned_globally_carries_to_new_requests():
    ch = SourceChooser()
    for i in range(30):
        rid = f"r{i}"
        src, n = ch.choose(rid, 4, draft([1.0] * 4, "history"), model_alpha=0.5)
        if src == "history":
            ch.observe(rid, src, n, 0)
        ch.forget(rid)
    # it stops being chosen once its calibrated draft is worth less than the model's (c ~ 0.5 here)
    assert ch.calibration("fresh", "history") < 0.6
    assert ch.choose("fresh", 4, draft([1.0] * 4, "history"), model_alpha=0.5)[0] == MODEL
    # another source is not blamed for it
    assert ch.choose("fresh2", 4, draft([1.0] * 4, "siblings"), model_alpha=0.5)[0] == "siblings"


def test_model_wins_when_its_acceptance_beats_the_suffix_shares():
    ch = SourceChooser()
    # suffix: 0.5 + 0.25 = 0.75 (then cut below min_gain); model at 0.8: 0.8+0.64+0.51+0.41 = 2.36
    assert ch.choose("r", 4, draft([0.5, 0.5, 0.5, 0.5]), model_alpha=0.8) == (MODEL, 4)
    # a weak model loses to the same suffix
    assert ch.choose("q", 4, draft([0.9, 0.9, 0.9, 0.9]), model_alpha=0.3)[0] == "siblings"


def test_request_model_acceptance_replaces_the_engine_rate():
    ch = SourceChooser()
    assert ch.model_alpha("r", model_alpha=0.9) == pytest.approx(0.9)
    for _ in range(20):
        ch.observe("r", MODEL, 4, 0)  # this request's model drafts all fail at once
    # the engine's rate keeps prior_weight pseudo-trials against ~1/(1-decay) = 5 decayed trials
    assert ch.model_alpha("r", model_alpha=0.9) < 0.3
    assert ch.choose("r", 4, draft([0.7, 0.7]), model_alpha=0.9) == ("siblings", 2)
    # without a suffix draft and with the model hopeless, nothing pays
    assert ch.model_alpha("r", model_alpha=0.15) < ch.min_gain
    assert ch.choose("r", 4, SuffixDraft([], "", 0, []), model_alpha=0.15) == ("", 0)
    assert ch.choose("other", 4, SuffixDraft([], "", 0, []), model_alpha=0.15) == (MODEL, 4)


def test_prior_used_without_model_alpha():
    ch = SourceChooser(prior_model_alpha=0.6)
    assert ch.model_alpha("r") == pytest.approx(0.6)
    ch2 = SourceChooser(prior_model_alpha=0.05)
    assert ch2.choose("r", 4, SuffixDraft([], "", 0, [])) == ("", 0)
    assert ch2.choose("r", 4, SuffixDraft([], "", 0, []), model_alpha=0.5) == (MODEL, 4)


def test_truncation_where_marginal_gain_drops():
    ch = SourceChooser(min_gain=0.1)
    # marginal gains 0.9, 0.45, 0.09 -> the third token is not worth verifying
    assert ch.suffix_plan("r", 8, draft([0.9, 0.5, 0.2, 0.9])) == (2, pytest.approx(1.35))
    assert ch.choose("r", 8, draft([0.9, 0.5, 0.2, 0.9]), model=False) == ("siblings", 2)
    assert ch.suffix_plan("r", 1, draft([0.9, 0.5])) == (1, pytest.approx(0.9))
    assert ch.choose("r", 4, draft([0.05, 1.0]), model=False) == ("", 0)


def test_model_false_never_chooses_the_model():
    ch = SourceChooser()
    assert ch.choose("r", 4, draft([0.4, 0.9]), model_alpha=0.99, model=False) == ("siblings", 2)
    assert ch.choose("r", 4, SuffixDraft([], "", 0, []), model_alpha=0.99, model=False) == ("", 0)


def test_counters_add_up():
    rng = random.Random(0)
    ch = SourceChooser()
    calls, fed = 0, {s: [0, 0] for s in (MODEL,) + SOURCES}
    for step in range(300):
        rid = f"r{rng.randrange(8)}"
        probs = [rng.random() for _ in range(rng.randrange(0, 5))]
        src_name = rng.choice(SOURCES)
        sd = SuffixDraft(list(range(len(probs))), src_name if probs else "", 3, probs)
        k = rng.randrange(0, 5)
        src, n = ch.choose(rid, k, sd, model_alpha=rng.random())
        calls += 1
        if src == "":
            assert n == 0
            continue
        assert (src == MODEL and n == k) or (src == src_name and 1 <= n <= min(k, len(probs)))
        acc = rng.randrange(0, n + 1)
        ch.observe(rid, src, n, acc)
        fed[src][0] += n
        fed[src][1] += acc
        if rng.random() < 0.1:
            ch.forget(rid)
    c = ch.counters()
    assert sum(v["chosen"] for v in c.values()) == calls
    for s, (proposed, accepted) in fed.items():
        assert (c[s]["proposed"], c[s]["accepted"]) == (proposed, accepted)
    assert c[NONE]["proposed"] == 0


def test_forget_drops_request_state():
    ch = SourceChooser()
    ch.choose("r", 4, draft([1.0]))
    ch.observe("r", MODEL, 4, 0)
    assert len(ch) == 1
    ch.forget("r")
    ch.forget("never-seen")
    assert len(ch) == 0


def test_bad_inputs():
    ch = SourceChooser()
    with pytest.raises(ValueError):
        ch.observe("r", "eagle", 3, 1)
    with pytest.raises(ValueError):
        ch.choose("r", 3, SuffixDraft([1], "elsewhere", 2, [1.0]))
    with pytest.raises(ValueError):
        SourceChooser(decay=1.5)
    ch.observe("r", "", 0, 0)  # nothing drafted: ignored


def test_inconsistent_counts_are_clipped_and_logged_once(caplog):
    ch = SourceChooser()
    with caplog.at_level(logging.WARNING, logger="verl_specrollout.group_draft.choice"):
        ch.observe("r", MODEL, 2, 5)
        ch.observe("r", MODEL, 2, -1)
    assert len([r for r in caplog.records if "clipped" in r.message]) == 1
    assert ch.counters()[MODEL] == {"proposed": 4, "accepted": 2, "chosen": 0}


def test_a_source_passed_over_is_tried_again_later():
    """A source shut out by a bad stretch (siblings in lock-step at T=0) returns once its evidence ages."""
    ch = SourceChooser()
    for i in range(40):  # siblings fail on every request at first
        src, n = ch.choose(f"bad{i}", 4, draft([1.0] * 4), model_alpha=0.5)
        if src == "siblings":
            ch.observe(f"bad{i}", src, n, 0)
    assert ch.choose("probe", 4, draft([1.0] * 4), model_alpha=0.5)[0] == MODEL
    back = None
    for step in range(2000):  # offered, passed over, forgotten a little each time
        src, _ = ch.choose("r", 4, draft([1.0] * 4), model_alpha=0.5)
        if src == "siblings":
            back = step
            break
        ch.observe("r", MODEL, 4, 2)
    assert back is not None and back > 10
