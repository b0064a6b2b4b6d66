"""Ship captured samples to the learner actor without blocking the trainer.

``ray.put`` the sample list once (zero-copy for the tensors), then a fire-and-forget
``learner.add_batch.remote([ref], policy_step)`` (the ref is wrapped in a list so Ray does not
resolve it before the learner wants it).  At most ``max_in_flight`` calls are outstanding:
when full, the oldest is cancelled and counted as dropped (``dropped`` batches,
``dropped_samples``), so a slow learner never stalls the actor nor grows memory.  A call the
learner already started cannot be cancelled and may still land: ``dropped`` counts what the
shipper gave up waiting for, so it is an upper bound on what the learner never received.
Drops are logged at the 1st, 2nd, 4th, 8th, ... one: a learner that stays slow is visible in
the log without one line per step.
"""

from __future__ import annotations

import collections
import logging
from typing import Optional

logger = logging.getLogger(__name__)


class SampleShipper:
    def __init__(self, learner, max_in_flight: int = 4):
        self.learner = learner
        self.max_in_flight = max(1, int(max_in_flight))
        self._in_flight: collections.deque = collections.deque()  # ObjectRefs, oldest first
        self._sizes: dict = {}  # in-flight ref -> number of samples it carries
        self.sent = 0
        self.dropped = 0
        self.sent_samples = 0
        self.dropped_samples = 0

    def _prune(self) -> None:
        import ray

        if not self._in_flight:
            return
        refs = list(self._in_flight)
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if done:
            done = set(done)
            self._in_flight = collections.deque(r for r in self._in_flight if r not in done)
            for r in done:
                self._sizes.pop(r, None)

    def ship(self, samples: list, policy_step: Optional[int] = None) -> bool:
        if not samples:
            return False
        import ray

        self._prune()
        while len(self._in_flight) >= self.max_in_flight:
            self._drop_oldest()
        ref = ray.put(samples)
        call = self.learner.add_batch.remote([ref], policy_step)
        self._in_flight.append(call)
        self._sizes[call] = len(samples)
        self.sent += 1
        self.sent_samples += len(samples)
        return True

    def _drop_oldest(self) -> None:
        import ray

        old = self._in_flight.popleft()
        try:
            ray.cancel(old)
        except Exception:  # already running / finished: nothing to undo
            pass
        self.dropped += 1
        self.dropped_samples += self._sizes.pop(old, 0)
        if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ...
            logger.warning("specrollout capture: learner busy, dropped the oldest in-flight batch (%d batches, "
                           "%d samples dropped so far; at most %d calls in flight)", self.dropped,
                           self.dropped_samples, self.max_in_flight)

    def flush(self, timeout: Optional[float] = None) -> None:
        import ray

        if self._in_flight:
            ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=timeout)
            self._prune()

    def stats(self) -> dict:
        return {"sent": self.sent, "dropped": self.dropped, "in_flight": len(self._in_flight),
                "sent_samples": self.sent_samples, "dropped_samples": self.dropped_samples}
