#!/usr/bin/env bash
# GRPO with speculative rollouts and the online EAGLE-3 learner on a multi-node Ray cluster.
# Same model/data/settings as grpo_qwen2.5_7b_gsm8k_eagle3.sh (swap TRAIN_FILES/VAL_FILES for
# MATH or DAPO); what changes is where things run and where draft checkpoints live.
#
# Needs:
#   GPUs     NNODES nodes x GPUS_PER_NODE GPUs (default 2 x 8 x 80 GB). veRL uses all GPUs of every
#            node except one on the LEARNER node; the learner (learner.placement=gpu) takes that one.
#            veRL reserves whole GPUs in its placement group, so the learner needs a GPU outside it.
#   software from a clone of this repo: pip install -e ".[gpu]" on EVERY node (same versions, same
#            python env; veRL 0.9.1 with its vLLM pin, 0.24). veRL 0.9.1's default V1 trainer
#            (trainer.use_v1=true) is left as is.
#   model    MODEL_PATH readable on every node (shared FS, or the same local path everywhere), or a hub
#            id (default Qwen/Qwen2.5-7B-Instruct): then every node resolves it into its own Hugging Face
#            cache (veRL's loaders, and the draft learner through verl_specrollout's resolver), so keep
#            HF_HUB_CACHE the same path on every node. It is not resolved here: a snapshot path in this
#            node's cache would not exist on the others.
#   draft    DRAFT_PATH: an EAGLE-3 head for the target in vLLM/speculators format, at the same path
#            on every node (or on shared storage), or a hub id (resolved by each node, as above);
#            default thoughtworks/Qwen2.5-7B-Instruct-Eagle3 (see grpo_qwen2.5_7b_gsm8k_eagle3.sh; not
#            downloaded where this recipe was written). `python3 -m verl_specrollout.draft check` runs
#            first on this node and stops the script on FAIL. No head? recipes/make_scratch_eagle3.py
#            writes an untrained one; the learner bootstraps it (acceptance length starts ~1.0).
#   data     as in the single-node recipe (GSM8K: veRL's examples/data_preprocess/gsm8k.py
#            --local_save_dir ~/data/gsm8k), at the same path on every node.
#   storage  PUBLISH_DIR: where the learner publishes versioned drafts (v000001, ..., LATEST).
#            It must be on storage every node reads at the same path (NFS/Lustre/...): each rollout
#            server reads LATEST and the checkpoint it names from there after every weight sync,
#            and after every sleep-mode wake-up. Without shared storage, mirror PUBLISH_DIR to the
#            same path on the other nodes (e.g. a periodic rsync that copies the version directory
#            before LATEST); reloads only ever follow LATEST, so a node that lags keeps its last
#            good draft.
#
# Cluster:
#   head node:     ray start --head --port=6379 --num-gpus=$GPUS_PER_NODE
#   other nodes:   ray start --address=<head-ip>:6379 --num-gpus=$GPUS_PER_NODE
#   then, on the head node: bash recipes/grpo_multinode_eagle3.sh [overrides...]
#   (veRL connects to the running cluster: RAY_ADDRESS=auto below.)
#
# Usage: [DRAFT_PATH=/shared/ckpt/qwen2.5-7b-eagle3] PUBLISH_DIR=/shared/runs/draft \
#          NNODES=2 bash recipes/grpo_multinode_eagle3.sh
set -xeuo pipefail

# ---- what to run --------------------------------------------------------------------------
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}
DRAFT_PATH=${DRAFT_PATH:-thoughtworks/Qwen2.5-7B-Instruct-Eagle3}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/train.parquet}
VAL_FILES=${VAL_FILES:-$DATA_DIR/test.parquet}
OUT=${OUT:-/shared/specrollout_runs/grpo_multinode_eagle3}   # checkpoints: shared storage
PUBLISH_DIR=${PUBLISH_DIR:-$OUT/draft}                        # versioned drafts: shared storage
PROJECT=${PROJECT:-verl_specrollout}
EXP_NAME=${EXP_NAME:-qwen2.5_7b_gsm8k_eagle3_multinode}

# ---- cluster ------------------------------------------------------------------------------
export RAY_ADDRESS=${RAY_ADDRESS:-auto}                       # the cluster started with `ray start`
NNODES=${NNODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# veRL's trainer.n_gpus_per_node is per node and uniform; leaving one GPU per node outside veRL
# is the simplest way to keep one free for the learner (the other spare GPUs stay idle; use them
# for a reward model or set GPUS_PER_NODE to what each node should give veRL plus one).
TRAIN_GPUS_PER_NODE=$((GPUS_PER_NODE - 1))
ROLLOUT_TP=${ROLLOUT_TP:-1}

# ---- GRPO shape (FastGRPO: G=8, T=1.0, top-p 0.95, max length 2048) -------------------------
N_SAMPLES=${N_SAMPLES:-8}
# 4 prompts x 8 samples = 32 live sequences per rollout engine, FastGRPO's per-engine concurrency.
TRAIN_BATCH=${TRAIN_BATCH:-$((4 * NNODES * TRAIN_GPUS_PER_NODE / ROLLOUT_TP))}
MINI_BATCH=${MINI_BATCH:-$TRAIN_BATCH}
MAX_PROMPT=${MAX_PROMPT:-512}
MAX_RESPONSE=${MAX_RESPONSE:-2048}
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-0.95}                            # FastGRPO used 0.95; veRL's default is 1.0
ACTOR_LR=${ACTOR_LR:-1e-6}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-15}

# ---- speculation --------------------------------------------------------------------------
MAX_K=${MAX_K:-4}
PLANNER_MODE=${PLANNER_MODE:-adaptive}

# ---- preflight (this node; configs and weight headers only, seconds) ------------------------
# Does the head fit the target? Prints its problems and one verdict line; exit 1/2 (FAIL) stops here.
python3 -m verl_specrollout.draft check --draft "$DRAFT_PATH" --target "$MODEL_PATH"
# The target layers vLLM feeds the head (its own ids, else vLLM's default): the learner captures these.
AUX_LAYER_IDS=${AUX_LAYER_IDS:-$(python3 -m verl_specrollout.draft aux-layers --draft "$DRAFT_PATH" --target "$MODEL_PATH")}

SPEC=+actor_rollout_ref.rollout.custom.specrollout

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
    $SPEC.learner.placement=gpu \
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
    trainer.nnodes=$NNODES \
    trainer.n_gpus_per_node=$TRAIN_GPUS_PER_NODE \
    trainer.val_before_train=False \
    trainer.save_freq=50 \
    trainer.test_freq=10 \
    trainer.total_epochs=$TOTAL_EPOCHS \
    trainer.default_local_dir="$OUT/ckpt" \
    "$@"
