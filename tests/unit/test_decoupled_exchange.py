"""Decoupled speculation end to end in one process: verifier link <-> exchange <-> drafter
(the testbed's draft LM), and what happens on lag, a mismatch, an old draft version, a dead
exchange."""

import logging
import time

import pytest

from verl_specrollout.decoupled.drafter import Drafter, DraftLM
from verl_specrollout.decoupled.exchange import TailExchange
from verl_specrollout.decoupled.link import ExchangeClient, VerifierLink
from verl_specrollout.decoupled.tails import fingerprint, fit
from verl_specrollout.testing.testbed.measure import hf_greedy

PROMPT = [1, 40, 41, 42, 43]


@pytest.fixture(scope="module")
def draft_dir():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny").draft_lm_dir


def rig(draft_dir, version=0, depth=6, branches=1):
    ex = TailExchange()
    link = VerifierLink("replica-0", ExchangeClient(ex), version=version, start=False)
    drafter = Drafter("replica-1", ExchangeClient(ex), DraftLM(draft_dir), version=version, depth=depth, branches=branches)
    return ex, link, drafter


def test_drafter_tails_are_the_draft_lms_greedy_continuation_of_the_committed_prefix(draft_dir):
    ex, link, drafter = rig(draft_dir)
    link.open("r", PROMPT)
    link.commit("r", [30])
    link.pump()                       # the exchange learns the request
    assert drafter.run_once() == 2    # the main tail and one rejection branch
    link.pump()                       # tails come back to the verifier
    got = link.take("r", [30], max_tokens=6)
    assert got.tokens == hf_greedy(draft_dir, PROMPT + [30], 6)
    assert ex.status()["drafters"]["replica-1"]["serving"] == "replica-0"


def test_tail_serves_after_the_verifier_accepts_part_of_it_and_the_drafter_resyncs_on_a_mismatch(draft_dir):
    ex, link, drafter = rig(draft_dir, depth=6, branches=0)
    link.open("r", PROMPT)
    link.pump()
    drafter.run_once()
    link.pump()
    tail = link.take("r", [], 6).tokens
    # The verifier accepted two drafts and the target's bonus token equalled the third: lag 3, still usable.
    assert link.take("r", tail[:3], 6).tokens == tail[3:6]
    # Now a token the drafter did not predict: the tail is stale, take misses (coupled fallback)...
    committed = tail[:3] + [(tail[3] + 1) % 64]
    assert link.take("r", committed, 6) is None
    assert link.board.counters["dropped_stale"] == 1
    # ...until the drafter has seen the commit and re-drafted from it (its cache cropped, not rebuilt).
    link.commit("r", committed)
    link.pump()
    drafter.run_once()
    link.pump()
    assert link.take("r", committed, 4).tokens == hf_greedy(draft_dir, PROMPT + committed, 4)


def test_finished_requests_leave_the_drafter_and_late_tails_are_dropped(draft_dir):
    ex, link, drafter = rig(draft_dir, branches=0)
    link.open("r", PROMPT)
    link.pump()
    drafter.run_once()
    link.close("r")
    link.pump()                        # the tail arrives after the request finished
    assert link.counters["tails_late_foreign"] == 1
    drafter.run_once()
    assert "r" not in drafter.mirror


def test_a_drafter_on_an_old_draft_version_is_refused_and_reloads(draft_dir, caplog):
    reloads = []
    ex, link, drafter = rig(draft_dir, version=1, branches=0)
    drafter.on_stale_version = lambda: reloads.append(2) or 2
    link.open("r", PROMPT)
    link.pump()
    drafter.run_once()                 # attached on version 1
    link.set_version(2)                # a weight sync: the verifier's draft is now version 2
    link.commit("r", [30])
    link.pump()
    with caplog.at_level(logging.WARNING):
        drafter.run_once()             # its version-1 tails are refused at the exchange
    assert drafter.counters["refused_version"] >= 1 and reloads == [2] and drafter.version == 2
    assert any("no longer uses" in r.message for r in caplog.records)
    drafter.run_once()                 # re-attached on version 2
    link.pump()
    assert link.take("r", [30], 4) is not None
    assert all(t.version == 2 for t in link.board.tails_of("r"))


def test_no_verifier_with_work_means_no_drafting(draft_dir):
    ex, link, drafter = rig(draft_dir)
    assert drafter.run_once() == 0 and drafter.serving is None
    link.pump()                        # a verifier with no live requests is not served either
    assert drafter.run_once() == 0


class _Dead:
    def exchange(self, *a):
        raise ConnectionError("actor died")


def test_a_dead_exchange_is_logged_once_counted_and_the_link_recovers_with_a_full_resync(draft_dir, caplog):
    link = VerifierLink("replica-0", ExchangeClient(_Dead()), start=False)
    link.open("r", PROMPT)
    link.commit("r", [3, 4])
    with caplog.at_level(logging.WARNING):
        assert link.pump() == 0 and link.pump() == 0
    assert sum("unavailable" in r.message for r in caplog.records) == 1
    assert link.counters["exchange_errors"] == 2 and not link.alive
    assert link.take("r", [3, 4], 4) is None  # the engine drafts coupled
    ex = TailExchange()
    link.client = ExchangeClient(ex)
    link.pump()
    assert link.alive and ex.pull("replica-0", {})["requests"]["r"] == (tuple(PROMPT), 0, [3, 4])


def test_events_are_bounded_while_the_exchange_is_down():
    link = VerifierLink("v", ExchangeClient(_Dead()), start=False, max_events=4)
    for i in range(6):
        link.open(f"r{i}", PROMPT)
    assert link.counters["events_overflow"] == 1 and len(link._events) <= 4


def test_background_thread_delivers_without_the_step_calling_the_exchange(draft_dir):
    ex = TailExchange()
    link = VerifierLink("v", ExchangeClient(ex), interval_s=0.001)
    drafter = Drafter("d", ExchangeClient(ex), DraftLM(draft_dir), version=0, depth=4, branches=0)
    try:
        link.open("r", PROMPT)
        deadline = time.monotonic() + 30  # a bound on waiting, not a timing assertion
        while time.monotonic() < deadline:
            drafter.run_once()
            if link.take("r", [], 4) is not None:
                break
            time.sleep(0.001)
        assert link.take("r", [], 4).tokens == hf_greedy(draft_dir, PROMPT, 4)
        assert link.stats()["alive"] == 1
    finally:
        link.stop()


def test_a_drafter_moves_on_when_its_verifier_has_no_requests_left(draft_dir):
    ex = TailExchange()
    a = VerifierLink("a", ExchangeClient(ex), start=False)
    b = VerifierLink("b", ExchangeClient(ex), start=False)
    drafter = Drafter("d", ExchangeClient(ex), DraftLM(draft_dir), version=0, depth=3, branches=0)
    a.open("r1", PROMPT)
    a.open("r2", PROMPT)
    b.open("s1", PROMPT)
    a.pump(), b.pump()
    drafter.run_once()
    assert drafter.serving == "a"  # the most live requests per drafter
    a.close("r1"), a.close("r2")
    a.pump()
    drafter.run_once()              # a is done: detach
    drafter.run_once()              # and serve b
    b.pump()
    assert drafter.serving == "b" and b.take("s1", [], 3) is not None


def test_spare_rounds_pre_draft_later_rejections_and_their_tails_are_the_draft_lms(draft_dir):
    ex = TailExchange()
    link = VerifierLink("replica-0", ExchangeClient(ex), start=False)
    lm = DraftLM(draft_dir)
    drafter = Drafter("replica-1", ExchangeClient(ex), lm, version=0, depth=6, branches=1, max_branches=3)
    link.open("r", PROMPT)
    link.commit("r", [30])
    link.pump()
    assert drafter.run_once() == 2          # new prefix: the greedy tail and the guess at position 1
    assert drafter.run_once() == 1          # nothing new: one more guess (position 2)
    assert drafter.run_once() == 1          # position 3
    assert drafter.run_once() == 0          # max_branches reached: idle
    assert drafter.counters["spare_tails"] == 2
    link.pump()
    context = PROMPT + [30]
    greedy = hf_greedy(draft_dir, context, 6)
    tails = {t.assumed: t for t in link.board.tails_of("r")}
    assert sorted(tails) == [0, 1, 2, 3]
    for j in (1, 2):
        # The verify accepted j draft tokens and resampled the next one as the draft's runner-up.
        t = tails[j + 1]
        guess = list(t.continuation[:j + 1])
        assert guess[:j] == greedy[:j] and guess[j] != greedy[j]
        assert list(t.continuation[j + 1:]) == hf_greedy(draft_dir, context + guess, 2)
        assert fit(t, [30] + guess, lambda n: fingerprint(([30] + guess)[:n])) == (j + 1, None)
    # That outcome (a spare round's guess) committed: the verifier's next step finds its tail waiting.
    guess = list(tails[3].continuation[:3])
    got = link.take("r", [30] + guess, max_tokens=4)
    assert got is not None and got.tokens == list(tails[3].continuation[3:])
    # A new commit makes the old prefix's guesses moot: the next round drafts the new prefix first.
    link.pump()
    assert drafter.run_once() == 2
    assert drafter._plans["r"].base_len == 4 and drafter._plans["r"].next_branch == 1


def test_an_idle_link_backs_off_and_a_queued_event_wakes_it_at_once():
    ex = TailExchange()
    calls = []

    class Counting:
        def exchange(self, verifier, events):
            calls.append(len(events))
            return ex.exchange(verifier, events)

    # Backs off to 10 s at most: without the wake-up a commit would wait seconds to go out.
    link = VerifierLink("v", ExchangeClient(Counting()), interval_s=0.001, max_interval_s=10.0)
    try:
        time.sleep(0.4)
        idle = len(calls)
        assert 1 <= idle < 30, idle  # ~400 calls at a steady 1 ms; doubling from 1 ms: ~9
        link.open("r", PROMPT)
        deadline = time.monotonic() + 2.0  # far below the backed-off interval
        while time.monotonic() < deadline and not any(calls[idle:]):
            time.sleep(0.005)
        assert any(calls[idle:]), "the open event waited for the backed-off interval"
        assert ex.status()["verifiers"]["v"]["requests"] == 1
    finally:
        link.stop()


def _outcomes_by_hand(draft_dir, context, draft):
    """The expected outcome guesses, from one full forward without any cache."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([context + draft])).logits[0]
    out = []
    for a in range(len(draft) + 1):
        row = logits[len(context) - 1 + a].clone()
        if a < len(draft):
            row[draft[a]] = float("-inf")
        out.append(draft[:a] + [int(torch.argmax(row))])
    return out


def test_outcome_tails_of_the_draft_being_verified_serve_the_next_step(draft_dir):
    ex = TailExchange()
    link = VerifierLink("replica-0", ExchangeClient(ex), start=False)
    drafter = Drafter("replica-1", ExchangeClient(ex), DraftLM(draft_dir), version=0, depth=6, branches=1)
    link.open("r", PROMPT)
    link.commit("r", [30])
    context = PROMPT + [30]
    draft = [int(t) for t in hf_greedy(draft_dir, context, 3)]
    draft[1] = (draft[1] + 5) % 64  # the verifier's own model drafted something else from position 2 on
    link.verifying("r", 1, draft)
    link.verifying("r", 0, [9, 9])  # from a prefix the verifier has moved past: not sent
    link.pump()
    assert drafter.run_once() == len(draft) + 1  # one tail per outcome, no greedy tail beside them
    assert drafter.counters["outcome_tails"] == 4
    assert drafter.run_once() == 0  # the same draft again: nothing to redo
    link.pump()
    guesses = _outcomes_by_hand(draft_dir, context, draft)
    tails = {t.continuation[:t.assumed]: t for t in link.board.tails_of("r")}
    assert sorted(tails) == sorted(tuple(g) for g in guesses)
    # The step accepted draft[0], rejected draft[1] and emitted what the drafter guessed there: the
    # verifier's next step finds the continuation from that outcome, as the draft LM would draft it.
    outcome = guesses[1]
    assert outcome[1] != draft[1]
    got = link.take("r", [30] + outcome, max_tokens=3)
    assert got is not None and got.tokens == hf_greedy(draft_dir, context + outcome, 3)
    # An outcome the drafter did not guess: no tail fits, the step drafts coupled.
    other = [draft[0], (outcome[1] + 1) % 64]
    assert other != outcome and other[1] != draft[1]
    ex2 = TailExchange()
    link2 = VerifierLink("v2", ExchangeClient(ex2), start=False)
    d2 = Drafter("d2", ExchangeClient(ex2), DraftLM(draft_dir), version=0, depth=6, branches=0)
    link2.open("r", PROMPT)
    link2.commit("r", [30])
    link2.verifying("r", 1, draft)
    link2.pump()
    d2.run_once()
    link2.pump()
    assert link2.take("r", [30] + other, max_tokens=3) is None


def test_a_verifier_that_stopped_committing_loses_its_drafters_to_a_busy_one(draft_dir):
    # An engine that went idle keeps its last requests on its board (it learns they ended only at a
    # next step); a drafter must not sit on it while another engine still decodes.
    ex = TailExchange(quiet_after_s=0.2)
    idle, busy = (VerifierLink(n, ExchangeClient(ex), start=False) for n in ("idle", "busy"))
    idle.open("a", PROMPT)
    idle.commit("a", [30])
    idle.pump()
    drafter = Drafter("d", ExchangeClient(ex), DraftLM(draft_dir), version=0, depth=4, branches=0,
                      reattach_after_s=0.2)
    assert drafter.run_once() == 1 and drafter.serving == "idle"
    busy.open("b", PROMPT)
    busy.commit("b", [31])
    busy.pump()
    time.sleep(0.3)
    busy.commit("b", [31, 32])  # busy steps on; idle does not
    busy.pump()
    assert ex.attach("probe", 0) == "busy"
    ex.detach("probe")
    assert drafter.run_once() == 0 and drafter.counters["reattach"] == 1 and drafter.serving is None
    assert drafter.run_once() == 1 and drafter.serving == "busy"
