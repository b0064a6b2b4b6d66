"""The batch-size -> K table, one type from the planner to vLLM's scheduler (standard library only).

vLLM 0.31 takes the table in two forms (v1/core/sched/scheduler.py, config/speculative.py):
``num_speculative_tokens_per_batch_size`` rows ``[[min_bs, max_bs, K], ...]`` (inclusive,
contiguous, the first row at batch size 1), which it densifies once at start into
``Scheduler.dynamic_sd_lookup`` (index = batch size, index 0 unused; read by ``schedule()``
every step). A ``KTable`` is that dense lookup; ``rows()`` and ``from_rows`` convert with the
semantics of vLLM's ``build_dynamic_sd_schedule_lookup`` (gaps and the tail carry the previous
K forward; K capped at max_k), and ``lookup(n)`` gives the list the scheduler installs, sized to
the engine's ``max_num_seqs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union


@dataclass(frozen=True)
class KTable:
    ks: Tuple[int, ...]  # ks[b] = K at batch size b for b in 1..max_batch; ks[0] = 0, unused

    def __post_init__(self):
        if len(self.ks) < 2:
            raise ValueError("a K table covers batch sizes 1.. at least 1")
        if any(k < 0 for k in self.ks):
            raise ValueError(f"K must be >= 0, got {min(self.ks)}")

    # --------------------------------------------------------------- build
    @classmethod
    def of(cls, dense: Iterable[int]) -> "KTable":
        """From a dense lookup (index 0 ignored)."""
        ks = [int(k) for k in dense]
        return cls(tuple([0] + ks[1:]))

    @classmethod
    def uniform(cls, k: int, max_batch: int) -> "KTable":
        return cls(tuple([0] + [int(k)] * max_batch))

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], max_batch: int, max_k: int) -> "KTable":
        """vLLM rows -> table, as vLLM's build_dynamic_sd_schedule_lookup reads them."""
        parsed = sorted((int(r[0]), int(r[1]), int(r[2])) for r in rows)
        if not parsed or parsed[0][0] != 1:
            raise ValueError("table must start at batch size 1")
        dense = [0] * (max_batch + 1)
        nxt, last = 1, parsed[0][2]
        for lo, hi, k in parsed:
            for b in range(nxt, min(lo, max_batch + 1)):  # gap: carry the previous K
                dense[b] = min(max_k, last)
            for b in range(max(lo, nxt), min(hi, max_batch) + 1):
                dense[b] = min(max_k, k)
            nxt, last = max(nxt, hi + 1), k
        for b in range(nxt, max_batch + 1):
            dense[b] = min(max_k, last)
        return cls(tuple(dense))

    # ---------------------------------------------------------------- read
    @property
    def max_batch(self) -> int:
        return len(self.ks) - 1

    def k_for(self, batch_size: int) -> int:
        """K at a batch size; sizes past the table take its last K (vLLM's tail rule)."""
        return self.ks[min(max(int(batch_size), 1), self.max_batch)]

    def rows(self) -> List[List[int]]:
        """vLLM's ``num_speculative_tokens_per_batch_size`` rows (runs of one K merged)."""
        rows: List[List[int]] = []
        for b in range(1, len(self.ks)):
            k = self.ks[b]
            if rows and rows[-1][2] == k:
                rows[-1][1] = b
            else:
                rows.append([b, b, k])
        return rows

    def lookup(self, max_batch: Optional[int] = None) -> List[int]:
        """vLLM's ``Scheduler.dynamic_sd_lookup`` (index 0 unused) for batch sizes 1..max_batch
        (default: the table's own), truncated or extended with the last K."""
        n = self.max_batch if max_batch is None else int(max_batch)
        out = list(self.ks[: n + 1])
        out.extend([self.ks[-1]] * (n + 1 - len(out)))
        return out

    def resized(self, max_batch: int) -> "KTable":
        return KTable(tuple(self.lookup(max_batch)))

    # Sequence access by batch size (index 0 unused), as vLLM indexes its lookup.
    def __getitem__(self, index: Union[int, slice]):
        return self.ks[index]

    def __len__(self) -> int:
        return len(self.ks)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ks)
