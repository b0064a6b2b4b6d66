"""veRL's vLLM rollout server and replica, with speculation switched on from our config.

We subclass rather than register a new rollout name: veRL 0.9.1 has many
`rollout.name == "vllm"` checks (weight sync, checkpoint engine, config utils) that a
new name would trip. The replica picks our server class only when
`rollout.custom.specrollout.enable` is true, so "off" runs veRL's own class.

With speculation on, the server also:
* forces vLLM's stats on (veRL defaults `rollout.disable_log_stats=True`, which turns vLLM's
  spec-decode counters off) and points the scheduler's `planner.stats_path` at a per-server file;
* keeps the live draft right (verl_adapter/draft_lifecycle.py): with the learner on, reloads the
  newest published draft right after each weight sync (`set_global_steps`, which veRL calls after
  update_weights + clear_kv_cache); with sleep mode on, reloads it after every sleep at a level
  that discards weights (2), learner on or off, and has the workers keep on the host the draft
  tensors no checkpoint holds (vllm_adapter/draft_sleep.py);
* answers `specrollout_step_metrics()` (called by the trainer once per step, see
  verl_adapter/trainer_hooks.py) with a rollout_stats.RolloutStepStats
  (verl_adapter/rollout_metrics.py): per-request (drafted, accepted, verify steps) of the requests
  finished since the last call (veRL's rollout/spec_* where the trainer does not read them), deltas
  of vLLM's spec-decode counters, of the planner's K histogram, of the group drafter's per-source
  counts, and the draft version the rollout used;
* with `decoupled.enable` (node 0's server), runs an idle drafter (decoupled/engine.py's IdleDrafter)
  while no request is in flight and the engine is awake (verl_adapter/decoupled_hooks.py), and after
  each draft reload passes the new version to it and to the workers' verifier links.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from typing import Optional

import ray

from verl_specrollout import compat
from verl_specrollout.compat import check_versions
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.verl_adapter.decoupled_hooks import DecoupledHooks
from verl_specrollout.verl_adapter.draft_lifecycle import DraftLifecycle
from verl_specrollout.verl_adapter.rollout_metrics import RolloutMetrics
from verl_specrollout.verl_adapter.startup_checks import check_rollout
from verl_specrollout.verl_adapter.trainer_hooks import register_replica
from verl_specrollout.vllm_adapter.engine_kwargs import (EngineLimits, apply_channel_env, build_engine_kwargs,
                                                          pin_model_runner)


logger = logging.getLogger(__name__)

vLLMHttpServer = compat.resolve(compat.VERL_VLLM_SERVER)
vLLMReplica = compat.resolve(compat.VERL_VLLM_REPLICA)


class SpecRolloutHttpServer(vLLMHttpServer):
    """vLLMHttpServer whose engine starts with our speculative_config and scheduler.

    veRL's server methods are kept here; what they do for speculation lives in two parts the server
    owns: ``draft`` (verl_adapter/draft_lifecycle.py: versions, reload after a weight sync, restore
    after a sleep) and ``rollout_metrics`` (verl_adapter/rollout_metrics.py: per-request and per-step
    stats for the trainer)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_specrollout()

    def init_specrollout(self, spec_cfg: Optional[SpecRolloutConfig] = None) -> None:
        """Our parts, from ``self.config`` (veRL's RolloutConfig) unless `spec_cfg` is given. __init__
        runs it after veRL's; a server built without Ray (tests: ``__new__`` and the attributes veRL's
        __init__ sets) calls it itself."""
        self.specrollout_config = spec_cfg or SpecRolloutConfig.from_rollout_config(self.config)
        self.draft = DraftLifecycle(self.specrollout_config, engine=lambda: self.engine,
                                    lead=lambda: self.node_rank == 0,
                                    sleep_mode=lambda: bool(self.config.enable_sleep_mode))
        self.rollout_metrics = RolloutMetrics(self.specrollout_config)
        self.decoupled: Optional[DecoupledHooks] = None
        cfg = self.specrollout_config
        if cfg.enable and cfg.decoupled.enable and getattr(self, "node_rank", 0) == 0:
            self.decoupled = DecoupledHooks(self._make_idle_drafter(), engine_idle=self._decoupled_engine_idle)
            self.draft.on_version = self._draft_version_changed

    def _make_idle_drafter(self):
        from verl_specrollout.decoupled.engine import IdleDrafter

        replica_id = f"replica{getattr(self, 'replica_rank', 0)}@{socket.gethostname()}:{os.getpid()}"
        return IdleDrafter(self.specrollout_config, replica_id, device="cpu" if compat.vllm_on_cpu() else "cuda",
                           version=self.draft.live_version())

    async def _decoupled_engine_idle(self) -> None:
        """No request in flight: the workers' verifier links close the requests they still hold."""
        await self.engine.collective_rpc(compat.WORKER_DECOUPLED_IDLE_METHOD)

    async def _draft_version_changed(self, version: int) -> None:
        """A reload made `version` live: the idle drafter drafts with it, and the workers' verifier links
        drop and refuse tails of any other version (the exchange refuses a drafter on an old one)."""
        await self.decoupled.set_version(version)
        try:
            await self.engine.collective_rpc(compat.WORKER_DECOUPLED_VERSION_METHOD, args=(int(version),))
        except Exception as exc:
            logger.warning("verl-specrollout: cannot pass draft v%s to the workers' decoupled links: %r", version, exc)

    # ------------------------------------------------------------------ engine start
    def _preprocess_engine_kwargs(self, engine_kwargs: dict) -> None:
        super()._preprocess_engine_kwargs(engine_kwargs)
        spec_cfg = self.specrollout_config
        if not spec_cfg.enable:
            return
        check_versions()
        stats_path = spec_cfg.planner.stats_path
        if not stats_path:
            d = os.path.join(tempfile.gettempdir(), "specrollout_stats")
            os.makedirs(d, exist_ok=True)
            stats_path = os.path.join(d, f"replica{self.replica_rank}_node{self.node_rank}_{os.getpid()}.json")
        self.rollout_metrics.stats_path = stats_path
        # The per-process path reaches the engine core (a child of this process) through the environment:
        # in additional_config it would change vLLM's compile-cache key at every start (config.RUN_SPECIFIC_KEYS).
        apply_channel_env(spec_cfg, stats_path=stats_path)
        pin_model_runner()  # before vLLM builds its config in this process
        on_cpu = compat.vllm_on_cpu()
        limits = EngineLimits(
            **{name: getattr(self.config, name, None) for name in compat.VERL_ROLLOUT_ENGINE_FIELDS},
            device_memory_bytes=None if on_cpu else compat.vllm_device_total_memory(),
            on_cpu=on_cpu)
        extra = build_engine_kwargs(spec_cfg, target_path=self.model_config.local_path, existing=engine_kwargs,
                                    limits=limits)
        # vLLM's spec-decode counters exist only with log stats on (veRL defaults them off).
        extra["disable_log_stats"] = False
        # Per-request stats feed veRL's own rollout/spec_accept_* metrics (see generate).
        if compat.vllm_has_per_request_spec_metrics():
            extra.setdefault(compat.VLLM_ARG_PER_REQUEST_SPEC_METRICS,
                             engine_kwargs.get(compat.VLLM_ARG_PER_REQUEST_SPEC_METRICS) or "summary")
        engine_kwargs.update(extra)
        logger.info("verl-specrollout: speculative engine kwargs %s", extra)

    def _get_worker_extension_cls(self) -> str:
        cfg = self.specrollout_config
        if cfg.enable and (cfg.has_draft_model or cfg.group_drafting):
            return compat.SPECROLLOUT_WORKER_EXTENSION  # adds the reload and group-stats methods (by name)
        return super()._get_worker_extension_cls()

    # ------------------------------------------------------------------ veRL's lifecycle calls
    async def sleep(self, *args, **kwargs):
        if self.decoupled is not None:
            await self.decoupled.sleep()  # the idle drafter stops before the engine sleeps
        self.draft.watch_engine_sleep()
        return await super().sleep(*args, **kwargs)

    async def release_kv_cache(self, *args, **kwargs):
        # veRL releases memory for a weight sync by sleeping at its level and waking the weights.
        if self.decoupled is not None:
            await self.decoupled.sleep()
        self.draft.watch_engine_sleep()
        return await super().release_kv_cache(*args, **kwargs)

    async def wake_up(self, tags: Optional[list] = None, *args, **kwargs):
        out = await super().wake_up(tags, *args, **kwargs)
        if tags is None or "weights" in tags:
            await self.draft.restore_if_discarded()
        if self.decoupled is not None and (tags is None or "kv_cache" in tags):
            await self.decoupled.wake()  # fully awake: the drafter may run while nothing is in flight
        return out

    async def resume_kv_cache(self, *args, **kwargs):
        out = await super().resume_kv_cache(*args, **kwargs)
        await self.draft.restore_if_discarded()
        if self.decoupled is not None:
            await self.decoupled.wake()
        return out

    async def set_global_steps(self, global_steps: int):
        await super().set_global_steps(global_steps)
        await self.draft.restore_if_discarded()
        await self.draft.reload_after_sync()

    async def generate(self, prompt_ids, sampling_params, request_id, *args, **kwargs):
        if self.decoupled is None:
            return await self._generate(prompt_ids, sampling_params, request_id, *args, **kwargs)
        # In flight from here: the idle drafter stops before this request (or a restore) uses the device.
        # Inside the try: a request cancelled while it waits for that stop still counts out.
        try:
            await self.decoupled.request_begins()
            return await self._generate(prompt_ids, sampling_params, request_id, *args, **kwargs)
        finally:
            await self.decoupled.request_ends()

    async def _generate(self, prompt_ids, sampling_params, request_id, *args, **kwargs):
        await self.draft.restore_if_discarded()  # never generate with a discarded draft
        self.draft.rollout_version = self.draft.live_version()
        self.rollout_metrics.requests.watch(self.engine)
        out = await super().generate(prompt_ids, sampling_params, request_id, *args, **kwargs)
        self.rollout_metrics.requests.finished(request_id, out)
        return out

    # ------------------------------------------------------------------ metrics
    async def specrollout_step_metrics(self) -> dict:
        """This server's numbers since the previous call (rollout_stats.RolloutStepStats.to_dict;
        summed by the trainer over servers)."""
        step = await self.rollout_metrics.step(self.draft, self.engine, lead=self.node_rank == 0,
                                               decoupled=self.decoupled)
        return step.to_dict()


class SpecRolloutReplica(vLLMReplica):
    def __init__(self, replica_rank, config, model_config, *args, **kwargs):
        super().__init__(replica_rank, config, model_config, *args, **kwargs)
        spec_cfg = SpecRolloutConfig.from_rollout_config(self.config)
        if spec_cfg.enable:
            # Fail in the trainer process, before any engine starts, on a bad config.
            check_versions()
            spec_cfg.validate(getattr(self.model_config, "local_path", None))
            check_rollout(self.config, self.model_config)
            self.server_class = ray.remote(SpecRolloutHttpServer)
            # Every trainer builds its replicas in the trainer process: the per-step metrics find
            # the servers here (verl_adapter/trainer_hooks.py), whatever the trainer class.
            register_replica(self)
