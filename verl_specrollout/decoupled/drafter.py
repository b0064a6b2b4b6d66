"""A drafter on an idle replica: a small causal LM drafting ahead of a busy replica's requests.

``DraftLM`` runs the draft LM (Hugging Face ``AutoModelForCausalLM``; the testbed's ``draft_lm``,
or Qwen2.5-0.5B-class models for real targets) with one KV cache per request. Each round it
re-syncs a request's cache to the committed tokens -- keeps the longest common prefix of what the
cache holds and what was committed (drafts the verifier accepted stay cached), crops the rest,
feeds the new tokens -- and drafts ``depth`` tokens greedily. Drafting deeper than the verifier's
K is itself a pre-draft: if the verifier accepts all K and its bonus token is the drafter's next
one, the same tail serves the following step. ``branches`` more tails per request guess a
rejection: at position j + 1 the draft's second most likely token, then a few tokens after it.

``Drafter`` is the loop: attach to the exchange (it names the busy verifier with the most live
requests per drafter), pull the changes, draft, push. It stops when ``should_run()`` says its own
replica has work again, and when the exchange refuses its draft version (``on_stale_version`` is
called: reload the draft, then attach again with the new version).

Greedy tails are one-hot drafts: vLLM's rejection sampler keeps the target's distribution exactly
for any draft token fixed before the step (see docs/how-it-works.md, "Decoupled speculation").
``with_probs=True`` sends the draft's probability rows along for a verifier that uses them.
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
        # request id -> (token ids the cache holds, the cache, logits after the last of them)
        self._cache: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()

    def forget(self, request_id: str) -> None:
        self._cache.pop(request_id, None)

    def _feed(self, ids: List[int], past, tokens: Sequence[int]):
        torch = self.torch
        x = torch.tensor([list(tokens)], device=self.device)
        out = self.model(input_ids=x, past_key_values=past, use_cache=True)
        return ids + list(tokens), out.past_key_values, out.logits[0, -1].float()

    def _sync(self, request_id: str, context: List[int]):
        """The cache holding exactly `context`, and the logits for the position after it."""
        held, past, logits = self._cache.pop(request_id, ([], None, None))
        common = 0
        for a, b in zip(held, context):
            if a != b:
                break
            common += 1
        if common == len(context) and common == len(held) and logits is not None:
            return held, past, logits
        # Refeed at least the last context token: it yields the next position's logits.
        keep = min(common, len(context) - 1)
        if past is not None and keep > 0:
            past.crop(keep)
            held = held[:keep]
        else:
            held, past = [], None
        return self._feed(held, past, context[keep:])

    def draft(self, request_id: str, context: List[int], depth: int, branches: int = 0, branch_depth: int = 2,
              with_probs: bool = False) -> List[Tuple[int, List[int], Optional[list]]]:
        """[(assumed, tokens, probs)]: the greedy tail of `depth` tokens after `context` (assumed 0),
        and `branches` tails that assume the draft's first j tokens then its runner-up at j + 1."""
        torch = self.torch
        with torch.inference_mode():
            held, past, logits = self._sync(request_id, list(context))
            base = len(held)
            tokens, probs, runner_up = [], [], []
            for _ in range(depth):
                p = torch.softmax(logits, dim=-1)
                top2 = torch.topk(p, 2).indices.tolist()
                tokens.append(top2[0])
                runner_up.append(top2[1])
                if with_probs:
                    probs.append(p.cpu().numpy())
                held, past, logits = self._feed(held, past, [top2[0]])
            out = [(0, tokens, probs if with_probs else None)]
            for j in range(min(branches, depth)):
                # Back to the context alone, then the first j drafts and the runner-up in one pass.
                past.crop(base)
                guess = tokens[:j] + [runner_up[j]]
                held, past, b_logits = self._feed(held[:base], past, guess)
                for _ in range(branch_depth):
                    nxt = int(torch.argmax(b_logits))
                    guess.append(nxt)
                    held, past, b_logits = self._feed(held, past, [nxt])
                out.append((j + 1, guess, None))
            self._cache[request_id] = (held, past, logits if not branches else None)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            return out


class Drafter:
    def __init__(self, name: str, client, lm: DraftLM, version: int, depth: int = 8, branches: int = 1,
                 should_run: Callable[[], bool] = lambda: True,
                 on_stale_version: Optional[Callable[[], Optional[int]]] = None, max_requests: int = 64):
        self.name, self.client, self.lm, self.version = name, client, lm, int(version)
        self.depth, self.branches, self.max_requests = depth, branches, max_requests
        self.should_run, self.on_stale_version = should_run, on_stale_version
        self.serving: Optional[str] = None
        self.mirror: Dict[str, Tuple[Tuple[int, ...], List[int]]] = {}
        self.counters: Dict[str, int] = collections.Counter()
        self.busy_s = 0.0

    def _attach(self) -> Optional[str]:
        self.serving = self.client.attach(self.name, self.version)
        self.mirror.clear()
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
        if not self.mirror:  # the verifier has no live request left: serve another one next round
            self.client.detach(self.name)
            self.serving = None
            return 0
        tails = []
        for rid in changed[:self.max_requests]:
            prompt, committed = self.mirror[rid]
            digest = fingerprint(committed)
            for assumed, toks, probs in self.lm.draft(rid, list(prompt) + committed, self.depth, self.branches):
                tails.append(Tail(rid, len(committed), digest, self.version, tuple(toks), assumed, probs))
        refused = self.client.push(self.serving, tails) if tails else {}
        self.counters["tails"] += len(tails)
        for why, n in refused.items():
            self.counters[f"refused_{why}"] += n
        self.busy_s += time.perf_counter() - t0
        if refused.get("version"):
            return self._stale_version()
        return len(tails)

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

    def run(self, idle_sleep_s: float = 0.005, stop: Optional[Callable[[], bool]] = None) -> None:
        """Draft while this replica is idle; detach when it gets work (or `stop` says so)."""
        try:
            while self.should_run() and not (stop and stop()):
                n = self.run_once()
                if n < 0:
                    return
                if n == 0:
                    time.sleep(idle_sleep_s)
        finally:
            self.client.detach(self.name)
            self.serving = None
