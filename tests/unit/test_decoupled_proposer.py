"""The decoupled source inside the group drafter (vllm_adapter/group_proposer.py), replayed in
vLLM's synchronous runner order without an engine (test_group_proposer's Replay): commits go out
through the verifier link, remote tails come back through the real exchange, and the chooser picks
them per request by expected gain next to the draft model and the group's copies."""

from __future__ import annotations

import pytest
from test_group_proposer import PROMPTS, Replay, target_next

from verl_specrollout.decoupled.exchange import TailExchange
from verl_specrollout.decoupled.link import ExchangeClient, VerifierLink
from verl_specrollout.decoupled.tails import Tail, fingerprint
from verl_specrollout.vllm_adapter import group_proposer as gp


class RemoteDrafter:
    """A drafter on another replica, drafting `depth` tokens ahead from what it pulled. `right`:
    the deterministic target's own continuation (every token accepted); else a token it never emits."""

    def __init__(self, ex: TailExchange, right: bool, depth: int = 6):
        self.ex, self.right, self.depth = ex, right, depth
        self.known: dict = {}

    def run_once(self):
        changes = self.ex.pull("v", {r: len(c) for r, (_, c) in self.known.items()})
        for rid in changes["closed"]:
            self.known.pop(rid, None)
        tails = []
        for rid, (prompt, start, toks) in changes["requests"].items():
            if prompt is not None:
                self.known[rid] = (list(prompt), list(toks))
            else:
                self.known[rid][1].extend(toks)
            prompt, out = self.known[rid]
            seq, cont = prompt + out, []
            for _ in range(self.depth):
                cont.append(target_next(seq + cont) if self.right else 1)
            tails.append(Tail(rid, len(out), fingerprint(out), 0, tuple(cont)))
        self.ex.push("v", tails)


def rig(method: str, right: bool, alive: bool = True):
    r = Replay(method)
    ex = TailExchange()
    link = VerifierLink("v", ExchangeClient(ex), start=False)
    drafter = gp._group_drafter(r.runner)
    drafter.decoupled = link
    return r, link, RemoteDrafter(ex, right), drafter


def run(r: Replay, link: VerifierLink, remote: RemoteDrafter, alive: bool = True, g: int = 4, max_out: int = 24):
    for p, prompt in enumerate(PROMPTS):
        for j in range(g):
            r.add(f"p{p}-s{j}", prompt, max_out)
    while any(x not in r.finished for x in r.reqs):
        r.step()
        if alive:  # between two steps: commits out, the remote drafts, tails back
            link.pump()
            remote.run_once()
            link.pump()


@pytest.mark.parametrize("method", ["eagle3+group", "group"])
def test_decoupled_tails_are_chosen_verified_and_credited(method):
    r, link, remote, drafter = rig(method, right=True)
    run(r, link, remote)
    src = r.stats()["sources"]
    assert src["decoupled"]["chosen"] > 0 and src["decoupled"]["accepted"] > 0
    # A right tail is accepted in full: what was verified of it, was accepted.
    assert src["decoupled"]["accepted"] == src["decoupled"]["proposed"]
    # Every verified draft token is credited to the source that drafted it.
    assert sum(c["proposed"] for c in src.values()) == r.drafted
    assert sum(c["accepted"] for c in src.values()) == r.accepted
    assert r.stats()["decoupled"]["board/hits"] > 0
    # The responses are the target's, whatever drafted them.
    for rid, seq in r.reqs.items():
        p = r.prompt_len[rid]
        assert all(seq[i] == target_next(seq[:i]) for i in range(p, len(seq)))


def test_decoupled_wrong_tails_lose_to_the_other_sources():
    right, wrong = rig("eagle3+group", right=True), rig("eagle3+group", right=False)
    for r, link, remote, _ in (right, wrong):
        run(r, link, remote)
    got = {name: x[0].stats()["sources"]["decoupled"] for name, x in (("right", right), ("wrong", wrong))}
    assert got["wrong"]["accepted"] == 0
    assert got["wrong"]["chosen"] < got["right"]["chosen"] / 2  # calibrated down, not kept on


def test_decoupled_without_a_drafter_drafts_as_before():
    base = Replay("eagle3+group")
    for p, prompt in enumerate(PROMPTS):
        for j in range(4):
            base.add(f"p{p}-s{j}", prompt, 24)
    base.run()
    r, link, remote, drafter = rig("eagle3+group", right=True)
    run(r, link, remote, alive=False)  # no tail ever arrives
    a, b = base.stats()["sources"], r.stats()["sources"]
    assert b["decoupled"]["chosen"] == 0
    assert {s: a[s] for s in ("model", "siblings", "history", "prompt")} == \
        {s: b[s] for s in ("model", "siblings", "history", "prompt")}
    assert r.reqs == base.reqs and r.model_calls == base.model_calls


def test_finished_requests_are_closed_on_the_link():
    r, link, remote, drafter = rig("eagle3+group", right=True)
    run(r, link, remote)
    r.step()  # the finished set reaches the runner
    assert len(link.board) == 0 and not drafter._outputs


def test_each_step_sends_the_draft_it_verifies_from_the_committed_prefix():
    r, link, remote, drafter = rig("eagle3+group", right=True)
    sent = []
    verifying = link.verifying
    link.verifying = lambda rid, n, draft: (sent.append((rid, n, list(draft))), verifying(rid, n, draft))
    run(r, link, remote, alive=False)
    assert sent, "no verify draft was sent"
    # Every draft sent was the one verified: drafted from the request's committed output at that step,
    # so its accepted part is what the request emitted next.
    for rid, n, draft in sent:
        seq = r.reqs[rid]
        out = seq[r.prompt_len[rid]:]
        assert n <= len(out) and draft  # n == len(out): the last step, at max_tokens (vLLM drops that draft)
        if n < len(out):
            assert draft[0] == out[n] or draft[0] != target_next(seq[:r.prompt_len[rid] + n])
    assert sum(len(d) for _, _, d in sent) >= r.drafted  # every verified draft token was announced
