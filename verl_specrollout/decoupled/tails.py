"""Draft tails and the rule that decides whether one still fits what the verifier committed.

A *tail* is a draft a drafter made away from the verifier: from the first ``base_len`` committed
output tokens of a request (the drafter's mirror of them, fingerprinted), the continuation it
predicts. Its first ``assumed`` tokens may be a guess of the verifier's next outcome (SSD-style
pre-drafting: "if the verifier accepts d1 d2 and then samples g, continue with ..."): tails from
one prefix with different guesses exist side by side, keyed by what they assume. A guess is a
draft like any other: until the outcome is committed it is verified as one.

The fit rule (``usable``): with ``committed`` the verifier's output tokens now (length L >=
base_len), a tail is usable when its fingerprint is that of ``committed[:base_len]`` and the
tokens committed since it was drafted are its head, ``continuation[:L - base_len] ==
committed[base_len:L]``; what it offers is the rest, ``continuation[L - base_len:]``. So a tail
drafted from a shorter prefix still serves when the verifier accepted exactly what it predicted
(the drafter is a step or two behind but right), and is useless the moment one committed token
differs (*stale*) or the verifier has consumed all of it (*lagging*).

Why a fingerprint and not only lengths: the committed prefix of a request never changes once
published, but a drafter that missed or misordered a commit would draft from a wrong mirror of
the right length; the fingerprint (blake2b of the prefix's token ids) turns that into a refusal
instead of a draft conditioned on tokens the request never had. The rejection sampler would keep
the output exact anyway (a draft is only a proposal); the check keeps acceptance honest and makes
the bug visible in the counters.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Optional, Sequence, Tuple

import numpy as np


def fingerprint(tokens: Sequence[int]) -> bytes:
    """16-byte digest of a token-id prefix (int64 little-endian, so lists and arrays agree)."""
    return hashlib.blake2b(np.asarray(tokens, dtype="<i8").tobytes(), digest_size=16).digest()


@dataclasses.dataclass(frozen=True)
class Tail:
    request_id: str
    base_len: int                 # committed output tokens the tail was drafted from
    base_digest: bytes            # fingerprint(committed[:base_len]) as the drafter saw it
    version: int                  # draft model version that drafted it
    continuation: Tuple[int, ...]  # predicted tokens from position base_len on
    assumed: int = 0              # leading tokens that guess the verifier's outcome (not drafts)
    # Optional draft probabilities, one row per continuation token (shape [len, vocab] or [len]):
    # they travel with the tokens so a probabilistic verifier can use them; None = one-hot drafts.
    probs: Optional[Any] = None

    def __post_init__(self):
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"tail request_id must be a non-empty string, got {self.request_id!r}")
        if self.base_len < 0:
            raise ValueError(f"tail base_len must be >= 0, got {self.base_len}")
        if not self.continuation:
            raise ValueError(f"tail for {self.request_id!r} has no tokens")
        if not 0 <= self.assumed < len(self.continuation):
            raise ValueError(f"tail for {self.request_id!r}: assumed={self.assumed} must leave at least one "
                             f"draft token of {len(self.continuation)}")
        if any((not isinstance(t, (int, np.integer))) or t < 0 for t in self.continuation):
            raise ValueError(f"tail for {self.request_id!r}: token ids must be non-negative integers")
        if self.probs is not None and len(self.probs) != len(self.continuation):
            raise ValueError(f"tail for {self.request_id!r}: {len(self.probs)} probability rows for "
                             f"{len(self.continuation)} tokens")

    @property
    def key(self) -> Tuple[int, Tuple[int, ...]]:
        """Pre-drafts for different outcomes from one prefix live side by side; a new tail with the
        same base and the same assumption replaces the old one (a longer re-draft)."""
        return self.base_len, tuple(self.continuation[:self.assumed])

    @property
    def end(self) -> int:
        """Committed length at which the tail is used up."""
        return self.base_len + len(self.continuation)

    def tokens_nbytes(self) -> int:
        extra = int(getattr(self.probs, "nbytes", 0)) if self.probs is not None else 0
        return 8 * len(self.continuation) + extra


# Why a tail did not serve (counter names).
STALE, LAGGING, AHEAD, FOREIGN, VERSION = "stale", "lagging", "ahead", "foreign", "version"


def fit(tail: Tail, committed: Sequence[int], digest_at) -> Tuple[Optional[int], Optional[str]]:
    """(offset into tail.continuation where the usable draft starts, None) or (None, reason).

    ``digest_at(n)`` returns fingerprint(committed[:n]) (the caller caches it)."""
    n = len(committed)
    if tail.base_len > n:
        return None, AHEAD  # drafted from commits the verifier has not made (another replica's past)
    if tail.end <= n:
        return None, LAGGING
    if digest_at(tail.base_len) != tail.base_digest:
        return None, FOREIGN
    since = n - tail.base_len
    if since and tuple(int(t) for t in committed[tail.base_len:n]) != tuple(tail.continuation[:since]):
        return None, STALE
    # A tail whose assumed outcome is not committed yet still offers it: a guess of the next
    # tokens is a draft like any other, and the verifier decides.
    return since, None
