"""The decoupled-speculation protocol: tails, commits, the fit rule, versions and bounds."""

import numpy as np
import pytest

from verl_specrollout.decoupled import Tail, TailBoard, fingerprint

PROMPT = [5, 6, 7]


def tail(rid, committed, cont, version=0, assumed=0, probs=None, base_len=None):
    n = len(committed) if base_len is None else base_len
    return Tail(rid, n, fingerprint(committed[:n]), version, tuple(cont), assumed, probs)


def board(*rids, **kw):
    b = TailBoard(**kw)
    for r in rids:
        b.open(r, PROMPT)
    return b


# ---------------------------------------------------------------- tails
def test_fingerprint_agrees_for_lists_arrays_and_incremental_commits():
    toks = [1, 2, 3, 40000]
    assert fingerprint(toks) == fingerprint(np.array(toks, dtype=np.int32))
    assert fingerprint(toks) != fingerprint([1, 2, 3, 40001]) and fingerprint([]) != fingerprint([0])
    b = board("r")
    b.commit("r", [1, 2])
    b.commit("r", toks)
    assert b.post(tail("r", toks, [9])) is None  # the board's running digest == fingerprint(whole prefix)


@pytest.mark.parametrize("bad, match", [
    (dict(request_id=""), "request_id"),
    (dict(base_len=-1), "base_len"),
    (dict(continuation=()), "no tokens"),
    (dict(assumed=2), "assumed"),
    (dict(continuation=(1, -3)), "non-negative"),
    (dict(probs=np.ones((3, 4))), "probability rows"),
])
def test_bad_tails_are_refused_at_construction(bad, match):
    args = dict(request_id="r", base_len=0, base_digest=fingerprint([]), version=0, continuation=(1, 2), assumed=0,
                probs=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        Tail(**args)


# ---------------------------------------------------------------- take
def test_take_returns_the_tail_drafted_from_the_committed_prefix():
    b = board("r")
    b.commit("r", [1, 2])
    assert b.post(tail("r", [1, 2], [3, 4, 5])) is None
    got = b.take("r", [1, 2], max_tokens=8)
    assert got.tokens == [3, 4, 5] and got.lag == 0 and got.base_len == 2
    assert b.take("r", [1, 2], max_tokens=2).tokens == [3, 4]  # the verifier's K caps it
    assert b.take("r", [1, 2], max_tokens=0) is None


def test_tail_from_a_shorter_prefix_serves_when_the_commits_since_match_its_head():
    b = board("r")
    b.commit("r", [1])
    b.post(tail("r", [1], [2, 3, 4, 5]))
    got = b.take("r", [1, 2, 3], max_tokens=8)  # the verifier accepted 2, 3 exactly as drafted
    assert got.tokens == [4, 5] and got.lag == 2


def test_mismatching_commit_drops_the_stale_tail_and_take_misses():
    b = board("r")
    b.commit("r", [1])
    b.post(tail("r", [1], [2, 3, 4]))
    assert b.take("r", [1, 2, 9], max_tokens=8) is None  # the target sampled 9 where the tail said 3
    assert b.counters["dropped_stale"] == 1 and b.tails_of("r") == []
    assert b.counters["miss_empty"] == 1


def test_fully_consumed_tail_is_dropped_as_lagging():
    b = board("r")
    b.post(tail("r", [], [1, 2]))
    b.commit("r", [1, 2])
    assert b.tails_of("r") == [] and b.counters["dropped_lagging"] == 1
    b.post(tail("r", [1, 2], [3]))
    assert b.take("r", [1, 2, 3, 4], max_tokens=4) is None and b.counters["dropped_lagging"] == 2


def test_the_longest_usable_tail_wins_and_a_tie_goes_to_the_newer_base():
    b = board("r")
    b.commit("r", [1])
    b.post(tail("r", [1], [2, 3, 4, 5, 6]))            # from base 1: after commit [1,2] offers 3 4 5 6
    b.commit("r", [1, 2])
    b.post(tail("r", [1, 2], [3, 4, 5, 7]))            # from base 2: offers 3 4 5 7
    got = b.take("r", [1, 2], max_tokens=8)
    assert got.base_len == 2 and got.tokens == [3, 4, 5, 7]
    b.post(tail("r", [1, 2], [3, 4, 5, 7, 8], assumed=1))  # a longer pre-draft assuming 3
    assert b.take("r", [1, 2], max_tokens=8).tokens == [3, 4, 5, 7, 8]


def test_pre_drafts_for_several_outcomes_live_side_by_side_and_the_realised_one_serves():
    b = board("r")
    b.commit("r", [1])
    drafts = [2, 3]  # the verifier is verifying 2, 3; pre-draft per outcome (accept j, then guess g)
    outcomes = {(): [8, 20, 21], (2,): [2, 9, 30, 31], (2, 3): [2, 3, 4, 40, 41]}
    for assumed, cont in outcomes.items():
        assert b.post(tail("r", [1], cont, assumed=len(assumed) + 1 if assumed else 1)) is None
    assert len(b.tails_of("r")) == 3
    got = b.take("r", [1, 2, 9], max_tokens=8)  # accepted 2, rejected 3, the target sampled 9
    assert got.tokens == [30, 31]
    assert [t.continuation for t in b.tails_of("r")] == [(2, 9, 30, 31)]  # the other outcomes are stale


def test_same_assumption_replaces_the_older_tail():
    b = board("r")
    b.post(tail("r", [], [1, 2]))
    b.post(tail("r", [], [1, 2, 3, 4]))
    assert [t.continuation for t in b.tails_of("r")] == [(1, 2, 3, 4)]
    assert b.nbytes == 8 * 4


def test_an_unassumed_guess_is_offered_as_a_draft():
    b = board("r")
    b.post(tail("r", [], [4, 5, 6], assumed=2))
    assert b.take("r", [], max_tokens=8).tokens == [4, 5, 6]


def test_probabilities_travel_with_their_tokens():
    probs = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = board("r")
    b.commit("r", [1])
    b.post(tail("r", [1], [2, 3, 4, 5], probs=probs))
    got = b.take("r", [1, 2], max_tokens=2)
    assert got.tokens == [3, 4]
    np.testing.assert_array_equal(got.probs, probs[1:3])
    assert b.nbytes == 8 * 4 + probs.nbytes


# ---------------------------------------------------------------- refusals
def test_old_or_foreign_version_is_refused_and_a_version_change_drops_tails(caplog):
    b = board("r", version=3)
    assert b.post(tail("r", [], [1], version=2)) == "version"
    assert b.post(tail("r", [], [1], version=2)) == "version"
    assert sum("version 2 refused" in r.message for r in caplog.records) == 1  # logged once
    assert b.post(tail("r", [], [1, 2], version=3)) is None
    b.set_version(4)
    assert b.tails_of("r") == [] and b.counters["dropped_version"] == 1
    assert b.take("r", [], max_tokens=4) is None
    assert b.counters["refused_version"] == 2


def test_unknown_or_finished_request_is_foreign():
    b = board("r")
    assert b.post(tail("x", [], [1])) == "foreign"
    b.close("r")
    assert b.post(tail("r", [], [1])) == "foreign" and b.take("r", [], 4) is None
    assert b.counters["miss_unknown"] == 1 and b.mirror("r") is None


def test_tail_from_an_unpublished_prefix_is_ahead_and_a_wrong_mirror_is_foreign():
    b = board("r")
    b.commit("r", [1, 2])
    assert b.post(tail("r", [1, 2, 3], [4])) == "ahead"
    assert b.post(tail("r", [1, 7], [4])) == "foreign"  # same length, different tokens
    assert b.post(tail("r", [1], [9, 4])) == "stale"    # already contradicted by the commits
    assert b.post(tail("r", [1], [2])) == "lagging"


def test_commits_are_append_only():
    b = board("r")
    b.commit("r", [1, 2, 3])
    with pytest.raises(ValueError, match="never change"):
        b.commit("r", [1, 2])
    with pytest.raises(KeyError, match="never opened"):
        b.commit("nope", [1])
    assert b.mirror("r") == (tuple(PROMPT), [1, 2, 3])


# ---------------------------------------------------------------- bounds
def test_tails_per_request_are_bounded_oldest_base_first():
    b = board("r", max_tails=2)
    b.post(tail("r", [], [7, 1, 2], assumed=1))
    b.commit("r", [7])
    for guess in range(3):  # three guesses from the newer base
        b.post(tail("r", [7], [guess, 100 + guess], assumed=1))
    assert len(b.tails_of("r")) == 2 and b.counters["dropped_evicted"] == 2
    assert all(t.base_len == 1 for t in b.tails_of("r"))  # the older base went first


def test_bytes_are_bounded_least_recently_committed_request_first():
    b = board("a", "b", max_bytes=8 * 6)
    b.post(tail("a", [], [1, 2, 3]))
    b.commit("b", [1])
    b.post(tail("b", [1], [2, 3, 4]))
    assert b.nbytes == 48
    b.commit("a", [1])              # "a" is now the most recently committed
    b.post(tail("a", [1], [2, 3, 4, 5]))  # replaces nothing (new base); over budget
    assert b.nbytes <= 48
    assert b.tails_of("b") == [] and len(b.tails_of("a")) >= 1


def test_requests_are_bounded():
    b = board("a", "b", max_requests=2)
    b.open("c", PROMPT)
    assert b.request_ids() == ["b", "c"] and b.counters["evicted_requests"] == 1
    with pytest.raises(ValueError, match="bounds"):
        TailBoard(max_tails=0)


def test_random_streams_never_serve_a_draft_that_contradicts_the_commits():
    """Fuzz: drafters post random tails (right and wrong) against a random committed stream; every
    draft take returns continues the committed tokens exactly as its tail predicted."""
    rng = np.random.default_rng(0)
    b = board("r", max_tails=4)
    truth = list(rng.integers(0, 5, size=400))
    n = 0
    served = 0
    for _ in range(300):
        n = min(len(truth) - 1, n + int(rng.integers(0, 4)))
        committed = truth[:n]
        b.commit("r", committed)
        base = int(rng.integers(max(0, n - 3), n + 1))
        cont = [t if rng.random() < 0.7 else int(rng.integers(0, 5)) for t in truth[base:base + 6]] or [1]
        b.post(tail("r", truth[:base], cont, assumed=int(rng.integers(0, len(cont)))))
        got = b.take("r", committed, max_tokens=4)
        if got is not None:
            served += 1
            src = [t for t in b.tails_of("r") if t.base_len == got.base_len]
            assert any(list(t.continuation[:n - t.base_len]) == truth[t.base_len:n] and
                       list(t.continuation[n - t.base_len:n - t.base_len + len(got.tokens)]) == got.tokens for t in src)
    assert served > 20
