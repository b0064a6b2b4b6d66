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


# ------------------------------------------------ the model's rate where a suffix is offered
TRUTH = [100, 101, 102, 103, 104]  # what the target emits at this step (position 1..5)


def _draft_tokens(rng, rate, wrong_base):
    """A 4-token draft right at each position with probability `rate` (independently)."""
    return [t if rng.random() < rate else wrong_base + j for j, t in enumerate(TRUTH[:4])]


def _common(a, b):
    m = 0
    for x, y in zip(a, b):
        if x != y:
            break
        m += 1
    return m


def _offered_run(model_rate, suffix_rate, engine_rate, counterfactual=True, steps=60, seed=0):
    """One request, a suffix offered at every step with shares 0.9; the target emits TRUTH. The
    model drafts for the batch every step (other requests chose it), so its draft is at hand."""
    rng = random.Random(seed)
    ch = SourceChooser()
    choices = []
    for _ in range(steps):
        suffix = _draft_tokens(rng, suffix_rate, 200)
        model = _draft_tokens(rng, model_rate, 300)
        src, n = ch.choose("r", 4, SuffixDraft(suffix, "siblings", 4, [0.9] * 4), model_alpha=engine_rate)
        choices.append(src)
        drafted = model if src == MODEL else suffix[:n]
        acc = _common(drafted, TRUTH)
        ch.observe("r", src, len(drafted), acc)
        emitted = TRUTH[:acc + 1]
        if src != MODEL and counterfactual:
            ch.observe_counterfactual("r", model, emitted)
    return ch, choices


def test_model_strong_where_a_suffix_is_offered_wins_there():
    """The request average (engine rate 0.5) undersells the model in the stretches a good suffix
    (right at 0.85 a position, shares 0.9) covers; the model is right at 0.98 there. Counterfactual
    comparisons reveal it without the model ever drafting there."""
    ch, choices = _offered_run(model_rate=0.98, suffix_rate=0.85, engine_rate=0.5)
    assert choices[0] == "siblings"
    assert choices[-20:] == [MODEL] * 20
    assert ch.offered_alpha("r", 0.5) > 0.9
    # without the comparisons (this seed: no unlucky suffix stretch hands the model a step) the
    # suffix keeps every step: the model is judged by its average alone
    _, blind = _offered_run(model_rate=0.98, suffix_rate=0.85, engine_rate=0.5, counterfactual=False)
    assert MODEL not in blind


def test_model_weak_where_a_suffix_is_offered_loses_there():
    """The reverse: the engine's rate (0.95) oversells the model in these stretches."""
    ch, choices = _offered_run(model_rate=0.3, suffix_rate=0.95, engine_rate=0.95)
    assert choices[0] == MODEL
    assert choices[-20:].count("siblings") >= 18
    assert ch.offered_alpha("r", 0.95) < 0.6


def test_counterfactual_censoring():
    ch = SourceChooser()
    ch.choose("r", 4, draft([0.9] * 4))  # a suffix offered at this step: the offered class
    st = ch._reqs["r"]

    def fed(model_draft, emitted):
        a0, t0 = st.off_acc * ch.decay, st.off_tried * ch.decay
        ch.observe_counterfactual("r", model_draft, emitted)
        return round(st.off_acc - a0, 9), round(st.off_tried - t0, 9)

    assert fed([1, 2, 3, 4], [1, 2]) == (2, 2)  # matches up to the last emitted token: no rejection
    assert fed([1, 2, 3, 4], [1, 2, 3, 4, 5]) == (4, 4)  # the whole model draft would be accepted
    assert fed([1, 9, 3, 4], [1, 2, 3]) == (1, 2)  # rejected at position 2
    assert fed([7, 2, 3, 4], [1]) == (0, 1)  # rejected at once (one emitted token: still a trial)
    assert st.model_tried == 0  # offered-class evidence only
    # all-censored evidence drives the offered rate up, never down
    for _ in range(30):
        ch.choose("q", 4, draft([0.9] * 4))
        ch.observe_counterfactual("q", [5, 6, 7, 8], [5])
    assert ch.offered_alpha("q") > 0.95
    # where no suffix was offered the comparison feeds the request average
    ch.choose("p", 4, SuffixDraft([], "", 0, []))
    ch.observe_counterfactual("p", [5, 6], [5, 1, 2])
    assert (ch._reqs["p"].model_acc, ch._reqs["p"].model_tried, ch._reqs["p"].off_tried) == (1, 2, 0)


def test_reconsider_when_the_first_tokens_differ():
    ch = SourceChooser()
    # suffix 0.7 then certain: E = 2.8 against the model's 2.36 at 0.8 -> suffix
    assert ch.choose("r", 4, draft([0.7, 1, 1, 1]), model_alpha=0.8) == ("siblings", 4)
    # given they differ: model 2.36 * (1 - 0.7) = 0.71 > suffix 2.8 * (1 - 0.8) = 0.56
    assert ch.reconsider("r", 4) == (MODEL, 4)
    assert ch.reconsider("r", 4) is None  # once per choice
    assert ch.counters()[MODEL]["chosen"] == 1 and ch.counters()["siblings"]["chosen"] == 0
    ch.observe("r", MODEL, 4, 1)  # what is settled is the model's draft
    assert ch.counters()[MODEL]["proposed"] == 4
    # a model chosen over a short, near-certain suffix gives way when they differ
    assert ch.choose("q", 4, draft([0.95]), model_alpha=0.6) == (MODEL, 4)
    assert ch.reconsider("q", 4) == ("siblings", 1)
    # a suffix certain at position 1 is kept
    assert ch.choose("s", 4, draft([1.0, 1.0]), model_alpha=0.99)[0] == MODEL
    assert ch.reconsider("s", 4) == ("siblings", 2)
    assert ch.choose("t", 4, draft([1.0] * 4), model_alpha=0.9)[0] == "siblings"
    assert ch.reconsider("t", 4) is None
    # only one option at the choice: nothing to reconsider
    assert ch.choose("u", 4, SuffixDraft([], "", 0, []), model_alpha=0.9) == (MODEL, 4)
    assert ch.reconsider("u", 4) is None
