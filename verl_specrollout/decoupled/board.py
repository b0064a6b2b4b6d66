"""The tail board: per-request draft tails from remote drafters, commits from the verifier.

The verifier owns every request. Each step it publishes what it committed (``commit``) and asks
for a draft (``take``); drafters read the committed tokens (``mirror``) and post tails drafted
from them (``post``). Nothing here waits: ``take`` returns the best tail that fits *now* or None,
and the caller drafts coupled that step.

Refused or dropped, each counted by reason (``counters``):

* a tail from another draft version than the verifier's (``set_version``: after a weight sync the
  verifier's draft moved on; a drafter still on the old one is refused until it reloads);
* a tail for a request the board does not hold (finished, evicted, never opened): *foreign*;
* a tail drafted from a prefix the board has not published (*ahead*), or whose fingerprint is not
  the published prefix's (*foreign*: a drafter with a wrong mirror);
* at each commit, tails the new tokens contradict (*stale*) or consume (*lagging*).

Memory is bounded: ``max_tails`` per request (the oldest base goes first), ``max_bytes`` of tail
tokens and probabilities over all requests (tails of the request committed longest ago go
first), ``max_requests`` live requests (the least recently committed is closed).
"""

from __future__ import annotations

import collections
import hashlib
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from verl_specrollout.decoupled.tails import AHEAD, FOREIGN, LAGGING, STALE, VERSION, Tail, fingerprint, fit

logger = logging.getLogger(__name__)

# Published prefix digests kept per request: tails are drafted from recent commit points.
DIGESTS_KEPT = 32


class _Request:
    __slots__ = ("prompt", "committed", "hasher", "digests", "tails")

    def __init__(self, prompt: Sequence[int]):
        self.prompt = tuple(int(t) for t in prompt)
        self.committed: List[int] = []
        self.hasher = hashlib.blake2b(digest_size=16)
        self.digests: "collections.OrderedDict[int, bytes]" = collections.OrderedDict({0: self.hasher.digest()})
        self.tails: Dict[tuple, Tail] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        self.committed.extend(int(t) for t in tokens)
        self.hasher.update(np.asarray(tokens, dtype="<i8").tobytes())
        self.digests[len(self.committed)] = self.hasher.digest()
        while len(self.digests) > DIGESTS_KEPT:
            self.digests.popitem(last=False)

    def digest_at(self, n: int) -> bytes:
        d = self.digests.get(n)
        return d if d is not None else fingerprint(self.committed[:n])


class Taken:
    """A usable draft: tokens (and their probability rows, if the drafter sent them) to verify."""

    __slots__ = ("tokens", "probs", "version", "base_len", "lag")

    def __init__(self, tokens, probs, version, base_len, lag):
        self.tokens, self.probs, self.version, self.base_len, self.lag = tokens, probs, version, base_len, lag

    def __repr__(self):
        return f"Taken({self.tokens}, version={self.version}, base_len={self.base_len}, lag={self.lag})"


class TailBoard:
    def __init__(self, version: int = 0, max_tails: int = 16, max_bytes: int = 64 << 20, max_requests: int = 65536):
        if max_tails < 1 or max_bytes < 1 or max_requests < 1:
            raise ValueError(f"TailBoard bounds must be >= 1 (max_tails={max_tails}, max_bytes={max_bytes}, "
                             f"max_requests={max_requests})")
        self.version = int(version)
        self.max_tails, self.max_bytes, self.max_requests = max_tails, max_bytes, max_requests
        self._reqs: "collections.OrderedDict[str, _Request]" = collections.OrderedDict()
        self._bytes = 0
        self.counters: Dict[str, int] = collections.Counter()
        self._warned_versions: set = set()

    # ------------------------------------------------------------------ verifier side
    def open(self, request_id: str, prompt: Sequence[int]) -> None:
        if request_id in self._reqs:
            return
        self._reqs[request_id] = _Request(prompt)
        while len(self._reqs) > self.max_requests:
            old, _ = next(iter(self._reqs.items()))
            self.close(old)
            self.counters["evicted_requests"] += 1

    def close(self, request_id: str) -> None:
        r = self._reqs.pop(request_id, None)
        if r is not None:
            self._bytes -= sum(t.tokens_nbytes() for t in r.tails.values())

    def commit(self, request_id: str, committed: Sequence[int]) -> None:
        """Publish the request's committed output tokens (the whole list; only what is new is
        copied). Drops the tails they contradict or consume."""
        r = self._reqs.get(request_id)
        if r is None:
            raise KeyError(f"commit for {request_id!r}, which was never opened on this board")
        n0 = len(r.committed)
        if len(committed) < n0:
            raise ValueError(f"commit for {request_id!r} shrinks the committed output from {n0} to "
                             f"{len(committed)} tokens; committed tokens never change")
        if len(committed) > n0:
            self._advance(request_id, r, committed[n0:])

    def extend(self, request_id: str, tokens: Sequence[int]) -> None:
        """Publish only the new committed tokens (``commit`` without the whole list)."""
        r = self._reqs.get(request_id)
        if r is None:
            raise KeyError(f"commit for {request_id!r}, which was never opened on this board")
        if len(tokens):
            self._advance(request_id, r, tokens)

    def _advance(self, request_id: str, r: _Request, tokens: Sequence[int]) -> None:
        n0 = len(r.committed)
        r.extend(tokens)
        self._reqs.move_to_end(request_id)
        n = len(r.committed)
        for key, tail in list(r.tails.items()):
            if tail.end <= n:
                self._drop(r, key, LAGGING)
            elif tail.base_len < n and tuple(r.committed[max(tail.base_len, n0):n]) != \
                    tuple(tail.continuation[max(tail.base_len, n0) - tail.base_len:n - tail.base_len]):
                self._drop(r, key, STALE)

    def set_version(self, version: int) -> None:
        """The verifier's draft version after a weight sync; tails of any other version go."""
        version = int(version)
        if version == self.version:
            return
        self.version = version
        for r in self._reqs.values():
            for key, tail in list(r.tails.items()):
                if tail.version != version:
                    self._drop(r, key, VERSION)

    def take(self, request_id: str, committed: Sequence[int], max_tokens: int) -> Optional[Taken]:
        """The longest draft of at most max_tokens that fits the committed tokens now, or None."""
        if max_tokens <= 0:
            return None
        r = self._reqs.get(request_id)
        if r is None:
            self.counters["miss_unknown"] += 1
            return None
        if len(committed) != len(r.committed):
            self.commit(request_id, committed)
        best, best_len = None, 0
        for key, tail in list(r.tails.items()):
            at, why = fit(tail, r.committed, r.digest_at)
            if why is not None:
                self._drop(r, key, why)
                continue
            usable = len(tail.continuation) - at
            if usable > best_len or (usable == best_len and best is not None and tail.base_len > best[0].base_len):
                best, best_len = (tail, at), usable
        if best is None:
            self.counters["miss_empty"] += 1
            return None
        tail, at = best
        stop = at + min(best_len, max_tokens)
        probs = None if tail.probs is None else tail.probs[at:stop]
        self.counters["hits"] += 1
        self.counters["hit_tokens"] += stop - at
        return Taken(list(tail.continuation[at:stop]), probs, tail.version, tail.base_len, len(r.committed) - tail.base_len)

    # ------------------------------------------------------------------ drafter side
    def committed_len(self, request_id: str) -> Optional[int]:
        """How many output tokens are published, or None once the request is gone (no copy)."""
        r = self._reqs.get(request_id)
        return None if r is None else len(r.committed)

    def mirror(self, request_id: str) -> Optional[Tuple[Tuple[int, ...], List[int]]]:
        """(prompt, committed tokens) as published, or None once the request is gone."""
        r = self._reqs.get(request_id)
        return None if r is None else (r.prompt, list(r.committed))

    def request_ids(self) -> List[str]:
        return list(self._reqs)

    def post(self, tail: Tail) -> Optional[str]:
        """Store a drafter's tail; None when stored, else why it was refused (counted)."""
        why = self._refusal(tail)
        if why is not None:
            self.counters[f"refused_{why}"] += 1
            if why == VERSION and tail.version not in self._warned_versions:
                self._warned_versions.add(tail.version)
                logger.warning("verl-specrollout: decoupled tails of draft version %d refused, the verifier is on "
                               "version %d; the drafter must reload (coupled drafting meanwhile)", tail.version,
                               self.version)
            return why
        r = self._reqs[tail.request_id]
        old = r.tails.pop(tail.key, None)
        if old is not None:
            self._bytes -= old.tokens_nbytes()
        r.tails[tail.key] = tail
        self._bytes += tail.tokens_nbytes()
        self.counters["posted"] += 1
        while len(r.tails) > self.max_tails:
            self._drop(r, min(r.tails, key=lambda k: r.tails[k].base_len), "evicted")
        self._evict_bytes()
        return None

    def _refusal(self, tail: Tail) -> Optional[str]:
        if tail.version != self.version:
            return VERSION
        r = self._reqs.get(tail.request_id)
        if r is None:
            return FOREIGN
        if tail.base_len > len(r.committed):
            return AHEAD
        at, why = fit(tail, r.committed, r.digest_at)
        return why

    # ------------------------------------------------------------------ bounds
    def _drop(self, r: _Request, key: tuple, why: str) -> None:
        tail = r.tails.pop(key)
        self._bytes -= tail.tokens_nbytes()
        self.counters[f"dropped_{why}"] += 1

    def _evict_bytes(self) -> None:
        for r in self._reqs.values():  # least recently committed first
            while self._bytes > self.max_bytes and r.tails:
                self._drop(r, min(r.tails, key=lambda k: r.tails[k].base_len), "evicted")
            if self._bytes <= self.max_bytes:
                return

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._reqs)

    def tails_of(self, request_id: str) -> List[Tail]:
        r = self._reqs.get(request_id)
        return [] if r is None else list(r.tails.values())
