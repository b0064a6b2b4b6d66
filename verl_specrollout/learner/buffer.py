"""Bounded replay buffer of captured samples, capped by bytes; oldest samples go first."""

from __future__ import annotations

import collections
import random
import threading

from verl_specrollout.capture.samples import sample_nbytes


class ReplayBuffer:
    """FIFO by bytes. ``add`` evicts the oldest samples until the new one fits; a sample bigger
    than the whole cap is rejected.  Every eviction/rejection is counted (``dropped``)."""

    def __init__(self, cap_bytes: int, seed: int = 0, on_evict=None):
        if cap_bytes <= 0:
            raise ValueError("cap_bytes must be > 0")
        self.cap_bytes = int(cap_bytes)
        self._q: collections.deque = collections.deque()  # (nbytes, sample, tag)
        self._on_evict = on_evict  # called with the tag of every sample that leaves (or is refused)
        self.bytes = 0
        self.added = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._q)

    def add(self, sample: dict, tag=None) -> bool:
        nb = sample_nbytes(sample)
        gone = []
        with self._lock:
            self.added += 1
            if nb > self.cap_bytes:
                self.dropped += 1
                self.dropped_bytes += nb
                gone.append(tag)
                ok = False
            else:
                while self.bytes + nb > self.cap_bytes:
                    onb, _, otag = self._q.popleft()
                    self.bytes -= onb
                    self.dropped += 1
                    self.dropped_bytes += onb
                    gone.append(otag)
                self._q.append((nb, sample, tag))
                self.bytes += nb
                ok = True
        if self._on_evict is not None:
            for t in gone:
                self._on_evict(t)
        return ok

    def extend(self, samples) -> int:
        return sum(bool(self.add(s)) for s in samples)

    def sample(self, n: int, newest_first: bool = False) -> list:
        """``n`` samples, uniformly at random (or the newest ``n``)."""
        with self._lock:
            items = [s for _, s, _ in self._q]
        if not items:
            return []
        if newest_first:
            return items[-n:]
        return [items[self._rng.randrange(len(items))] for _ in range(n)] if n > len(items) else \
            self._rng.sample(items, n)

    def stats(self) -> dict:
        return {"buffer_bytes": self.bytes, "buffer_samples": len(self._q), "buffer_cap_bytes": self.cap_bytes,
                "buffer_added": self.added, "buffer_dropped": self.dropped,
                "buffer_dropped_bytes": self.dropped_bytes}


class HeldOutSplit:
    """Every ``every``-th sample seen is held out: evaluated on (``SpecLearner.stats``), never
    trained on or journaled; the newest ``max_samples`` of them are kept."""

    def __init__(self, every: int, max_samples: int = 64):
        self.every = max(2, int(every))
        self.samples: collections.deque = collections.deque(maxlen=max_samples)
        self._seen = 0

    def __len__(self) -> int:
        return len(self.samples)

    def split(self, samples) -> list:
        """Keep the held-out ones; return the rest (the ones to train on)."""
        train = []
        for s in samples:
            self._seen += 1
            if self._seen % self.every == 0:
                self.samples.append(s)
            else:
                train.append(s)
        return train
