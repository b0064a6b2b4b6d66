#!/usr/bin/env bash
# GRPO on DAPO-Math-17k, Qwen2.5-7B-Instruct, speculative rollouts with an EAGLE-3 draft that is trained
# online while the policy moves (FastGRPO's setting, arXiv 2509.21792, on veRL + vLLM).
#
# Needs:
#   GPUs     one node, 8 x 80 GB (A100/H100). veRL (actor, ref, rollout engines) uses
#            GPUS_PER_NODE-1 of them; the draft learner gets the last one (LEARNER_PLACEMENT=gpu).
#            veRL reserves whole GPUs in its Ray placement group, so a learner on the same GPUs as
#            veRL cannot be scheduled (see docs/tuning.md "Placement"). LEARNER_PLACEMENT=cpu gives
#            veRL all GPUS_PER_NODE GPUs and trains the head on CPU (slow for a 7B head).
#   software from a clone of this repo: pip install -e ".[gpu]" (veRL 0.9.1 with its pin, vLLM 0.24;
#            vLLM 0.24-0.31 are supported, and every one has SpeculativeConfig.draft_load_config and
#            draft_sample_method). veRL 0.9.1's default V1 trainer (trainer.use_v1=true) is left as is.
#   model    MODEL_PATH, default Qwen/Qwen2.5-7B-Instruct: a local dir or a hub id (resolved to its
#            local snapshot before the job; see grpo_qwen2.5_7b_gsm8k_eagle3.sh).
#   draft    DRAFT_PATH: an EAGLE-3 head for Qwen2.5-7B-Instruct in vLLM/speculators format, a local
#            dir or a hub id; default thoughtworks/Qwen2.5-7B-Instruct-Eagle3 (not downloaded where
#            this recipe was written). `python3 -m verl_specrollout.draft check` runs first and stops
#            the script on FAIL (see the GSM8K recipe). No head? `python3 recipes/make_scratch_eagle3.py
#            --target $MODEL_PATH --out $DRAFT_PATH` writes an untrained one: the online learner then
#            bootstraps it, starting at acceptance length ~1.0 (the planner keeps K small/0 until it
#            learns).
#   data     DAPO-Math-17k for training, AIME-2024 for validation (data_source math_dapo / aime*:
#            veRL's built-in DAPO reward, which reads the final "Answer: ..." line):
#              mkdir -p ~/data/dapo && cd ~/data/dapo && \
#              wget https://huggingface.co/datasets/BytedTsinghua-SIA/DAPO-Math-17k/resolve/main/data/dapo-math-17k.parquet && \
#              wget https://huggingface.co/datasets/BytedTsinghua-SIA/AIME-2024/resolve/main/data/aime-2024.parquet
#            (the same files veRL's DAPO recipe's prepare_dapo_data.sh fetches)
#
# Batch shape: FastGRPO ran 4 prompts x 8 samples on one GPU (32 live sequences per engine). We
# keep that per-engine concurrency instead of copying the global number: rollout TP=1, one vLLM
# engine per GPU, TRAIN_BATCH = 4 prompts per rollout GPU (28 prompts x 8 = 224 sequences on 7
# GPUs). That is where the speed-up was measured (the memory-bound regime speculation needs);
# larger batches start compute-bound and the planner drafts less there (docs/tuning.md).
#
# Usage: [DRAFT_PATH=/ckpt/qwen2.5-7b-eagle3] bash recipes/grpo_qwen2.5_7b_dapo_eagle3.sh [overrides...]
#
# Same job and settings as grpo_qwen2.5_7b_gsm8k_eagle3.sh; only the data differs.
set -euo pipefail

export DATA_DIR=${DATA_DIR:-$HOME/data/dapo}
export TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/dapo-math-17k.parquet}
export VAL_FILES=${VAL_FILES:-$DATA_DIR/aime-2024.parquet}
export OUT=${OUT:-$HOME/specrollout_runs/grpo_qwen2.5_7b_dapo_eagle3}
export EXP_NAME=${EXP_NAME:-qwen2.5_7b_dapo_eagle3}
export MAX_PROMPT=${MAX_PROMPT:-1024}

exec bash "$(dirname "$0")/grpo_qwen2.5_7b_gsm8k_eagle3.sh" "$@"
