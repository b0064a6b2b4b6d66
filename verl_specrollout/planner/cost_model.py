"""Wall-time model of one engine step, fitted from measured steps.

One engine step verifies `tokens` target tokens for `requests` running requests and then
drafts `passes` draft forward passes over those requests (vLLM drafts the next step's K
inside the same step). We model::

    t = a + b*tokens + g*sqrt(tokens) + c*requests + e*max(0, tokens - knot)   # target + framework
        + passes * (d0 + d1*requests)                                         # drafting

The hinge term captures the memory-bound -> compute-bound knee of the target (a GPU): below the
knot extra verified tokens are nearly free (small b), above it they cost b + e each. The
knot is not a constant: it is picked from the observed token counts by the fit. The sqrt term
captures the opposite shape, a surface whose cost per token falls as a step grows (a CPU, where
batching amortises per-step work: 14, 15, 19, 41, 71 ms for 1, 2, 4, 16, 64 tokens on the medium
testbed). A linear fit of such a surface, dominated by the large steps, prices the extra tokens
of a longer draft at small batches at the large batches' marginal cost (a third of the real one
there) and its intercept far above the small steps' time, which made K = 3-4 look best at B <= 4
where K = 1 was (tests/unit/test_planner_hindsight.py, the CPU-shaped regime).

Robustness: observations are grouped into buckets (geometric buckets of tokens and of
requests above 16, exact passes); each bucket contributes its median time, weighted by
sqrt(count), so single slow steps (GC, another process) do not move the fit. After a first weighted
least-squares fit, buckets whose relative residual is beyond 3.5 median absolute
deviations are dropped and the fit is repeated. Coefficients other than the intercept are
kept >= 0 (a negative per-token cost is always an artefact of noise or collinearity) by
solving the bounded problem exactly (scipy's nnls). A small ridge on standardised features
keeps the solve defined when features are collinear (e.g. K never varied, so
tokens == requests*(1+K)); the planner explores K to make the draft terms identifiable, and a fit
over a window that holds one K only keeps the previous coefficients.

Nothing here is a hardware constant; everything comes from observations. Numpy and scipy
only: this module runs inside vLLM's scheduler and must not import torch or vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls

FEATURES = ("intercept", "tokens", "requests", "hinge", "passes", "passes_x_requests", "sqrt_tokens")
NONNEG_FEATURES = np.array([False, True, True, True, True, True, True])  # all but the intercept
# Ridge per feature (standardised). The per-pass constant gets a stronger one: when K has varied
# only over a narrow range of batch sizes (a cold start at B ~ 1000), a draft pass's constant and
# the per-token cost of verifying its token are nearly collinear (K vs K*B), and any non-linearity
# of the real surface can land on the constant, pricing a draft pass like a whole large step at
# every batch size. Attributing what the data cannot split to per-token cost errs toward long
# drafts at small batches, where trying them is cheap and corrects the model; the other way round
# locks the planner at K = 0 where it never measures. Data that do separate the two (K varied at
# small and large B) outweigh the penalty.
RIDGE = np.array([0.0, 1e-6, 1e-6, 1e-6, 1e-2, 1e-6, 1e-6])

# Batch sizes up to this many requests get a bucket each; above it, geometric buckets.
EXACT_REQUESTS = 16
# Bucket keys are packed into one int64: token bin, request bin, passes, 16 bits each.
_KEY_BITS = 16


def weighted_least_squares(
    design: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    ridge: float = 1e-6,
    nonneg: np.ndarray = NONNEG_FEATURES,
) -> np.ndarray:
    """min sum w*(y - X beta)^2 + ridge*sum(w)*|scaled beta[1:]|^2, beta[j] >= 0 where nonneg[j].

    Column 0 must be the intercept (never penalised). Columns are scaled by their weighted RMS,
    so each scaled column has weighted sum of squares sum(w) and the ridge is dimensionless.
    Columns that are identically zero (e.g. the hinge when there is no knot) get coefficient 0.
    """
    design = np.asarray(design, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    total_weight = max(float(weights.sum()), 1e-300)
    scale = np.sqrt(weights @ design**2 / total_weight)
    used = scale > 0
    scaled = design[:, used] / scale[used]
    # Weighted rows, then one ridge row per penalised column: an ordinary bounded least squares.
    root_w = np.sqrt(weights)
    penalised = np.flatnonzero(used) != 0
    ridge_used = np.broadcast_to(np.asarray(ridge, dtype=np.float64), design.shape[1:])[used][penalised]
    ridge_rows = (np.sqrt(ridge_used * total_weight)[:, None] * np.eye(scaled.shape[1])[penalised])
    lhs = np.vstack([scaled * root_w[:, None], ridge_rows])
    rhs = np.concatenate([y * root_w, np.zeros(len(ridge_rows))])
    bounded = nonneg[used]
    solution = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    if (solution[bounded] < 0).any():
        # A bound binds: solve the bounded problem exactly, as non-negative least squares (scipy's
        # Lawson-Hanson nnls; several times faster than lsq_linear's BVLS, and a re-plan runs one
        # per knot tried) with each free column split into a positive and a negative part.
        free = np.flatnonzero(~bounded)
        split = nnls(np.hstack([lhs, -lhs[:, free]]), rhs, maxiter=50 * lhs.shape[1])[0]
        solution = split[: lhs.shape[1]]
        solution[free] -= split[lhs.shape[1]:]
    beta = np.zeros(design.shape[1])
    beta[used] = solution / scale[used]
    return beta


def design_matrix(tokens, requests, passes, knot: float) -> np.ndarray:
    """One row of FEATURES per step (or bucket); knot = inf leaves the hinge column at zero."""
    tokens, requests, passes = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (tokens, requests, passes)))
    return np.stack([np.ones_like(tokens), tokens, requests, np.maximum(0.0, tokens - knot),
                     passes, passes * requests, np.sqrt(tokens)], axis=-1)


@dataclass
class Buckets:
    """Observations grouped by (token bin, request bin, passes): one row per bucket."""

    keys: np.ndarray  # packed bucket keys, sorted
    tokens: np.ndarray  # mean tokens
    requests: np.ndarray  # mean requests
    passes: np.ndarray
    seconds: np.ndarray  # median wall time
    counts: np.ndarray  # steps in the bucket

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> "Buckets":
        return cls(np.zeros(0, dtype=np.int64), *(np.zeros(0) for _ in range(4)), np.zeros(0, dtype=np.int64))


class StepCostModel:
    """Online, robust step-time model. `observe()` every step, `fit()` when re-planning."""

    def __init__(self, window: int = 4096, min_buckets: int = 2, bucket_ratio: float = 1.08):
        # Two buckets at two K are enough to start: at one batch size they price the change of K,
        # and cells the engine ran are priced by their measured medians (predict_local); the
        # planner refits as more batch sizes and K come in.
        # Ring buffer of (tokens, requests, passes, seconds): the newest `window` steps.
        self._window = np.zeros((window, 4))
        self._next = 0
        self._filled = 0
        self.min_buckets = min_buckets
        self._log_ratio = math.log(bucket_ratio)
        self.coef: Optional[List[float]] = None  # FEATURES order
        self.knot: float = 0.0
        self.n_fits = 0
        self.last_rejected = 0
        self.k_varied = False  # whether the last fit's window held steps at two or more K
        # The window's buckets as of the last fit, for pricing cells by their measurements.
        self._measured = Buckets.empty()
        self._measured_by_key: dict = {}

    # ------------------------------------------------------------------ data
    def observe(self, tokens: int, requests: int, passes: int, seconds: float) -> None:
        if tokens <= 0 or requests <= 0 or not (seconds > 0) or math.isinf(seconds):
            return
        self._window[self._next] = (int(tokens), int(requests), int(max(passes, 0)), float(seconds))
        self._next = (self._next + 1) % len(self._window)
        self._filled = min(self._filled + 1, len(self._window))

    def observe_many(self, obs: Iterable[Tuple[int, int, int, float]]) -> None:
        for o in obs:
            self.observe(*o)

    def __len__(self) -> int:
        return self._filled

    # Geometric buckets of tokens, and of requests above EXACT_REQUESTS (exact below): a GRPO
    # rollout visits every batch size, and one bucket per exact size would make fits slow.
    # _key prices one cell per engine step in plain Python (numpy's per-call overhead would be
    # ten times the arithmetic); _keys is the same binning over arrays, for fits and plans.
    def _key(self, tokens: float, requests: float, passes: float) -> int:
        token_bin = int(round(math.log(tokens) / self._log_ratio))
        request_bin = int(requests) if requests <= EXACT_REQUESTS else 1000 + int(round(math.log(requests) / self._log_ratio))
        return (token_bin << 2 * _KEY_BITS) | (request_bin << _KEY_BITS) | int(passes)

    def _keys(self, tokens, requests, passes) -> np.ndarray:
        tokens, requests = np.asarray(tokens, dtype=np.float64), np.asarray(requests, dtype=np.float64)
        token_bin = np.rint(np.log(tokens) / self._log_ratio).astype(np.int64)
        geometric = 1000 + np.rint(np.log(np.maximum(requests, 1.0)) / self._log_ratio).astype(np.int64)
        request_bin = np.where(requests <= EXACT_REQUESTS, np.trunc(requests).astype(np.int64), geometric)
        passes_bin = np.trunc(np.asarray(passes, dtype=np.float64)).astype(np.int64)
        return (token_bin << 2 * _KEY_BITS) | (request_bin << _KEY_BITS) | passes_bin

    def _group(self, rows: np.ndarray) -> Buckets:
        if not len(rows):
            return Buckets.empty()
        tokens, requests, passes, seconds = rows.T
        keys, group, counts = np.unique(self._keys(tokens, requests, passes), return_inverse=True, return_counts=True)
        group, bucket = group.reshape(-1), np.arange(len(keys))
        return Buckets(
            keys=keys,
            tokens=ndimage.mean(tokens, group, bucket),
            requests=ndimage.mean(requests, group, bucket),
            passes=ndimage.mean(passes, group, bucket),  # one value per bucket
            seconds=ndimage.median(seconds, group, bucket),
            counts=counts,
        )

    def buckets(self) -> Buckets:
        """The window grouped into buckets; also what `measured()` answers from until the next call."""
        self._measured = self._group(self._window[: self._filled])
        known = self._measured
        self._measured_by_key = dict(zip(known.keys.tolist(), zip(known.seconds.tolist(), known.counts.tolist())))
        return known

    def measured(self, tokens: float, requests: float, passes: float) -> Optional[Tuple[float, int]]:
        """(median seconds, steps) of the bucket as of the last fit, or None if never seen."""
        return self._measured_by_key.get(self._key(tokens, requests, passes)) if tokens > 0 else None

    def measured_many(self, tokens, requests, passes) -> Tuple[np.ndarray, np.ndarray]:
        """measured() over arrays: (median seconds, steps) per cell, both 0 where never seen."""
        known = self._measured
        keys = self._keys(tokens, requests, passes)
        if not len(known):
            return np.zeros(keys.shape), np.zeros(keys.shape, dtype=np.int64)
        at = np.minimum(np.searchsorted(known.keys, keys), len(known) - 1)
        seen = known.keys[at] == keys
        return np.where(seen, known.seconds[at], 0.0), np.where(seen, known.counts[at], 0)

    # ------------------------------------------------------------------- fit
    def fit(self) -> bool:
        """Re-fit from the window. Returns True if a model is available afterwards."""
        buckets = self.buckets()
        if len(buckets) < self.min_buckets:
            return self.coef is not None
        self.k_varied = self.k_varies(buckets)
        if self.coef is not None and not self.k_varied:
            # One K in the whole window (e.g. a long run at one batch size): drafting and
            # verification cannot be told apart, so keep what was learnt when K varied.
            return True
        best = None

        def consider(knot):
            nonlocal best
            coef, rejected, loss = self._fit_with_knot(buckets, knot)
            # Mild preference for the simpler model (no knot) unless the knee really helps.
            score = loss * (1.0 if knot == float("inf") else 1.02)
            if best is None or score < best[0]:
                best = (score, coef, knot, rejected)

        # Knots at observed token levels strictly inside the range: a coarse grid, then every
        # level between the best coarse knot's neighbours (no knot = hinge unused).
        consider(float("inf"))
        token_levels = np.unique(buckets.tokens)
        inner = token_levels[1:-1].tolist() if len(token_levels) >= 4 else []
        if inner:
            step = max(1, len(inner) // 8)
            for i in range(0, len(inner), step):
                consider(inner[i])
            if math.isfinite(best[2]):
                j = inner.index(best[2])
                for i in range(max(0, j - step + 1), min(len(inner), j + step)):
                    if i != j:
                        consider(inner[i])
        _, coef, self.knot, self.last_rejected = best
        self.coef = coef.tolist()
        self.n_fits += 1
        return True

    @staticmethod
    def k_varies(buckets: Buckets) -> bool:
        """Whether the buckets hold steps at two or more draft lengths (tokens per request or passes)."""
        per_request = np.rint(buckets.tokens / np.maximum(buckets.requests, 1.0))
        return len(np.unique(per_request)) > 1 or len(np.unique(buckets.passes)) > 1

    def _fit_with_knot(self, buckets: Buckets, knot: float) -> Tuple[np.ndarray, int, float]:
        """(coefficients, buckets rejected as outliers, bounded loss on all buckets) for one knot."""
        design = design_matrix(buckets.tokens, buckets.requests, buckets.passes, knot)
        seconds = buckets.seconds
        count_weight = np.sqrt(buckets.counts)
        weights = count_weight / np.maximum(seconds, 1e-12) ** 2  # fit relative errors
        coef = weighted_least_squares(design, seconds, weights, ridge=RIDGE)
        outliers = self._outliers((seconds - design @ coef) / seconds)
        if len(outliers):
            keep = np.ones(len(buckets), dtype=bool)
            keep[outliers] = False
            coef = weighted_least_squares(design[keep], seconds[keep], weights[keep], ridge=RIDGE)
        # Score on ALL buckets with a bounded loss, so knots are compared on the same data.
        relative_error = np.abs(seconds - design @ coef) / seconds
        loss = float((count_weight * np.minimum(relative_error, 0.5)).sum() / count_weight.sum())
        return coef, len(outliers), loss

    def _outliers(self, relative_residual: np.ndarray) -> np.ndarray:
        """Indices of buckets beyond 3.5 median absolute deviations (+2 %), worst first; none when
        there are too few buckets to tell, or dropping them would leave too few to fit."""
        center = np.median(relative_residual)
        deviation = np.abs(relative_residual - center)
        spread = np.median(deviation) * 1.4826  # MAD scaled to a normal sd
        if spread <= 0 or len(relative_residual) <= len(FEATURES):
            return np.zeros(0, dtype=np.int64)
        candidates = np.flatnonzero(deviation > 3.5 * spread + 0.02)
        worst_first = candidates[np.argsort(-deviation[candidates], kind="stable")]
        bad = worst_first[: len(relative_residual) // 4]  # never drop more than a quarter: a misfit is not noise
        if len(relative_residual) - len(bad) < self.min_buckets:
            return np.zeros(0, dtype=np.int64)
        return bad

    # ------------------------------------------------------------- predict
    # Scalars or arrays (broadcast together): the scheduler prices one cell per step, the
    # planner a whole grid at once.
    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def _coef(self) -> List[float]:
        if self.coef is None:
            raise RuntimeError("cost model not fitted")
        return self.coef

    def target_time(self, tokens, requests):
        """Target forward + per-step framework time for `tokens` over `requests` (no drafting)."""
        c = self._coef()
        return (c[0] + c[1] * tokens + c[2] * requests + c[3] * _at_least(tokens - self.knot, 0.0)
                + c[6] * np.sqrt(tokens))

    def draft_time(self, passes, requests):
        c = self._coef()
        return passes * (c[4] + c[5] * requests)

    def predict(self, tokens, requests, passes):
        return _at_least(self.target_time(tokens, requests) + self.draft_time(passes, requests), 1e-9)

    def predict_local(self, tokens, requests, passes, prior_steps: float = 16.0):
        """The fitted model, pulled toward the bucket's measured median by its step count n:
        model * (median/model)**(n / (n + prior_steps)). A cell the engine has run for many steps
        is priced by what it measured, so a misfit of the global model (the step-time surface is
        not really linear) cannot keep steering choices the engine has tried; a cell seen a few
        times moves a little; unseen cells (n = 0) are priced by the model alone."""
        model = self.predict(tokens, requests, passes)
        if isinstance(model, np.ndarray):
            median, steps = self.measured_many(tokens, requests, passes)
        else:
            median, steps = self.measured(tokens, requests, passes) or (0.0, 0)
        return model * (median / model) ** (steps / (steps + prior_steps))

    def describe(self) -> dict:
        d = {"fitted": self.fitted, "observations": len(self), "fits": self.n_fits, "rejected_buckets": self.last_rejected}
        if self.coef is not None:
            d.update(zip(FEATURES, self.coef))
            d["knot"] = self.knot if math.isfinite(self.knot) else None
        return d


def _at_least(x, floor: float):
    return np.maximum(x, floor) if isinstance(x, np.ndarray) else max(x, floor)
