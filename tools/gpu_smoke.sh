#!/usr/bin/env bash
# GPU smoke run: target verification cost and EAGLE-3 draft cost vs tokens per step at
# Qwen2.5-7B / Llama-3-8B / Qwen2.5-32B shapes (random weights, torch only, no vLLM/veRL,
# no downloads). See tools/gpu_verify_cost.py for what is timed and the JSON schema.
#
# With the project's device tool (it runs the command in the repo root of a copy of the
# working tree on the GPU machine, and brings back what is written under $OUT):
#
#     run(command="bash tools/gpu_smoke.sh", timeout_s=450)
#
# The full run took 46 s on an H200 (--budget-s 240 stops starting new points,
# and the JSON is rewritten after every point), which leaves device time for one rerun.
# Results: $OUT/gpu_verify_cost.json and $OUT/gpu_verify_cost.log when $OUT is set (the
# device tool sets it), else results/. Extra arguments go to the Python script, e.g.
#
#     bash tools/gpu_smoke.sh --models qwen2.5-7b --budget-s 120   # a shorter rerun
#     bash tools/gpu_smoke.sh --no-graphs                          # if CUDA graph capture fails
#     bash tools/gpu_smoke.sh --device cpu --tiny                  # toy shapes on a CPU, seconds
#
# Exit status: non-zero when torch is missing, when no point could be measured, or when the
# run exceeds SMOKE_TIMEOUT_S (default 400 s, under the device tool's timeout so the log still
# comes back; the JSON then holds every finished point).
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/gpu_common.sh
gpu_pick_python gpu-smoke
gpu_results gpu_verify_cost gpu-smoke
"$PY" -c "import torch; print('[gpu-smoke] torch', torch.__version__, 'cuda', torch.version.cuda,
      'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" | tee "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.max.sm \
  --format=csv,noheader 2>&1 | sed 's/^/[gpu-smoke] /' | tee -a "$LOG" || true

set +e
timeout --signal=TERM "${SMOKE_TIMEOUT_S:-400}" \
  "$PY" -u tools/gpu_verify_cost.py --out "$JSON" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "[gpu-smoke] exit $rc; results in $JSON"
exit "$rc"
