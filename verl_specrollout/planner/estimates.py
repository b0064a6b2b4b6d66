"""What the planner knows, measured online (numpy; no torch / vLLM imports): acceptance by batch-size
class (planner/acceptance.py), the step-cost model (planner/cost_model.py), and where steps were timed,
per (batch-size class, K). The planner (planner/planner.py) feeds it each engine step; the decision
(planner/decision.py) reads it through `expected_by_batch` and `trusted_max_k`.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from verl_specrollout.planner.acceptance import AcceptanceEstimator, batch_class
from verl_specrollout.planner.cost_model import StepCostModel
from verl_specrollout.planner.decision import cold_cap, draft_passes, throughput


class Estimates:
    def __init__(self, max_k: int, acceptance: AcceptanceEstimator, cost: StepCostModel, zero_k_passes: int,
                 min_probe_steps: int, cold_tokens: int):
        self.max_k = max_k
        self.acceptance = acceptance
        self.cost = cost
        # Draft passes of a K = 0 step: 1 for a model drafter that keeps its KV cache in sync, 0 for
        # ngram or with vllm_adapter/k0_skip.py (the scheduler changes it when the skip is switched).
        self.zero_k_passes = zero_k_passes
        # A (class, K) cell counts as timed after this many steps (trust region, coverage probes).
        self.min_probe_steps = min_probe_steps
        self.cold_tokens = cold_tokens
        self.timed: Dict[Tuple[int, int], int] = {}  # timed steps per (batch-size class, K)
        self.max_tokens_timed = 0  # the most tokens a timed step verified

    def passes_for(self, k: int) -> int:
        return draft_passes(k, self.zero_k_passes)

    def observe_cost(self, requests: int, tokens: int, drafted_k: int, seconds: float) -> bool:
        """One step's wall time; True when it was a valid timing (counted as a timed cell)."""
        valid = tokens > 0 and seconds is not None and 0 < seconds < float("inf")
        if valid:
            key = (batch_class(requests), int(drafted_k))
            self.timed[key] = self.timed.get(key, 0) + 1
            self.max_tokens_timed = max(self.max_tokens_timed, int(tokens))
        self.cost.observe(tokens, requests, self.passes_for(drafted_k), seconds)
        return valid

    def untimed(self, batch_size: int, k: int) -> bool:
        """K has not been timed (min_probe_steps steps) in the batch size's class."""
        return self.timed.get((batch_class(batch_size), k), 0) < self.min_probe_steps

    def trusted_max_k(self, batch_sizes: Sequence[int]) -> np.ndarray:
        """Largest K the plan may choose at each batch size: the largest K timed (for at least
        min_probe_steps steps) in its batch-size class or the class above it (a rollout's batch
        falls: that class ran just before), and at least the cold cap. A K beyond is priced by
        extrapolating the cost model in K, which a knee it has not seen makes wrong by multiples
        (e.g. K = 2 at B = 128 past a 256-token knee, after seeing K = 0 and 1 there); probes,
        gated by their predicted loss, extend the region one K at a time."""
        top: Dict[int, int] = {}
        for (c, k), n in self.timed.items():
            if n >= self.min_probe_steps:
                top[c] = max(top.get(c, -1), k)
        out = []
        for b, cap in zip(batch_sizes, cold_cap(np.asarray(batch_sizes), self.cold_tokens).tolist()):
            c = batch_class(int(b))
            out.append(min(self.max_k, max(cap, top.get(c, -1), top.get(c + 1, -1))))
        return np.asarray(out)

    def expected_by_batch(self, batch_sizes: Sequence[int]) -> np.ndarray:
        """E[0..max_k] at each batch size (rows), from its batch-size class's acceptance."""
        by_class: Dict[int, List[float]] = {}
        rows = []
        for b in batch_sizes:
            c = batch_class(int(b))
            if c not in by_class:
                by_class[c] = self.acceptance.expected_table(int(b))
            rows.append(by_class[c])
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), self.max_k + 1)

    def min_token_gain(self, b: int, k: int) -> float:
        """Expected tokens one extra verified draft token must bring to pay for itself at
        batch size b and draft length k: marginal step cost of a token x current throughput."""
        if not self.cost.fitted:
            return 0.0
        tokens, passes = b * (1 + k), self.passes_for(k)
        seconds_per_token = self.cost.predict(tokens + 1, b, passes) - self.cost.predict(tokens, b, passes)
        tokens_per_second = throughput(b, k, self.acceptance.expected_table(b), self.cost, self.zero_k_passes)
        return max(0.0, seconds_per_token * tokens_per_second)
