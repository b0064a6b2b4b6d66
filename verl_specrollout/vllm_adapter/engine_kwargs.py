"""Turn a SpecRolloutConfig into the vLLM engine arguments that switch speculation on.

This is the one place that decides what vLLM sees; veRL's server subclass
(verl_server.py), the quickstart and the benchmarks all go through it, so the
tested path and the production path are the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping, MutableMapping, Optional

from verl_specrollout.config import (ADDITIONAL_CONFIG_KEY, SpecRolloutConfig, SpecRolloutConfigError, _read_json,
                                     _vocab_size, validate_table)

logger = logging.getLogger(__name__)

SCHEDULER_CLS = "verl_specrollout.vllm_adapter.scheduler.SpecRolloutScheduler"
# The planner's file channels, run-specific (veRL's server picks a stats file per process): they reach the
# scheduler through the environment, which engine processes inherit from the process that starts them,
# and never through additional_config, which vLLM hashes into its torch.compile cache key
# (config.RUN_SPECIFIC_KEYS). vLLM hashes only the environment variables it knows (envs.compile_factors).
STATS_PATH_ENV = "SPECROLLOUT_STATS_PATH"
CONTROL_PATH_ENV = "SPECROLLOUT_CONTROL_PATH"
# float32 draft probabilities held per draft token, times the copy made while they are used (see
# draft_probs_reserve_bytes).
_PROB_BYTES = 4
_PROB_COPIES = 2


@dataclasses.dataclass
class EngineLimits:
    """What the engine will run with besides the kwargs we see (`existing`): veRL's server passes these from
    its RolloutConfig (vLLMHttpServer.launch_server), and a key in `existing` wins over them, as in veRL's
    own argument dict. None: unknown (the part of the plan that needs it is skipped, and logged)."""

    max_num_seqs: Optional[int] = None
    max_num_batched_tokens: Optional[int] = None
    enforce_eager: Optional[bool] = None
    gpu_memory_utilization: Optional[float] = None
    cudagraph_capture_sizes: Optional[list] = None  # veRL's rollout.cudagraph_capture_sizes (written after us)
    device_memory_bytes: Optional[int] = None       # total memory of one of the engine's GPUs
    on_cpu: bool = False

    def get(self, existing: Mapping, name: str) -> Any:
        value = existing.get(name)
        return value if value is not None else getattr(self, name)


def channel_env(cfg: SpecRolloutConfig, stats_path: Optional[str] = None) -> dict:
    """The environment the scheduler reads its file channels from (None: unset)."""
    return {STATS_PATH_ENV: stats_path or cfg.planner.stats_path, CONTROL_PATH_ENV: cfg.planner.control_path}


def apply_channel_env(cfg: SpecRolloutConfig, stats_path: Optional[str] = None,
                      env: Optional[MutableMapping[str, str]] = None) -> dict:
    """Set (or clear) the channels in this process's environment before it starts an engine, which inherits
    them; a channel left unset is removed, so an engine never writes to a file an earlier one was given."""
    env = os.environ if env is None else env
    values = channel_env(cfg, stats_path)
    for name, value in values.items():
        if value:
            env[name] = str(value)
        else:
            env.pop(name, None)
    return values


def initial_table(cfg: SpecRolloutConfig) -> list:
    """The batch-size -> K table the engine starts with (vLLM's [min_bs, max_bs, K] rows).

    adaptive: the planner's first cold-start table (K = 1 at large batch sizes, up to max_k where
    the batch is small: planner/planner.py); the planner rewrites it live from measurements.
    static: the user's table, else max_k everywhere. off: K=0 everywhere (drafts nothing).
    """
    p = cfg.planner
    if p.table is not None:
        return [list(r) for r in validate_table(p.table, cfg.max_k)]
    if p.mode == "adaptive":
        from verl_specrollout.planner.planner import initial_rows

        return initial_rows(cfg.max_k, p.max_batch)
    k = 0 if p.mode == "off" else cfg.max_k
    return [[1, p.max_batch, k]]


def needs_dynamic_k(cfg: SpecRolloutConfig) -> bool:
    """Whether K varies at all: not for a table of max_k everywhere (planner.mode=static without a table),
    which is vLLM's static speculation (and is never sent as a table)."""
    return cfg.planner.mode == "adaptive" or any(row[2] != cfg.max_k for row in initial_table(cfg))


def _user_chose_v2_runner(env: Mapping[str, str]) -> bool:
    from verl_specrollout import compat

    return str(env.get(compat.VLLM_ENV_USE_V2_MODEL_RUNNER, "")).strip().lower() in ("1", "true")


def resolve_graph_plan(cfg: SpecRolloutConfig, existing: Mapping, env: Optional[Mapping[str, str]] = None) -> tuple:
    """(plan, why): `keep_user_mode` (our scheduler installs the K table; vLLM keeps the job's cudagraph
    mode), `piecewise` (the table goes to vLLM as speculative_config.num_speculative_tokens_per_batch_size,
    which turns a full cudagraph mode into PIECEWISE), or `static` (K is max_k everywhere: no table).

    Why keep_user_mode is safe on the V1 runner (read in vLLM 0.24 and 0.31): the runner drafts the K the
    scheduler put in SchedulerOutput.num_spec_tokens_to_schedule and never reads the table
    (v1/worker/gpu_model_runner.py:4879-4989 in 0.24); it calls a step a uniform decode only when every
    request has exactly 1 + num_speculative_tokens query tokens (_is_uniform_decode, :3801-3819 in 0.24,
    :3853 in 0.31), and only such a step can hit a FULL decode graph key (v1/cudagraph_dispatcher.py in
    0.24: :140-145, :203-231 and :307-311; the same code 2 lines up in 0.31). A step at K < max_k is a mixed batch and replays the PIECEWISE graph, as
    under vLLM's own override. The table's other reader, 0.24's V2-runner check (config/vllm.py:2034),
    only matters for the V2 runner, which pin_model_runner keeps off below 0.32."""
    env = os.environ if env is None else env
    if not needs_dynamic_k(cfg):
        return "static", f"K = max_k = {cfg.max_k} everywhere: vLLM's static speculation, no K table"
    plan = cfg.engine.graph_plan
    user_sched = existing.get("scheduler_cls")
    if plan == "piecewise":
        return "piecewise", "engine.graph_plan=piecewise"
    if plan == "keep_user_mode":
        if user_sched:
            raise SpecRolloutConfigError(
                "specrollout.engine.graph_plan=keep_user_mode needs our scheduler to install the K table, but "
                "rollout.engine_kwargs.vllm.scheduler_cls is set; use engine.graph_plan=piecewise to keep yours")
        return "keep_user_mode", "engine.graph_plan=keep_user_mode"
    if user_sched:
        return "piecewise", "the job's own scheduler_cls reads the K table from vLLM's config"
    if _user_chose_v2_runner(env):
        return "piecewise", "vLLM's V2 runner was chosen: it sizes its full graphs from vLLM's K table"
    # vLLM forces PIECEWISE with a dynamic K table "for reliability". keep_user_mode follows from its
    # code (above) but has not run on a GPU yet; a full graph replayed for the wrong step shape would
    # change the target's logits, i.e. break losslessness. Until a GPU run shows keep_user_mode exact
    # (greedy equality, T=1 marginals) and faster, auto keeps vLLM's own path.
    return "piecewise", "engine.graph_plan=auto: vLLM's own dynamic-K path until a GPU run validates keep_user_mode"


def capture_ceilings(max_num_seqs: int, max_num_batched_tokens: int, max_k: int) -> tuple:
    """(vLLM's default capture ceiling in tokens, the one that covers every K): vLLM captures up to
    min(max_num_seqs * (1 + max_k) * 2, 512) tokens (compat.VLLM_DEFAULT_CAPTURE_CEILING), so a step of
    B requests at K runs in a graph only for B <= 512 / (1 + K), where a plain engine's graphs cover
    B <= min(max_num_seqs, 512). Covering that at every K takes min(max_num_seqs, 512) * (1 + max_k).
    Both are capped at max_num_batched_tokens (vLLM drops sizes above it)."""
    from verl_specrollout import compat

    ceiling = compat.VLLM_DEFAULT_CAPTURE_CEILING
    default = min(max_num_seqs * (1 + max_k) * 2, ceiling, max_num_batched_tokens)
    cover = min(min(max_num_seqs, ceiling) * (1 + max_k), max_num_batched_tokens)
    return default, cover


def _compilation_config(existing: Mapping) -> dict:
    from verl_specrollout import compat

    cc = existing.get(compat.VLLM_ARG_COMPILATION_CONFIG) or {}
    if isinstance(cc, str):  # veRL accepts the JSON text too (launch_server: json.loads)
        cc = json.loads(cc)
    return dict(cc)


def _graphs_on(existing: Mapping, limits: EngineLimits) -> Optional[str]:
    """The cudagraph mode the engine asks for (veRL's default when the job names none), or None when
    the engine runs eagerly."""
    from verl_specrollout import compat

    if limits.get(existing, compat.VLLM_ARG_ENFORCE_EAGER):
        return None
    mode = _compilation_config(existing).get(compat.VLLM_CC_CUDAGRAPH_MODE) or compat.VERL_DEFAULT_CUDAGRAPH_MODE
    mode = str(getattr(mode, "name", mode)).upper()
    return None if mode in (compat.VLLM_CUDAGRAPH_MODE_NONE, "0") else mode


def plan_capture_size(cfg: SpecRolloutConfig, existing: Mapping, limits: EngineLimits) -> tuple:
    """(compilation_config to send or None, what was decided, for the log)."""
    from verl_specrollout import compat

    mode = _graphs_on(existing, limits)
    if mode is None:
        return None, "eager (no CUDA graphs)"
    cc = _compilation_config(existing)
    if cc.get(compat.VLLM_CC_CAPTURE_SIZES) or cc.get(compat.VLLM_CC_MAX_CAPTURE_SIZE) \
            or limits.cudagraph_capture_sizes:
        return None, "capture sizes as the job set them"
    seqs = limits.get(existing, compat.VLLM_ARG_MAX_NUM_SEQS)
    tokens = limits.get(existing, compat.VLLM_ARG_MAX_NUM_BATCHED_TOKENS)
    if not seqs or not tokens:
        return None, "vLLM's capture sizes (max_num_seqs / max_num_batched_tokens unknown here)"
    default, cover = capture_ceilings(int(seqs), int(tokens), cfg.max_k)
    if cfg.engine.graph_capture != "all_k" or cover <= default:
        return None, f"vLLM's capture sizes, up to {default} tokens (B <= {default // (1 + cfg.max_k)} at K={cfg.max_k})"
    cc[compat.VLLM_CC_MAX_CAPTURE_SIZE] = cover
    return cc, (f"capture sizes up to {cover} tokens (vLLM's default {default}): B <= {cover // (1 + cfg.max_k)} "
                f"at K={cfg.max_k}, B <= {min(int(seqs), cover)} at K=0")


def draft_vocab(cfg: SpecRolloutConfig, target_path: Optional[str]) -> Optional[int]:
    """Vocabulary of the draft probabilities: the target's (an EAGLE-3 head with its own smaller vocabulary
    scatters its logits into the target's, vllm/model_executor/models/llama_eagle3.py compute_logits)."""
    sizes = []
    for path in (target_path, cfg.draft_path):
        conf = _read_json(os.path.join(path, "config.json")) if path else None
        v = _vocab_size(conf) if conf else None
        if isinstance(v, int) and v > 0:
            sizes.append(v)
    return max(sizes) if sizes else None


def draft_probs_reserve_bytes(max_num_seqs: int, max_k: int, vocab: int) -> int:
    """Bytes of probabilistic drafts vLLM's start-up profile does not count, at most: the proposer keeps the
    [B, K, vocab] float32 probabilities of a step's drafts until the next step verifies them
    (llm_base_proposer.py:551-556, :675-686 in 0.24: a stack of the per-position tensors, so two copies at
    that moment) and the V1 runner gathers the drafted rows into another [B x K, vocab] tensor for the
    rejection sampler (gpu_model_runner.py:4835-4862) while the first is alive. The profile runs the
    rejection sampler with one draft token per request (_dummy_sampler_run, gpu_model_runner.py:6119-6149),
    which this bound does not subtract (margin for the target's [B x (1 + K), vocab] logits, also beyond the
    profile's 2 x B rows)."""
    return _PROB_COPIES * max_num_seqs * max_k * vocab * _PROB_BYTES


def plan_draft_probs_memory(cfg: SpecRolloutConfig, spec: Mapping, existing: Mapping, limits: EngineLimits,
                            target_path: Optional[str]) -> tuple:
    """(kwargs to send, what was decided or None when probabilistic drafts are off)."""
    from verl_specrollout import compat

    if spec.get(compat.VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR) != "probabilistic":
        return {}, None
    if not cfg.engine.reserve_draft_probs:
        return {}, "probabilistic drafts: no memory reserved (engine.reserve_draft_probs=false)"
    seqs = limits.get(existing, compat.VLLM_ARG_MAX_NUM_SEQS)
    vocab = draft_vocab(cfg, target_path)
    if not seqs or not vocab:
        return {}, ("probabilistic drafts: memory not reserved (max_num_seqs or the vocabulary unknown here); "
                    "the draft probabilities are beyond vLLM's memory profile")
    reserve = draft_probs_reserve_bytes(int(seqs), cfg.max_k, int(vocab))
    what = (f"probabilistic drafts: {reserve / 2**30:.2f} GiB beyond vLLM's memory profile (2 x max_num_seqs "
            f"{seqs} x max_k {cfg.max_k} x vocab {vocab} x 4 B)")
    if limits.on_cpu:
        return {}, what + "; not reserved on vLLM-CPU (its KV cache has its own budget)"
    kv_bytes = existing.get(compat.VLLM_ARG_KV_CACHE_MEMORY_BYTES)
    if kv_bytes:
        if int(kv_bytes) <= reserve:
            raise SpecRolloutConfigError(
                f"kv_cache_memory_bytes={kv_bytes} cannot hold the {reserve} bytes probabilistic drafts need; raise "
                "it, lower max_num_seqs or max_k, or set specrollout.draft_sampling=greedy")
        return ({compat.VLLM_ARG_KV_CACHE_MEMORY_BYTES: int(kv_bytes) - reserve},
                what + f"; kv_cache_memory_bytes {kv_bytes} -> {int(kv_bytes) - reserve}")
    util = limits.get(existing, compat.VLLM_ARG_GPU_MEMORY_UTILIZATION)
    total = limits.device_memory_bytes
    if not util or not total:
        return {}, what + ("; NOT reserved: the GPU's memory or gpu_memory_utilization is unknown here, lower "
                           "gpu_memory_utilization by that much yourself")
    new_util = float(util) - reserve / float(total)
    if new_util <= 0.05:
        raise SpecRolloutConfigError(
            f"gpu_memory_utilization={util} leaves no room for the {reserve / 2**30:.2f} GiB probabilistic drafts "
            "need; raise it, lower max_num_seqs or max_k, or set specrollout.draft_sampling=greedy")
    new_util = round(new_util, 4)
    return ({compat.VLLM_ARG_GPU_MEMORY_UTILIZATION: new_util},
            what + f"; gpu_memory_utilization {util} -> {new_util} of {total / 2**30:.1f} GiB")


def build_engine_kwargs(
    cfg: SpecRolloutConfig,
    target_path: Optional[str] = None,
    existing: Optional[dict] = None,
    draft_load_config_supported: Optional[bool] = None,
    limits: Optional[EngineLimits] = None,
    env: Optional[Mapping[str, str]] = None,
) -> dict:
    """Engine kwargs to merge into vLLM's (veRL's `engine_kwargs.vllm` or `vllm.LLM(**kw)`).

    `existing` are the kwargs the user already passes; a hand-written speculative_config
    there conflicts with ours and is rejected rather than silently overridden. `limits`: what the
    engine runs with besides `existing` (veRL's server passes its RolloutConfig's values); without
    it the capture sizes and the draft-probability memory are left to vLLM unless `existing` says
    enough. `env`: the environment the engine will see (this process's by default).
    """
    if not cfg.enable:
        return {}
    cfg.validate(target_path)
    existing = existing or {}
    if limits is None:
        from verl_specrollout import compat

        limits = EngineLimits(on_cpu=compat.vllm_on_cpu())
    if existing.get("speculative_config"):
        raise SpecRolloutConfigError(
            "rollout.engine_kwargs.vllm.speculative_config is set and specrollout.enable=true; "
            "configure speculation in one place (the specrollout block)"
        )
    # vLLM knows the base method only; group drafting is layered on its model runner
    # (vllm_adapter/group_proposer.py), switched on by the config in additional_config.
    spec: dict[str, Any] = {"method": cfg.base_method, "num_speculative_tokens": cfg.max_k}
    if not cfg.has_draft_model:
        spec["prompt_lookup_min"] = cfg.prompt_lookup_min
        spec["prompt_lookup_max"] = cfg.prompt_lookup_max
    else:
        spec["model"] = cfg.draft_path
        if draft_load_config_supported is None:
            from verl_specrollout import compat

            draft_load_config_supported = compat.vllm_has_draft_load_config()
        if draft_load_config_supported:
            # veRL loads the target with load_format=dummy and syncs weights later; the draft is
            # never synced by veRL, so it must be read from disk for real.
            spec["draft_load_config"] = {"load_format": "auto"}
    _set_draft_sampling(cfg, spec)
    from verl_specrollout import compat

    plan, why = resolve_graph_plan(cfg, existing, env)
    if plan == "piecewise":
        # vLLM's own dynamic-K path (our scheduler, where it runs, rewrites the lookup live); vLLM turns a
        # full cudagraph mode into PIECEWISE for it.
        spec[compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR] = initial_table(cfg)

    kwargs: dict[str, Any] = {"speculative_config": spec}
    if cfg.has_draft_model and draft_load_config_supported is False:
        # Older vLLM (no draft_load_config): the whole engine must load real weights,
        # otherwise the draft stays random. Costs one extra read of the target from disk.
        kwargs["load_format"] = "auto"
    if cfg.planner.mode == "adaptive" or cfg.learner.enable or plan == "keep_user_mode":
        if existing.get("scheduler_cls"):
            raise SpecRolloutConfigError(
                "rollout.engine_kwargs.vllm.scheduler_cls is set; specrollout's adaptive planner needs its own "
                "scheduler. Use specrollout.planner.mode=static to keep yours."
            )
        kwargs["scheduler_cls"] = SCHEDULER_CLS
    if cfg.group_drafting:
        _sync_scheduling_for_group(existing, kwargs)
    cc, graphs = plan_capture_size(cfg, existing, limits)
    if cc is not None:
        kwargs[compat.VLLM_ARG_COMPILATION_CONFIG] = cc
    mem_kwargs, memory = plan_draft_probs_memory(cfg, spec, existing, limits, target_path)
    kwargs.update(mem_kwargs)
    mode = _graphs_on(existing, limits)
    via = {"keep_user_mode": "dynamic K via scheduler lookup",
           "piecewise": "dynamic K via vLLM's num_speculative_tokens_per_batch_size",
           "static": "static K"}[plan]
    shown = "none (eager)" if mode is None else ("PIECEWISE (vLLM's dynamic-K override)"
                                                if plan == "piecewise" and mode.startswith("FULL") else mode)
    logger.info("verl-specrollout: graph plan %s (%s): cudagraph mode %s, %s, %s", plan, why, shown, graphs, via)
    if memory:
        logger.info("verl-specrollout: %s", memory)
    additional = dict(existing.get("additional_config") or {})
    # Job config only: the run-specific paths stay out of what vLLM hashes (config.RUN_SPECIFIC_KEYS).
    additional[ADDITIONAL_CONFIG_KEY] = cfg.engine_dict()
    kwargs["additional_config"] = additional
    return kwargs


def _set_draft_sampling(cfg: SpecRolloutConfig, spec: dict) -> None:
    from verl_specrollout import compat

    has_field = compat.vllm_has_draft_sample_method()
    if cfg.draft_sampling == "probabilistic" and not has_field:
        raise SpecRolloutConfigError(
            "specrollout.draft_sampling=probabilistic needs a vLLM whose SpeculativeConfig has "
            f"{compat.VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR} (every supported vLLM, 0.24 to 0.31, has it; this "
            f"build, {compat.vllm_version()}, does not): use greedy or auto")
    supported = compat.vllm_probabilistic_drafts(has_field=has_field)
    method = cfg.draft_sample_method(supported)
    if has_field and cfg.has_draft_model:
        spec[compat.VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR] = method
    if cfg.draft_sampling == "auto":
        logger.info("verl-specrollout: draft_sampling=auto -> %s (vLLM %s %s probabilistic drafts)", method,
                    compat.vllm_version(), "implements" if supported else "does not implement")


def _sync_scheduling_for_group(existing: dict, kwargs: dict) -> None:
    """Group drafting needs synchronous scheduling: under vLLM's async scheduling the step's sampled
    tokens stay on the GPU while the next step is scheduled, so the index would have to lag a step
    behind the tokens it drafts from (see group_proposer.py). vLLM 0.31 turns async scheduling on by
    default for EAGLE and draft-model speculation; we turn it off unless the user chose it, in which
    case the engine drafts with the base method alone (logged once by the worker)."""
    chosen = existing.get("async_scheduling")
    if chosen:
        logger.warning("verl-specrollout: async_scheduling=True was set; group drafting needs synchronous "
                       "scheduling, so this engine drafts with the base method alone")
        return
    kwargs["async_scheduling"] = False


def pin_model_runner(env: Optional[MutableMapping[str, str]] = None, vllm_version: Optional[str] = None) -> Optional[str]:
    """Keep vLLM on the model runner that drafts the K the planner scheduled.

    vLLM 0.25-0.31 pick their V2 model runner by default on GPUs (for dense models; 0.29+ for every
    model; on 0.24 dynamic K forces V1 and this changes nothing), and it drafts max K every step
    whatever the scheduler asked for (compat.VLLM_ENV_USE_V2_MODEL_RUNNER). There we set
    ``VLLM_USE_V2_MODEL_RUNNER=0`` in this process before the engine is built (engine processes
    inherit it), unless the user chose a runner: then we only warn. On 0.24 the K table in vLLM's config
    forces the V1 runner by itself, but with engine.graph_plan=keep_user_mode (the default) the table is
    not sent, and 0.24 would pick V2 for its listed architectures (Llama, Qwen3, Mistral, ...): the pin
    covers 0.24 too. Returns what was done, for the log; None when nothing was needed."""
    from verl_specrollout import compat

    env = os.environ if env is None else env
    version = vllm_version or compat.vllm_version()
    if version is None or compat._major_minor(version) >= compat.VLLM_V2_RUNNER_FOLLOWS_SCHEDULED_K:
        return None
    name = compat.VLLM_ENV_USE_V2_MODEL_RUNNER
    chosen = env.get(name)
    if chosen is None or chosen == "":
        env[name] = "0"
        msg = (f"{name}=0: vLLM {version}'s V2 model runner drafts max K every step and ignores the "
               "planner's per-step K; the V1 runner follows it")
        logger.info("verl-specrollout: %s", msg)
        return msg
    if chosen.strip().lower() in ("1", "true"):
        msg = (f"{name}={chosen} set by the user: on vLLM {version} the V2 model runner drafts max K every "
               "step, so the planner chooses verification width but not draft cost")
        logger.warning("verl-specrollout: %s", msg)
        return msg
    return None
