"""Wall-time model of one engine step, fitted from measured steps (stdlib only).

One engine step verifies `tokens` target tokens for `requests` running requests and then
drafts `passes` draft forward passes over those requests (vLLM drafts the next step's K
inside the same step). We model::

    t = a + b*tokens + c*requests + e*max(0, tokens - knot)      # target forward + framework
        + passes * (d0 + d1*requests)                            # drafting

The hinge term captures the memory-bound -> compute-bound knee of the target: below the
knot extra verified tokens are nearly free (small b), above it they cost b + e each. The
knot is not a constant: it is picked from the observed token counts by the fit.

Robustness: observations are grouped into buckets (geometric buckets of tokens, exact
requests and passes); each bucket contributes its median time, weighted by sqrt(count), so
single slow steps (GC, another process) do not move the fit. After a first weighted
least-squares fit, buckets whose relative residual is beyond 3.5 median absolute
deviations are dropped and the fit is repeated. Coefficients other than the intercept are
kept >= 0 with a small active-set loop (a negative per-token cost is always an artefact of
noise or collinearity). A small ridge on standardised features keeps the solve defined
when features are collinear (e.g. K never varied, so tokens == requests*(1+K)); the planner
explores K to make the draft terms identifiable.

Nothing here is a hardware constant; everything comes from observations.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

FEATURES = ("intercept", "tokens", "requests", "hinge", "passes", "passes_x_requests")


@dataclass(frozen=True)
class StepObservation:
    tokens: int  # target tokens processed in the step (scheduled tokens incl. drafts verified)
    requests: int  # requests in the step
    passes: int  # draft forward passes run in the step (0 for no drafting)
    seconds: float  # measured wall time


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of empty sequence")
    m = n // 2
    return s[m] if n % 2 else 0.5 * (s[m - 1] + s[m])


def _solve(a: List[List[float]], b: List[float]) -> Optional[List[float]]:
    """Gaussian elimination with partial pivoting; None if singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-300:
            return None
        m[col], m[piv] = m[piv], m[col]
        p = m[col][col]
        for r in range(col + 1, n):
            f = m[r][col] / p
            if f:
                for c in range(col, n + 1):
                    m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        s = m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))
        x[r] = s / m[r][r]
    return x


def weighted_least_squares(
    rows: Sequence[Sequence[float]],
    y: Sequence[float],
    w: Sequence[float],
    ridge: float = 1e-6,
    nonneg: Sequence[int] = (),
) -> List[float]:
    """min sum w*(y - X beta)^2 + ridge*|scaled beta[1:]|^2, beta[j] >= 0 for j in nonneg.

    Column 0 must be the intercept. Columns are scaled by their RMS so the ridge is
    dimensionless. Columns that are identically zero get coefficient 0.
    """
    p = len(rows[0])
    scale = []
    for j in range(p):
        s = math.sqrt(sum(wi * r[j] * r[j] for r, wi in zip(rows, w)) / max(sum(w), 1e-300))
        scale.append(s if s > 0 else 0.0)
    active = [j for j in range(p) if scale[j] > 0]
    for _ in range(p + 1):
        k = len(active)
        xtx = [[0.0] * k for _ in range(k)]
        xty = [0.0] * k
        for r, yi, wi in zip(rows, y, w):
            z = [r[j] / scale[j] for j in active]
            for i in range(k):
                zi = wi * z[i]
                xty[i] += zi * yi
                row = xtx[i]
                for c in range(k):
                    row[c] += zi * z[c]
        tr = sum(xtx[i][i] for i in range(k)) / max(k, 1)
        for i, j in enumerate(active):
            if j != 0:
                xtx[i][i] += ridge * tr
        sol = _solve(xtx, xty)
        if sol is None:
            sol = [0.0] * k
        beta = [0.0] * p
        for i, j in enumerate(active):
            beta[j] = sol[i] / scale[j]
        neg = [j for j in active if j in nonneg and beta[j] < 0]
        if not neg:
            return beta
        worst = min(neg, key=lambda j: beta[j] * scale[j])
        active.remove(worst)
    return beta


class StepCostModel:
    """Online, robust step-time model. `observe()` every step, `fit()` when re-planning."""

    def __init__(self, window: int = 4096, min_buckets: int = 3, bucket_ratio: float = 1.08):
        self._obs: deque = deque(maxlen=window)
        self.min_buckets = min_buckets
        self._log_ratio = math.log(bucket_ratio)
        self.coef: Optional[List[float]] = None  # FEATURES order
        self.knot: float = 0.0
        self.n_fits = 0
        self.last_rejected = 0
        self._measured: dict = {}  # bucket key -> (median seconds, count), refreshed by fit()

    # ------------------------------------------------------------------ data
    def observe(self, tokens: int, requests: int, passes: int, seconds: float) -> None:
        if tokens <= 0 or requests <= 0 or not (seconds > 0) or math.isinf(seconds):
            return
        self._obs.append(StepObservation(int(tokens), int(requests), int(max(passes, 0)), float(seconds)))

    def observe_many(self, obs: Iterable[Tuple[int, int, int, float]]) -> None:
        for o in obs:
            self.observe(*o)

    def __len__(self) -> int:
        return len(self._obs)

    def _key(self, tokens: float, requests: float, passes: float) -> tuple:
        # Geometric buckets of tokens, and of requests above 16 (exact below): a GRPO rollout
        # visits every batch size, and one bucket per exact size would make fits slow.
        r = int(requests) if requests <= 16 else 1000 + int(round(math.log(requests) / self._log_ratio))
        return (int(round(math.log(tokens) / self._log_ratio)), r, int(passes))

    def buckets(self) -> List[Tuple[float, float, float, float, int]]:
        """(mean tokens, mean requests, passes, median seconds, count) per bucket."""
        groups: dict = {}
        for o in self._obs:
            groups.setdefault(self._key(o.tokens, o.requests, o.passes), []).append(o)
        out = []
        self._measured = {}
        for key, g in groups.items():
            toks = sum(o.tokens for o in g) / len(g)
            reqs = sum(o.requests for o in g) / len(g)
            med = _median([o.seconds for o in g])
            self._measured[key] = (med, len(g))
            out.append((toks, reqs, float(g[0].passes), med, len(g)))
        return out

    def measured(self, tokens: float, requests: float, passes: float) -> Optional[Tuple[float, int]]:
        """(median seconds, steps) of the bucket as of the last fit, or None if never seen."""
        return self._measured.get(self._key(tokens, requests, passes))

    # ------------------------------------------------------------------- fit
    @staticmethod
    def _row(tokens: float, requests: float, passes: float, knot: float) -> List[float]:
        return [1.0, tokens, requests, max(0.0, tokens - knot), passes, passes * requests]

    def fit(self) -> bool:
        """Re-fit from the window. Returns True if a model is available afterwards."""
        bk = self.buckets()
        if len(bk) < self.min_buckets:
            return self.coef is not None
        toks = sorted({b[0] for b in bk})
        best = None

        def consider(knot):
            nonlocal best
            coef, rejected, loss = self._fit_with_knot(bk, knot)
            # Mild preference for the simpler model (no knot) unless the knee really helps.
            score = loss * (1.0 if knot == float("inf") else 1.02)
            if best is None or score < best[0]:
                best = (score, coef, knot, rejected)

        # Knots at observed token levels strictly inside the range: a coarse grid, then every
        # level between the best coarse knot's neighbours (no knot = hinge unused).
        consider(float("inf"))
        inner = toks[1:-1] if len(toks) >= 4 else []
        if inner:
            step = max(1, len(inner) // 8)
            coarse = list(range(0, len(inner), step))
            for i in coarse:
                consider(inner[i])
            if math.isfinite(best[2]):
                j = inner.index(best[2])
                for i in range(max(0, j - step + 1), min(len(inner), j + step)):
                    if i != j:
                        consider(inner[i])
        _, self.coef, self.knot, self.last_rejected = best
        self.n_fits += 1
        return True

    def _fit_with_knot(self, bk, knot):
        kn = knot if math.isfinite(knot) else 1e300
        rows = [self._row(t, r, p, kn) for t, r, p, _, _ in bk]
        y = [s for _, _, _, s, _ in bk]
        w = [math.sqrt(c) / max(s, 1e-12) ** 2 for _, _, _, s, c in bk]  # relative error
        nonneg = (1, 2, 3, 4, 5)
        keep = list(range(len(bk)))
        rejected = 0
        for _ in range(2):
            beta = weighted_least_squares([rows[i] for i in keep], [y[i] for i in keep], [w[i] for i in keep], nonneg=nonneg)
            rel = [(y[i] - _dot(beta, rows[i])) / y[i] for i in range(len(bk))]
            med = _median([rel[i] for i in keep])
            mad = _median([abs(rel[i] - med) for i in keep]) * 1.4826
            if mad <= 0 or len(keep) <= len(FEATURES):
                break
            bad = sorted((i for i in keep if abs(rel[i] - med) > 3.5 * mad + 0.02), key=lambda i: -abs(rel[i] - med))
            bad = bad[: len(bk) // 4]  # never drop more than a quarter: a misfit is not noise
            if not bad or len(keep) - len(bad) < self.min_buckets:
                break
            rejected = len(bad)
            keep = [i for i in keep if i not in set(bad)]
        # Score on ALL buckets with a bounded loss, so knots are compared on the same data.
        rel = [abs(y[i] - _dot(beta, rows[i])) / y[i] for i in range(len(bk))]
        cw = [math.sqrt(c) for _, _, _, _, c in bk]
        loss = sum(wi * min(r, 0.5) for wi, r in zip(cw, rel)) / sum(cw)
        return beta, rejected, loss

    # ------------------------------------------------------------- predict
    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def target_time(self, tokens: float, requests: float) -> float:
        """Target forward + per-step framework time for `tokens` over `requests` (no drafting)."""
        c = self.coef
        if c is None:
            raise RuntimeError("cost model not fitted")
        kn = self.knot if math.isfinite(self.knot) else 1e300
        return c[0] + c[1] * tokens + c[2] * requests + c[3] * max(0.0, tokens - kn)

    def draft_time(self, passes: float, requests: float) -> float:
        c = self.coef
        if c is None:
            raise RuntimeError("cost model not fitted")
        return passes * (c[4] + c[5] * requests)

    def predict(self, tokens: float, requests: float, passes: float) -> float:
        return max(self.target_time(tokens, requests) + self.draft_time(passes, requests), 1e-9)

    def predict_local(self, tokens: float, requests: float, passes: float, prior_steps: float = 16.0) -> float:
        """The fitted model, pulled toward the bucket's measured median by its step count n:
        model * (median/model)**(n / (n + prior_steps)). A cell the engine has run for many steps
        is priced by what it measured, so a misfit of the global model (the step-time surface is
        not really linear) cannot keep steering choices the engine has tried; a cell seen a few
        times moves a little; unseen cells are priced by the model alone."""
        t = self.predict(tokens, requests, passes)
        m = self.measured(tokens, requests, passes)
        if m is None or m[0] <= 0:
            return t
        w = m[1] / (m[1] + prior_steps)
        return t * (m[0] / t) ** w

    def describe(self) -> dict:
        d = {"fitted": self.fitted, "observations": len(self._obs), "fits": self.n_fits, "rejected_buckets": self.last_rejected}
        if self.coef is not None:
            d.update({name: v for name, v in zip(FEATURES, self.coef)})
            d["knot"] = self.knot if math.isfinite(self.knot) else None
        return d


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b))
