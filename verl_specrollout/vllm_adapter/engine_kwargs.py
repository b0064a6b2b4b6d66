"""Turn a SpecRolloutConfig into the vLLM engine arguments that switch speculation on.

This is the one place that decides what vLLM sees; veRL's server subclass
(verl_server.py), the quickstart and the benchmarks all go through it, so the
tested path and the production path are the same.
"""

from __future__ import annotations

import logging
import os
from typing import Any, MutableMapping, Optional

from verl_specrollout.config import ADDITIONAL_CONFIG_KEY, SpecRolloutConfig, SpecRolloutConfigError, validate_table

logger = logging.getLogger(__name__)

SCHEDULER_CLS = "verl_specrollout.vllm_adapter.scheduler.SpecRolloutScheduler"


def initial_table(cfg: SpecRolloutConfig) -> list:
    """The batch-size -> K table the engine starts with (vLLM's [min_bs, max_bs, K] rows).

    adaptive: the planner's first cold-start table (K = 1 at large batch sizes, up to max_k where
    the batch is small: policy/planner.py); the planner rewrites it live from measurements.
    static: the user's table, else max_k everywhere. off: K=0 everywhere (drafts nothing).
    """
    p = cfg.planner
    if p.table is not None:
        return [list(r) for r in validate_table(p.table, cfg.max_k)]
    if p.mode == "adaptive":
        from verl_specrollout.policy.planner import initial_rows

        return initial_rows(cfg.max_k, p.max_batch)
    k = 0 if p.mode == "off" else cfg.max_k
    return [[1, p.max_batch, k]]


def build_engine_kwargs(
    cfg: SpecRolloutConfig,
    target_path: Optional[str] = None,
    existing: Optional[dict] = None,
    draft_load_config_supported: Optional[bool] = None,
) -> dict:
    """Engine kwargs to merge into vLLM's (veRL's `engine_kwargs.vllm` or `vllm.LLM(**kw)`).

    `existing` are the kwargs the user already passes; a hand-written speculative_config
    there conflicts with ours and is rejected rather than silently overridden.
    """
    if not cfg.enable:
        return {}
    cfg.validate(target_path)
    existing = existing or {}
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
    # The per-batch-size table turns on vLLM's dynamic K path, which our scheduler rewrites live.
    spec["num_speculative_tokens_per_batch_size"] = initial_table(cfg)

    kwargs: dict[str, Any] = {"speculative_config": spec}
    if cfg.has_draft_model and draft_load_config_supported is False:
        # Older vLLM (no draft_load_config): the whole engine must load real weights,
        # otherwise the draft stays random. Costs one extra read of the target from disk.
        kwargs["load_format"] = "auto"
    if cfg.planner.mode == "adaptive" or cfg.learner.enable:
        if existing.get("scheduler_cls"):
            raise SpecRolloutConfigError(
                "rollout.engine_kwargs.vllm.scheduler_cls is set; specrollout's adaptive planner needs its own "
                "scheduler. Use specrollout.planner.mode=static to keep yours."
            )
        kwargs["scheduler_cls"] = SCHEDULER_CLS
    if cfg.group_drafting:
        _sync_scheduling_for_group(existing, kwargs)
    additional = dict(existing.get("additional_config") or {})
    additional[ADDITIONAL_CONFIG_KEY] = cfg.to_dict()
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
    inherit it), unless the user chose a runner: then we only warn. Returns what was done, for
    the log; None when nothing was needed."""
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
