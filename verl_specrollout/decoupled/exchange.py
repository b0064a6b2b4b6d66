"""The exchange between verifiers (busy replicas' engines) and drafters (idle replicas).

One ``TailExchange`` per job, run as a named Ray actor (``ray_exchange``) so that engines and
drafters on any node of the cluster find it by name; tests and single-process setups use the class
directly. It keeps, per verifier, a mirror of what the verifier published (a ``TailBoard``: prompts,
committed tokens, draft version) and the tails drafters sent that the verifier has not collected.

* a verifier calls ``exchange(verifier, events)`` from a background thread of its engine process
  (``link.VerifierLink``): its opens / commits / closes / version since the last call go in, the
  tails waiting for it come back. Its engine step never waits on this call.
* a verifier also sends, per request, the draft it is verifying in the step now running
  (``("draft", rid, committed_len, tokens)``): the step's outcome is some accepted prefix of it
  plus one token, so a drafter that gets it during the step can pre-draft from those outcomes
  (``Drafter``), and the verifier finds a tail for the outcome it lands on at its next step.
* a drafter calls ``attach`` (its draft version; it gets the verifier it should serve, the one with
  the most live requests per attached drafter), ``pull`` (the mirror's changes since what it knows)
  and ``push`` (its tails: checked against the mirror here, so stale and old-version tails never
  travel back), and ``detach`` when its own replica gets work again.

Tails pass the mirror's check (``TailBoard.post``) before they are queued: a drafter on an old draft
version is refused here, and its ``push`` result says so (it must reload before drafting again).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from verl_specrollout.decoupled.board import TailBoard
from verl_specrollout.decoupled.tails import Tail

logger = logging.getLogger(__name__)

# Event kinds a verifier sends: ("open", rid, prompt), ("commit", rid, start, tokens),
# ("close", rid), ("version", v), ("draft", rid, committed_len, tokens): the draft being verified.
OPEN, COMMIT, CLOSE, VERSION, DRAFT = "open", "commit", "close", "version", "draft"


class _Verifier:
    def __init__(self, max_tails: int, max_bytes: int):
        self.board = TailBoard(max_tails=max_tails, max_bytes=max_bytes)
        self.outbox: "collections.deque[Tail]" = collections.deque()
        self.drafters: set = set()
        self.drafts: Dict[str, Tuple[int, Tuple[int, ...]]] = {}  # rid -> (committed length, draft verifying)
        self.last_commit = time.monotonic()


class TailExchange:
    def __init__(self, max_tails: int = 16, max_bytes: int = 64 << 20, max_outbox: int = 4096,
                 quiet_after_s: float = 30.0):
        # A verifier that committed nothing for quiet_after_s is not offered to drafters: a safety
        # net for an engine that went idle without its server closing its requests (the server
        # does, verl_adapter/decoupled_hooks.py) or that stalled.
        self.quiet_after_s = quiet_after_s
        self._verifiers: Dict[str, _Verifier] = {}
        self._drafters: Dict[str, Tuple[int, Optional[str]]] = {}  # drafter -> (version, verifier)
        self._max_tails, self._max_bytes, self._max_outbox = max_tails, max_bytes, max_outbox
        self._lock = threading.Lock()  # a Ray actor runs one call at a time; threads in tests don't
        self.counters: Dict[str, int] = collections.Counter()

    # ------------------------------------------------------------------ verifiers
    def exchange(self, verifier: str, events: Sequence[tuple]) -> List[Tail]:
        with self._lock:
            v = self._verifiers.get(verifier)
            if v is None:
                v = self._verifiers[verifier] = _Verifier(self._max_tails, self._max_bytes)
            for ev in events:
                self._apply(v, ev)
            if any(ev[0] == COMMIT for ev in events):
                v.last_commit = time.monotonic()
            out = list(v.outbox)
            v.outbox.clear()
            self.counters["tails_delivered"] += len(out)
            return out

    def _apply(self, v: _Verifier, ev: tuple) -> None:
        kind = ev[0]
        if kind == OPEN:
            v.board.open(ev[1], ev[2])
        elif kind == COMMIT:
            _, rid, start, tokens = ev
            have = v.board.committed_len(rid)
            if have is None:
                return  # opened before this exchange started or evicted: drafters skip it
            if start > have:
                # A lost event (cannot happen over one ordered channel; guard anyway): the mirror
                # would be wrong, so the request leaves the exchange and its drafters' tails go.
                self.counters["gaps"] += 1
                v.board.close(rid)
                return
            v.board.extend(rid, tokens[have - start:])
        elif kind == CLOSE:
            v.board.close(ev[1])
            v.drafts.pop(ev[1], None)
        elif kind == DRAFT:
            _, rid, base, tokens = ev
            if tokens and v.board.committed_len(rid) == base:
                v.drafts[rid] = (int(base), tuple(int(t) for t in tokens))
        elif kind == VERSION:
            v.board.set_version(ev[1])
            v.outbox = collections.deque(t for t in v.outbox if t.version == ev[1])
        else:
            raise ValueError(f"unknown exchange event {ev!r}")

    def forget_verifier(self, verifier: str) -> None:
        with self._lock:
            self._verifiers.pop(verifier, None)

    # ------------------------------------------------------------------ drafters
    def attach(self, drafter: str, version: int) -> Optional[str]:
        """Register (or re-register) a drafter; returns the verifier it should serve, or None when
        no verifier on the drafter's version has live requests and committed recently."""
        with self._lock:
            self._detach(drafter)
            best, best_load = None, 0.0
            now = time.monotonic()
            for name, v in self._verifiers.items():
                if v.board.version != version or len(v.board) == 0 or now - v.last_commit > self.quiet_after_s:
                    continue
                load = len(v.board) / (1 + len(v.drafters))
                if load > best_load:
                    best, best_load = name, load
            self._drafters[drafter] = (version, best)
            if best is not None:
                self._verifiers[best].drafters.add(drafter)
            return best

    def detach(self, drafter: str) -> None:
        with self._lock:
            self._detach(drafter)
            self._drafters.pop(drafter, None)

    def _detach(self, drafter: str) -> None:
        _, verifier = self._drafters.get(drafter, (None, None))
        if verifier in self._verifiers:
            self._verifiers[verifier].drafters.discard(drafter)

    def pull(self, verifier: str, known: Dict[str, int]) -> dict:
        """What changed since ``known`` (request id -> committed length the drafter holds):
        ``{"version", "requests": {rid: (prompt or None, start, tokens)}, "closed": [rid],
        "drafts": {rid: (committed length, tokens)}}``; the prompt is sent only for requests the
        drafter does not know; ``drafts`` holds the drafts being verified from the current commits."""
        with self._lock:
            v = self._verifiers.get(verifier)
            if v is None:
                return {"version": None, "requests": {}, "closed": list(known)}
            out = {}
            for rid in v.board.request_ids():
                prompt, committed = v.board.mirror(rid)
                have = known.get(rid)
                if have is None:
                    out[rid] = (prompt, 0, committed)
                elif have < len(committed):
                    out[rid] = (None, have, committed[have:])
            closed = [rid for rid in known if v.board.committed_len(rid) is None]
            drafts = {}
            for rid, (base, tokens) in v.drafts.items():
                if v.board.committed_len(rid) == base:
                    drafts[rid] = (base, tokens)
            return {"version": v.board.version, "requests": out, "closed": closed, "drafts": drafts}

    def push(self, verifier: str, tails: Sequence[Tail]) -> Dict[str, int]:
        """Queue a drafter's tails for the verifier; per refusal reason, how many were refused."""
        refused: Dict[str, int] = collections.Counter()
        with self._lock:
            v = self._verifiers.get(verifier)
            if v is None:
                refused["foreign"] += len(tails)
                return dict(refused)
            for t in tails:
                why = v.board.post(t)
                if why is not None:
                    refused[why] += 1
                    continue
                v.outbox.append(t)
            while len(v.outbox) > self._max_outbox:
                v.outbox.popleft()
                self.counters["outbox_dropped"] += 1
            self.counters["tails_pushed"] += len(tails)
            return dict(refused)

    def status(self) -> dict:
        with self._lock:
            return {"verifiers": {k: {"requests": len(v.board), "drafters": len(v.drafters), "version": v.board.version}
                                  for k, v in self._verifiers.items()},
                    "drafters": {k: {"version": ver, "serving": s} for k, (ver, s) in self._drafters.items()},
                    "counters": dict(self.counters)}


def exchange_name(job: str) -> str:
    return f"specrollout_tails_{job}"


def ray_exchange(job: str, namespace: Optional[str] = None):
    """The job's exchange as a named Ray actor (created by the first caller on any node; detached
    so that it outlives the replica that created it, and named per job so jobs never share one)."""
    import ray

    cls = ray.remote(num_cpus=0, max_concurrency=1)(TailExchange)
    opts = dict(name=exchange_name(job), get_if_exists=True, lifetime="detached")
    if namespace is not None:
        opts["namespace"] = namespace
    return cls.options(**opts).remote()
