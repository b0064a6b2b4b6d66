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
#   software from a clone of this repo: pip install -e ".[gpu]" (veRL 0.9.1 with its pin, vLLM 0.24;
#            vLLM 0.24-0.31 are supported, and every one has SpeculativeConfig.draft_load_config, so the
#            draft loads real weights while the target keeps veRL's dummy load, and draft_sample_method).
#            veRL 0.9.1's default trainer is the V1 trainer (trainer.use_v1=true); it is left as is.
#   model    MODEL_PATH, default Qwen/Qwen2.5-7B-Instruct: a local dir or a hub id. A hub id is
#            resolved to its local snapshot before the job (downloaded into the Hugging Face cache;
#            with HF_HUB_OFFLINE=1 from the cache only): the draft learner reads the directory.
#   draft    DRAFT_PATH: an EAGLE-3 head for Qwen2.5-7B-Instruct in vLLM/speculators format
#            (config.json + safetensors), a local dir or a hub id. Default:
#            thoughtworks/Qwen2.5-7B-Instruct-Eagle3, a public head whose model card says it was
#            trained for Qwen/Qwen2.5-7B-Instruct (EAGLE-3, SpecJAX, ShareGPT/UltraChat mix). It was
#            not downloaded or run where this recipe was written: the preflight below checks it
#            against MODEL_PATH (vocabulary and d2t map, target hidden size, aux layer ids, RoPE,
#            attention shapes, dtype; configs and weight headers only, seconds) and stops the script
#            on FAIL. Bring your own otherwise; the `speculators` library can train one or convert an
#            original EAGLE-3 checkpoint. No head? `python3 recipes/make_scratch_eagle3.py --target
#            $MODEL_PATH --out $DRAFT_PATH` writes an untrained one: the online learner then
#            bootstraps it, starting at acceptance length ~1.0 (the planner keeps K small/0 until it
#            learns).
#   data     git clone -b v0.9.1 https://github.com/volcengine/verl && cd verl && \
#              python3 examples/data_preprocess/gsm8k.py --local_save_dir ~/data/gsm8k
#
# Batch shape: FastGRPO ran 4 prompts x 8 samples on one GPU (32 live sequences per engine). We
# keep that per-engine concurrency instead of copying the global number: rollout TP=1, one vLLM
# engine per GPU, TRAIN_BATCH = 4 prompts per rollout GPU (28 prompts x 8 = 224 sequences on 7
# GPUs). That is where the speed-up was measured (the memory-bound regime speculation needs);
# larger batches start compute-bound and the planner drafts less there (docs/tuning.md).
#
# Usage: [DRAFT_PATH=/ckpt/qwen2.5-7b-eagle3] bash recipes/grpo_qwen2.5_7b_gsm8k_eagle3.sh [overrides...]
set -xeuo pipefail

# ---- what to run --------------------------------------------------------------------------
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}
DRAFT_PATH=${DRAFT_PATH:-thoughtworks/Qwen2.5-7B-Instruct-Eagle3}
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

# ---- local directories and the preflight (before anything starts) --------------------------
# Hub ids -> local snapshots (one line each on failure, e.g. offline and not cached).
MODEL_PATH=$(python3 -m verl_specrollout.draft resolve "$MODEL_PATH" --what MODEL_PATH | tail -n 1)
DRAFT_PATH=$(python3 -m verl_specrollout.draft resolve "$DRAFT_PATH" --what DRAFT_PATH | tail -n 1)
# Does the head fit the target? Prints its problems and one verdict line; exit 1/2 (FAIL) stops here.
python3 -m verl_specrollout.draft check --draft "$DRAFT_PATH" --target "$MODEL_PATH"
# The target layers vLLM feeds the head (its eagle_aux_hidden_state_layer_ids, else vLLM's default
# [2,14,25] for 28 layers): the online learner must capture the same ones.
AUX_LAYER_IDS=${AUX_LAYER_IDS:-$(python3 -m verl_specrollout.draft aux-layers --draft "$DRAFT_PATH" --target "$MODEL_PATH")}

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
    $SPEC.learner.aux_layer_ids="$AUX_LAYER_IDS" \
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
