"""veRL's vLLM rollout server and replica, with speculation switched on from our config.

We subclass rather than register a new rollout name: veRL 0.9.1 has many
`rollout.name == "vllm"` checks (weight sync, checkpoint engine, config utils) that a
new name would trip. The replica picks our server class only when
`rollout.custom.specrollout.enable` is true, so "off" runs veRL's own class.

With speculation on, the server also:
* forces vLLM's stats on (veRL defaults `rollout.disable_log_stats=True`, which turns vLLM's
  spec-decode counters off) and points the scheduler's `planner.stats_path` at a per-server file;
* with the learner on, reloads the newest published draft right after each weight sync
  (`set_global_steps`, which veRL calls after update_weights + clear_kv_cache);
* with sleep mode on, reloads the draft after every sleep at a level that discards weights (2; see
  `_sr_weights_may_be_discarded`), learner on or off, and has the workers keep on the host the draft
  tensors no checkpoint holds (vllm_adapter/draft_sleep.py);
* answers `specrollout_step_metrics()` (called by the trainer once per step, see
  verl_adapter/trainer_hooks.py): per-request (drafted, accepted, verify steps) of the requests
  finished since the last call (veRL's rollout/spec_* where the trainer does not read them), deltas of vLLM's spec-decode counters, of the planner's
  K histogram, of the group drafter's per-source counts (group methods; read from the workers by
  `collective_rpc`), and the draft version the rollout used.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import tempfile
from typing import Optional

import ray

from verl_specrollout import compat
from verl_specrollout.compat import check_versions
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.metrics import counts_delta
from verl_specrollout.rollout_stats import PlannerStats
from verl_specrollout.verl_adapter.startup_checks import check_rollout
from verl_specrollout.verl_adapter.trainer_hooks import register_replica
from verl_specrollout.vllm_adapter.engine_kwargs import (EngineLimits, apply_channel_env, build_engine_kwargs,
                                                          pin_model_runner)


logger = logging.getLogger(__name__)

# Per-request stats kept between two metric calls: bounded, so a trainer that never asks (metrics
# off, a foreign trainer) cannot grow the server's memory; far above a step's requests per server.
MAX_STEP_REQUESTS = 1 << 16

vLLMHttpServer = compat.resolve(compat.VERL_VLLM_SERVER)
vLLMReplica = compat.resolve(compat.VERL_VLLM_REPLICA)


class SpecRolloutHttpServer(vLLMHttpServer):
    """vLLMHttpServer whose engine starts with our speculative_config and scheduler."""

    # ------------------------------------------------------------------ engine start
    def _sr_cfg(self) -> SpecRolloutConfig:
        cfg = getattr(self, "_sr_cfg_cache", None)
        if cfg is None:
            cfg = SpecRolloutConfig.from_rollout_config(self.config)
            self._sr_cfg_cache = cfg
        return cfg

    def _preprocess_engine_kwargs(self, engine_kwargs: dict) -> None:
        super()._preprocess_engine_kwargs(engine_kwargs)
        spec_cfg = self._sr_cfg()
        if not spec_cfg.enable:
            return
        check_versions()
        stats_path = spec_cfg.planner.stats_path
        if not stats_path:
            d = os.path.join(tempfile.gettempdir(), "specrollout_stats")
            os.makedirs(d, exist_ok=True)
            stats_path = os.path.join(
                d, f"replica{getattr(self, 'replica_rank', 0)}_node{getattr(self, 'node_rank', 0)}_{os.getpid()}.json")
        self._sr_stats_path = stats_path
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
        cfg = self._sr_cfg()
        if cfg.enable and (cfg.has_draft_model or cfg.group_drafting):
            return compat.SPECROLLOUT_WORKER_EXTENSION  # adds the reload and group-stats methods (by name)
        return super()._get_worker_extension_cls()

    # ------------------------------------------------------------------ draft reload
    def _sr_reloader(self):
        """The engine's draft loader: newest published version (learner on), else draft_path."""
        rl = getattr(self, "_sr_reloader_obj", None)
        if rl is None:
            cfg = self._sr_cfg()
            if not (cfg.enable and cfg.has_draft_model):
                return None
            from verl_specrollout.vllm_adapter.draft_reload import AsyncDraftReloader

            publish_dir = cfg.learner.publish_dir if cfg.learner.enable else None
            rl = AsyncDraftReloader(self.engine.collective_rpc, publish_dir, method=compat.WORKER_RELOAD_METHOD,
                                    bootstrap_dir=cfg.draft_path)
            self._sr_reloader_obj = rl
            self._sr_restore_lock = asyncio.Lock()
        return rl

    async def _sr_reload(self) -> Optional[int]:
        """After a weight sync: the newest published draft, if newer than the live one."""
        if getattr(self, "node_rank", 0) != 0:
            return None
        rl = self._sr_reloader()
        if rl is None or not rl.publish_dir:
            return None
        return await self._sr_guarded(rl.amaybe_reload)

    async def _sr_guarded(self, load) -> Optional[int]:
        rl = self._sr_reloader()
        before = rl.current_draft_version
        try:
            v = await load()
        except Exception:  # a reload must never take the rollout down; the old draft stays
            logger.exception("verl-specrollout: draft reload failed; keeping the live draft")
            return rl.current_draft_version
        if v != before:
            self._sr_reloads = getattr(self, "_sr_reloads", 0) + 1
            logger.info("verl-specrollout: draft v%s live (was v%s)", v, before)
        return v

    # Sleep level 2 (veRL's HYBRID default, _resolve_sleep_level) discards every tensor in vLLM's
    # "weights" pool, the draft's included; veRL's weight sync restores only the target. So after a
    # sleep at level 2 the draft is reloaded from disk (the newest published version, else
    # draft_path) once weights are back -- at wake-up, at resume after a weight sync, and as a last
    # guard before the next generate -- and the draft tensors no checkpoint holds (its own RoPE cache,
    # vLLM 0.24's draft_id_to_target_id, ...) come back from a host copy the workers take before the
    # first such sleep (vllm_adapter/draft_sleep.py). Level 1 (COLOCATED mode, MTP, LoRA adapters)
    # offloads the weights to host memory and brings them back whole: nothing to reload. Reloading
    # costs one read of the draft checkpoint per node (an EAGLE-3 head is a few hundred MB at 7B);
    # level 1 instead would pin a host copy of the whole target (~15 GB per 7B replica).
    def _sr_weights_may_be_discarded(self, level) -> bool:
        """Whether an engine sleep at ``level`` discards the draft's weights (and we have a draft)."""
        try:
            level = int(level)
        except (TypeError, ValueError):
            level = compat.VLLM_SLEEP_LEVEL_DISCARDS_WEIGHTS  # unknown: assume the worst
        return level >= compat.VLLM_SLEEP_LEVEL_DISCARDS_WEIGHTS and bool(self.config.enable_sleep_mode) \
            and self._sr_reloader() is not None and getattr(self, "node_rank", 0) == 0

    def _sr_watch_engine_sleep(self) -> None:
        """Wrap the engine's sleep once: veRL picks the level (sleep, release_kv_cache), we see it. Before
        a level that discards weights the workers keep what the restore checkpoint cannot give back."""
        if getattr(self, "_sr_sleep_watched", False) or self._sr_reloader() is None:
            return
        engine_sleep = getattr(self.engine, compat.VLLM_ENGINE_SLEEP)

        async def sleep(*args, **kwargs):
            level = kwargs.get(compat.VLLM_SLEEP_LEVEL_ARG, args[0] if args else 1)
            if self._sr_weights_may_be_discarded(level):
                # A draft already discarded (slept again before a restore) holds nothing worth keeping.
                kept = await self._sr_reloader().akeep(live=not getattr(self, "_sr_draft_discarded", False))
                if kept and not getattr(self, "_sr_logged_keep", False):
                    self._sr_logged_keep = True
                    logger.info("verl-specrollout: draft tensors kept on the host across sleep level %s: %s "
                                "(%d bytes per worker; vLLM saves the draft's buffers itself: %s)", level,
                                kept.get("names"), kept.get("kept_bytes", 0), kept.get("vllm_saves_draft_buffers"))
                self._sr_draft_discarded = True
            return await engine_sleep(*args, **kwargs)

        setattr(self.engine, compat.VLLM_ENGINE_SLEEP, sleep)
        self._sr_sleep_watched = True

    async def _sr_restore_if_discarded(self) -> None:
        if not getattr(self, "_sr_draft_discarded", False):
            return
        async with self._sr_restore_lock:
            if not self._sr_draft_discarded:
                return
            self._sr_draft_discarded = False
            rl = self._sr_reloader()
            await self._sr_guarded(rl.arestore)
            self._sr_restores = getattr(self, "_sr_restores", 0) + 1

    async def sleep(self, *args, **kwargs):
        self._sr_watch_engine_sleep()
        return await super().sleep(*args, **kwargs)

    async def release_kv_cache(self, *args, **kwargs):
        # veRL releases memory for a weight sync by sleeping at its level and waking the weights.
        self._sr_watch_engine_sleep()
        return await super().release_kv_cache(*args, **kwargs)

    async def wake_up(self, tags: Optional[list] = None, *args, **kwargs):
        out = await super().wake_up(tags, *args, **kwargs)
        if tags is None or "weights" in tags:
            await self._sr_restore_if_discarded()
        return out

    async def resume_kv_cache(self, *args, **kwargs):
        out = await super().resume_kv_cache(*args, **kwargs)
        await self._sr_restore_if_discarded()
        return out

    async def set_global_steps(self, global_steps: int):
        await super().set_global_steps(global_steps)
        await self._sr_restore_if_discarded()
        await self._sr_reload()

    def _sr_live_version(self) -> int:
        rl = getattr(self, "_sr_reloader_obj", None)
        v = rl.current_draft_version if rl is not None else None
        return int(v) if v is not None else 0  # 0 = the draft_path checkpoint

    async def generate(self, prompt_ids, sampling_params, request_id, *args, **kwargs):
        await self._sr_restore_if_discarded()  # never generate with a discarded draft
        self._sr_rollout_version = self._sr_live_version()
        self._sr_track_request_spec()
        out = await super().generate(prompt_ids, sampling_params, request_id, *args, **kwargs)
        fields = self._sr_request_spec.pop(request_id, None)
        if fields:  # for veRL's rollout/spec_* where the trainer does not read extra_fields (V1)
            self._sr_step_requests.append(fields)
        extra = getattr(out, "extra_fields", None)
        if fields and isinstance(extra, dict):
            for key, value in fields.items():  # veRL's own MTP path may have filled them
                extra.setdefault(key, value)
        elif not getattr(self, "_sr_warned_no_request_spec", False):
            self._sr_warned_no_request_spec = True
            logger.warning("verl-specrollout: no per-request spec-decode stats for request %s (%s); veRL's "
                           "rollout/spec_accept_* stay empty", request_id,
                           "extra_fields missing" if not isinstance(extra, dict) else "vLLM returned none")
        return out

    def _sr_track_request_spec(self) -> None:
        """veRL 0.9 fills spec_num_* per rollout only for MTP, from a RequestOutput field vLLM does
        not have; so its rollout/spec_accept_* metrics stay empty with our rollout. We keep each
        finished request's per-request stats (vLLM's per_request_spec_decode_metrics) by request id
        as veRL's server iterates the engine's stream, and add them to the rollout's extra_fields."""
        if getattr(self, "_sr_request_spec", None) is not None:
            return
        from verl_specrollout.vllm_adapter.spec_counters import request_spec_fields

        table: dict = {}
        engine_generate = self.engine.generate

        async def generate(*args, **kwargs):
            request_id = kwargs.get("request_id")
            async for output in engine_generate(*args, **kwargs):
                if output.finished and request_id is not None and output.outputs:
                    fields = request_spec_fields(output.outputs[0])
                    if fields:
                        table[request_id] = fields
                yield output

        self.engine.generate = generate
        self._sr_request_spec = table
        self._sr_step_requests = collections.deque(maxlen=MAX_STEP_REQUESTS)

    # ------------------------------------------------------------------ metrics
    async def specrollout_step_metrics(self) -> dict:
        """Raw per-step numbers since the previous call (summed by the trainer over servers)."""
        out: dict = {"draft_version": getattr(self, "_sr_rollout_version", self._sr_live_version()),
                     "draft_version_live": self._sr_live_version(),
                     "draft_reloads": getattr(self, "_sr_reloads", 0),
                     "draft_restores_after_sleep": getattr(self, "_sr_restores", 0)}
        rl = getattr(self, "_sr_reloader_obj", None)
        if rl is not None:
            out["draft_reload_failures"] = rl.failures
        if getattr(self, "node_rank", 0) != 0:
            return out
        try:
            from verl_specrollout.vllm_adapter.spec_counters import snapshot_counters

            now = snapshot_counters()
            prev = getattr(self, "_sr_prev_counters", None)
            self._sr_prev_counters = now
            d = now - prev if prev is not None else now
            out["vllm"] = {"num_drafts": d.num_drafts, "num_draft_tokens": d.num_draft_tokens,
                           "num_accepted_tokens": d.num_accepted_tokens, "accepted_per_pos": d.accepted_per_pos}
        except Exception as exc:
            logger.warning("verl-specrollout: cannot read vLLM spec-decode counters: %r", exc)
        done = list(getattr(self, "_sr_step_requests", None) or [])
        if done:
            self._sr_step_requests.clear()
        if done:
            out["requests"] = {"drafts": [int(f.get(compat.VERL_SPEC_DRAFT_TOKENS_FIELD, 0)) for f in done],
                               "accepts": [int(f.get(compat.VERL_SPEC_ACCEPTED_TOKENS_FIELD, 0)) for f in done],
                               "verifies": [int(f.get(compat.VERL_SPEC_VERIFY_STEPS_FIELD, 0)) for f in done]}
        if self._sr_cfg().group_drafting:
            group = await self._sr_group_stats()
            if group:
                out["group"] = group
        path = getattr(self, "_sr_stats_path", None)
        if path and os.path.isfile(path):
            try:
                with open(path) as f:
                    stats = PlannerStats.from_dict(json.load(f))
                out["planner"] = stats.since(getattr(self, "_sr_prev_k_hist", {})).to_dict()
                self._sr_prev_k_hist = stats.k_hist
            except (OSError, ValueError) as exc:
                logger.warning("verl-specrollout: cannot read planner stats %s: %r", path, exc)
        return out

    async def _sr_group_stats(self) -> dict:
        """Per-step delta of the group drafter's counts (group_proposer.GroupDrafter.stats). TP ranks
        hold identical drafters (same inputs), so the first worker's answer is the engine's."""
        try:
            results = await self.engine.collective_rpc(compat.WORKER_GROUP_STATS_METHOD)
        except Exception as exc:
            if not getattr(self, "_sr_warned_group_stats", False):
                self._sr_warned_group_stats = True
                logger.warning("verl-specrollout: cannot read the group drafter's counts: %r", exc)
            return {}
        now = next((r for r in results or [] if r), None)
        if not now:
            if not getattr(self, "_sr_warned_group_off", False):
                self._sr_warned_group_off = True
                logger.warning("verl-specrollout: method=%s but no worker runs the group drafter (async scheduling "
                               "or vLLM's V2 model runner; see the workers' log): drafts come from the base method "
                               "alone", self._sr_cfg().method)
            return {}
        prev = getattr(self, "_sr_prev_group", None)
        self._sr_prev_group = now
        delta = counts_delta(now, prev) if prev is not None else now
        delta["index"] = dict(now.get("index") or {})  # index sizes are levels, not counts
        return delta


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
