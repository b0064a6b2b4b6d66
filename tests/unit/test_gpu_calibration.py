"""benchmarks/gpu_calibration.py: the roofline fit recovers known constants and refuses CPU tables."""

import copy
import json
import os

import numpy as np
import pytest

from benchmarks import gpu_calibration as cal
from benchmarks.gpu_scale_sim import MODELS, Hardware

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H200_TABLE = os.path.join(REPO, "benchmarks", "calibration", "h200.json")


def synthetic_table(e_bw=0.55, e_fl=0.45, kernel=1.2e-3, draft_fixed=3e-5):
    """A table in the measured schema whose times follow a known roofline exactly."""
    with open(H200_TABLE) as fh:
        table = json.load(fh)
    table = copy.deepcopy(table)
    gpu = cal.GPUS["H200"]
    for m in table["models"]:
        for p in m["points"]:
            t = kernel + cal.roofline(np.array([(p["est_weight_gb"] + p["est_kv_gb"]) * 1e9]),
                                      np.array([p["est_tflop"] * 1e12]), gpu, e_bw, e_fl)[0]
            p["target_ms"] = t * 1e3
    b, f, _ = cal.draft_points(table)
    times = draft_fixed + cal.roofline(b, f, gpu, e_bw, e_fl)
    i = 0
    for m in table["models"]:
        for r in m["draft_next"]:
            r["draft_next_ms"] = times[i] * 1e3
            i += 1
    return table


def test_fit_recovers_the_constants_of_a_known_roofline():
    costs = cal.fit(synthetic_table(), step_overhead_s=2e-3)
    assert costs.bandwidth_efficiency == pytest.approx(0.55, rel=0.02)
    assert costs.flops_efficiency == pytest.approx(0.45, rel=0.02)
    assert costs.kernel_s == pytest.approx(1.2e-3, rel=0.05)
    assert costs.draft_overhead_s == pytest.approx(3e-5, rel=0.05)
    assert costs.step_overhead_s == 2e-3 and costs.fit["median_rel_error"] < 1e-3


def test_measured_h200_table_fits_within_a_tenth_and_prices_steps_like_it():
    costs = cal.load(H200_TABLE)
    assert costs.fit["median_rel_error"] < 0.1
    assert 0.3 < costs.bandwidth_efficiency <= 1.0 and 0.2 < costs.flops_efficiency <= 1.0
    with open(H200_TABLE) as fh:
        table = json.load(fh)
    qwen = next(m for m in table["models"] if m["name"] == "qwen2.5-7b")
    measured = {(p["batch"], p["k"]): p["target_ms"] / 1e3 for p in qwen["points"]}
    # The simulator's 7B at 1024 tokens of context per request, engine time left out.
    hw = Hardware(MODELS["7B"], cal.GPUS["H200"], costs)
    for batch, k in [(1, 0), (1, 4), (64, 2), (256, 4)]:
        sim = hw.target_step(batch, k, batch * 1024.0) - costs.step_overhead_s
        assert sim == pytest.approx(measured[batch, k], rel=0.25), (batch, k)


def test_cpu_tables_and_unknown_gpus_are_refused():
    table = synthetic_table()
    table["device"] = {"type": "cpu", "name": "cpu (1 threads)", "total_memory_gib": None}
    with pytest.raises(ValueError, match="GPU"):
        cal.fit(table)
    table["device"] = {"type": "cuda", "name": "Some Card", "total_memory_gib": 8}
    with pytest.raises(ValueError, match="no peak figures"):
        cal.fit(table)
