"""Is a speculative GRPO run statistically the same as a plain one?

Inputs are veRL's own rollout dumps (``trainer.rollout_data_dir``: ``<step>.jsonl``, one line per
sample, with the per-sample log-probs of :mod:`verl_specrollout.testing.e2e.rollout_dump`) of two runs
with the same seeds, hence the same prompts at every step.

The test: a stratified permutation test (the exact conditional version of the
Cochran-Mantel-Haenszel test for binary rewards).
H0: for every prompt (stratum) the responses of both runs are i.i.d. draws from one
distribution. At step 1 this is exactly what losslessness means: both runs start from the same
weights, so the policy is the same and speculative decoding must not change what it samples.
Under H0 the arm labels are exchangeable within a stratum, so re-assigning them at random
(keeping each stratum's count per arm) gives the exact null distribution of any statistic.
Statistic: for each compared quantity k (reward, mean log-prob per token, length, ... , per step)
the difference of the two arms' means, Delta_k, studentized by its permutation standard deviation:
z_k = Delta_k / sd_k; the test statistic is M = max_k |z_k|, with the same permutation applied to
all quantities measured on the same samples (a block), independent permutations for disjoint
blocks (different steps). p = (1 + #{M_perm >= M_obs}) / (1 + n_perm), which satisfies
P(p <= alpha) <= alpha under H0 for every sample size: the false-alarm rate is at most alpha for
the whole family of quantities at once (no normal approximation, no Bonferroni needed).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


def load_rollouts(rollout_dir: str | os.PathLike) -> dict[int, list[dict]]:
    """``{step: [sample, ...]}`` from veRL's ``<rollout_data_dir>/<step>.jsonl`` files."""
    out: dict[int, list[dict]] = {}
    for name in os.listdir(rollout_dir):
        stem, ext = os.path.splitext(name)
        if ext == ".jsonl" and stem.isdigit():
            with open(os.path.join(rollout_dir, name)) as f:
                out[int(stem)] = [json.loads(line) for line in f if line.strip()]
    return dict(sorted(out.items()))


@dataclass
class Block:
    """Quantities measured on one set of samples (one step): one permutation for all of them."""

    name: str
    strata_a: list
    xa: np.ndarray  # [n_a, K]
    strata_b: list
    xb: np.ndarray  # [n_b, K]
    cols: list[str]

    @classmethod
    def from_rows(cls, name: str, rows_a: list[dict], rows_b: list[dict], cols: list[str], stratum: str = "input"):
        def arr(rows):
            return np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float64).reshape(len(rows), len(cols))

        return cls(name, [r[stratum] for r in rows_a], arr(rows_a), [r[stratum] for r in rows_b], arr(rows_b), list(cols))


@dataclass
class PermResult:
    p_value: float
    max_z: float
    n_perm: int
    rows: list[dict] = field(default_factory=list)  # per quantity: block, col, mean_a, mean_b, delta, sd, z
    null_max: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # max|z| per permutation

    def critical(self, alpha: float) -> float:
        """c with P(max|z| >= c) ~ alpha under H0: quantity k "agrees" iff |delta_k| < c * sd_k."""
        return float(np.quantile(self.null_max, 1.0 - alpha)) if len(self.null_max) else float("inf")

    def table(self, alpha: float | None = None) -> str:
        """One line per quantity (arm a = spec, arm b = plain); with alpha, the tolerance c * sd."""
        c = self.critical(alpha) if alpha else None
        lines = [f"{'quantity':<34}{'spec':>10}{'plain':>10}{'delta':>10}{'perm sd':>10}{'z':>7}"
                 + (f"{'+-tol':>10}" if c else "")]
        for r in self.rows:
            lines.append(f"{r['block'] + '/' + r['col']:<34}{r['mean_a']:>10.4f}{r['mean_b']:>10.4f}"
                         f"{r['delta']:>10.4f}{r['sd']:>10.4f}{r['z']:>7.2f}" + (f"{c * r['sd']:>10.4f}" if c else ""))
        lines.append(f"max|z| = {self.max_z:.2f}, permutation p = {self.p_value:.2g} ({self.n_perm} permutations)"
                     + (f"; critical max|z| at alpha={alpha:g}: {c:.2f}" if c else ""))
        return "\n".join(lines)


def _block_null(block: Block, n_perm: int, rng: np.random.Generator):
    """Observed Delta [K] and its permutation distribution [n_perm, K] (labels shuffled per stratum)."""
    by = defaultdict(lambda: ([], []))
    for s, x in zip(block.strata_a, block.xa):
        by[s][0].append(x)
    for s, x in zip(block.strata_b, block.xb):
        by[s][1].append(x)
    n_a, n_b = len(block.xa), len(block.xb)
    k = len(block.cols)
    sum_a_perm = np.zeros((n_perm, k))
    for xs_a, xs_b in by.values():
        v = np.array(xs_a + xs_b, dtype=np.float64).reshape(-1, k)
        m, m_a = len(v), len(xs_a)
        if m_a == 0 or m_a == m:
            sum_a_perm += v[:m_a].sum(0)
            continue
        idx = np.argsort(rng.random((n_perm, m)), axis=1)[:, :m_a]  # a random m_a-subset per permutation
        sum_a_perm += v[idx].sum(1)
    total = block.xa.sum(0) + block.xb.sum(0)
    obs = block.xa.mean(0) - block.xb.mean(0)
    perm = sum_a_perm / n_a - (total - sum_a_perm) / n_b
    return obs, perm


def perm_max_test(blocks: list[Block], n_perm: int = 20000, seed: int = 0) -> PermResult:
    """Stratified permutation test of "arm a and arm b sample the same", max-|z| over all quantities."""
    # Not scipy.stats.permutation_test: it cannot keep permutations within strata, and max|z| needs each z_k scaled by its own permutation sd.
    rng = np.random.default_rng(seed)
    max_obs, max_perm, rows = 0.0, np.zeros(n_perm), []
    for b in blocks:
        obs, perm = _block_null(b, n_perm, rng)
        sd = perm.std(0)
        # A quantity that no permutation can change (e.g. every reward 0 in both arms) has
        # sd = 0 and Delta = 0: it carries no evidence and is left out of the max.
        ok = sd > 1e-12
        z_obs = np.where(ok, obs / np.where(ok, sd, 1.0), 0.0)
        z_perm = np.where(ok, perm / np.where(ok, sd, 1.0), 0.0)
        max_obs = max(max_obs, float(np.abs(z_obs).max(initial=0.0)))
        max_perm = np.maximum(max_perm, np.abs(z_perm).max(1, initial=0.0))
        for j, c in enumerate(b.cols):
            rows.append(dict(block=b.name, col=c, mean_a=float(b.xa[:, j].mean()), mean_b=float(b.xb[:, j].mean()),
                             delta=float(obs[j]), sd=float(sd[j]), z=float(z_obs[j])))
    p = (1.0 + float((max_perm >= max_obs - 1e-12).sum())) / (1.0 + n_perm)
    return PermResult(p_value=p, max_z=max_obs, n_perm=n_perm, rows=rows, null_max=max_perm)


def token_weighted_mean(rows: list[dict], key: str) -> float:
    """Mean over all response tokens of a per-sample per-token mean (weights: response_tokens)."""
    w = np.array([r["response_tokens"] for r in rows], dtype=np.float64)
    v = np.array([r[key] for r in rows], dtype=np.float64)
    return float((w * v).sum() / max(w.sum(), 1.0))


def plant_shift(samples: np.ndarray, p: np.ndarray, tv: float, rng: np.random.Generator) -> np.ndarray:
    """Samples of x ~ p turned into samples of a distribution exactly `tv` away from p in total
    variation: each sample becomes p's second most likely token with probability c = tv / (1 - p_j),
    so the result follows (1 - c) p + c delta_j. A check that passes on real engine samples must fail
    on these (the planted-bias control of tests/integration/test_lossless_cpu.py)."""
    p = np.asarray(p, dtype=np.float64)
    j = int(np.argsort(p)[-2])
    c = tv / (1.0 - p[j])
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"cannot move {tv} of total variation onto a token of probability {p[j]:.3f}")
    out = np.array(samples, copy=True)
    out[rng.random(out.shape) < c] = j
    return out
