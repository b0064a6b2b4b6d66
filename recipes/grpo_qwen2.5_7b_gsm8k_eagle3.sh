#!/usr/bin/env bash
# GRPO on GSM8K, Qwen2.5-7B-Instruct, speculative rollouts with an EAGLE-3 draft that is trained
# online while the policy moves (FastGRPO's setting, arXiv 2509.21792, on veRL + vLLM).
#
# Needs:
#   GPUs     one node, 8 x 80 GB (A100/H100). veRL (actor, ref, rollout engines) uses
#            GPUS_PER_NODE-1 of them; the draft learner gets the last one (LEARNER_PLACEMENT=gpu).
#            veRL reserves whole GPUs in its Ray placement group, so a learner on the same GPUs as
#            veRL cannot be scheduled (see docs/tuning.md "Placement"). LEARNER_PLACEMENT=cpu gives
#            veRL all GPUS_PER_NODE GPUs and trains the head on CPU (slow for a 7B head).
#   software pip install "verl-specrollout[gpu]"  (veRL 0.9.1; vLLM 0.28-0.32 recommended: older
#            vLLM has no draft_load_config, so the whole engine then loads real weights).
#   model    Qwen/Qwen2.5-7B-Instruct (MODEL_PATH: a local dir or hub id).
#   draft    DRAFT_PATH: an EAGLE-3 head for Qwen2.5-7B-Instruct in vLLM/speculators format
#            (config.json with eagle_config.eagle_aux_hidden_state_layer_ids + safetensors). Bring
#            your own; the `speculators` library can train one or convert an original EAGLE-3
#            checkpoint. No head? `python3 recipes/make_scratch_eagle3.py --target $MODEL_PATH
#            --out $DRAFT_PATH` writes an untrained one: the online learner then bootstraps it,
#            starting at acceptance length ~1.0 (the planner keeps K small/0 until it learns).
#   data     git clone -b v0.9.1 https://github.com/volcengine/verl && cd verl && \
#              python3 examples/data_preprocess/gsm8k.py --local_save_dir ~/data/gsm8k
#
# Batch shape: FastGRPO ran 4 prompts x 8 samples on one GPU (32 live sequences per engine). We
# keep that per-engine concurrency instead of copying the global number: rollout TP=1, one vLLM
# engine per GPU, TRAIN_BATCH = 4 prompts per rollout GPU (28 prompts x 8 = 224 sequences on 7
# GPUs). That is where the speed-up was measured (the memory-bound regime speculation needs);
# larger batches start compute-bound and the planner drafts less there (docs/tuning.md).
#
# Usage: DRAFT_PATH=/ckpt/qwen2.5-7b-eagle3 bash recipes/grpo_qwen2.5_7b_gsm8k_eagle3.sh [overrides...]
set -xeuo pipefail

# ---- what to run --------------------------------------------------------------------------
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}
DRAFT_PATH=${DRAFT_PATH:?set DRAFT_PATH to an EAGLE-3 head for the target (see header)}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/train.parquet}
VAL_FILES=${VAL_FILES:-$DATA_DIR/test.parquet}
OUT=${OUT:-$HOME/specrollout_runs/grpo_qwen2.5_7b_gsm8k_eagle3}
PROJECT=${PROJECT:-verl_specrollout}
EXP_NAME=${EXP_NAME:-qwen2.5_7b_gsm8k_eagle3}

# ---- hardware -----------------------------------------------------------------------------
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
LEARNER_PLACEMENT=${LEARNER_PLACEMENT:-gpu}     # gpu | shared_gpu | cpu
LEARNER_GPU_FRACTION=${LEARNER_GPU_FRACTION:-0.5}  # only with shared_gpu
if [[ "$LEARNER_PLACEMENT" == cpu ]]; then
    TRAIN_GPUS=$GPUS_PER_NODE
else
    TRAIN_GPUS=$((GPUS_PER_NODE - 1))           # one GPU left outside veRL's placement group
fi
ROLLOUT_TP=${ROLLOUT_TP:-1}

# ---- GRPO shape (FastGRPO: G=8, T=1.0, top-p 0.95, max length 2048) -------------------------
N_SAMPLES=${N_SAMPLES:-8}                       # rollout.n, the GRPO group size
TRAIN_BATCH=${TRAIN_BATCH:-$((4 * TRAIN_GPUS / ROLLOUT_TP))}   # prompts per step (see header)
MINI_BATCH=${MINI_BATCH:-$TRAIN_BATCH}          # one policy update per rollout (on-policy)
MAX_PROMPT=${MAX_PROMPT:-512}
MAX_RESPONSE=${MAX_RESPONSE:-2048}
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-0.95}                            # FastGRPO used 0.95; veRL's default is 1.0
ACTOR_LR=${ACTOR_LR:-1e-6}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-15}

# ---- speculation --------------------------------------------------------------------------
MAX_K=${MAX_K:-4}                               # longest draft; the planner picks 0..MAX_K per batch size
PLANNER_MODE=${PLANNER_MODE:-adaptive}          # adaptive | static | off (static/off: for comparisons)
PUBLISH_DIR=${PUBLISH_DIR:-$OUT/draft}          # versioned draft checkpoints (v0001, ..., LATEST)

SPEC=+actor_rollout_ref.rollout.custom.specrollout
mkdir -p "$OUT"

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$TRAIN_FILES" \
    data.val_files="$VAL_FILES" \
    data.train_batch_size=$TRAIN_BATCH \
    data.max_prompt_length=$MAX_PROMPT \
    data.max_response_length=$MAX_RESPONSE \
    data.filter_overlong_prompts=True \
    data.truncation='error' \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.optim.lr=$ACTOR_LR \
    actor_rollout_ref.actor.ppo_mini_batch_size=$MINI_BATCH \
    actor_rollout_ref.actor.use_dynamic_bsz=True \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$((8 * (MAX_PROMPT + MAX_RESPONSE))) \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.fsdp_config.param_offload=False \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=False \
    actor_rollout_ref.ref.fsdp_config.param_offload=True \
    actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True \
    actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=$((16 * (MAX_PROMPT + MAX_RESPONSE))) \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=$N_SAMPLES \
    actor_rollout_ref.rollout.temperature=$TEMPERATURE \
    actor_rollout_ref.rollout.top_p=$TOP_P \
    actor_rollout_ref.rollout.tensor_model_parallel_size=$ROLLOUT_TP \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.max_num_batched_tokens=$((MAX_PROMPT + MAX_RESPONSE)) \
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True \
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=$((16 * (MAX_PROMPT + MAX_RESPONSE))) \
    `# spec metrics need vLLM stats; our server forces disable_log_stats=False when speculation is on` \
    actor_rollout_ref.rollout.disable_log_stats=False \
    $SPEC.enable=true \
    $SPEC.method=eagle3 \
    $SPEC.draft_path="$DRAFT_PATH" \
    $SPEC.max_k=$MAX_K \
    $SPEC.planner.mode=$PLANNER_MODE \
    $SPEC.planner.replan_interval=16 \
    $SPEC.learner.enable=true \
    $SPEC.learner.placement=$LEARNER_PLACEMENT \
    $SPEC.learner.gpu_fraction=$LEARNER_GPU_FRACTION \
    $SPEC.learner.lr=1e-4 \
    $SPEC.learner.steps_per_rollout=1 \
    $SPEC.learner.feature_loss_weight=2.0 \
    $SPEC.learner.soft_ce_loss_weight=0.1 \
    $SPEC.learner.publish_dir="$PUBLISH_DIR" \
    $SPEC.learner.state_dir="$OUT/learner_state" \
    $SPEC.learner.keep_versions=3 \
    trainer.critic_warmup=0 \
    trainer.logger='[console,wandb]' \
    trainer.project_name=$PROJECT \
    trainer.experiment_name=$EXP_NAME \
    trainer.nnodes=1 \
    trainer.n_gpus_per_node=$TRAIN_GPUS \
    trainer.val_before_train=False \
    trainer.save_freq=50 \
    trainer.test_freq=10 \
    trainer.total_epochs=$TOTAL_EPOCHS \
    trainer.default_local_dir="$OUT/ckpt" \
    "$@"
