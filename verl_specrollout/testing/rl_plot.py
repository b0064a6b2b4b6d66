"""What an RL user watches over training, from veRL's per-step metrics log: acceptance length, K and
draft version per step, and the rollout time of the speculative run over the plain one's.

The logs are what veRL's ``file`` tracking backend writes (``trainer.logger=[console,file]``, path
from ``VERL_FILE_LOGGER_PATH``; ``testing/e2e/grpo_cpu.py`` sets ``<run dir>/metrics.jsonl``): one
JSON object ``{"step": s, "data": {...}}`` per training step. CLI: ``tools/plot_rl_metrics.py``.
"""

from __future__ import annotations

import math
import os
from typing import Optional

# The logged names (docs/how-it-works.md, verl_specrollout/metrics.py). veRL's own per-request
# counter stands in for ours where a run logged only that one.
ACCEPTANCE_KEYS = ("specrollout/mean_acceptance_length", "rollout/spec_accept_length")
K_KEY = "specrollout/mean_k"
VERSION_KEY = "specrollout/draft_version"
ROLLOUT_S_KEY = "timing_s/gen"


def metrics_path(path: str) -> str:
    """A run directory (``<dir>/metrics.jsonl``) or the JSONL file itself."""
    p = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    if not os.path.exists(p):
        raise FileNotFoundError(f"no veRL metrics log at {p} (veRL's file logger: trainer.logger=[console,file], "
                                "VERL_FILE_LOGGER_PATH)")
    return p


def read_steps(path: str) -> list:
    """Per-step dicts ``{"step": s, <metric>: value}``, sorted by step; a torn last line (a run still
    writing) is skipped."""
    import json

    steps = []
    with open(metrics_path(path)) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            steps.append({"step": int(rec["step"]), **rec.get("data", {})})
    return sorted(steps, key=lambda s: s["step"])


def series(steps: list, keys) -> tuple:
    """(steps, values) of the first key in ``keys`` each step logged; steps without one are left out."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    xs, ys = [], []
    for s in steps:
        v = next((s[k] for k in keys if isinstance(s.get(k), (int, float)) and not math.isnan(s[k])), None)
        if v is not None:
            xs.append(s["step"])
            ys.append(float(v))
    return xs, ys


def rollout_ratio(spec_steps: list, plain_steps: Optional[list]) -> tuple:
    """(steps, spec rollout seconds / plain's) over the steps both runs logged. Step 1 is left out when
    later ones exist: it carries Ray and vLLM start-up, which is no property of either rollout."""
    if not plain_steps:
        return [], []
    plain = dict(zip(*series(plain_steps, ROLLOUT_S_KEY)))
    xs, ys = [], []
    for x, y in zip(*series(spec_steps, ROLLOUT_S_KEY)):
        if plain.get(x):
            xs.append(x)
            ys.append(y / plain[x])
    if len(xs) > 1 and xs[0] == 1:
        xs, ys = xs[1:], ys[1:]
    return xs, ys


def plot(spec_steps: list, plain_steps: Optional[list], path: str, title: str = "") -> str:
    """Four panels over RL steps: acceptance length, mean K, draft version (speculative run; plain
    decoding is 1 token per step, K = 0, no draft), and the rollout time of the speculative run over
    the plain run's (step 1, start-up, left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not spec_steps:
        raise ValueError("no steps in the speculative run's metrics log")
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.6), sharex=True)
    (acc, k), (ver, roll) = axes
    plain_steps = plain_steps or []
    xs_all = [s["step"] for s in spec_steps + plain_steps]

    def panel(ax, keys, ylabel, plain_value, style):
        xs, ys = series(spec_steps, keys)
        ax.plot(xs, ys, style, color="tab:red", label="speculative")
        if plain_value is not None and xs_all:
            ax.axhline(plain_value, color="k", lw=1, ls="--", label=f"plain ({plain_value:g})")
        ax.set_ylabel(ylabel)
        if not xs:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="gray")

    panel(acc, ACCEPTANCE_KEYS, "mean acceptance length", 1, "o-")
    acc.legend(fontsize=8)
    panel(k, K_KEY, "mean K drafted", 0, "o-")
    panel(ver, VERSION_KEY, "draft version in the rollout", None, "s-")
    ver.yaxis.get_major_locator().set_params(integer=True)
    xs, ratio = rollout_ratio(spec_steps, plain_steps)
    if xs:
        roll.plot(xs, ratio, "r-o", label="speculative / plain")
        roll.axhline(1.0, color="k", lw=1, ls="--", label="plain")
        roll.set_ylabel("rollout time, spec / plain")
        roll.set_ylim(min(0.5, 0.9 * min(ratio)), max(1.5, 1.1 * max(ratio)))  # no zoom into noise
        roll.legend(fontsize=8)
    else:  # no plain run to compare with: the speculative run's own seconds
        xs, ys = series(spec_steps, ROLLOUT_S_KEY)
        roll.plot(xs, ys, "r-o")
        roll.set_ylabel("rollout seconds per step")
    for ax in (ver, roll):
        ax.set_xlabel("RL step")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or "veRL GRPO: speculative rollout vs plain", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
