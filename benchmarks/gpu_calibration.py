"""Roofline constants of the GPU-scale simulator, fitted to a measured step-cost table.

    python -m benchmarks.gpu_calibration results/h200/gpu_verify_cost.json

``tools/gpu_verify_cost.py`` times target verification steps and EAGLE-3 draft passes at real
model shapes on a GPU. The simulator (``benchmarks/gpu_scale_sim.py``) prices a step as a
roofline: ``kernel_s + max(bytes / (bandwidth * e_bw), flops / (peak * e_fl))``. This module
fits ``e_bw``, ``e_fl`` and ``kernel_s`` (launch latency and the small kernels a roofline does
not see) to every measured target point, by least squares on log time (scipy), and the fixed
cost of a draft pass from the measured ``draft_next`` times given those efficiencies.

What the table cannot give stays an assumption of the simulator: the engine's own per-step
time (scheduling, sampling, input preparation; nothing of vLLM runs in the timing script).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.optimize import least_squares

# Dense bf16 peak FLOP/s (no sparsity) and HBM bandwidth in bytes/s, by the vendors' datasheets.
GPUS = {
    "H100-SXM": {"flops": 989e12, "bandwidth": 3.35e12},
    "H200": {"flops": 989e12, "bandwidth": 4.8e12},
}


@dataclasses.dataclass(frozen=True)
class Costs:
    """Step-cost constants of the simulator; the defaults are assumptions, not measurements."""

    bandwidth_efficiency: float = 0.8   # decode kernels reach most of HBM bandwidth
    flops_efficiency: float = 0.6       # large-token matmuls a bit over half of dense peak
    kernel_s: float = 0.0               # fixed kernel time per target step
    step_overhead_s: float = 3e-3       # engine per step: scheduling, sampling, CUDA-graph launch
    draft_overhead_s: float = 4e-4      # fixed cost per draft pass
    source: str = "assumed"
    fit: Optional[dict] = None          # residuals and point counts when fitted


def gpu_of(device_name: str) -> str:
    for key in ("H200", "H100"):
        if key in device_name:
            return "H200" if key == "H200" else "H100-SXM"
    raise ValueError(f"no peak figures for device {device_name!r}; known: {sorted(GPUS)}")


def roofline(bytes_: np.ndarray, flops: np.ndarray, gpu: dict, e_bw: float, e_fl: float) -> np.ndarray:
    return np.maximum(bytes_ / (gpu["bandwidth"] * e_bw), flops / (gpu["flops"] * e_fl))


def target_points(table: dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes, flops, seconds) of every measured target step, full depth."""
    rows = [(p["est_weight_gb"] * 1e9 + p["est_kv_gb"] * 1e9, p["est_tflop"] * 1e12, p["target_ms"] / 1e3)
            for m in table["models"] for p in m["points"]]
    if not rows:
        raise ValueError("the step-cost table holds no measured points")
    return tuple(np.array(c, dtype=float) for c in zip(*rows))


def draft_points(table: dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes, flops, seconds) of the measured later draft passes (one layer + draft lm_head)."""
    rows = []
    for m in table["models"]:
        s = m["shape"]
        d, h = s["head_dim"], s["hidden"]
        params = 2 * h * (s["q_heads"] + 2 * s["kv_heads"]) * d + s["q_heads"] * d * h \
            + 3 * h * s["intermediate"] + s["draft_vocab"] * h
        context = table["settings"]["context"]
        for r in m["draft_next"]:
            kv = r["batch"] * context * 2 * s["kv_heads"] * d * 2
            rows.append((2.0 * params + kv, 2.0 * params * r["batch"], r["draft_next_ms"] / 1e3))
    return tuple(np.array(c, dtype=float) for c in zip(*rows)) if rows else (None, None, None)


def fit(table: dict, step_overhead_s: float = Costs.step_overhead_s) -> Costs:
    if table.get("device", {}).get("type") != "cuda":
        raise ValueError("calibration needs a table measured on a GPU (device.type == 'cuda')")
    gpu = GPUS[gpu_of(table["device"]["name"])]
    b, f, t = target_points(table)

    def residual(x):
        e_bw, e_fl, kernel = np.exp(x)
        return np.log(kernel + roofline(b, f, gpu, e_bw, e_fl)) - np.log(t)

    sol = least_squares(residual, np.log([0.7, 0.6, 1e-4]), bounds=(np.log([0.05, 0.05, 1e-7]), np.log([1.0, 1.0, 0.05])))
    e_bw, e_fl, kernel = (float(v) for v in np.exp(sol.x))
    rel = np.abs(np.expm1(residual(sol.x)))
    db, df, dt = draft_points(table)
    draft = Costs.draft_overhead_s
    if dt is not None:
        draft = float(max(0.0, np.median(dt - roofline(db, df, gpu, e_bw, e_fl))))
    return Costs(bandwidth_efficiency=e_bw, flops_efficiency=e_fl, kernel_s=kernel, step_overhead_s=step_overhead_s,
                 draft_overhead_s=draft, source=f"fitted to {table['device']['name']} table",
                 fit={"points": int(t.size), "median_rel_error": float(np.median(rel)), "max_rel_error": float(rel.max()),
                      "draft_points": 0 if dt is None else int(dt.size)})


def load(path: str, step_overhead_s: float = Costs.step_overhead_s) -> Costs:
    with open(path) as fh:
        return fit(json.load(fh), step_overhead_s)


def main(argv: List[str]) -> Dict:
    costs = load(argv[0])
    out = dataclasses.asdict(costs)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
