"""The verifier's end: a local tail board the engine step reads, kept fed by a background thread.

The engine step (``take``, ``commit``, ``open``, ``close``) only touches this process's memory: a
lock held for microseconds, never a network call. A daemon thread does the exchange
(``TailExchange.exchange``, in process or through a Ray actor handle): it sends the events the
steps queued and posts the tails that came back into the local board, where the same fit rule as
everywhere drops what the verifier has meanwhile moved past. It exchanges every ``interval_s``
while anything moves; while nothing does (no commits to send and no tails back: an idle engine, or
no drafter serving this one) it backs off, doubling up to ``max_interval_s``, so a job's engines
do not keep the exchange actor busy for nothing; a queued event wakes it at once.

Failure handling: an exchange that raises or times out is logged once (until it works again) and
counted; the link is then *down*, tails stop arriving, ``take`` misses and the engine drafts
coupled. Events queued while down are bounded (``max_events``); past the bound, and after any
failed exchange, the next successful exchange re-sends every live request whole (prompt and
committed tokens), so the exchange's mirror never misses a commit.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Dict, List, Optional, Sequence

from verl_specrollout.decoupled.board import TailBoard, Taken
from verl_specrollout.decoupled.exchange import CLOSE, COMMIT, DRAFT, OPEN, VERSION

logger = logging.getLogger(__name__)


class ExchangeClient:
    """Calls a TailExchange in process, or through a Ray actor handle with a timeout."""

    def __init__(self, target: Any, timeout_s: float = 2.0):
        self.target, self.timeout_s = target, timeout_s
        self._remote = hasattr(getattr(target, "exchange", None), "remote")

    def __getattr__(self, name: str):
        method = getattr(self.target, name)
        if not self._remote:
            return method

        def call(*args, **kwargs):
            import ray

            return ray.get(method.remote(*args, **kwargs), timeout=self.timeout_s)

        return call


class VerifierLink:
    def __init__(self, verifier_id: str, client: Optional[ExchangeClient], version: int = 0,
                 interval_s: float = 0.002, max_events: int = 65536, start: bool = True, max_bytes: int = 64 << 20,
                 max_interval_s: Optional[float] = None):
        self.verifier_id = verifier_id
        self.client = client
        self.board = TailBoard(version=version, max_bytes=max_bytes)
        self.interval_s, self.max_events = interval_s, max_events
        self.max_interval_s = max(interval_s, 32 * interval_s if max_interval_s is None else max_interval_s)
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._events: List[tuple] = [(VERSION, int(version))]  # the exchange's mirror starts at 0
        self._resync = False
        self._down_logged = False
        self.alive = client is not None
        self.counters: Dict[str, int] = collections.Counter()
        self._stop = threading.Event()
        self._thread = None
        if start and client is not None:
            self._thread = threading.Thread(target=self._loop, name=f"specrollout-tails-{verifier_id}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ engine step side
    def open(self, request_id: str, prompt: Sequence[int]) -> None:
        with self._lock:
            if self.board.committed_len(request_id) is None:
                self.board.open(request_id, prompt)
                self._queue((OPEN, request_id, tuple(int(t) for t in prompt)))

    def commit(self, request_id: str, committed: Sequence[int]) -> None:
        with self._lock:
            self._commit(request_id, committed)

    def _commit(self, request_id: str, committed: Sequence[int]) -> None:
        have = self.board.committed_len(request_id)
        if have is None:
            return
        if len(committed) > have:
            self.board.extend(request_id, committed[have:])
            self._queue((COMMIT, request_id, have, [int(t) for t in committed[have:]]))

    def close(self, request_id: str) -> None:
        with self._lock:
            if self.board.committed_len(request_id) is not None:
                self.board.close(request_id)
                self._queue((CLOSE, request_id))

    def verifying(self, request_id: str, committed_len: int, draft: Sequence[int]) -> None:
        """The draft this step verifies for the request, from its first committed_len output tokens:
        drafters pre-draft from its outcomes while the step runs."""
        if not draft:
            return
        with self._lock:
            if self.board.committed_len(request_id) == committed_len:
                self._queue((DRAFT, request_id, int(committed_len), [int(t) for t in draft]))

    def set_version(self, version: int) -> None:
        with self._lock:
            if version != self.board.version:
                self.board.set_version(version)
                self._queue((VERSION, int(version)))

    def take(self, request_id: str, committed: Sequence[int], max_tokens: int) -> Optional[Taken]:
        """Publish what is committed (if not yet) and take the best tail that fits it now."""
        with self._lock:
            self._commit(request_id, committed)
            return self.board.take(request_id, committed, max_tokens)

    def _queue(self, ev: tuple) -> None:
        self._wake.set()
        if len(self._events) >= self.max_events:
            self._events.clear()
            self._resync = True
            self.counters["events_overflow"] += 1
        elif not self._resync:
            self._events.append(ev)

    # ------------------------------------------------------------------ exchange side
    def pump(self) -> int:
        """One exchange; the number of tails received (0 when the exchange failed)."""
        with self._lock:
            if self._resync:
                events = [(VERSION, self.board.version)]
                for rid in self.board.request_ids():
                    prompt, committed = self.board.mirror(rid)
                    events += [(OPEN, rid, prompt), (COMMIT, rid, 0, committed)]
            else:
                events = self._events
            self._events = []
            self._resync = False
        try:
            tails = self.client.exchange(self.verifier_id, events)
        except Exception as e:  # a dead exchange or drafter must never stop the engine
            with self._lock:
                self._resync = True
            self.counters["exchange_errors"] += 1
            if not self._down_logged:
                self._down_logged = True
                logger.warning("verl-specrollout: decoupled drafting unavailable for %s (%s: %s); drafting coupled "
                               "until the exchange answers again", self.verifier_id, type(e).__name__, e)
            self.alive = False
            return 0
        if not self.alive or self._down_logged:
            logger.info("verl-specrollout: decoupled drafting back for %s", self.verifier_id)
        self.alive, self._down_logged = True, False
        self.counters["exchanges"] += 1
        with self._lock:
            for t in tails:
                why = self.board.post(t)
                self.counters["tails_received" if why is None else f"tails_late_{why}"] += 1
        return len(tails)

    def _loop(self) -> None:
        wait = self.interval_s
        while not self._stop.is_set():
            if self._wake.wait(wait):
                self._wake.clear()
                # Events come in bursts (one per request at each step): gather the burst.
                if self._stop.wait(self.interval_s):
                    return
            elif self._stop.is_set():
                return
            with self._lock:
                quiet = not self._events and not self._resync
            got = self.pump()
            wait = self.interval_s if (got or not quiet) else min(2 * wait, self.max_interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stats(self) -> dict:
        with self._lock:
            out = {f"link/{k}": v for k, v in self.counters.items()}
            out.update({f"board/{k}": v for k, v in self.board.counters.items()})
            out["alive"] = int(self.alive)
            return out
