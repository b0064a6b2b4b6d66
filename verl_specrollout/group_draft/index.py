"""Group-aware suffix drafts: continuations from a request's siblings, earlier rollouts and its prompt.

In GRPO every prompt is sampled G times and the same prompts return epoch after epoch. What
reaches a vLLM worker is one request per sample, all G with the same prompt token ids, so a
*group* here is the set of requests with identical prompt ids (`group_key`, a blake2b digest,
stable across processes). Three sources of free drafts per group:

- ``siblings``: response tokens of the group's requests of the current rollout, in flight and
  finished, updated every step. A request's own earlier tokens are in it too (a repeat of its
  own context is a valid match); the open end of a sequence has no continuation and is not a key.
- ``history``: responses of earlier rollouts of the same prompt, at most `history_depth` per
  group (oldest evicted), count-weighted.
- ``prompt``: the prompt itself (responses copy numbers and phrases from it).

A rollout of a group ends when its last live request finishes; its kept responses then become
one history chunk: the rollout's siblings table itself, adopted as is (a request added to a
group with no live request starts a new rollout). History counts are summed over chunks at
lookup; the oldest responses beyond `history_depth` go, a whole chunk by dropping its table, part
of one by decrementing (cost ~ those responses' tokens: keep history_depth a multiple of G, and
>= G, so that a rollout's end costs nothing). The index lives in one engine worker: history hits
need a prompt's later rollouts to reach the same worker.

Design: a variable-order n-gram count table per group and source. For every indexed token x at
position t and every order n in min_match..max_match, the context tokens[t-n:t] -> Counter of x.
Keys are the 64-bit hashes of the context tuples (CPython's tuple hash of ints: computed in C,
the same in every process; 2.5x faster here than a polynomial hash in Python ints), so a new
token costs one hash and one dict update per order, and extending a draft context by one token
costs one lookup. Why not a suffix tree: (1) a token's cost is fixed and small
(max_match - min_match + 1 dict updates) where an online suffix tree / automaton with
occurrence counts needs count propagation along suffix links of unbounded length; (2) decrements
(an aborted request, a history response evicted by `history_depth`) are the same loop with -1,
which a suffix automaton cannot do without a rebuild; (3) whole-group or whole-rollout eviction
is dropping a dict; (4) the longest match needs no tree walk: contexts are monotone (if an n-token context
occurs, so does its (n-1)-token suffix), so a binary search over n finds it in ~3 lookups. The
price is memory: one entry per token per order (see below), bounded by `max_tokens`.
A hash collision (~1e-19 per pair at 64 bits) only produces a draft that verification rejects.

Each table value is the token itself for a context seen once (most long contexts), else
``[total, best_token, best_count, counts dict or None]`` with the argmax kept incrementally, so a
proposal step reads the most frequent continuation and its count share in O(1).

Matching (`propose`): per source, the longest suffix of the request's tokens (<= max_match,
>= min_match) that occurs as a context; the source with the longest match wins, ties broken by
expected accepted tokens of the drafts. The draft then follows the most frequent continuation
for up to k tokens, re-matching after each proposed token (longest context again, so a draft can
cross from one sequence to another), probability = count share at each step.

Defaults and why:
- max_match=8: GRPO siblings share long stretches; 8 tokens of agreement already make the
  continuation share the main signal, and each order costs a dict update per token and memory.
- min_match=2: a single shared token is the weakest evidence (with a small vocab, no evidence)
  and costs a full table order; vLLM's own ngram method defaults to 5.
- history_depth=16: one earlier rollout of G <= 16 (veRL's usual n) survives whole, two of G=8.
  Older rollouts were sampled from a policy further away. (The engine passes the group config's
  value; these defaults match it.)
- max_tokens=1_000_000: ~0.45 GB at the measured ~435 bytes per indexed token (7 orders), e.g. a
  replica's rollout of 64 prompts x 8 samples x 1k tokens plus one earlier rollout of each.

Measured (``python -m benchmarks.group_index_cost``: 8 groups of 32 live requests,
responses of 500 tokens sharing stretches, vocab 32k, k=4; CPython 3.11 on the 2-core x86 dev
machine while other jobs held it at load 9-10, so CPU time of the process is quoted): one engine
step of extend (1 new token per request) + propose for all 256 requests costs 2.5-3.3 ms of CPU,
10-13 us per request (extend ~4-5 us, propose ~5-6 us); with 3 new tokens per request (accepted
drafts) ~5 ms. On a quiet core expect roughly half (a first, less loaded run: 1.1-2.4 ms). A
rollout's end is free when its G <= history_depth, ~35-45 ms per group of 32 at history_depth=16
(16 responses decremented). ~435 bytes per indexed token.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

logger = logging.getLogger(__name__)

SOURCES = ("siblings", "history", "prompt")
SIBLINGS, HISTORY, PROMPT = SOURCES

@dataclass
class SuffixDraft:
    tokens: List[int]  # proposed continuation, len <= k (may be empty)
    source: str  # one of SOURCES, "" when empty
    match_len: int  # length of the matched context (tokens) for the first proposed token
    probs: List[float]  # per proposed token: count share of the continuation at that step
    support: List[int] = field(default_factory=list)  # per proposed token: occurrences of its context

    def expected_accepted(self) -> float:
        """sum_j prod_{i<=j} probs[i]: expected accepted tokens if each token is accepted with its share."""
        e, p = 0.0, 1.0
        for q in self.probs:
            p *= q
            e += p
        return e


def empty_draft() -> SuffixDraft:
    return SuffixDraft([], "", 0, [])


# ------------------------------------------------------------------ count tables
def _add(table: dict, key: int, x: int, c: int = 1) -> None:
    v = table.get(key)
    if v is None:
        table[key] = x if c == 1 else [c, x, c, None]
        return
    if v.__class__ is int:
        v = table[key] = [1, v, 1, None]
    v[0] += c
    counts = v[3]
    if counts is None:
        if x == v[1]:
            v[2] += c
            return
        counts = v[3] = {v[1]: v[2]}
    n = counts.get(x, 0) + c
    counts[x] = n
    if n > v[2]:
        v[1], v[2] = x, n


def _sub(table: dict, key: int, x: int, c: int = 1) -> bool:
    """Remove c counts of x after context `key`; False (nothing changed) if they are not there."""
    v = table.get(key)
    if v is None:
        return False
    if v.__class__ is int:
        if v != x or c != 1:
            return False
        del table[key]
        return True
    counts = v[3]
    if counts is None:
        if x != v[1] or c > v[2]:
            return False
        v[0] -= c
        v[2] -= c
    else:
        n = counts.get(x, 0) - c
        if n < 0:
            return False
        v[0] -= c
        if n:
            counts[x] = n
        else:
            del counts[x]
        if x == v[1]:  # the argmax may have changed: recount (eviction path only)
            v[1] = max(counts, key=counts.get)
            v[2] = counts[v[1]]
        if len(counts) == 1:
            v[3] = None
    if v[0] == 0:
        del table[key]
    elif v[0] == 1:
        table[key] = v[1]
    return True


def _counts(v):
    """(token, count) pairs of an entry."""
    if v.__class__ is int:
        return ((v, 1),)
    if v[3] is None:
        return ((v[1], v[2]),)
    return v[3].items()


def canonical(table: dict) -> Dict[int, Dict[int, int]]:
    """key -> {token: count}: the table's content independent of its representation."""
    return {key: dict(_counts(v)) for key, v in table.items()}


# ------------------------------------------------------------------ state
class _Chunk:
    """One rollout's kept responses in history, with their own count table (evicted whole)."""

    __slots__ = ("table", "resps", "tokens")

    def __init__(self, table: dict, resps: List[List[int]]):
        self.table = table
        self.resps = deque(resps)
        self.tokens = sum(map(len, resps))


class _Group:
    __slots__ = ("key", "prompt_len", "tail", "prompt", "sib", "hist", "kept", "live", "sib_tokens",
                 "hist_tokens")

    def __init__(self, key: bytes, prompt: List[int], max_match: int):
        self.key = key
        self.prompt_len = len(prompt)
        self.tail = prompt[-max_match:]  # the context a response's first tokens see
        self.prompt: dict = {}
        self.sib: dict = {}
        self.hist: List[_Chunk] = []  # oldest first
        self.kept: List[List[int]] = []  # finished responses of the current rollout
        self.live: set = set()
        self.sib_tokens = 0
        self.hist_tokens = 0

    @property
    def tokens(self) -> int:
        return self.prompt_len + self.sib_tokens + self.hist_tokens

    @property
    def hist_count(self) -> int:
        return sum(len(c.resps) for c in self.hist)


class _Request:
    __slots__ = ("group", "tokens", "plen")

    def __init__(self, group: _Group):
        self.group = group
        self.tokens: List[int] = list(group.tail)  # prompt tail + response so far
        self.plen = len(group.tail)


def _as_int_list(ids) -> List[int]:
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).ravel().tolist()
    return [int(x) for x in ids]


class GroupSuffixIndex:
    def __init__(self, max_match: int = 8, min_match: int = 2, history_depth: int = 16,
                 max_tokens: int = 1_000_000):
        if not 1 <= min_match <= max_match:
            raise ValueError(f"need 1 <= min_match <= max_match, got min_match={min_match}, max_match={max_match}")
        if history_depth < 0:
            raise ValueError(f"history_depth must be >= 0, got {history_depth}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_match = max_match
        self.min_match = min_match
        self.history_depth = history_depth
        self.max_tokens = max_tokens
        self._groups: Dict[bytes, _Group] = {}
        self._idle: "OrderedDict[bytes, _Group]" = OrderedDict()  # groups without live requests, LRU first
        self._reqs: Dict[str, _Request] = {}
        self._tokens = 0
        self._evicted_groups = 0
        self._over_bound = False
        self._warned_sync = False

    # ------------------------------------------------------------- groups
    @staticmethod
    def group_key(prompt_token_ids) -> bytes:
        """Digest of the prompt ids (int64 little endian), the same in every process."""
        arr = np.asarray(prompt_token_ids, dtype="<i8")
        return hashlib.blake2b(arr.tobytes(), digest_size=16).digest()

    def _index_seq(self, table: dict, seq: Sequence[int], start: int, sign: int) -> None:
        """Add (sign=1) or remove (sign=-1) the entries of next tokens seq[start:]."""
        lo, hi = self.min_match, self.max_match
        missing = 0
        for t in range(max(start, lo), len(seq)):
            x = seq[t]
            w = tuple(seq[max(0, t - hi):t])
            for n in range(lo, len(w) + 1):
                if sign > 0:
                    _add(table, hash(w[-n:]), x)
                elif not _sub(table, hash(w[-n:]), x):
                    missing += 1
        if missing and not self._warned_sync:
            # Only a hash collision (or a bug) gets here; drafts stay lossless, so log and go on.
            self._warned_sync = True
            logger.warning("group suffix index: %d counts to remove were not in the table; this group's "
                           "drafts may be slightly off (logged once)", missing)

    def _new_group(self, key: bytes, prompt: List[int]) -> _Group:
        g = _Group(key, prompt, self.max_match)
        self._index_seq(g.prompt, prompt, 0, 1)
        self._groups[key] = g
        self._tokens += g.prompt_len
        return g

    # ------------------------------------------------------------- requests
    def add_request(self, req_id: str, prompt_token_ids, output_token_ids=None) -> None:
        """Start tracking a request. An id already tracked (a resumed preemption) is not counted
        again; `output_token_ids`, when given, are its tokens so far and only those beyond what
        the index has seen are added."""
        r = self._reqs.get(req_id)
        if r is None:
            prompt = _as_int_list(prompt_token_ids)
            key = self.group_key(prompt)
            g = self._groups.get(key)
            if g is None:
                g = self._new_group(key, prompt)
            self._idle.pop(key, None)
            g.live.add(req_id)
            r = self._reqs[req_id] = _Request(g)
        if output_token_ids is not None and len(output_token_ids):
            seen = len(r.tokens) - r.plen
            if len(output_token_ids) > seen:
                self.extend(req_id, _as_int_list(output_token_ids[seen:]))
        if self._tokens > self.max_tokens:
            self._enforce_bound()

    def extend(self, req_id: str, new_token_ids) -> None:
        """Index the request's new tokens (called every step; no tokens is a no-op)."""
        r = self._reqs.get(req_id)
        if r is None or not len(new_token_ids):
            return
        table = r.group.sib
        toks = r.tokens
        lo, hi = self.min_match, self.max_match
        for x in new_token_ids:
            x = int(x)
            t = len(toks)
            w = tuple(toks[t - hi:]) if t >= hi else tuple(toks)
            fresh = False
            for n in range(lo, len(w) + 1):
                key = hash(w[-n:])
                if fresh:  # a context never seen: its longer extensions were never seen either
                    table[key] = x
                    continue
                v = table.get(key)
                if v is None:
                    table[key] = x
                    fresh = True
                elif v.__class__ is int:
                    table[key] = [2, x, 2, None] if v == x else [2, v, 1, {v: 1, x: 1}]
                else:
                    v[0] += 1
                    counts = v[3]
                    if counts is None:
                        if x == v[1]:
                            v[2] += 1
                        else:
                            v[3] = {v[1]: v[2], x: 1}
                    else:
                        c = counts.get(x, 0) + 1
                        counts[x] = c
                        if c > v[2]:
                            v[1], v[2] = x, c
            toks.append(x)
        n_new = len(new_token_ids)
        r.group.sib_tokens += n_new
        self._tokens += n_new
        if self._tokens > self.max_tokens:
            self._enforce_bound()

    def finish(self, req_id: str, keep: bool = True) -> None:
        """The request ended: its response stays a sibling until the group's rollout ends, then
        becomes history. keep=False (aborted): its tokens are removed from the index."""
        r = self._reqs.pop(req_id, None)
        if r is None:
            return
        g = r.group
        g.live.discard(req_id)
        resp = r.tokens[r.plen:]
        if resp:
            if keep:
                g.kept.append(resp)
            else:
                self._index_seq(g.sib, g.tail + resp, len(g.tail), -1)
                g.sib_tokens -= len(resp)
                self._tokens -= len(resp)
        if not g.live:
            self._end_rollout(g)
            self._idle[g.key] = g
        if self._tokens > self.max_tokens:
            self._enforce_bound()

    def _end_rollout(self, g: _Group) -> None:
        """The rollout's kept responses become one history chunk (its siblings table, adopted as
        is); the oldest responses beyond history_depth go, whole chunks at no cost."""
        kept, sib = g.kept, g.sib
        g.kept, g.sib, g.sib_tokens = [], {}, 0
        self._tokens -= sum(map(len, kept))
        depth = self.history_depth
        start = len(g.tail)
        if len(kept) > depth:
            drop, kept = kept[:len(kept) - depth], kept[len(kept) - depth:]
            if sum(map(len, drop)) > sum(map(len, kept)):  # cheaper to rebuild from what stays
                sib = {}
                for resp in kept:
                    self._index_seq(sib, g.tail + resp, start, 1)
            else:
                for resp in drop:
                    self._index_seq(sib, g.tail + resp, start, -1)
        excess = g.hist_count + len(kept) - depth
        while excess > 0 and g.hist:
            c = g.hist[0]
            if len(c.resps) <= excess:
                g.hist.pop(0)
                excess -= len(c.resps)
                g.hist_tokens -= c.tokens
                self._tokens -= c.tokens
                continue
            for _ in range(excess):  # part of the oldest chunk: decrement its oldest responses
                resp = c.resps.popleft()
                self._index_seq(c.table, g.tail + resp, start, -1)
                c.tokens -= len(resp)
                g.hist_tokens -= len(resp)
                self._tokens -= len(resp)
            excess = 0
        if kept:
            chunk = _Chunk(sib, kept)
            g.hist.append(chunk)
            g.hist_tokens += chunk.tokens
            self._tokens += chunk.tokens

    def _enforce_bound(self) -> None:
        """Drop whole idle groups, least recently used first, until the bound holds."""
        while self._tokens > self.max_tokens and self._idle:
            key, g = self._idle.popitem(last=False)
            del self._groups[key]
            self._tokens -= g.tokens
            self._evicted_groups += 1
        over = self._tokens > self.max_tokens
        if over and not self._over_bound:
            logger.warning("group suffix index: live groups alone hold %d tokens > max_tokens=%d; "
                           "nothing left to evict until a group finishes", self._tokens, self.max_tokens)
        self._over_bound = over

    # ------------------------------------------------------------- proposals
    def _longest(self, table: dict, ctx: tuple, hi: int) -> int:
        """Longest n in [min_match, hi] such that the last n tokens of `ctx` are a key of `table`, else 0."""
        if not table or hi < self.min_match:
            return 0
        if hash(ctx[-hi:]) in table:
            return hi
        a, b, found = self.min_match, hi - 1, 0
        while a <= b:  # contexts are monotone: an n-context occurring implies its (n-1)-suffix does
            m = (a + b) >> 1
            if hash(ctx[-m:]) in table:
                found, a = m, m + 1
            else:
                b = m - 1
        return found

    def _longest_any(self, tables: list, ctx: tuple, hi: int) -> int:
        n = 0
        for t in tables:
            n = max(n, self._longest(t, ctx, hi))
            if n == hi:
                break
        return n

    @staticmethod
    def _get(tables: list, key: int):
        """The entry for `key`: the table's own when one table has it, else the counts summed."""
        found = [t[key] for t in tables if key in t]
        if len(found) < 2:
            return found[0] if found else None
        merged: Dict[int, int] = {}
        for v in found:
            for x, c in _counts(v):
                merged[x] = merged.get(x, 0) + c
        best = max(merged, key=merged.get)  # ties: the oldest table's token
        return [sum(merged.values()), best, merged[best], merged]

    def _follow(self, source: str, tables: list, ctx: tuple, match: int, k: int) -> SuffixDraft:
        """Draft up to k tokens from `tables` starting with a `match`-token context at the end of ctx."""
        hi = self.max_match
        toks, probs, support = [], [], []
        n = match
        if len(tables) == 1:
            table = tables[0]
            get, longest = table.get, (lambda c, h: self._longest(table, c, h))
        else:
            get, longest = (lambda key: self._get(tables, key)), (lambda c, h: self._longest_any(tables, c, h))
        v = get(hash(ctx[-n:]))
        for _ in range(k):
            if v.__class__ is int:
                best = v
                probs.append(1.0)
                support.append(1)
            else:
                best = v[1]
                probs.append(v[2] / v[0])
                support.append(v[0])
            toks.append(best)
            ctx = ctx[1 - hi:] + (best,)
            n = n + 1 if n < hi else hi
            v = get(hash(ctx[-n:]))  # the usual case: the match grows with the draft
            if v is None:
                n = longest(ctx, n - 1)
                if not n:
                    break
                v = get(hash(ctx[-n:]))
        return SuffixDraft(toks, source, match, probs, support)

    def propose(self, req_id: str, k: int) -> SuffixDraft:
        """The continuation the request's current suffix matches best (empty when none)."""
        r = self._reqs.get(req_id)
        if r is None or k <= 0:
            return empty_draft()
        g = r.group
        ctx = tuple(r.tokens[-self.max_match:])
        hi = len(ctx)
        if hi < self.min_match:
            return empty_draft()
        whole = hash(ctx)
        best_len, cands = 0, []
        for source, tables in ((SIBLINGS, (g.sib,)), (HISTORY, [c.table for c in g.hist]), (PROMPT, (g.prompt,))):
            if len(tables) != 1:
                n = self._longest_any(tables, ctx, hi)
            elif not tables[0]:
                continue
            else:
                n = hi if whole in tables[0] else self._longest(tables[0], ctx, hi - 1)
            if n > best_len:
                best_len, cands = n, [(source, tables)]
            elif n and n == best_len:
                cands.append((source, tables))
        if not cands:
            return empty_draft()
        drafts = [self._follow(s, tabs, ctx, best_len, k) for s, tabs in cands]
        return max(drafts, key=SuffixDraft.expected_accepted) if len(drafts) > 1 else drafts[0]

    # ------------------------------------------------------------- introspection
    def stats(self) -> dict:
        gs = self._groups.values()
        return {
            "groups": len(self._groups),
            "live_groups": sum(1 for g in gs if g.live),
            "live_requests": len(self._reqs),
            "history_responses": sum(g.hist_count for g in gs),
            "history_chunks": sum(len(g.hist) for g in gs),
            "indexed_tokens": self._tokens,
            "entries": sum(len(g.prompt) + len(g.sib) + sum(len(c.table) for c in g.hist) for g in gs),
            "evicted_groups": self._evicted_groups,
            "over_bound": self._over_bound,
        }

    def table_counts(self, group_key: bytes, source: str) -> Dict[int, Dict[int, int]]:
        """A group's count table for one source as key -> {token: count} (empty if unknown)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        g = self._groups.get(group_key)
        if g is None:
            return {}
        if source != HISTORY:
            return canonical(g.sib if source == SIBLINGS else g.prompt)
        merged: Dict[int, Dict[int, int]] = {}
        for c in g.hist:
            for key, counts in canonical(c.table).items():
                m = merged.setdefault(key, {})
                for x, n in counts.items():
                    m[x] = m.get(x, 0) + n
        return merged

    def history_responses(self, group_key: bytes) -> List[List[int]]:
        """The group's history responses, oldest first (copies)."""
        g = self._groups.get(group_key)
        return [list(x) for c in g.hist for x in c.resps] if g is not None else []

    def __contains__(self, req_id: str) -> bool:
        return req_id in self._reqs
