#!/usr/bin/env bash
# The CPU main job (`make quickstart`): sets up the project-local .venv (idempotent), builds or
# reuses the tiny testbed (tokenizer, GSM8K-shaped task, tiny Llama target, trained EAGLE-3 head)
# and its regime-tiny expansion, then runs a GRPO-shaped rollout (G=8, T=1) with and without
# speculation on regime-tiny (speed-up, acceptance length) and a short veRL GRPO job on tiny with
# and without it (the integration); the last line is a one-line JSON summary.
#
# Needs: x86_64 Linux, Python 3.11, no GPU; network once for tools/setup_cpu.sh (pip installs).
#        No model, draft or data download: everything is built locally and cached under
#        ~/.cache/verl_specrollout (override with SPECROLLOUT_CACHE).
# Usage: bash recipes/cpu_quickstart.sh [--prompts 4] [--group 8] [--max-tokens 160] [--skip-grpo]
#        [--method eagle3|draft_model|ngram] [--mode adaptive|static] [--max-k 4] [--temperature 1.0]
set -xeuo pipefail

cd "$(dirname "$0")/.."
export SPECROLLOUT_PLATFORM=${SPECROLLOUT_PLATFORM:-cpu}   # the CPU testing platform (never on GPUs)
bash tools/setup_cpu.sh
.venv/bin/python -m verl_specrollout.testing.quickstart "$@"
