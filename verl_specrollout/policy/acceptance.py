"""Online per-position acceptance estimates (plain Python, no torch / vLLM imports).

alpha_i = P(draft token i is accepted | tokens 1..i-1 were accepted and token i was drafted),
i = 1..max_k. Estimated from decayed counts::

    alpha_i = (acc_i + w0 * prior_i) / (trials_i + w0)

acc_i / trials_i are exponentially decayed observed counts (multiplied by `decay` once per
engine step that carried drafts); w0 is a small constant pseudo-count, so the prior matters
only until a few dozen drafts have been seen. prior_1 = prior_acceptance; prior_i for i > 1
is the current estimate of alpha_{i-1} (deeper positions are assumed no better than the
previous one until observed), so a position that K has never reached inherits the
information of the positions that have been seen.

Expected committed tokens per request-step for draft length K (the bonus / corrected token
always counts)::

    E[K] = 1 + sum_{j=1..K} prod_{i<=j} alpha_i

Plain Python rather than numpy: everything here is O(max_k) per engine step and runs on the
engine's critical path, where numpy's fixed cost per call (microseconds) exceeds the arithmetic.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, List, Optional, Sequence, Tuple


def expected_tokens(alphas: Sequence[float], k: int) -> float:
    """E[K] = 1 + sum_j prod_{i<=j} alpha_i for the first k positions."""
    e, p = 1.0, 1.0
    for j in range(k):
        p *= alphas[j]
        e += p
    return e


class AcceptanceEstimator:
    def __init__(self, max_k: int, decay: float = 0.98, prior: float = 0.6, prior_weight: float = 2.0):
        if max_k < 1:
            raise ValueError("max_k must be >= 1")
        self.max_k = max_k
        self.decay = decay
        self.prior = prior
        self.prior_weight = prior_weight
        self.acc = [0.0] * max_k
        self.trials = [0.0] * max_k
        # Undecayed totals, for metrics.
        self.total_drafts = 0
        self.total_draft_tokens = 0
        self.total_accepted = 0
        self.total_draft_per_pos = [0] * max_k
        self.total_accepted_per_pos = [0] * max_k
        self._pending: List[Tuple[int, int]] = []

    # ------------------------------------------------------------- observe
    def observe_request(self, num_draft_tokens: int, num_accepted: int) -> None:
        """One request's verification in the current step: drafted n, accepted a (a <= n)."""
        self._pending.append((num_draft_tokens, num_accepted))

    def end_step(self) -> None:
        """Close an engine step: decay once, then add the step's requests."""
        if not self._pending:  # a step that verified nothing (K = 0): no decay
            return
        outcomes = self._outcomes()
        self._pending.clear()
        if not outcomes:
            return
        d = self.decay
        self.acc = [x * d for x in self.acc]
        self.trials = [x * d for x in self.trials]
        for (n, a), count in outcomes.items():
            self.total_drafts += count
            self.total_draft_tokens += n * count
            self.total_accepted += a * count
            for i in range(n):
                self.total_draft_per_pos[i] += count
            for i in range(a):
                self.total_accepted_per_pos[i] += count
            # positions 0..a-1 accepted; position a (if drafted) rejected; later ones untried
            for i in range(min(a + 1, n)):
                self.trials[i] += count
            for i in range(a):
                self.acc[i] += count

    def _outcomes(self) -> Counter:
        """The step's requests as {(drafted, accepted): how many}, drafted capped at max_k and
        requests that verified nothing left out. A step has at most (max_k + 1)**2 distinct
        outcomes whatever its batch size, so the bookkeeping runs once per outcome, not per request."""
        outcomes: Counter = Counter()
        for (drafted, accepted), count in Counter(self._pending).items():
            n = min(int(drafted), self.max_k)
            if n > 0:
                outcomes[n, max(0, min(int(accepted), n))] += count
        return outcomes

    def observe_requests(self, pairs: Iterable[Tuple[int, int]]) -> None:
        """A whole step's (drafted, accepted) pairs."""
        self._pending.extend(map(tuple, pairs))
        self.end_step()

    def observe_step_counts(
        self,
        num_drafts: int,
        num_draft_tokens_per_pos: Sequence[int],
        num_accepted_tokens_per_pos: Sequence[int],
    ) -> None:
        """A step from vLLM's aggregated SpecDecodingStats counts.

        Exact when every request drafted the same length (model drafters); for variable
        lengths (ngram) trials at position i are approximated by
        min(accepted at i-1, drafted at i).
        """
        if num_drafts <= 0:
            return
        d = self.decay
        self.acc = [x * d for x in self.acc]
        self.trials = [x * d for x in self.trials]
        k = min(self.max_k, len(num_draft_tokens_per_pos))
        prev_acc = num_drafts
        self.total_drafts += num_drafts
        for i in range(k):
            dr = int(num_draft_tokens_per_pos[i])
            ac = int(num_accepted_tokens_per_pos[i]) if i < len(num_accepted_tokens_per_pos) else 0
            tr = min(prev_acc, dr)
            self.trials[i] += tr
            self.acc[i] += min(ac, tr)
            self.total_draft_tokens += dr
            self.total_accepted += ac
            self.total_draft_per_pos[i] += dr
            self.total_accepted_per_pos[i] += ac
            prev_acc = ac

    # ------------------------------------------------------------ estimates
    def alphas(self) -> List[float]:
        out = []
        prior = self.prior
        w0 = self.prior_weight
        for i in range(self.max_k):
            a = (self.acc[i] + w0 * prior) / (self.trials[i] + w0)
            out.append(min(max(a, 0.0), 1.0))
            prior = a
        return out

    def expected_tokens(self, k: int, alphas: Optional[Sequence[float]] = None) -> float:
        return expected_tokens(alphas if alphas is not None else self.alphas(), min(k, self.max_k))

    def expected_table(self) -> List[float]:
        """[E[0], E[1], ..., E[max_k]]."""
        al = self.alphas()
        return [expected_tokens(al, k) for k in range(self.max_k + 1)]


class PerRequestAcceptance:
    """Running acceptance rate per request (decayed), for the verification budget."""

    def __init__(self, decay: float = 0.9, prior: float = 0.6, prior_weight: float = 2.0):
        self.decay = decay
        self.prior = prior
        self.prior_weight = prior_weight
        self._acc: dict = {}
        self._tr: dict = {}

    def observe(self, req_id: str, num_draft_tokens: int, num_accepted: int) -> None:
        if num_draft_tokens <= 0:
            return
        d = self.decay
        # Conditional trials: positions up to the first rejection.
        tr = min(num_accepted + 1, num_draft_tokens)
        self._acc[req_id] = self._acc.get(req_id, 0.0) * d + num_accepted
        self._tr[req_id] = self._tr.get(req_id, 0.0) * d + tr

    def rate(self, req_id: str) -> float:
        w0 = self.prior_weight
        return (self._acc.get(req_id, 0.0) + w0 * self.prior) / (self._tr.get(req_id, 0.0) + w0)

    def forget(self, req_id: str) -> None:
        self._acc.pop(req_id, None)
        self._tr.pop(req_id, None)

    def __len__(self) -> int:
        return len(self._tr)
