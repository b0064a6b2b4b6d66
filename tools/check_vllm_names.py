#!/usr/bin/env python3
"""Check that a vLLM (and veRL) source tree has every internal name verl-specrollout uses.

    python tools/check_vllm_names.py /tmp/vllm_src/0.31.0          # the folder holding vllm/
    python tools/check_vllm_names.py --installed --verl-installed  # this interpreter's packages
    python tools/check_vllm_names.py /path --verl /path2 --json

The source is read with `ast`, never imported: a GPU wheel unpacked on a CPU machine cannot be
imported, and importing vLLM would start platform detection anyway.

The names come from verl_specrollout/compat.py (read with `ast` too, so the tool runs without
the package installed); the tables below only say where in vLLM / veRL each name lives and how
to check it. A compat constant that no row uses and that NOT_CHECKED does not explain is
reported as "unchecked", so a name added to compat cannot slip past this tool unnoticed.

compat.VLLM_VERSION_FACTS (the per-version facts docs/supported-versions.md is generated from) is
compared with the tree too: each fact names the rows below that read it, and a value the tree
contradicts is a failure ("facts_disagree"), so the generated docs cannot claim what a wheel does not do.

Exit status: 0 when every required name is found and the facts table agrees with the tree, 1 when
a name is missing, its signature no longer matches or a fact disagrees, 2 on a usage error (tree
not found).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import sys
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPAT_PATH = os.path.join(REPO, "verl_specrollout", "compat.py")

REQ = "required"   # missing: the product fails or silently stops doing its job
OPT = "optional"   # missing: the product has a fallback, or the feature is opt-in
INFO = "info"      # a fact about the version, never a failure

# ---------------------------------------------------------------------------------------------
# How to check each name. String fields may hold "{COMPAT_NAME}" (replaced by that constant of
# compat.py); "each": COMPAT_NAME repeats the row for every element of that tuple, as "{*}".
#
# kinds:
#   class            target "mod:Class" is a class (re-exports followed)
#   module-attr      target "mod:attr" is defined at module level (def, class, assignment, import)
#   method           attr is a method of target class (bases inside the tree searched too)
#   params           method attr of target class takes the parameters `params` in that order
#   param-at-index   method attr of target class has parameter `param` at position `index`
#                    (self is position 0); index_from + index_offset read it from compat
#   instance-attr    attr is assigned as self.<attr> in a method of target class, or is a class field
#   dataclass-field  attr is an annotated field in the body of target class (or a base)
#   string-literal   the string `value` is a string constant in a .py file under `under`
#   attr-anywhere    attr is assigned as <obj>.<attr> or declared as a class field under `under`
#   overrides        every method of our class `ours` that calls super().<same name>() exists on
#                    target with parameters our override can take (one row per method)
#   any-of           at least one of the rows `of` (ids) is found
#   fact             a computed fact (fn), never a failure
# ---------------------------------------------------------------------------------------------

SCHED_OUTPUT = "vllm.v1.core.sched.output:SchedulerOutput"
SPEC_CONFIG = "vllm.config.speculative:SpeculativeConfig"
ENGINE_ARGS = "{VLLM_ENGINE_ARGS}"
GPU_WORKER = "vllm.v1.worker.gpu_worker:Worker"
V1_RUNNER = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"
V2_RUNNER = "vllm.v1.worker.gpu.model_runner:GPUModelRunner"
LINEAR_MOD = "{VLLM_LINEAR_MODULE}"

VLLM_ROWS: List[Dict[str, Any]] = [
    # Scheduler subclass (vllm_adapter/scheduler.py): resolved at import, so the class must exist.
    dict(id="VLLM_BASE_SCHEDULER", kind="class", target="{VLLM_BASE_SCHEDULER}", need=REQ),
    dict(id="VLLM_SCHED_SET_PAUSE_STATE", kind="method", target="{VLLM_BASE_SCHEDULER}",
         attr="{VLLM_SCHED_SET_PAUSE_STATE}", need=REQ),
    dict(id="VLLM_SCHED_UPDATE_FROM_OUTPUT", kind="method", target="{VLLM_BASE_SCHEDULER}",
         attr="{VLLM_SCHED_UPDATE_FROM_OUTPUT}", need=REQ),
    dict(id="VLLM_SCHED_CONFIG_ASYNC_ATTR", kind="dataclass-field", target="vllm.config.scheduler:SchedulerConfig",
         attr="{VLLM_SCHED_CONFIG_ASYNC_ATTR}", need=OPT),
    # vLLM's own plugin allow-list (startup_checks: our general plugin excluded -> one clear line).
    dict(id="VLLM_PLUGINS_ENV", kind="string-literal", under="vllm/envs.py", value="{VLLM_PLUGINS_ENV}", need=REQ),
    dict(id="SCHED_DYNAMIC_SD_LOOKUP_ATTR", kind="instance-attr", target="{VLLM_BASE_SCHEDULER}",
         attr="{SCHED_DYNAMIC_SD_LOOKUP_ATTR}", need=REQ),
    # scheduler.py reads these directly (self.num_spec_tokens, self.requests, ...).
    dict(id="Scheduler.{*}", kind="instance-attr", target="{VLLM_BASE_SCHEDULER}", attr="{*}", need=REQ,
         each=("num_spec_tokens", "vllm_config", "scheduler_config", "requests", "running", "waiting")),
    dict(id="SpecRolloutScheduler overrides", kind="overrides", target="{VLLM_BASE_SCHEDULER}",
         ours="verl_specrollout.vllm_adapter.scheduler:SpecRolloutScheduler", need=REQ),
    # scheduler.py also resolves AsyncScheduler at import and stacks the same hooks on it when
    # the engine schedules asynchronously.
    dict(id="VLLM_ASYNC_SCHEDULER", kind="class", target="{VLLM_ASYNC_SCHEDULER}", need=REQ),
    dict(id="SpecRolloutScheduler overrides", kind="overrides", target="{VLLM_ASYNC_SCHEDULER}",
         ours="verl_specrollout.vllm_adapter.scheduler:SpecRolloutScheduler", need=REQ),
    dict(id="SCHED_OUT_NUM_SPEC_TOKENS_ATTR", kind="dataclass-field", target=SCHED_OUTPUT,
         attr="{SCHED_OUT_NUM_SPEC_TOKENS_ATTR}", need=REQ),
    dict(id="SchedulerOutput.{*}", kind="dataclass-field", target=SCHED_OUTPUT, attr="{*}", need=REQ,
         each=("num_scheduled_tokens", "total_num_scheduled_tokens", "scheduled_spec_decode_tokens")),
    dict(id="VLLM_DYNAMIC_SD_BUILD", kind="module-attr", target="{VLLM_DYNAMIC_SD_BUILD}", need=REQ),
    # engine_kwargs.py always sends the per-batch-size table (dynamic K); draft_load_config has a
    # fallback (load_format=auto for the whole engine).
    dict(id="SpeculativeConfig.num_speculative_tokens_per_batch_size", kind="dataclass-field",
         target=SPEC_CONFIG, attr="{VLLM_SPEC_DYNAMIC_TABLE_ATTR}", need=REQ),
    dict(id="SpeculativeConfig.draft_load_config", kind="dataclass-field", target=SPEC_CONFIG,
         attr="draft_load_config", need=OPT),
    # Engine arguments build_engine_kwargs and the veRL server set.
    dict(id="EngineArgs.{*}", kind="dataclass-field", target=ENGINE_ARGS, attr="{*}", need=REQ,
         each=("speculative_config", "scheduler_cls", "additional_config", "disable_log_stats", "load_format",
               "async_scheduling")),
    # CUDA graphs and memory around dynamic K (engine_kwargs.py: graph plan, capture ceiling, draft-probability
    # reserve; the scheduler's start-up line and its data-parallel guard).
    dict(id="{*}", kind="dataclass-field", target=ENGINE_ARGS, attr="{{*}}", need=REQ,
         each=("VLLM_ARG_COMPILATION_CONFIG", "VLLM_ARG_GPU_MEMORY_UTILIZATION", "VLLM_ARG_KV_CACHE_MEMORY_BYTES",
               "VLLM_ARG_MAX_NUM_SEQS", "VLLM_ARG_MAX_NUM_BATCHED_TOKENS", "VLLM_ARG_ENFORCE_EAGER")),
    dict(id="{*}", kind="dataclass-field", target="{VLLM_COMPILATION_CONFIG}", attr="{{*}}", need=REQ,
         each=("VLLM_CC_CUDAGRAPH_MODE", "VLLM_CC_CAPTURE_SIZES", "VLLM_CC_MAX_CAPTURE_SIZE")),
    dict(id="VllmConfig.compilation_config", kind="dataclass-field", target="vllm.config.vllm:VllmConfig",
         attr="{VLLM_ARG_COMPILATION_CONFIG}", need=OPT),
    dict(id="VLLM_CUDAGRAPH_MODE_NONE", kind="instance-attr", target="{VLLM_CUDAGRAPH_MODE_ENUM}",
         attr="{VLLM_CUDAGRAPH_MODE_NONE}", need=OPT),
    dict(id="VLLM_PARALLEL_DP_SIZE_ATTR", kind="dataclass-field", target="vllm.config.parallel:ParallelConfig",
         attr="{VLLM_PARALLEL_DP_SIZE_ATTR}", need=REQ),
    dict(id="VLLM_CURRENT_PLATFORM", kind="module-attr", target="{VLLM_CURRENT_PLATFORM}", need=OPT),
    dict(id="{*}", kind="method", target="{VLLM_PLATFORM_CLASS}", attr="{{*}}", need=OPT,
         each=("VLLM_PLATFORM_TOTAL_MEMORY", "VLLM_PLATFORM_IS_CPU")),
    # Per-request spec-decode stats (vLLM 0.29+; compat.vllm_has_per_request_spec_metrics gates them).
    dict(id="VLLM_ARG_PER_REQUEST_SPEC_METRICS", kind="dataclass-field", target=ENGINE_ARGS,
         attr="{VLLM_ARG_PER_REQUEST_SPEC_METRICS}", need=OPT),
    dict(id="VLLM_OUTPUT_SPEC_METRICS_ATTR", kind="dataclass-field", target="vllm.outputs:CompletionOutput",
         attr="{VLLM_OUTPUT_SPEC_METRICS_ATTR}", need=OPT),
    dict(id="{*}", kind="dataclass-field", target="vllm.v1.metrics.stats:RequestSpecDecodeMetrics",
         attr="{{*}}", need=OPT, each=("VLLM_REQUEST_SPEC_HISTOGRAM_ATTR", "VLLM_REQUEST_SPEC_DRAFT_TOKENS_ATTR")),
    # K=0 draft skip (vllm_adapter/k0_skip.py): opt-in, install() gives up cleanly without the class.
    # Its wrapper is propose(self, num_speculative_tokens, *args, **kwargs) and reads
    # common_attn_metadata from kwargs or args[POS], so both the name and the position must hold.
    dict(id="VLLM_PROPOSER", kind="class", target="{VLLM_PROPOSER}", need=OPT),
    dict(id="VLLM_PROPOSE_METHOD", kind="method", target="{VLLM_PROPOSER}", attr="{VLLM_PROPOSE_METHOD}",
         need=OPT),
    dict(id="propose arg 1 = num_speculative_tokens", kind="param-at-index", target="{VLLM_PROPOSER}",
         attr="{VLLM_PROPOSE_METHOD}", param="num_speculative_tokens", index=1, need=OPT),
    dict(id="VLLM_PROPOSE_ATTN_METADATA_KW/POS", kind="param-at-index", target="{VLLM_PROPOSER}",
         attr="{VLLM_PROPOSE_METHOD}", param="{VLLM_PROPOSE_ATTN_METADATA_KW}",
         index_from="VLLM_PROPOSE_ATTN_METADATA_POS", index_offset=2, need=OPT),
    # Live draft reload (draft_reload.py): worker.model_runner, then get_draft_model() or
    # <drafter|speculator>.model.
    dict(id="VLLM_WORKER_MODEL_RUNNER", kind="instance-attr", target=GPU_WORKER,
         attr="{VLLM_WORKER_MODEL_RUNNER}", need=REQ),
    dict(id="VLLM_RUNNER_GET_DRAFT_MODEL", kind="method", target=V1_RUNNER,
         attr="{VLLM_RUNNER_GET_DRAFT_MODEL}", need=OPT),
    dict(id="VLLM_RUNNER_GET_DRAFT_MODEL (V2 runner)", kind="method", target=V2_RUNNER,
         attr="{VLLM_RUNNER_GET_DRAFT_MODEL}", need=OPT),
    # "A | B": found on either runner (V1 has drafter, V2 speculator).
    dict(id="VLLM_RUNNER_DRAFTER_ATTRS[{*}]", kind="instance-attr", target=V1_RUNNER + " | " + V2_RUNNER,
         attr="{*}", each="VLLM_RUNNER_DRAFTER_ATTRS", need=OPT),
    dict(id="proposer .model", kind="instance-attr", target="{VLLM_PROPOSER}", attr="model", need=OPT),
    dict(id="draft model reachable (V1 runner)", kind="any-of", need=REQ,
         of=("VLLM_RUNNER_GET_DRAFT_MODEL", "VLLM_RUNNER_DRAFTER_ATTRS[drafter]")),
    dict(id="VLLM_RUNNER_GET_MODEL", kind="method", target=V1_RUNNER, attr="{VLLM_RUNNER_GET_MODEL}", need=REQ),
    # Sleep mode: the level veRL passes to AsyncLLM.sleep (the server observes it), and vLLM's own
    # save of the draft's buffers across level 2 (0.27+; without it draft_sleep.py keeps them).
    dict(id="VLLM_ENGINE_SLEEP", kind="method", target="vllm.v1.engine.async_llm:AsyncLLM",
         attr="{VLLM_ENGINE_SLEEP}", need=REQ),
    dict(id="VLLM_SLEEP_LEVEL_ARG", kind="param-at-index", target="vllm.v1.engine.async_llm:AsyncLLM",
         attr="{VLLM_ENGINE_SLEEP}", param="{VLLM_SLEEP_LEVEL_ARG}", index=1, need=REQ),
    dict(id="VLLM_WORKER_SLEEP_SAVED_DRAFT_BUFFERS", kind="instance-attr", target=GPU_WORKER,
         attr="{VLLM_WORKER_SLEEP_SAVED_DRAFT_BUFFERS}", need=OPT),
    dict(id="VLLM_DRAFT_OWN_LM_HEAD_FLAG", kind="attr-anywhere", under="vllm/model_executor",
         attr="{VLLM_DRAFT_OWN_LM_HEAD_FLAG}", need=OPT),
    dict(id="VLLM_DRAFT_OWN_EMBED_FLAG", kind="attr-anywhere", under="vllm/model_executor",
         attr="{VLLM_DRAFT_OWN_EMBED_FLAG}", need=OPT),
    # vLLM-CPU only: re-materialising repacked linear weights.
    dict(id="VLLM_CPU_LINEAR_ATTR", kind="attr-anywhere", under="vllm/model_executor/layers",
         attr="{VLLM_CPU_LINEAR_ATTR}", need=OPT),
    dict(id="VLLM_LINEAR_V2_LIST", kind="module-attr", target=LINEAR_MOD + ":{VLLM_LINEAR_V2_LIST}", need=OPT),
    dict(id="VLLM_LINEAR_V1_LOADER_CLASSES[{*}]", kind="class", target=LINEAR_MOD + ":{*}",
         each="VLLM_LINEAR_V1_LOADER_CLASSES", need=OPT),
    # Best-of-N group drafting (group_proposer.py): opt-in; install() gives up cleanly (the engine then
    # drafts with the base method) without the runner class or its methods.
    dict(id="VLLM_V1_MODEL_RUNNER", kind="class", target="{VLLM_V1_MODEL_RUNNER}", need=OPT),
    dict(id="VLLM_RUNNER_PROPOSE_METHOD", kind="params", target="{VLLM_V1_MODEL_RUNNER}",
         attr="{VLLM_RUNNER_PROPOSE_METHOD}", params=("scheduler_output", "sampled_token_ids"), need=OPT),
    dict(id="VLLM_RUNNER_EXECUTE_METHOD", kind="params", target="{VLLM_V1_MODEL_RUNNER}",
         attr="{VLLM_RUNNER_EXECUTE_METHOD}", params=("scheduler_output",), need=OPT),
    dict(id="{*}", kind="instance-attr", target="{VLLM_V1_MODEL_RUNNER}", attr="{{*}}", need=OPT,
         each=("VLLM_RUNNER_INPUT_BATCH_ATTR", "VLLM_RUNNER_ASYNC_SCHED_ATTR", "VLLM_RUNNER_SPEC_CONFIG_ATTR",
               "VLLM_RUNNER_VLLM_CONFIG_ATTR", "VLLM_RUNNER_DISCARD_MASK_ATTR")),
    dict(id="VLLM_CPU_GPU_BUFFER_NP_ATTR", kind="instance-attr", target="{VLLM_CPU_GPU_BUFFER}",
         attr="{VLLM_CPU_GPU_BUFFER_NP_ATTR}", need=OPT),
    dict(id="VLLM_INPUT_BATCH_REQ_IDS", kind="method", target="{VLLM_INPUT_BATCH}", attr="{VLLM_INPUT_BATCH_REQ_IDS}",
         need=OPT),
    dict(id="InputBatch.{*}", kind="instance-attr", target="{VLLM_INPUT_BATCH}", attr="{*}",
         each="VLLM_INPUT_BATCH_ARRAYS", need=OPT),
    dict(id="{*}", kind="dataclass-field", target=SCHED_OUTPUT, attr="{{*}}", need=OPT,
         each=("SCHED_OUT_FINISHED_ATTR", "SCHED_OUT_SPEC_TOKENS_ATTR")),
    dict(id="VLLM_PARSE_SAMPLER_OUTPUT", kind="params", target="{VLLM_REJECTION_SAMPLER}",
         attr="{VLLM_PARSE_SAMPLER_OUTPUT}", params=("output_token_ids", "vocab_size", "discard_req_indices"),
         need=OPT),
    dict(id="VLLM_SPEC_METHOD_ATTR", kind="dataclass-field", target=SPEC_CONFIG, attr="{VLLM_SPEC_METHOD_ATTR}",
         need=OPT),
    dict(id="VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR", kind="dataclass-field", target=SPEC_CONFIG,
         attr="{VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR}", need=OPT),
    dict(id="VLLM_SPEC_NUM_TOKENS_ATTR", kind="dataclass-field", target=SPEC_CONFIG,
         attr="{VLLM_SPEC_NUM_TOKENS_ATTR}", need=REQ),
    # GPU bring-up only (tools/gpu_bringup.py): target reload from disk, vLLM's environment cache.
    dict(id="VLLM_WORKER_RELOAD_WEIGHTS", kind="method", target=GPU_WORKER, attr="{VLLM_WORKER_RELOAD_WEIGHTS}",
         need=OPT),
    dict(id="VLLM_ENVS_DISABLE_CACHE", kind="module-attr", target="{VLLM_ENVS_DISABLE_CACHE}", need=OPT),
    # Probabilistic drafts (draft_sampling=auto | probabilistic): the proposer keeps the draft's
    # probabilities and the V1 runner hands them to the rejection sampler (compat.VLLM_VERSION_FACTS).
    dict(id="proposer keeps draft probabilities", kind="method", target="{VLLM_PROPOSER}",
         attr="take_last_draft_probs", need=INFO),
    dict(id="V1 runner passes draft probabilities", kind="method", target=V1_RUNNER,
         attr="_get_spec_decode_draft_probs", need=INFO),
    # Spec-decode counters (spec_counters.py).
    dict(id="VLLM_METRICS_SNAPSHOT", kind="module-attr", target="{VLLM_METRICS_SNAPSHOT}", need=REQ),
    dict(id="VLLM_ENV_USE_V2_MODEL_RUNNER", kind="string-literal", under="vllm",
         value="{VLLM_ENV_USE_V2_MODEL_RUNNER}", need=OPT),
    dict(id="VLLM_METRIC_NUM_DRAFTS", kind="string-literal", under="vllm/v1", value="{VLLM_METRIC_NUM_DRAFTS}",
         need=REQ),
    dict(id="VLLM_METRIC_NUM_DRAFT_TOKENS", kind="string-literal", under="vllm/v1",
         value="{VLLM_METRIC_NUM_DRAFT_TOKENS}", need=REQ),
    dict(id="VLLM_METRIC_NUM_ACCEPTED_TOKENS", kind="string-literal", under="vllm/v1",
         value="{VLLM_METRIC_NUM_ACCEPTED_TOKENS}", need=REQ),
    dict(id="VLLM_METRIC_ACCEPTED_PER_POS", kind="string-literal", under="vllm/v1",
         value="{VLLM_METRIC_ACCEPTED_PER_POS}", need=REQ),
    # Facts about the version that decide what the product can do on it.
    dict(id="async scheduling default", kind="fact", fn="async_default", need=INFO),
    dict(id="model runner V2 and dynamic K", kind="fact", fn="v2_runner", need=INFO),
    dict(id="V2 runner speculative methods", kind="fact", fn="v2_methods", need=INFO),
    dict(id="K=0 skip reaches", kind="fact", fn="k0_skip_runners", target="{VLLM_PROPOSER}", need=INFO),
    dict(id="sleep level 2", kind="fact", fn="sleep_level2", need=INFO),
    dict(id="dynamic K and cudagraph mode", kind="fact", fn="dynamic_sd_cudagraph", need=INFO),
    dict(id="dynamic K with data parallel", kind="fact", fn="dynamic_sd_data_parallel", need=INFO),
    dict(id="additional_config in the compile cache key", kind="fact", fn="additional_config_hashed", need=INFO),
    dict(id="default capture ceiling", kind="fact", fn="capture_ceiling", value="{VLLM_DEFAULT_CAPTURE_CEILING}",
         need=INFO),
]

VERL_SERVER_MOD = "verl.workers.rollout.vllm_rollout.vllm_async_server"
VERL_ENGINE = "verl.workers.engine.fsdp.transformer_impl:FSDPEngineWithLMHead"
VERL_TRAINING_WORKER = "{VERL_ACTOR_WORKER_MODULE}:TrainingWorker"
VERL_TRAINER = "{VERL_TRAINER_MODULE}:{VERL_TRAINER_CLASS}"
VERL_V1_TRAINER = "{VERL_V1_TRAINER_MODULE}:{VERL_V1_TRAINER_CLASS}"

VERL_ROWS: List[Dict[str, Any]] = [
    dict(id="VERL_REPLICA_REGISTRY", kind="class", target="{VERL_REPLICA_REGISTRY}", need=REQ),
    dict(id="VERL_REPLICA_REGISTRY.register", kind="method", target="{VERL_REPLICA_REGISTRY}", attr="register",
         need=REQ),
    # We replace veRL's own "vllm" entry, so veRL must register its vLLM replica under that name.
    dict(id="VERL_VLLM_ROLLOUT_NAME", kind="string-literal", under="verl/workers/rollout/replica.py",
         value="{VERL_VLLM_ROLLOUT_NAME}", need=REQ),
    dict(id="VERL_VLLM_SERVER", kind="class", target="{VERL_VLLM_SERVER}", need=REQ),
    dict(id="VERL_SERVER_OVERRIDES[{*}]", kind="method", target="{VERL_VLLM_SERVER}", attr="{*}",
         each="VERL_SERVER_OVERRIDES", need=REQ),
    dict(id="SpecRolloutHttpServer overrides", kind="overrides", target="{VERL_VLLM_SERVER}",
         ours="verl_specrollout.verl_adapter.server:SpecRolloutHttpServer", need=REQ),
    dict(id="VERL_VLLM_REPLICA", kind="class", target="{VERL_VLLM_REPLICA}", need=REQ),
    dict(id="SpecRolloutReplica overrides", kind="overrides", target="{VERL_VLLM_REPLICA}",
         ours="verl_specrollout.verl_adapter.server:SpecRolloutReplica", need=REQ),
    dict(id="vLLMReplica.server_class", kind="instance-attr", target="{VERL_VLLM_REPLICA}", attr="server_class",
         need=REQ),
    dict(id="VERL_VLLM_WORKER_EXTENSION", kind="class", target="{VERL_VLLM_WORKER_EXTENSION}", need=REQ),
    dict(id="VERL_ACTOR_WORKER_CLASS", kind="class", target="{VERL_ACTOR_WORKER_MODULE}:{VERL_ACTOR_WORKER_CLASS}",
         need=REQ),
    dict(id="VERL_WORKER_INIT_METHOD", kind="method", target="{VERL_ACTOR_WORKER_MODULE}:{VERL_ACTOR_WORKER_CLASS}",
         attr="{VERL_WORKER_INIT_METHOD}", need=REQ),
    dict(id="VERL_WORKER_ACTOR_ATTR", kind="instance-attr", target="{VERL_ACTOR_WORKER_MODULE}:{VERL_ACTOR_WORKER_CLASS}",
         attr="{VERL_WORKER_ACTOR_ATTR}", need=REQ),
    dict(id="VERL_WORKER_ROLE_ATTR", kind="instance-attr", target="{VERL_ACTOR_WORKER_MODULE}:{VERL_ACTOR_WORKER_CLASS}",
         attr="{VERL_WORKER_ROLE_ATTR}", need=REQ),
    dict(id="VERL_TRAINING_WORKER_ENGINE_ATTR", kind="instance-attr", target=VERL_TRAINING_WORKER,
         attr="{VERL_TRAINING_WORKER_ENGINE_ATTR}", need=REQ),
    dict(id="VERL_TRAINING_WORKER_INFER", kind="method", target=VERL_TRAINING_WORKER,
         attr="{VERL_TRAINING_WORKER_INFER}", need=REQ),
    # capture/verl_capture.py wraps forward_step(micro_batch, loss_function, forward_only).
    dict(id="VERL_ENGINE_FORWARD_STEP", kind="params", target=VERL_ENGINE, attr="{VERL_ENGINE_FORWARD_STEP}",
         params=("micro_batch", "loss_function", "forward_only"), need=REQ),
    dict(id="VERL_ENGINE_MODULE_ATTR", kind="instance-attr", target=VERL_ENGINE, attr="{VERL_ENGINE_MODULE_ATTR}",
         need=REQ),
    dict(id="VERL_ENGINE_SP_SIZE_ATTR", kind="instance-attr", target=VERL_ENGINE, attr="{VERL_ENGINE_SP_SIZE_ATTR}",
         need=OPT),
    dict(id="VERL_ENGINE_REMOVE_PADDING", kind="instance-attr", target=VERL_ENGINE,
         attr="{VERL_ENGINE_REMOVE_PADDING}", need=OPT),
    dict(id="VERL_TENSORDICT_UTILS", kind="params", target="{VERL_TENSORDICT_UTILS}:", attr="get_non_tensor_data",
         params=("data", "key", "default"), need=OPT),
    # Micro-batch keys: the engine reads them by these names (a looser check: the string exists).
    # "{{*}}": the element is a compat constant's name, so "{*}" -> "{NAME}" -> its value.
    dict(id="{*}", kind="string-literal", under="verl/workers", value="{{*}}", need=REQ,
         each=("VERL_BATCH_INPUT_IDS", "VERL_BATCH_POSITION_IDS", "VERL_BATCH_RESPONSE_MASK",
               "VERL_BATCH_ATTENTION_MASK")),
    # Rollout extra_fields keys veRL's trainer turns into rollout/spec_accept_* metrics.
    dict(id="{*}", kind="string-literal", under="verl/trainer/ppo/ray_trainer.py", value="{{*}}", need=REQ,
         each=("VERL_SPEC_DRAFT_TOKENS_FIELD", "VERL_SPEC_ACCEPTED_TOKENS_FIELD", "VERL_SPEC_VERIFY_STEPS_FIELD")),
    dict(id="VERL_TRAINER_CLASS", kind="class", target=VERL_TRAINER, need=REQ),
    dict(id="VERL_V1_TRAINER_CLASS", kind="class", target=VERL_V1_TRAINER, need=OPT),  # veRL 0.9.1+
    dict(id="VERL_V1_TRAINER_MODES[{*}]", kind="string-literal", under="verl/trainer/ppo/v1",
         value="{*}", each="VERL_V1_TRAINER_MODES", need=OPT),
    dict(id="VERL_SPEC_METRICS_FN", kind="module-attr", target="{VERL_SPEC_METRICS_FN}", need=REQ),
    dict(id="{*}", kind="string-literal", under="verl/trainer/ppo/ray_trainer.py", value="{{*}}", need=REQ,
         each=("VERL_SPEC_ACCEPT_RATE_KEY", "VERL_SPEC_ACCEPT_LENGTH_KEY", "VERL_STEP_METRIC_KEY")),
    dict(id="VERL_TRACKING_CLASS", kind="method", target="{VERL_TRACKING_MODULE}:{VERL_TRACKING_CLASS}",
         attr="{VERL_TRACKING_LOG}", need=REQ),
    dict(id="VERL_REPLICA_SERVER_HANDLE_ATTR", kind="instance-attr",
         target="verl.workers.rollout.replica:RolloutReplica", attr="{VERL_REPLICA_SERVER_HANDLE_ATTR}", need=REQ),
    dict(id="VERL_TRAINER_GLOBAL_STEPS_ATTR", kind="instance-attr", target=VERL_TRAINER,
         attr="{VERL_TRAINER_GLOBAL_STEPS_ATTR}", need=REQ),
    dict(id="VERL_TRAINER_LOG_ROLLOUT_DATA", kind="method", target=VERL_TRAINER,
         attr="{VERL_TRAINER_LOG_ROLLOUT_DATA}", need=OPT),  # CPU test rig only
    dict(id="VERL_V1_TRAINER_LOG_ROLLOUT_DATA", kind="method", target=VERL_V1_TRAINER,
         attr="{VERL_TRAINER_LOG_ROLLOUT_DATA}", need=OPT),  # CPU test rig only
    dict(id="VERL_V1_TRAINER_DUMP_GENERATIONS", kind="params", target=VERL_V1_TRAINER,
         attr="{VERL_V1_TRAINER_DUMP_GENERATIONS}",
         params=("inputs", "outputs", "gts", "scores", "reward_extra_infos_dict", "dump_path"), need=OPT),
    # Prompt-affinity router for group drafting (verl_adapter/group_router.py); without it, group
    # drafting still works but a prompt's samples may be split over replicas.
    dict(id="VERL_LOAD_BALANCER", kind="class", target="{VERL_LOAD_BALANCER}", need=OPT),
    dict(id="{*}", kind="instance-attr", target="{VERL_LOAD_BALANCER}", attr="{{*}}", need=OPT,
         each=("VERL_LB_STICKY_ATTR", "VERL_LB_INFLIGHT_ATTR", "VERL_LB_SERVERS_ATTR")),
    dict(id="VERL_LOAD_BALANCER.require_acquire_fields", kind="method", target="{VERL_LOAD_BALANCER}",
         attr="require_acquire_fields", need=OPT),
    dict(id="VERL_SERVER_MANAGER_CLASS", kind="params",
         target="{VERL_SERVER_MANAGER_MODULE}:{VERL_SERVER_MANAGER_CLASS}", attr="__init__",
         params=("config", "worker_group", "rollout_resource_pool", "start_rank", "load_balancer_cls"), need=OPT),
    dict(id="VERL_ROUTER_CONFIG_PATH_KEY", kind="string-literal", under="verl/workers/rollout/llm_server.py",
         value="{VERL_ROUTER_CONFIG_PATH_KEY}", need=OPT),
    # Start-up guards (verl_adapter/startup_checks.py): plugin loading in verl/__init__.py and the
    # config fields whose settings silently bypass us.
    dict(id="{*}", kind="string-literal", under="verl/__init__.py", value="{{*}}", need=REQ,
         each=("VERL_PLUGINS_ENV", "VERL_MODULES_ENV", "VERL_PLUGINS_DEFAULT", "VERL_PLUGINS_NONE")),
    dict(id="{*}", kind="dataclass-field", target="verl.workers.config.rollout:RolloutConfig", attr="{{*}}",
         need=REQ, each=("VERL_ROLLOUT_NAME", "VERL_ROLLOUT_MTP")),
    dict(id="{*}", kind="dataclass-field", target="verl.workers.config.model:MtpConfig", attr="{{*}}",
         need=REQ, each=("VERL_MTP_ENABLE", "VERL_MTP_ENABLE_ROLLOUT")),
    dict(id="VERL_ROLLOUT_DISAGG_ENABLED", kind="dataclass-field",
         target="verl.workers.config.disaggregation:DisaggregationConfig", attr="enabled", need=REQ),
    dict(id="VERL_PD_REPLICA_NAME", kind="class",
         target="verl.workers.rollout.vllm_rollout.vllm_pd_replica:{VERL_PD_REPLICA_NAME}", need=OPT),
    dict(id="VERL_SERVER_CONFIG_ATTR", kind="instance-attr", target="{VERL_VLLM_SERVER}",
         attr="{VERL_SERVER_CONFIG_ATTR}", need=REQ),
    dict(id="VERL_KEY_BYPASS_MODE", kind="string-literal", under="verl/trainer/ppo/v1/trainer_base.py",
         value="bypass_mode", need=REQ),
    # What veRL's server passes the engine besides engine_kwargs (engine_kwargs.EngineLimits), and the
    # cudagraph mode it defaults to after our _preprocess_engine_kwargs.
    dict(id="RolloutConfig.{*}", kind="dataclass-field", target="verl.workers.config.rollout:RolloutConfig",
         attr="{*}", each="VERL_ROLLOUT_ENGINE_FIELDS", need=REQ),
    dict(id="VERL_DEFAULT_CUDAGRAPH_MODE", kind="string-literal", under=VERL_SERVER_MOD.replace(".", "/") + ".py",
         value="{VERL_DEFAULT_CUDAGRAPH_MODE}", need=OPT),
]

# compat constants that name nothing inside vLLM or veRL, with the reason.
NOT_CHECKED = {
    "VERL_ACQUIRE_PROMPT_IDS": "keyword-only argument LLMServerClient.generate hands to the router's acquire_server "
                               "(no string to find); exercised against installed veRL by tests/unit/test_group_router.py",
    "SUPPORTED_VERL": "version range, not a name",
    "VERL_TRAINER_CLASSES": "pairs of the trainer module/class names checked on their own rows",
    "VERL_PLUGINS_ALL": "same value as VERL_PLUGINS_DEFAULT (checked there)",
    "VERL_KEY_ROLLOUT": "Hydra config path; tests/unit/test_startup_checks_on_cpu.py composes veRL's own YAML with it",
    "VERL_KEY_BYPASS_MODE": "Hydra config path; its field (bypass_mode) is checked on the row of that id",
    "VERL_ROLLOUT_DISAGG_ENABLED": "dotted path; its field (DisaggregationConfig.enabled) is checked on the row of that id",
    "VERL_KEY_MODEL_MTP": "Hydra config path; tests/unit/test_startup_checks_on_cpu.py composes veRL's own YAML with it",
    "SUPPORTED_VLLM": "version range, not a name",
    "VLLM_V2_RUNNER_FOLLOWS_SCHEDULED_K": "version boundary (see the per-version facts this tool prints)",
    "SPECROLLOUT_WORKER_EXTENSION": "our own class",
    "WORKER_RELOAD_METHOD": "our own method name",
    "WORKER_GROUP_STATS_METHOD": "our own method name",
    "WORKER_KEEP_DRAFT_METHOD": "our own method name",
    "WORKER_DECOUPLED_VERSION_METHOD": "our own method name",
    "WORKER_DECOUPLED_IDLE_METHOD": "our own method name",
    "VLLM_SLEEP_LEVEL_DISCARDS_WEIGHTS": "a sleep level number; the 'sleep level 2' fact reads Worker.sleep's branch on it",
    "MODEL_FREE_DRAFT_METHODS": "speculative method names (user config values)",
    "VLLM_DRAFT_SHARED_MODULES": "parameter-name substrings of the draft model's checkpoint",
    "HF_DECODER_ATTRS": "HF transformers model layout, not vLLM",
    "HF_LAYERS_ATTR": "HF transformers model layout, not vLLM",
    "HF_EMBED_ATTR": "HF transformers model layout, not vLLM",
    "HF_FINAL_NORM_ATTR": "HF transformers model layout, not vLLM",
}


# --------------------------------------------------------------------------------- compat

@lru_cache(maxsize=None)
def compat_constants(path: str = COMPAT_PATH) -> Dict[str, Any]:
    """Module-level UPPER_CASE constants of compat.py, read without importing it."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out: Dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        if not name.isupper():
            continue
        try:
            out[name] = ast.literal_eval(value)
        except ValueError:
            continue
    return out


_TEMPLATE = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


def _fill(value: Any, consts: Dict[str, Any], used: set, elem: Optional[str]) -> Any:
    if not isinstance(value, str):
        return value
    if elem is not None:
        value = value.replace("{*}", elem)

    def sub(m: "re.Match") -> str:
        if m.group(1) not in consts:
            raise KeyError(f"compat.py has no {m.group(1)}")
        used.add(m.group(1))
        return str(consts[m.group(1)])

    return _TEMPLATE.sub(sub, value)


def expand_rows(rows: List[Dict[str, Any]], consts: Dict[str, Any], used: set) -> List[Dict[str, Any]]:
    out = []
    for row in rows:
        each = row.get("each")
        if each is None:
            elems: List[Optional[str]] = [None]
        elif isinstance(each, str):
            used.add(each)
            elems = [str(e) for e in consts[each]]
        else:
            elems = list(each)
        for e in elems:
            r = {k: _fill(v, consts, used, e) for k, v in row.items() if k != "each"}
            if isinstance(r.get("of"), tuple):
                r["of"] = tuple(_fill(x, consts, used, e) for x in r["of"])
            if "index_from" in r:
                used.add(r["index_from"])
                r["index"] = int(consts[r["index_from"]]) + int(r.get("index_offset", 0))
            out.append(r)
    return out


def unchecked_compat(consts: Dict[str, Any], used: set) -> List[str]:
    prefixes = ("VLLM_", "VERL_", "SCHED_", "HF_")
    return sorted(n for n in consts if n not in used and n not in NOT_CHECKED
                  and (n.startswith(prefixes) or isinstance(consts[n], (str, tuple))))


# ----------------------------------------------------------------------------- source tree

class SourceTree:
    """Python sources under `root` (the folder holding the top-level package), parsed on demand."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._ast: Dict[str, Optional[ast.Module]] = {}

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def module_file(self, mod: str) -> Optional[str]:
        base = os.path.join(self.root, *mod.split("."))
        for cand in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(cand):
                return cand
        return None

    def parse(self, path: str) -> Optional[ast.Module]:
        if path not in self._ast:
            try:
                with open(path, encoding="utf-8") as f:
                    self._ast[path] = ast.parse(f.read(), path)
            except (OSError, SyntaxError, UnicodeDecodeError):
                self._ast[path] = None
        return self._ast[path]

    def files_under(self, under: str) -> Iterable[str]:
        p = os.path.join(self.root, under)
        if os.path.isfile(p):
            yield p
            return
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fn in sorted(filenames):
                if fn.endswith(".py"):
                    yield os.path.join(dirpath, fn)


def _top_level(body: List[ast.stmt]) -> Iterable[ast.stmt]:
    """Module-level statements, including those inside if/try blocks (conditional definitions)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody):
                yield from _top_level(part)
            for h in node.handlers:
                yield from _top_level(h.body)


def _abs_module(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = mod.split(".")
    # mod names a module; for "from . import x" inside pkg/__init__.py the package is mod itself,
    # which module_of() accounts for by passing "pkg.__init__".
    base = parts[: len(parts) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


class Lookup:
    """Find classes, methods and attributes by name in a SourceTree, following imports and bases."""

    def __init__(self, tree: SourceTree):
        self.t = tree

    def _module(self, mod: str) -> Tuple[Optional[str], Optional[ast.Module], str]:
        path = self.t.module_file(mod)
        if path is None:
            return None, None, mod
        key = mod + ".__init__" if path.endswith("__init__.py") else mod
        return path, self.t.parse(path), key

    def module_attr(self, mod: str, name: str, depth: int = 0) -> Optional[Tuple[str, ast.AST, str]]:
        """(file, node, module) where `name` is defined at module level; follows `from x import`."""
        path, tree, key = self._module(mod)
        if tree is None or depth > 8:
            return None
        imported = None
        for node in _top_level(tree.body):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return path, node, mod
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return path, node, mod
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                return path, node, mod
            if isinstance(node, ast.ImportFrom) and imported is None:
                for a in node.names:
                    if (a.asname or a.name) == name:
                        imported = (_abs_module(key, node), a.name)
        if imported is not None:
            src_mod, src_name = imported
            hit = self.module_attr(src_mod, src_name, depth + 1)
            if hit is None and self.t.module_file(f"{src_mod}.{src_name}"):
                return self.t.module_file(f"{src_mod}.{src_name}"), tree, f"{src_mod}.{src_name}"
            return hit
        return None

    def cls(self, qual: str) -> Optional[Tuple[str, ast.ClassDef, str]]:
        mod, _, name = qual.partition(":")
        hit = self.module_attr(mod, name)
        if hit is None or not isinstance(hit[1], ast.ClassDef):
            return None
        return hit  # type: ignore[return-value]

    def _bases(self, path: str, node: ast.ClassDef, mod: str) -> List[Tuple[str, ast.ClassDef, str]]:
        out = []
        for b in node.bases:
            if isinstance(b, ast.Name):
                hit = self.module_attr(mod, b.id)
            elif isinstance(b, ast.Attribute) and isinstance(b.value, ast.Name):
                hit = self._attr_base(mod, b.value.id, b.attr)
            else:
                hit = None
            if hit is not None and isinstance(hit[1], ast.ClassDef):
                out.append(hit)
        return out

    def _attr_base(self, mod: str, alias: str, name: str):
        path, tree, key = self._module(mod)
        if tree is None:
            return None
        for node in _top_level(tree.body):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if (a.asname or a.name) == alias:
                        return self.module_attr(a.name, name)
        return None

    def mro(self, qual: str) -> List[Tuple[str, ast.ClassDef, str]]:
        """The class and its bases that lie inside the tree, nearest first."""
        first = self.cls(qual)
        if first is None:
            return []
        out, seen, todo = [], set(), [first]
        while todo and len(out) < 32:
            cur = todo.pop(0)
            key = (cur[0], cur[1].name)
            if key in seen:
                continue
            seen.add(key)
            out.append(cur)
            todo.extend(self._bases(*cur))
        return out

    def method(self, qual: str, name: str):
        for path, node, _mod in self.mro(qual):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == name:
                    return path, node, item
                if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                        for t in item.targets):
                    return path, node, item
        return None

    def instance_attr(self, qual: str, name: str):
        for path, node, _mod in self.mro(qual):
            for item in node.body:
                if _declares(item, name):
                    return path, node, "class body", item.lineno
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for sub in ast.walk(item):
                    if _assigns_attr(sub, name, self_only=True):
                        return path, node, item.name, sub.lineno
        return None

    def field(self, qual: str, name: str):
        for path, node, _mod in self.mro(qual):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == name:
                    return path, node, item
        return None


def _declares(item: ast.stmt, name: str) -> bool:
    if isinstance(item, ast.AnnAssign):
        return isinstance(item.target, ast.Name) and item.target.id == name
    if isinstance(item, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in item.targets)
    return False


def _assigns_attr(node: ast.AST, name: str, self_only: bool) -> bool:
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    else:
        return False
    flat = []
    for t in targets:
        flat.extend(t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])
    for t in flat:
        if isinstance(t, ast.Attribute) and t.attr == name:
            if not self_only or (isinstance(t.value, ast.Name) and t.value.id == "self"):
                return True
    return False


def _params(fn: ast.AST) -> Tuple[List[str], bool, bool, List[str]]:
    """(positional names incl. self, has *args, has **kwargs, keyword-only names)."""
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [], True, True, []
    a = fn.args
    return ([x.arg for x in a.posonlyargs + a.args], a.vararg is not None, a.kwarg is not None,
            [x.arg for x in a.kwonlyargs])


# ------------------------------------------------------------------------------------ facts

def _literal_alias(look: Lookup, mod: str, name: str, depth: int = 0) -> List[str]:
    """Strings of a `Name = Literal["a", Other, ...]` alias (nested aliases followed)."""
    hit = look.module_attr(mod, name)
    if hit is None or depth > 6:
        return []
    node = hit[1]
    value = getattr(node, "value", None)
    out: List[str] = []
    if isinstance(value, ast.Subscript):
        sl = value.slice
        elts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        for e in elts:
            if isinstance(e, ast.Constant) and isinstance(e.value, str):
                out.append(e.value)
            elif isinstance(e, ast.Name):
                out.extend(_literal_alias(look, hit[2], e.id, depth + 1))
    return out


def _method_keep_list(look: Lookup, test: ast.AST) -> List[str]:
    """Spec methods named by `method not in get_args(X)`, `method not in (...)`, `method != "y"`."""
    keep: List[str] = []
    for c in ast.walk(test):
        if not (isinstance(c, ast.Compare) and ".method" in ast.unparse(c.left)):
            continue
        comp = c.comparators[0]
        if isinstance(c.ops[0], ast.NotIn) and isinstance(comp, ast.Call) and comp.args \
                and isinstance(comp.args[0], ast.Name):
            keep.extend(_literal_alias(look, "vllm.config.speculative", comp.args[0].id) or [comp.args[0].id])
        elif isinstance(c.ops[0], ast.NotIn) and isinstance(comp, (ast.Tuple, ast.List, ast.Set)):
            keep.extend(str(e.value) for e in comp.elts if isinstance(e, ast.Constant))
        elif isinstance(c.ops[0], ast.NotEq) and isinstance(comp, ast.Constant):
            keep.append(str(comp.value))
    return keep


def _assigns_false(body: List[ast.stmt]) -> bool:
    return any(isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) and s.value.value is False
               for s in body)


def fact_async_default(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """What VllmConfig does with scheduler_config.async_scheduling=None (the default): on or
    off, and which speculative methods keep it on.

    Two layouts are known: up to 0.32 the `is None` branch itself has an elif that turns async
    off for other spec methods; 0.33 computes a reason variable first (only for the V1 runner)
    and the branch tests that variable."""
    path = tree.module_file("vllm.config.vllm")
    mod = tree.parse(path) if path else None
    if mod is None:
        return False, "vllm/config/vllm.py not found", ""
    parent: Dict[ast.AST, ast.AST] = {}
    for node in ast.walk(mod):
        for ch in ast.iter_child_nodes(node):
            parent[ch] = node
    branch = None
    for node in ast.walk(mod):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
                and "async_scheduling" in ast.unparse(node.test.left) \
                and isinstance(node.test.ops[0], ast.Is) \
                and isinstance(node.test.comparators[0], ast.Constant) and node.test.comparators[0].value is None:
            branch = node
            break
    if branch is None:
        return True, "no `async_scheduling is None` branch: off unless asked for", tree.rel(path)
    where = f"{tree.rel(path)}:{branch.lineno}"
    sets_true = any(isinstance(n, ast.Assign) and "async_scheduling" in ast.unparse(n.targets[0])
                    and isinstance(n.value, ast.Constant) and n.value.value is True for n in ast.walk(branch))
    if not sets_true:
        return True, "off by default", where
    keep: List[str] = []
    spec_off_unconditional = False
    reason_vars: set = set()
    for n in ast.walk(branch):
        if not (isinstance(n, ast.If) and _assigns_false(n.body)):
            continue
        src = ast.unparse(n.test)
        if "speculative_config" in src:
            if ".method" in src:
                keep.extend(_method_keep_list(look, n.test))
            elif "disable_padded_drafter_batch" not in src:
                spec_off_unconditional = True
        reason_vars |= {x.id for x in ast.walk(n.test) if isinstance(x, ast.Name)}
    # 0.33 layout: `reason = "..."` set under `if spec.method not in ...` earlier in the function.
    v1_only = False
    fn = branch
    while fn in parent and not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        fn = parent[fn]
    for n in ast.walk(fn):
        if not isinstance(n, ast.If) or ".method" not in ast.unparse(n.test):
            continue
        if any(isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id in reason_vars
                                                  for t in s.targets) for s in n.body):
            keep.extend(_method_keep_list(look, n.test))
            up = parent.get(n)
            while up is not None and up is not fn:
                if isinstance(up, ast.If) and "use_v2_model_runner" in ast.unparse(up.test):
                    v1_only = True
                up = parent.get(up)
    if spec_off_unconditional:
        return True, "on, but off whenever speculative decoding is on", where
    keep = sorted(set(keep))
    shown = ", ".join(f"{m}: {'on' if m in keep else 'off'}" for m in ("eagle3", "draft_model", "mtp", "ngram"))
    scope = " with the V1 runner (V2 runner: on for every method)" if v1_only else ""
    return True, f"on unless incompatible; spec decoding{scope}: {shown} ({len(keep)} methods keep it on)", where


def fact_v2_runner(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """Whether the V2 GPU model runner can be picked by default, and whether it drafts the K the
    scheduler chose (SchedulerOutput.num_spec_tokens_to_schedule) or always the maximum."""
    v2 = tree.module_file("vllm.v1.worker.gpu.model_runner")
    if v2 is None:
        return True, "no V2 model runner", ""
    cfg = tree.module_file("vllm.config.vllm")
    cfg_src = open(cfg, encoding="utf-8").read() if cfg else ""
    with open(v2, encoding="utf-8") as f:
        reads_k = "num_spec_tokens_to_schedule" in f.read()
    dyn_blocks_v2 = '"dynamic speculative decoding"' in cfg_src
    if "DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES" in cfg_src:
        # 0.25-0.28: `any(arch in LIST) or not model_config.is_moe`; 0.24: the list alone.
        fn = _function(tree.parse(cfg), "_is_default_v2_model_runner_model")
        dense = fn is not None and "is_moe" in ast.unparse(fn)
        default = "dense models and listed MoE architectures (GPU with Triton)" if dense else "listed architectures only"
    else:
        default = "every generate model (GPU with Triton)"
    if dyn_blocks_v2:
        verdict = "dynamic K forces the V1 runner"
    elif reads_k:
        verdict = "V2 drafts the scheduled K"
    else:
        # AsyncScheduler still sizes its placeholders by the scheduled K, so async scheduling
        # verifies only K of the drafts; synchronous scheduling verifies them all.
        verdict = "V2 IGNORES the scheduled K: drafts max K every step (async trims verification to K)"
    return True, f"V2 default: {default}; {verdict}", tree.rel(v2)


def _function(mod: Optional[ast.Module], name: str) -> Optional[ast.AST]:
    for n in ast.walk(mod) if mod is not None else ():
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name:
            return n
    return None


def fact_v2_methods(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """Which speculative methods the V2 model runner runs (VllmConfig lists the others as
    unsupported and falls back to V1): `if spec.method in (...)` lists are refused, an
    `elif spec.method not in (...)` list is the only ones allowed."""
    path = tree.module_file("vllm.config.vllm")
    fn = _function(tree.parse(path) if path else None, "_get_v2_model_runner_unsupported_features")
    if fn is None:
        return True, "no V2 runner feature list", ""
    refused: List[set] = []
    allowed: List[set] = []
    for n in ast.walk(fn):
        t = n.test if isinstance(n, ast.If) else None
        if not (isinstance(t, ast.Compare) and ast.unparse(t.left).endswith(".method")
                and isinstance(t.comparators[0], (ast.Tuple, ast.List, ast.Set))):
            continue
        names = {e.value for e in t.comparators[0].elts if isinstance(e, ast.Constant)}
        if isinstance(t.ops[0], ast.In):
            refused.append(names)
        elif isinstance(t.ops[0], ast.NotIn):
            allowed.append(names)
    runs = {m: not any(m in r for r in refused) and all(m in a for a in allowed)
            for m in ("eagle3", "draft_model", "ngram")}
    text = "V2 runs " + ", ".join(f"{m}: {'yes' if ok else 'no'}" for m, ok in runs.items())
    return True, text, f"{tree.rel(path)}:{fn.lineno}"


def fact_k0_skip_runners(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """The K=0 skip wraps compat.VLLM_PROPOSER.propose; say which model runners draft through it."""
    mod, _, cls = row["target"].partition(":")
    leaf = mod.rpartition(".")[2]

    def uses(under: str) -> bool:
        for path in tree.files_under(under):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if cls in text or leaf in text:
                return True
        return False

    v1 = os.path.isfile(os.path.join(tree.root, "vllm/v1/spec_decode/eagle.py")) and uses("vllm/v1/spec_decode/eagle.py")
    v2 = os.path.isdir(os.path.join(tree.root, "vllm/v1/worker/gpu")) and uses("vllm/v1/worker/gpu")
    runners = [n for n, ok in (("V1 (EagleProposer)", v1), ("V2", v2)) if ok]
    return True, "wrapped proposer drafts for: " + (", ".join(runners) or "no runner found"), \
        ("vllm/v1/spec_decode/eagle.py" if v1 else "")


def fact_sleep_level2(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    hit = look.method(GPU_WORKER, "sleep")
    if hit is None:
        return True, "no Worker.sleep", ""
    path, _cls, fn = hit
    names, *_ = _params(fn)
    if "level" not in names:
        return True, "Worker.sleep takes no level", tree.rel(path)
    handles = any(isinstance(n, ast.Compare) and "level" in ast.unparse(n)
                  and any(isinstance(c, ast.Constant) and c.value in (1, 2) for c in n.comparators)
                  for n in ast.walk(fn))
    text = "yes (Worker.sleep(level) branches on level)" if handles else "Worker.sleep(level) passes level on"
    return True, text, f"{tree.rel(path)}:{fn.lineno}"


def _config_function(tree: SourceTree, name: str):
    path = tree.module_file("vllm.config.vllm")
    return path, _function(tree.parse(path) if path else None, name)


def fact_dynamic_sd_cudagraph(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """What VllmConfig does to a full cudagraph mode when the K table is in the speculative config."""
    path, fn = _config_function(tree, "_maybe_override_dynamic_sd_cudagraph_mode")
    if fn is None:
        return True, "no override: the cudagraph mode is kept", tree.rel(path) if path else ""
    src = ast.unparse(fn)
    if "PIECEWISE" not in src:
        return True, "override found, but not to PIECEWISE", f"{tree.rel(path)}:{fn.lineno}"
    who = "unless the V2 runner runs" if "use_v2_model_runner" in src else "for every runner"
    return True, f"full modes become PIECEWISE {who}", f"{tree.rel(path)}:{fn.lineno}"


def fact_dynamic_sd_data_parallel(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """Whether VllmConfig drops the K table when data_parallel_size > 1."""
    path, fn = _config_function(tree, "_maybe_disable_dynamic_sd_for_data_parallel")
    if fn is None:
        return True, "kept with data_parallel_size > 1 (no guard in VllmConfig)", tree.rel(path) if path else ""
    return True, "dropped with data_parallel_size > 1 (static K)", f"{tree.rel(path)}:{fn.lineno}"


def fact_additional_config_hashed(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """Whether VllmConfig.compute_hash (the torch.compile cache key's config part) covers additional_config."""
    hit = look.method("vllm.config.vllm:VllmConfig", "compute_hash")
    if hit is None:
        return True, "no VllmConfig.compute_hash", ""
    path, _cls, fn = hit
    hashed = "additional_config" in ast.unparse(fn)
    return True, ("hashed into VllmConfig.compute_hash" if hashed else "not hashed"), f"{tree.rel(path)}:{fn.lineno}"


def fact_capture_ceiling(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Tuple[bool, str, str]:
    """The default CUDA-graph capture ceiling in tokens (VllmConfig._set_cudagraph_sizes), against compat's."""
    path, fn = _config_function(tree, "_set_cudagraph_sizes")
    if fn is None:
        return True, "no _set_cudagraph_sizes", ""
    numbers = sorted({int(n.value) for n in ast.walk(fn) if isinstance(n, ast.Constant)
                      and isinstance(n.value, int) and not isinstance(n.value, bool) and n.value in (512, 1024)})
    ours = int(row["value"])
    text = f"min(max_num_seqs * (1 + K) * 2, {' or '.join(map(str, numbers)) or '?'}) tokens"
    text += " (as compat says)" if ours in numbers else f" (compat says {ours}: CHECK)"
    return True, text, f"{tree.rel(path)}:{fn.lineno}"


FACTS = {"async_default": fact_async_default, "v2_runner": fact_v2_runner, "v2_methods": fact_v2_methods,
         "k0_skip_runners": fact_k0_skip_runners, "sleep_level2": fact_sleep_level2,
         "dynamic_sd_cudagraph": fact_dynamic_sd_cudagraph, "dynamic_sd_data_parallel": fact_dynamic_sd_data_parallel,
         "additional_config_hashed": fact_additional_config_hashed, "capture_ceiling": fact_capture_ceiling}


# ----------------------------------------------------------------------------------- checks

def _where(tree: SourceTree, path: str, line: int, extra: str = "") -> str:
    return f"{tree.rel(path)}:{line}" + (f" ({extra})" if extra else "")


def _override_rows(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One "override" row per method of our class that calls super().<same name>()."""
    name = row["ours"].partition(":")[2]
    ours = SourceTree(REPO)
    hit = Lookup(ours).cls(row["ours"])
    if hit is None:
        raise FileNotFoundError(f"{row['ours']} not found under {REPO}")
    out = []
    for item in hit[1].body:
        if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        calls_super = any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == item.name
            and isinstance(n.func.value, ast.Call) and isinstance(n.func.value.func, ast.Name)
            and n.func.value.func.id == "super"
            for n in ast.walk(item))
        if calls_super:
            r = dict(row, kind="override", attr=item.name, ours_fn=item,
                     id=f"{name}.{item.name} -> {row['target'].rpartition(':')[2]}.{item.name}")
            out.append(r)
    return out


def check_row(tree: SourceTree, look: Lookup, row: Dict[str, Any]) -> Dict[str, Any]:
    if " | " in row.get("target", ""):
        tried = [check_row(tree, look, dict(row, target=t)) for t in row["target"].split(" | ")]
        hit = next((r for r in tried if r["status"] == "found"), tried[0])
        return dict(hit, what=" | ".join(r["what"] for r in tried))
    kind = row["kind"]
    res = {"id": row["id"], "kind": kind, "need": row["need"], "status": "missing", "where": "", "what": ""}
    target, attr = row.get("target", ""), row.get("attr", "")
    short = target.rpartition(":")[2] or target
    if kind == "class":
        res["what"] = f"class {target}"
        hit = look.cls(target)
        if hit:
            res.update(status="found", where=_where(tree, hit[0], hit[1].lineno))
    elif kind == "module-attr":
        res["what"] = f"module attr {target}"
        mod, _, name = target.partition(":")
        hit = look.module_attr(mod, name)
        if hit:
            res.update(status="found", where=_where(tree, hit[0], getattr(hit[1], "lineno", 1)))
    elif kind == "method":
        res["what"] = f"method {short}.{attr}"
        hit = look.method(target, attr)
        if hit:
            res.update(status="found", where=_where(tree, hit[0], hit[2].lineno, hit[1].name))
    elif kind == "instance-attr":
        res["what"] = f"attribute {short}.{attr}"
        hit = look.instance_attr(target, attr)
        if hit:
            res.update(status="found", where=_where(tree, hit[0], hit[3], f"{hit[1].name}.{hit[2]}"))
    elif kind == "dataclass-field":
        res["what"] = f"field {short}.{attr}"
        hit = look.field(target, attr)
        if hit:
            res.update(status="found", where=_where(tree, hit[0], hit[2].lineno, hit[1].name))
    elif kind in ("params", "param-at-index"):
        mod, _, name = target.partition(":")
        if name:
            hit = look.method(target, attr)
            fn = hit[2] if hit else None
            path = hit[0] if hit else None
        else:
            h = look.module_attr(mod, attr)
            fn, path = (h[1], h[0]) if h else (None, None)
            short = mod
        if kind == "params":
            want = list(row["params"])
            res["what"] = f"{short}.{attr}({', '.join(want)})"
        else:
            want = [row["param"]]
            res["what"] = f"{short}.{attr} arg {row['index']} = {row['param']}"
        if fn is not None:
            names, *_ = _params(fn)
            got = [n for n in names if n not in ("self", "cls")] if kind == "params" else names
            ok = got[:len(want)] == want if kind == "params" else (
                len(names) > row["index"] and names[row["index"]] == row["param"])
            if ok:
                res.update(status="found", where=_where(tree, path, fn.lineno))
            else:
                res.update(status="mismatch", where=_where(tree, path, fn.lineno, f"params {names}"))
    elif kind == "override":
        ours_fn = row["ours_fn"]
        res["what"] = f"override {short}.{attr}"
        hit = look.method(target, attr)
        if hit is None and attr.startswith("__") and hasattr(object, attr):
            # e.g. __new__: super() reaches object's own, outside any source tree.
            res.update(status="found", where="object (builtin)")
        elif hit:
            base_fn = hit[2]
            ok, why = _compatible(ours_fn, base_fn)
            res.update(status="found" if ok else "mismatch",
                       where=_where(tree, hit[0], base_fn.lineno, hit[1].name if ok else why))
    elif kind == "string-literal":
        res["what"] = f"string {row['value']!r} under {row['under']}"
        hit = _find_string(tree, row["under"], row["value"])
        if hit:
            res.update(status="found", where=_where(tree, *hit))
    elif kind == "attr-anywhere":
        res["what"] = f"attribute .{attr} under {row['under']}"
        hit = _find_attr(tree, row["under"], attr)
        if hit:
            res.update(status="found", where=_where(tree, *hit))
    elif kind == "fact":
        _ok, text, where = FACTS[row["fn"]](tree, look, row)
        res.update(status="info", what=text, where=where)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return res


def _compatible(ours: ast.AST, base: ast.AST) -> Tuple[bool, str]:
    """Can our override stand in for the base method? Our named parameters must be the base's,
    in order; without *args/**kwargs we must also take every parameter the base takes."""
    o_names, o_var, o_kw, o_kwonly = _params(ours)
    b_names, b_var, b_kw, b_kwonly = _params(base)
    if not isinstance(base, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return True, ""
    if b_names[: len(o_names)] != o_names:
        return False, f"base params {b_names}, ours {o_names}"
    if not o_var and len(b_names) > len(o_names):
        return False, f"base has more params {b_names[len(o_names):]}"
    if not o_kw and any(k not in o_kwonly for k in b_kwonly):
        return False, f"base keyword-only {b_kwonly}"
    if isinstance(ours, ast.AsyncFunctionDef) != isinstance(base, ast.AsyncFunctionDef):
        return False, "async/sync differs"
    return True, ""


def _modules_mentioning(tree: SourceTree, under: str, text: str):
    """(path, parsed module) of the files under ``under`` whose source contains ``text``."""
    for path in tree.files_under(under):
        try:
            with open(path, encoding="utf-8") as f:
                if text not in f.read():
                    continue
        except (OSError, UnicodeDecodeError):
            continue
        mod = tree.parse(path)
        if mod is not None:
            yield path, mod


def _find_string(tree: SourceTree, under: str, value: str) -> Optional[Tuple[str, int]]:
    for path, mod in _modules_mentioning(tree, under, value):
        for n in ast.walk(mod):
            if isinstance(n, ast.Constant) and n.value == value:
                return path, n.lineno
    return None


def _find_attr(tree: SourceTree, under: str, name: str) -> Optional[Tuple[str, int]]:
    for path, mod in _modules_mentioning(tree, under, name):
        for n in ast.walk(mod):
            if _assigns_attr(n, name, self_only=False):
                return path, n.lineno
            if isinstance(n, ast.ClassDef):
                for item in n.body:
                    if _declares(item, name):
                        return path, item.lineno
    return None


def run_checks(root: str, rows: List[Dict[str, Any]], consts: Dict[str, Any], used: set) -> List[Dict[str, Any]]:
    tree = SourceTree(root)
    look = Lookup(tree)
    expanded = []
    for r in expand_rows(rows, consts, used):
        expanded.extend(_override_rows(r) if r["kind"] == "overrides" else [r])
    results: List[Dict[str, Any]] = []
    by_id: Dict[str, Dict[str, Any]] = {}
    for r in expanded:
        if r["kind"] == "any-of":
            continue
        res = check_row(tree, look, r)
        results.append(res)
        by_id[res["id"]] = res
    for r in expanded:
        if r["kind"] != "any-of":
            continue
        found = [i for i in r["of"] if by_id.get(i, {}).get("status") == "found"]
        missing_ids = [i for i in r["of"] if i not in by_id]
        if missing_ids:
            raise KeyError(f"any-of row {r['id']!r} names unknown rows {missing_ids}")
        results.append({"id": r["id"], "kind": "any-of", "need": r["need"], "what": " | ".join(r["of"]),
                        "status": "found" if found else "missing", "where": ", ".join(found)})
    return results


# ----------------------------------------------------------------------------- facts table

def _major_minor(version: str) -> Tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def check_facts(version: str, results: List[Dict[str, Any]], consts: Dict[str, Any], used: set) -> List[Dict[str, Any]]:
    """compat.VLLM_VERSION_FACTS against this tree: for each fact with `check` rows, does what the
    rows found agree with the table's value for this version? [] outside the supported range."""
    used.add("VLLM_VERSION_FACTS")
    lo, hi = (tuple(x) for x in consts["SUPPORTED_VLLM"])
    mm = _major_minor(version)
    if not lo <= mm <= hi:
        return []
    by_id = {r["id"]: r for r in results}
    out = []
    for fact in consts.get("VLLM_VERSION_FACTS", ()):
        if not fact.get("check"):
            continue
        value = None
        for first, v in fact["since"]:
            if mm >= tuple(first):
                value = v
        rows = [by_id.get(i) for i in fact["check"]]
        unknown = [i for i, r in zip(fact["check"], rows) if r is None]
        if unknown:
            raise KeyError(f"VLLM_VERSION_FACTS[{fact['key']!r}] names unknown rows {unknown}")
        report = " | ".join(r["what"] if r["status"] == "info" and r["kind"] == "fact" else r["status"]
                            for r in rows)
        if "expect" in fact:
            agrees = re.search(fact["expect"][value], report) is not None
        else:
            agrees = all(r["status"] == "found" for r in rows) == (value == "yes")
        out.append({"fact": fact["key"], "table": value, "tree": report,
                    "status": "agrees" if agrees else "DISAGREES"})
    return out


# ------------------------------------------------------------------------------------ CLI

def tree_version(root: str, pkg: str) -> str:
    """Version of the package at root, from its _version.py / version file or a dist-info."""
    if pkg == "vllm":
        p = os.path.join(root, "vllm", "_version.py")
        if os.path.isfile(p):
            with open(p) as f:
                m = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)", f.read())
            if m:
                return m.group(1)
    else:
        p = os.path.join(root, "verl", "version", "version")
        if os.path.isfile(p):
            with open(p) as f:
                return f.read().strip()
    for d in sorted(os.listdir(root)):
        if d.endswith(".dist-info") and d.replace("-", "_").lower().startswith(pkg):
            return d[:-len(".dist-info")].split("-", 1)[-1]
    return "unknown"


def package_root(path: str, pkg: str) -> str:
    """Accept the folder holding pkg/ or pkg/ itself."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, pkg)):
        return path
    if os.path.basename(path) == pkg and os.path.isdir(path):
        return os.path.dirname(path)
    raise FileNotFoundError(f"no {pkg}/ package in {path}")


def installed_root(pkg: str) -> str:
    # find_spec of a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{pkg} is not installed for {sys.executable}")
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def format_table(section: str, root: str, version: str, results: List[Dict[str, Any]]) -> str:
    lines = [f"== {section} {version}  ({root})"]
    w_id = max([len(r["id"]) for r in results] + [4])
    w_what = min(max([len(r["what"]) for r in results] + [4]), 70)
    lines.append(f"{'need':<8} {'name':<{w_id}} {'what':<{w_what}} {'status':<8} where")
    for r in results:
        status = r["status"] if r["status"] in ("found", "info") else r["status"].upper()
        lines.append(f"{r['need']:<8} {r['id']:<{w_id}} {r['what']:<{w_what}} {status:<8} {r['where']}")
    return "\n".join(lines)


def failures(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in results if r["need"] == REQ and r["status"] not in ("found", "info")]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vllm_root", nargs="?", help="folder holding vllm/ (an unpacked wheel or site-packages)")
    ap.add_argument("--installed", action="store_true", help="check the vLLM installed for this interpreter")
    ap.add_argument("--verl", metavar="PATH", help="folder holding verl/")
    ap.add_argument("--verl-installed", action="store_true", help="check the veRL installed for this interpreter")
    ap.add_argument("--compat", default=COMPAT_PATH, help="compat.py to read the names from")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    try:
        vroot = installed_root("vllm") if args.installed else (
            package_root(args.vllm_root, "vllm") if args.vllm_root else None)
        eroot = installed_root("verl") if args.verl_installed else (
            package_root(args.verl, "verl") if args.verl else None)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if vroot is None and eroot is None:
        ap.print_usage(sys.stderr)
        print("error: give a vLLM tree, --installed, --verl PATH or --verl-installed", file=sys.stderr)
        return 2

    consts = compat_constants(args.compat)
    used: set = set()
    report: Dict[str, Any] = {}
    for section, root, rows, pkg in (("vllm", vroot, VLLM_ROWS, "vllm"), ("verl", eroot, VERL_ROWS, "verl")):
        if root is None:
            expand_rows(rows, consts, used)  # still count the names as covered
            continue
        results = run_checks(root, rows, consts, used)
        version = tree_version(root, pkg)
        report[section] = {"root": root, "version": version, "results": results,
                           "missing_required": [r["id"] for r in failures(results)]}
        if section == "vllm":
            facts = check_facts(version, results, consts, used)
            report[section]["facts"] = facts
            report[section]["facts_disagree"] = [f["fact"] for f in facts if f["status"] != "agrees"]
    used.add("VLLM_VERSION_FACTS")  # also when no vLLM tree was given
    report["unchecked_compat"] = unchecked_compat(consts, used)
    report["ok"] = not any(report[s]["missing_required"] or report[s].get("facts_disagree")
                           for s in ("vllm", "verl") if s in report)

    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for s in ("vllm", "verl"):
            if s in report:
                print(format_table(s, report[s]["root"], report[s]["version"], report[s]["results"]))
                miss = report[s]["missing_required"]
                print(f"-- {s}: {'all required names found' if not miss else 'MISSING required: ' + ', '.join(miss)}")
                for f in report[s].get("facts", []):
                    print(f"   fact {f['fact']}: compat says {f['table']!r}; tree: {f['tree']}  -> {f['status']}")
                print()
        if report["unchecked_compat"]:
            print("compat names no row checks (add a row or a NOT_CHECKED reason): "
                  + ", ".join(report["unchecked_compat"]))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
