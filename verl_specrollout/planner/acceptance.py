"""Online per-position acceptance estimates (plain Python, no torch / vLLM imports).

alpha_i = P(draft token i is accepted | tokens 1..i-1 were accepted and token i was drafted),
i = 1..max_k. Estimated from decayed counts::

    alpha_i = (acc_i + w0 * prior_i) / (trials_i + w0)

acc_i / trials_i are exponentially decayed observed counts (multiplied by `decay` once per
engine step that carried drafts); w0 is a small constant pseudo-count, so the prior matters
only until a few dozen drafts have been seen. prior_1 = prior_acceptance; prior_i for i > 1 is
the current estimate of alpha_{i-1} times the depth ratio alpha_i / alpha_{i-1} measured over a
much longer memory (`shape_decay`; ratio 1 until position i was ever drafted, never above 1). So a position K
has not reached lately inherits the level of the positions seen now and the depth profile seen
before: without the ratio, a deep position whose counts decayed away (e.g. a GRPO rollout's long
K <= 1 phase at large batch) reverted to alpha_{i-1}, an optimistic E[K] for large K
(acceptance usually falls with depth), which steered the planner to too long drafts in the tail.

Acceptance by batch size: one engine step has one batch size B, and B is not independent of
where requests are in their responses (a GRPO rollout's small batches are its long responses,
late in them). The planner chooses K per B, so what it needs is E[K] at B. Counts are also
kept per batch-size class (powers of two: 1, 2-3, 4-7, ...), decayed once per step OF THAT
CLASS (so the tail's counts survive the next rollout's crowded start), and a class's alpha_i is
shrunk with `class_weight` pseudo-trials toward the class above it (the next larger batches; the
pooled estimate above the largest): alpha_{c,1} toward that class's alpha_1, deeper ones toward
alpha_{c,i-1} times its depth ratio (level from the class, shape from its neighbour). A class
never observed reads the class above it, so the tail of a rollout, which starts with no counts of
its own, starts from the batches just before it rather than from the crowded start that
dominates the pooled counts.

Expected committed tokens per request-step for draft length K (the bonus / corrected token
always counts)::

    E[K] = 1 + sum_{j=1..K} prod_{i<=j} alpha_i

Plain Python rather than numpy: everything here is O(max_k) per engine step and runs on the
engine's critical path, where numpy's fixed cost per call (microseconds) exceeds the arithmetic.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple


# Pseudo-trials of the depth profile's shrinkage (see depth_ratios).
SHAPE_WEIGHT = 8.0


def expected_tokens(alphas: Sequence[float], k: int) -> float:
    """E[K] = 1 + sum_j prod_{i<=j} alpha_i for the first k positions."""
    e, p = 1.0, 1.0
    for j in range(k):
        p *= alphas[j]
        e += p
    return e


def chained_alphas(acc: Sequence[float], trials: Sequence[float], first_prior: float,
                   ratios: Sequence[float], weight: float) -> List[float]:
    """alpha_i = (acc_i + weight * prior_i) / (trials_i + weight), clamped to [0, 1], with
    prior_1 = first_prior and prior_i = alpha_{i-1} * ratios[i] for deeper positions."""
    out: List[float] = []
    prior = first_prior
    for i in range(len(acc)):
        a = min(max((acc[i] + weight * prior) / (trials[i] + weight), 0.0), 1.0)
        out.append(a)
        if i + 1 < len(acc):
            prior = a * ratios[i + 1]
    return out


def batch_class(batch_size: int) -> int:
    """Batch-size class: floor(log2(B)), i.e. 1 | 2-3 | 4-7 | 8-15 | ..."""
    return max(int(batch_size), 1).bit_length() - 1


class AcceptanceEstimator:
    def __init__(self, max_k: int, decay: float = 0.98, prior: float = 0.6, prior_weight: float = 2.0,
                 shape_decay: float = 0.999, class_weight: float = 8.0):
        if max_k < 1:
            raise ValueError("max_k must be >= 1")
        self.max_k = max_k
        self.decay = decay
        self.prior = prior
        self.prior_weight = prior_weight
        self.shape_decay = shape_decay
        self.class_weight = class_weight
        self.acc = [0.0] * max_k
        self.trials = [0.0] * max_k
        # The same counts over a long memory: only their depth profile is used.
        self._shape_acc = [0.0] * max_k
        self._shape_trials = [0.0] * max_k
        # batch-size class -> [acc, trials], decayed when that class is observed.
        self._by_class: Dict[int, List[List[float]]] = {}
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

    def end_step(self, batch_size: Optional[int] = None) -> None:
        """Close an engine step: decay once, then add the step's requests. `batch_size` is the
        step's scheduled requests (default: the requests observed), for the per-class counts."""
        if not self._pending:  # a step that verified nothing (K = 0): no decay
            return
        pending = len(self._pending)
        outcomes = self._outcomes()
        self._pending.clear()
        if not outcomes:
            return
        self._decay_all()
        cls = self._by_class.get(batch_class(batch_size or pending))
        if cls is None:
            cls = self._by_class[batch_class(batch_size or pending)] = [[0.0] * self.max_k, [0.0] * self.max_k]
        else:
            d = self.decay
            cls[0] = [x * d for x in cls[0]]
            cls[1] = [x * d for x in cls[1]]
        acc, trials = [0] * self.max_k, [0] * self.max_k
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
                trials[i] += count
            for i in range(a):
                acc[i] += count
        self._add(acc, trials, cls)

    def _decay_all(self) -> None:
        d, s = self.decay, self.shape_decay
        self.acc = [x * d for x in self.acc]
        self.trials = [x * d for x in self.trials]
        self._shape_acc = [x * s for x in self._shape_acc]
        self._shape_trials = [x * s for x in self._shape_trials]

    def _add(self, acc: Sequence[float], trials: Sequence[float], cls: Optional[List[List[float]]]) -> None:
        for i in range(self.max_k):
            if trials[i]:
                self.trials[i] += trials[i]
                self.acc[i] += acc[i]
                self._shape_trials[i] += trials[i]
                self._shape_acc[i] += acc[i]
                if cls is not None:
                    cls[0][i] += acc[i]
                    cls[1][i] += trials[i]

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

    def observe_requests(self, pairs: Iterable[Tuple[int, int]], batch_size: Optional[int] = None) -> None:
        """A whole step's (drafted, accepted) pairs; `batch_size` as in end_step."""
        self._pending.extend(map(tuple, pairs))
        self.end_step(batch_size)

    def observe_step_counts(
        self,
        num_drafts: int,
        num_draft_tokens_per_pos: Sequence[int],
        num_accepted_tokens_per_pos: Sequence[int],
    ) -> None:
        """A step from vLLM's aggregated SpecDecodingStats counts (pooled only: no batch size).

        Exact when every request drafted the same length (model drafters); for variable
        lengths (ngram) trials at position i are approximated by
        min(accepted at i-1, drafted at i).
        """
        if num_drafts <= 0:
            return
        self._decay_all()
        k = min(self.max_k, len(num_draft_tokens_per_pos))
        prev_acc = num_drafts
        self.total_drafts += num_drafts
        acc, trials = [0] * self.max_k, [0] * self.max_k
        for i in range(k):
            dr = int(num_draft_tokens_per_pos[i])
            ac = int(num_accepted_tokens_per_pos[i]) if i < len(num_accepted_tokens_per_pos) else 0
            tr = min(prev_acc, dr)
            trials[i] = tr
            acc[i] = min(ac, tr)
            self.total_draft_tokens += dr
            self.total_accepted += ac
            self.total_draft_per_pos[i] += dr
            self.total_accepted_per_pos[i] += ac
            prev_acc = ac
        self._add(acc, trials, None)

    # ------------------------------------------------------------ estimates
    def depth_ratios(self) -> List[float]:
        """[1, alpha_2 / alpha_1, ...] over the long memory, each position shrunk toward the one
        before it with SHAPE_WEIGHT pseudo-trials (ratio 1 where a position was never drafted) and
        capped at 1: a deep position that only a handful of drafts reached would otherwise make a
        ratio of 2 from two lucky tokens, and with it a long draft look best."""
        shape = chained_alphas(self._shape_acc, self._shape_trials, self.prior, [1.0] * self.max_k, SHAPE_WEIGHT)
        return [1.0] + [min(1.0, b / a) if a > 0 else 1.0 for a, b in zip(shape, shape[1:])]

    def alphas(self, batch_size: Optional[int] = None) -> List[float]:
        """Pooled estimates, or those of `batch_size`'s class (see class_alphas)."""
        pooled = chained_alphas(self.acc, self.trials, self.prior, self.depth_ratios(), self.prior_weight)
        if batch_size is None or not self._by_class:
            return pooled
        return self.class_alphas(pooled, batch_class(batch_size))

    def class_alphas(self, pooled: Sequence[float], lowest: int) -> List[float]:
        """Estimates of class `lowest`: walking down from the largest observed class, each class is
        shrunk toward the one above it (the pooled estimate above them all), so a class with little
        data reads its neighbours' acceptance, not that of the crowded batches dominating the
        pooled counts; a class never observed reads the class above it."""
        est = list(pooled)
        for c in range(max(max(self._by_class), lowest), lowest - 1, -1):
            counts = self._by_class.get(c)
            if counts is not None:
                ratios = [1.0] + [b / a if a > 0 else 1.0 for a, b in zip(est, est[1:])]
                est = chained_alphas(counts[0], counts[1], est[0], ratios, self.class_weight)
        return est

    def expected_tokens(self, k: int, alphas: Optional[Sequence[float]] = None) -> float:
        return expected_tokens(alphas if alphas is not None else self.alphas(), min(k, self.max_k))

    def expected_table(self, batch_size: Optional[int] = None) -> List[float]:
        """[E[0], E[1], ..., E[max_k]], pooled or at `batch_size` (see alphas)."""
        al = self.alphas(batch_size)
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
