"""A drafter on an idle replica: a small causal LM drafting ahead of a busy replica's requests.

``DraftLM`` runs the draft LM (Hugging Face ``AutoModelForCausalLM``; the testbed's ``draft_lm``,
or Qwen2.5-0.5B-class models for real targets) with one KV cache per request. Each round it
re-syncs a request's cache to the committed tokens -- keeps the longest common prefix of what the
cache holds and what was committed (drafts the verifier accepted stay cached), crops the rest,
feeds the new tokens -- and drafts ``depth`` tokens greedily. Drafting deeper than the verifier's
K is itself a pre-draft: if the verifier accepts all K and its bonus token is the drafter's next
one, the same tail serves the following step. ``branches`` more tails per request guess a
rejection: at position j + 1 the draft's second most likely token, then a few tokens after it.
Rounds with nothing new to draft (the verifier has not stepped since) add guesses for later
positions, up to ``max_branches`` per prefix: the drafter's spare capacity goes to the outcomes
the next verify may have, so a rejection there still finds a tail waiting.

First in each round come the drafts being verified now (the verifier sends each with its commit):
the step's outcome is an accepted prefix of that draft plus one token the target emits, so the
drafter drafts one tail per accepted length a -- ``draft[:a]``, its best guess of the emitted token
(never ``draft[a]`` after a rejection: the residual excludes it), then greedy tokens -- while the
step runs, and the verifier's next step finds the tail for its outcome waiting. Without this a tail
can only serve when the committed tokens happen to equal the drafter's own greedy path, one step
behind (SSD-style pre-drafting; SpecActor's and Saguaro's "drafts for likely verify outcomes").

``Drafter`` is the loop: attach to the exchange (it names the busy verifier with the most live
requests per drafter), pull the changes, draft, push. It stops when ``should_run()`` says its own
replica has work again, and when the exchange refuses its draft version (``on_stale_version`` is
called: reload the draft, then attach again with the new version).

Greedy tails are one-hot drafts: vLLM's rejection sampler keeps the target's distribution exactly
for any draft token fixed before the step (see docs/how-it-works.md, "Decoupled speculation").
``DraftLM.greedy(with_probs=True)`` also returns the probability rows, which a ``Tail`` can carry; the
Drafter sends one-hot tails, since the verifier does not hand rows to vLLM's rejection sampler.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from verl_specrollout.decoupled.tails import Tail, fingerprint

logger = logging.getLogger(__name__)


class DraftLM:
    def __init__(self, path: str, device: str = "cpu", dtype: str = "float32", max_cached: int = 256):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.max_cached = max_cached
        self.offloaded = False
        # request id -> (token ids the cache holds, the cache, logits after the last of them)
        self._cache: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()

    def forget(self, request_id: str) -> None:
        self._cache.pop(request_id, None)

    def offload(self) -> None:
        """Before the replica sleeps (veRL hands its accelerator memory to training): drop every
        request's KV cache and move the weights to host memory; ``restore`` brings them back."""
        self._cache.clear()
        self.model.to("cpu")  # a no-op on a CPU replica
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        self.offloaded = True

    def restore(self) -> None:
        if self.offloaded:
            self.model.to(self.device)
            self.offloaded = False

    def _feed(self, ids: List[int], past, tokens: Sequence[int]):
        torch = self.torch
        x = torch.tensor([list(tokens)], device=self.device)
        out = self.model(input_ids=x, past_key_values=past, use_cache=True)
        return ids + list(tokens), out.past_key_values, out.logits[0, -1].float()

    def _sync(self, request_id: str, context: List[int], logits_needed: bool = True):
        """The cache holding exactly `context`, and the logits for the position after it (None when
        not needed and the cache already holds the whole context: the caller feeds more tokens)."""
        held, past, logits = self._cache.pop(request_id, ([], None, None))
        common = 0
        for a, b in zip(held, context):
            if a != b:
                break
            common += 1
        if common == len(context) and common == len(held) and logits is not None:
            return held, past, logits
        if not logits_needed and common == len(context) and past is not None and common > 0:
            past.crop(common)
            return held[:common], past, None
        # Refeed at least the last context token: it yields the next position's logits.
        keep = min(common, len(context) - 1)
        if past is not None and keep > 0:
            past.crop(keep)
            held = held[:keep]
        else:
            held, past = [], None
        return self._feed(held, past, context[keep:])

    def greedy(self, request_id: str, context: List[int], depth: int, with_probs: bool = False):
        """(tokens, runner_up, probs): the greedy tail of `depth` tokens after `context`, the draft's
        second choice at each of its positions, and the probability rows if asked."""
        torch = self.torch
        with torch.inference_mode():
            held, past, logits = self._sync(request_id, list(context))
            tokens, runner_up, probs = [], [], []
            for _ in range(depth):
                p = torch.softmax(logits, dim=-1)
                top2 = torch.topk(p, 2).indices.tolist()
                tokens.append(top2[0])
                runner_up.append(top2[1])
                if with_probs:
                    probs.append(p.cpu().numpy())
                held, past, logits = self._feed(held, past, [top2[0]])
            self._store(request_id, held, past, logits)
            return tokens, runner_up, (probs if with_probs else None)

    def branch(self, request_id: str, context: List[int], guess: List[int], branch_depth: int) -> List[int]:
        """`guess` (a guessed verify outcome after `context`) and `branch_depth` greedy tokens after it."""
        torch = self.torch
        with torch.inference_mode():
            held, past, _ = self._sync(request_id, list(context), logits_needed=False)
            guess = list(guess)
            held, past, logits = self._feed(held, past, guess)
            for _ in range(branch_depth):
                nxt = int(torch.argmax(logits))
                guess.append(nxt)
                held, past, logits = self._feed(held, past, [nxt])
            self._store(request_id, held, past, logits)
            return guess

    def outcome_guesses(self, request_id: str, context: List[int], draft: Sequence[int]) -> List[List[int]]:
        """The likely outcomes of verifying `draft` after `context`: for each accepted length a,
        the first a draft tokens and then this LM's best guess of the token the target emits there
        -- at a rejection (a < len(draft)) never draft[a], which the rejection sampler's residual
        excludes for a one-hot draft; after all accepted, the bonus token. One forward over the
        draft gives every position's logits."""
        torch = self.torch
        draft = [int(t) for t in draft]
        with torch.inference_mode():
            held, past, logits0 = self._sync(request_id, list(context))
            x = torch.tensor([draft], device=self.device)
            out = self.model(input_ids=x, past_key_values=past, use_cache=True)
            rows = [logits0] + [out.logits[0, i].float() for i in range(len(draft))]
            self._store(request_id, held + draft, out.past_key_values, rows[-1])
            guesses = []
            for a, row in enumerate(rows):
                if a < len(draft):
                    row = row.clone()
                    row[draft[a]] = float("-inf")
                guesses.append(draft[:a] + [int(torch.argmax(row))])
            return guesses

    def _store(self, request_id: str, held, past, logits) -> None:
        self._cache[request_id] = (held, past, logits)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)


class _Outcomes:
    """The verify draft a request's outcome tails were drafted for."""

    __slots__ = ("base_len", "draft")

    def __init__(self, base_len, draft):
        self.base_len, self.draft = base_len, draft


class _Plan:
    """A request's greedy tail from its latest mirrored prefix, and how many rejection guesses
    (branches j = 0, 1, ...) were drafted for it so far."""

    __slots__ = ("base_len", "digest", "tokens", "runner_up", "next_branch")

    def __init__(self, base_len, digest, tokens, runner_up, next_branch):
        self.base_len, self.digest, self.tokens = base_len, digest, tokens
        self.runner_up, self.next_branch = runner_up, next_branch


class Drafter:
    def __init__(self, name: str, client, lm: DraftLM, version: int, depth: int = 8, branches: int = 1,
                 should_run: Callable[[], bool] = lambda: True,
                 on_stale_version: Optional[Callable[[], Optional[int]]] = None, max_requests: int = 64,
                 max_branches: Optional[int] = None, branch_depth: int = 2, reattach_after_s: float = 10.0):
        self.name, self.client, self.lm, self.version = name, client, lm, int(version)
        self.depth, self.branches, self.max_requests = depth, branches, max_requests
        # Rejection guesses per prefix in all: `branches` every round, the rest in spare rounds.
        self.max_branches = min(depth, max(branches, branches if max_branches is None else max_branches))
        self.branch_depth = branch_depth
        self._plans: Dict[str, _Plan] = {}
        self._outcomes: Dict[str, _Outcomes] = {}
        # A verifier whose requests stopped moving (it went idle, or stalled) is left for a busier one.
        self.reattach_after_s = reattach_after_s
        self._last_change = time.monotonic()
        self.should_run, self.on_stale_version = should_run, on_stale_version
        self.serving: Optional[str] = None
        self.mirror: Dict[str, Tuple[Tuple[int, ...], List[int]]] = {}
        self.counters: Dict[str, int] = collections.Counter()
        self.busy_s = 0.0

    def _attach(self) -> Optional[str]:
        self.serving = self.client.attach(self.name, self.version)
        self._last_change = time.monotonic()
        self.mirror.clear()
        self._plans.clear()
        self._outcomes.clear()
        return self.serving

    def run_once(self) -> int:
        """One round: tails pushed (0 when there is nothing to serve)."""
        if self.serving is None and self._attach() is None:
            return 0
        t0 = time.perf_counter()
        changes = self.client.pull(self.serving, {rid: len(c) for rid, (_, c) in self.mirror.items()})
        if changes["version"] is None:  # the verifier is gone
            self.serving = None
            return 0
        if changes["version"] != self.version:  # the verifier's draft moved on: don't draft with the old one
            self.counters["refused_version"] += 1
            return self._stale_version()
        for rid in changes["closed"]:
            self.mirror.pop(rid, None)
            self._plans.pop(rid, None)
            self._outcomes.pop(rid, None)
            self.lm.forget(rid)
        changed = []
        for rid, (prompt, start, tokens) in changes["requests"].items():
            if prompt is not None:
                self.mirror[rid] = (tuple(prompt), list(tokens))
            elif rid in self.mirror and len(self.mirror[rid][1]) == start:
                self.mirror[rid][1].extend(tokens)
            else:
                self.mirror.pop(rid, None)  # out of step: drop it, the next pull sends it whole
                continue
            changed.append(rid)
        now = time.monotonic()
        if changed or changes.get("drafts"):
            self._last_change = now
        if not self.mirror or now - self._last_change > self.reattach_after_s:
            # The verifier has no live request left, or none of them moved: serve another one.
            self.counters["reattach"] += bool(self.mirror)
            self.client.detach(self.name)
            self.serving = None
            return 0
        pushed, refused = 0, collections.Counter()
        # First the outcomes of the drafts being verified now: the verifier's next step needs them.
        for rid, draft in self._verifying(changes.get("drafts") or {})[:self.max_requests]:
            tails = self._draft_outcomes(rid, draft)
            refused.update(self.client.push(self.serving, tails))
            pushed += len(tails)
            if refused.get("version"):
                break
        tails = []
        for rid in changed[:self.max_requests]:
            if rid in self._outcomes and self._outcomes[rid].base_len == len(self.mirror[rid][1]):
                continue  # its outcome tails cover what a greedy tail from this prefix would
            tails += self._draft_new(rid)
        if not tails and not pushed:  # nothing new since the last round: pre-draft more outcomes of the next verify
            tails = self._draft_spare()
            self.counters["spare_tails"] += len(tails)
        if tails and not refused.get("version"):
            refused.update(self.client.push(self.serving, tails))
        pushed += len(tails)
        self.counters["tails"] += pushed
        for why, n in refused.items():
            self.counters[f"refused_{why}"] += n
        self.busy_s += time.perf_counter() - t0
        if refused.get("version"):
            return self._stale_version()
        return pushed

    def _verifying(self, drafts: dict) -> List[tuple]:
        """(rid, draft) of the verify drafts from current prefixes that have no outcome tails yet."""
        todo = []
        for rid, (base, draft) in drafts.items():
            if rid not in self.mirror or len(self.mirror[rid][1]) != base:
                continue
            done = self._outcomes.get(rid)
            if done is None or done.base_len != base or done.draft != tuple(draft):
                todo.append((rid, tuple(draft)))
        return todo

    def _draft_outcomes(self, rid: str, draft: tuple) -> List[Tail]:
        """One tail per likely outcome of the step verifying the request's draft: the outcome
        (assumed) and as many greedy tokens after it as the draft was long."""
        prompt, committed = self.mirror[rid]
        self._outcomes[rid] = _Outcomes(len(committed), draft)
        context, digest = list(prompt) + committed, fingerprint(committed)
        out = []
        for guess in self.lm.outcome_guesses(rid, context, draft):
            toks = self.lm.branch(rid, context, guess, len(draft))
            out.append(Tail(rid, len(committed), digest, self.version, tuple(toks), len(guess), None))
        self.counters["outcome_tails"] += len(out)
        return out

    def _draft_new(self, rid: str) -> List[Tail]:
        """The greedy tail from the request's new prefix and its first `branches` rejection guesses."""
        prompt, committed = self.mirror[rid]
        context, digest = list(prompt) + committed, fingerprint(committed)
        tokens, runner_up, _ = self.lm.greedy(rid, context, self.depth)
        plan = self._plans[rid] = _Plan(len(committed), digest, tokens, runner_up, 0)
        out = [Tail(rid, plan.base_len, digest, self.version, tuple(tokens), 0, None)]
        while plan.next_branch < self.branches:
            out.append(self._branch(rid, context, plan))
        return out

    def _draft_spare(self) -> List[Tail]:
        """One more rejection guess for each request that has fewest, up to `max_branches` per prefix:
        a verify that rejects at position j + 1 then finds a tail for its outcome waiting."""
        todo = sorted((p.next_branch, rid) for rid, p in self._plans.items()
                      if p.next_branch < self.max_branches and rid in self.mirror
                      and len(self.mirror[rid][1]) == p.base_len)
        out = []
        for _, rid in todo[:self.max_requests]:
            prompt, committed = self.mirror[rid]
            out.append(self._branch(rid, list(prompt) + committed, self._plans[rid]))
        return out

    def _branch(self, rid: str, context: List[int], plan: _Plan) -> Tail:
        j = plan.next_branch
        plan.next_branch += 1
        guess = self.lm.branch(rid, context, plan.tokens[:j] + [plan.runner_up[j]], self.branch_depth)
        return Tail(rid, plan.base_len, plan.digest, self.version, tuple(guess), j + 1, None)

    def _stale_version(self) -> int:
        """Detach; reload through on_stale_version (its new version) or stop (-1)."""
        logger.warning("verl-specrollout: drafter %s is on draft version %d, which the verifier no longer "
                       "uses; reloading", self.name, self.version)
        new = self.on_stale_version() if self.on_stale_version else None
        self.client.detach(self.name)
        self.serving = None
        if new is None:
            return -1
        self.version = int(new)
        return 0

    def run(self, idle_sleep_s: float = 0.005, stop: Optional[Callable[[], bool]] = None,
            max_idle_sleep_s: float = 0.02) -> None:
        """Draft while this replica is idle; detach when it gets work (or `stop` says so). Rounds with
        nothing to draft back off (doubling up to max_idle_sleep_s) so an idle drafter does not keep
        the exchange busy; any tail drafted resets the pace."""
        nap = idle_sleep_s
        try:
            while self.should_run() and not (stop and stop()):
                n = self.run_once()
                if n < 0:
                    return
                if n == 0:
                    time.sleep(nap)
                    nap = min(2 * nap, max_idle_sleep_s)
                else:
                    nap = idle_sleep_s
        finally:
            self.client.detach(self.name)
            self.serving = None
