# Sourced by the tools/gpu_*.sh wrappers: which python runs the script, and where results go.
# The project venv where there is one (this CPU machine); the GPU machine's own python3 otherwise
# (.venv is not part of the working tree the device tool copies). $PYTHON overrides both.
#   gpu_pick_python TAG         -> sets PY, exits 3 when it cannot import torch
#   gpu_results NAME TAG        -> sets RESULTS ($OUT on the GPU machine, else results/), JSON, LOG

gpu_pick_python() {
  if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
  elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[$1] $PY cannot import torch" >&2
    exit 3
  fi
}

gpu_results() {
  RESULTS=${OUT:-results}
  mkdir -p "$RESULTS"
  JSON="$RESULTS/$1.json"
  LOG="$RESULTS/$1.log"
  echo "[$2] results -> $JSON (log $LOG)"
}
