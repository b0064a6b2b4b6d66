"""Per-step capture budget: which response windows go to the learner, and what that costs.

Why: every response token carries (aux layers + 1) x hidden bf16 features.  For Qwen2.5-7B
(hidden 3584, 3 aux layers) that is 28 KB per token, so one step of 128 prompts x 8 samples x 2k
tokens would ship about 60 GB into a replay buffer of 512 MiB.  Each data-parallel rank keeps at
most ``capture_budget_mb / world_size`` per policy step, across all micro-batches of the step.

Rule (uniform, reproducible):

* every sequence with a response draws a random key from a generator seeded by
  (seed, policy step, rank), in the order the micro-batches arrive, so a rerun keeps the same ones;
* sequences are kept in key order as whole windows (the learner's training-time-test unroll needs
  consecutive positions) until the budget is spent; the last one is cut to fit, so at most one
  sample per rank and step is partial.  The cut keeps a contiguous segment at a random offset (also
  drawn per sequence), not the prefix: when the budget is smaller than one response (a 7B target on
  8 ranks keeps ~1.2k tokens per rank), a prefix would never show the learner late positions;
* streamed over micro-batches: a sequence is captured only if it would be kept among the sequences
  seen so far, and a later sequence with a smaller key shortens or evicts kept ones.  A shorter cut
  of a sequence always lies inside the longer one (:func:`segment_start`), so the step ends with
  exactly what choosing among all of its sequences at once gives, while the rank holds at most its
  budget plus one micro-batch's new windows.

No weighting towards long responses or towards positions the draft got wrong: which draft tokens
the rollout rejected is decided inside the inference engine and is not known here, at capture time,
so a "rejected positions" weight could only be a guess; uniform sampling is what we can claim.

Also: the per-step counts summed over ranks (:class:`CaptureTotals`, held by the learner) and the
calculator ``python -m verl_specrollout.capture.budget --hidden 3584 --aux 3 --tokens 2097152``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import threading
from typing import Optional, Sequence

import numpy as np

from .samples import cut_sample, sample_nbytes, sample_tokens

MIB = 1 << 20
FEATURE_BYTES = 2    # bf16 aux and final hidden states
TOKEN_ID_BYTES = 4   # int32 input_ids
LOSS_MASK_BYTES = 1  # uint8 loss_mask
SAMPLE_BYTES = 8     # the int64 policy_step scalar each sample carries
MIN_SAMPLE_TOKENS = 2  # one draft input and one label


def bytes_per_token(hidden: int, n_aux: int) -> int:
    """Shipped bytes per captured position: aux + final features, token id, loss mask."""
    return (int(n_aux) + 1) * int(hidden) * FEATURE_BYTES + TOKEN_ID_BYTES + LOSS_MASK_BYTES


def rank_budget_bytes(total_mb: float, world_size: int) -> int:
    """The configured budget is for the whole step across data-parallel ranks: split it evenly."""
    return int(float(total_mb) * MIB) // max(1, int(world_size))


def allocate(lengths: Sequence[int], budget_bytes: Optional[int], token_bytes: int) -> list:
    """Positions kept per entry, entries in key order: whole entries while they fit, then what is
    left for the first that does not (0 under :data:`MIN_SAMPLE_TOKENS`).  None: no limit."""
    if budget_bytes is None:
        return [int(n) for n in lengths]
    left = int(budget_bytes)
    out = []
    for n in lengths:
        room = (left - SAMPLE_BYTES) // token_bytes if left > SAMPLE_BYTES else 0
        take = min(int(n), room)
        if take < MIN_SAMPLE_TOKENS:
            take = 0
        if take:
            left -= take * token_bytes + SAMPLE_BYTES
        out.append(take)
    return out


def segment_start(full: int, take: int, frac: float) -> int:
    """Offset of the ``take`` positions kept out of a ``full``-position window.  For a shorter
    ``take`` the segment moves right by at most the positions it loses, so it stays inside the
    longer one: cutting a kept sample again never needs positions that were not captured."""
    return int(frac * (int(full) - int(take)))


def _seed_word(x) -> int:
    return int(x or 0) & (2**64 - 1)  # SeedSequence takes non-negative ints only


@dataclasses.dataclass
class Pick:
    """What to capture of one window: positions ``[start, start + take)`` of its ``full``."""
    key: float
    frac: float   # where a cut segment sits (see segment_start)
    full: int
    start: int
    take: int


@dataclasses.dataclass
class _Kept:
    pick: Pick     # start / take: what the sample holds now
    order: int     # arrival order within the step
    sample: dict


class StepBudget:
    """One rank's selection for one policy step: ``plan`` before each micro-batch's forward,
    ``commit`` the samples built from it, ``finish`` at the end of the step."""

    def __init__(self, budget_bytes: Optional[int], token_bytes: int, policy_step=None, rank: int = 0,
                 seed: int = 0):
        self.budget_bytes = budget_bytes
        self.token_bytes = int(token_bytes)
        self.policy_step = policy_step
        self.rank = int(rank)
        self._rng = np.random.default_rng([_seed_word(seed), _seed_word(policy_step), _seed_word(rank)])
        self._kept: list = []
        self._arrived = 0
        self.seen_sequences = 0
        self.seen_tokens = 0
        self.skipped_microbatches = 0
        self.off = False  # capture failed earlier in this step: leave the rest of it alone

    def plan(self, windows: Sequence[Optional[tuple]], eligible: Sequence[bool]) -> list:
        """-> per window a :class:`Pick`, or None (not captured).  ``windows[i]`` None: no
        response (no draw); ``eligible[i]`` false: nothing to learn from (drawn, never kept)."""
        fresh = []
        for i, w in enumerate(windows):
            if w is None:
                continue
            key, frac = (float(x) for x in self._rng.random(2))
            self.seen_sequences += 1
            self.seen_tokens += w[2] - w[0]
            if eligible[i]:
                fresh.append((key, frac, w[2] - w[0], i))
        rows = [(k.pick.key, k.pick.take, None) for k in self._kept] + [(f[0], f[2], f) for f in fresh]
        rows.sort(key=lambda r: r[0])
        picks = [None] * len(windows)
        for (_, _, f), take in zip(rows, allocate([n for _, n, _ in rows], self.budget_bytes, self.token_bytes)):
            if f is not None and take:
                key, frac, full, i = f
                picks[i] = Pick(key, frac, full, segment_start(full, take, frac), take)
        return picks

    def commit(self, new: Sequence[tuple]) -> None:
        """``new``: (pick, sample) built from this micro-batch's picks.  Re-cuts the kept set so the
        budget holds (kept samples may shrink or go)."""
        entries = self._kept + [_Kept(p, self._arrived + j, s) for j, (p, s) in enumerate(new)]
        self._arrived += len(new)
        entries.sort(key=lambda e: e.pick.key)
        takes = allocate([sample_tokens(e.sample) for e in entries], self.budget_bytes, self.token_bytes)
        kept = []
        for e, take in zip(entries, takes):
            if not take:
                continue
            start = segment_start(e.pick.full, take, e.pick.frac)
            sample = cut_sample(e.sample, start - e.pick.start, take)
            if sample is not None:
                kept.append(dataclasses.replace(e, pick=dataclasses.replace(e.pick, start=start, take=take),
                                                sample=sample))
        self._kept = kept

    def finish(self) -> tuple:
        """-> (samples in the order their sequences arrived, this rank's counts for the step)."""
        samples = [k.sample for k in sorted(self._kept, key=lambda k: k.order)]
        kept_tokens = sum(sample_tokens(s) for s in samples)
        counts = {
            "seen_sequences": self.seen_sequences, "seen_tokens": self.seen_tokens,
            "kept_sequences": len(samples), "kept_tokens": kept_tokens,
            "kept_bytes": sum(sample_nbytes(s) for s in samples),
            "dropped_sequences": self.seen_sequences - len(samples),
            "dropped_tokens": self.seen_tokens - kept_tokens,
            "truncated_sequences": sum(k.pick.take < k.pick.full for k in self._kept),
            "skipped_microbatches": self.skipped_microbatches,
            "budget_bytes": self.budget_bytes or 0,
        }
        self._kept = []
        return samples, counts


class CaptureTotals:
    """Per-step capture counts summed over the data-parallel ranks that reported them.

    Held by the learner (``add(policy_step, rank, counts)`` from each rank once per step);
    :meth:`metrics` gives the newest step as ``capture/<count>`` scalars, plus ``capture/ranks``
    (how many ranks reported: fewer than the world size means some reports are still on their
    way) and ``capture/kept_fraction`` (kept / seen positions).  Thread-safe on its own, so a
    threaded learner can take reports while ``metrics`` runs, without its training lock."""

    def __init__(self, keep_steps: int = 4):
        self.keep_steps = max(1, int(keep_steps))
        self._steps: dict = {}
        self._lock = threading.Lock()

    def add(self, policy_step, rank: int, counts: dict) -> None:
        step = int(policy_step) if policy_step is not None else -1
        with self._lock:
            self._steps.setdefault(step, {})[int(rank)] = dict(counts)
            while len(self._steps) > self.keep_steps:
                self._steps.pop(min(self._steps))

    def metrics(self) -> dict:
        with self._lock:
            if not self._steps:
                return {}
            step = max(self._steps)
            per_rank = list(self._steps[step].values())
        total: dict = collections.Counter()
        for counts in per_rank:
            total.update({k: v for k, v in counts.items() if isinstance(v, (int, float))})
        out = {f"capture/{k}": float(v) for k, v in total.items()}
        out["capture/ranks"] = float(len(per_rank))
        out["capture/policy_step"] = float(step)
        seen = total.get("seen_tokens", 0)
        out["capture/kept_fraction"] = total.get("kept_tokens", 0) / seen if seen else 0.0
        return out


# ----------------------------------------------------------------------------- calculator
def calculate(hidden: int, aux: int, tokens: int, budget_mb: float = 256.0, world_size: int = 1) -> dict:
    """Bytes of one step's capture without and with the budget (per-sample scalars and the
    prompt context positions left out: a few bytes and one position per sequence)."""
    per_token = bytes_per_token(hidden, aux)
    per_rank_tokens = rank_budget_bytes(budget_mb, world_size) // per_token
    kept = min(int(tokens), per_rank_tokens * max(1, int(world_size)))
    return {"bytes_per_token": per_token, "tokens": int(tokens),
            "bytes_without_budget": per_token * int(tokens), "kept_tokens": kept,
            "bytes_with_budget": per_token * kept, "kept_fraction": kept / tokens if tokens else 0.0}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m verl_specrollout.capture.budget",
                                description="Bytes one policy step of capture ships to the learner.")
    p.add_argument("--hidden", type=int, required=True, help="target hidden size (7B Qwen2.5: 3584)")
    p.add_argument("--aux", type=int, default=3, help="aux layers the EAGLE-3 head reads (default 3)")
    p.add_argument("--tokens", type=int, required=True, help="response tokens per step (prompts x samples x length)")
    p.add_argument("--budget-mb", type=float, default=256.0, help="learner.capture_budget_mb (MiB per step, all ranks)")
    p.add_argument("--world-size", type=int, default=1, help="data-parallel ranks of the actor")
    a = p.parse_args(argv)
    r = calculate(a.hidden, a.aux, a.tokens, a.budget_mb, a.world_size)
    print(f"bytes per token:        {r['bytes_per_token']} ({(a.aux + 1)} x {a.hidden} x {FEATURE_BYTES} "
          f"+ {TOKEN_ID_BYTES + LOSS_MASK_BYTES})")
    print(f"bytes/step, no budget:  {r['bytes_without_budget']} ({_size(r['bytes_without_budget'])})")
    print(f"bytes/step, budget:     {r['bytes_with_budget']} ({_size(r['bytes_with_budget'])}; "
          f"{a.budget_mb:g} MiB over {a.world_size} rank(s))")
    print(f"kept tokens:            {r['kept_tokens']} of {r['tokens']}")
    print(f"kept fraction:          {r['kept_fraction']:.6f}")
    return r


if __name__ == "__main__":
    main()
