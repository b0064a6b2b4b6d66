"""veRL's vLLM rollout server and replica, with speculation switched on from our config.

We subclass rather than register a new rollout name: veRL 0.9.1 has many
`rollout.name == "vllm"` checks (weight sync, checkpoint engine, config utils) that a
new name would trip. The replica picks our server class only when
`rollout.custom.specrollout.enable` is true, so "off" runs veRL's own class.

With speculation on, the server also:
* forces vLLM's stats on (veRL defaults `rollout.disable_log_stats=True`, which turns vLLM's
  spec-decode counters off) and points the scheduler's `planner.stats_path` at a per-server file;
* with the learner on, reloads the newest published draft right after each weight sync
  (`set_global_steps`, which veRL calls after update_weights + clear_kv_cache) and, when sleep
  mode may have discarded weights, after `wake_up`;
* answers `specrollout_step_metrics()` (called by the trainer once per step, see
  verl_adapter/actor_hooks.py): per-step deltas of vLLM's spec-decode counters, of the planner's
  K histogram, and the draft version the rollout used.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Optional

import ray

from verl_specrollout import compat
from verl_specrollout.compat import check_versions
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.vllm_adapter.engine_kwargs import build_engine_kwargs

logger = logging.getLogger(__name__)

vLLMHttpServer = compat.resolve(compat.VERL_VLLM_SERVER)
vLLMReplica = compat.resolve(compat.VERL_VLLM_REPLICA)


def _k_hist_delta(new: dict, old: dict) -> dict:
    out = {}
    for b, h in (new or {}).items():
        prev = (old or {}).get(b, {})
        d = {k: int(n) - int(prev.get(k, 0)) for k, n in h.items()}
        d = {k: n for k, n in d.items() if n > 0}
        if d:
            out[b] = d
    return out


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
        if not spec_cfg.planner.stats_path:
            d = os.path.join(tempfile.gettempdir(), "specrollout_stats")
            os.makedirs(d, exist_ok=True)
            spec_cfg.planner.stats_path = os.path.join(
                d, f"replica{getattr(self, 'replica_rank', 0)}_node{getattr(self, 'node_rank', 0)}_{os.getpid()}.json")
        self._sr_stats_path = spec_cfg.planner.stats_path
        extra = build_engine_kwargs(spec_cfg, target_path=self.model_config.local_path, existing=engine_kwargs)
        # vLLM's spec-decode counters exist only with log stats on (veRL defaults them off).
        extra["disable_log_stats"] = False
        engine_kwargs.update(extra)
        logger.info("verl-specrollout: speculative engine kwargs %s", extra)

    def _get_worker_extension_cls(self) -> str:
        cfg = self._sr_cfg()
        if cfg.enable and cfg.learner.enable:
            return compat.SPECROLLOUT_WORKER_EXTENSION  # adds the reload method (by name)
        return super()._get_worker_extension_cls()

    # ------------------------------------------------------------------ draft reload
    def _sr_reloader(self):
        rl = getattr(self, "_sr_reloader_obj", None)
        if rl is None:
            cfg = self._sr_cfg()
            if not (cfg.enable and cfg.learner.enable and cfg.learner.publish_dir):
                return None
            from verl_specrollout.vllm_adapter.draft_reload import AsyncDraftReloader

            rl = AsyncDraftReloader(self.engine.collective_rpc, cfg.learner.publish_dir,
                                    method=compat.WORKER_RELOAD_METHOD)
            self._sr_reloader_obj = rl
        return rl

    async def _sr_reload(self, force: bool = False) -> Optional[int]:
        if getattr(self, "node_rank", 0) != 0:
            return None
        rl = self._sr_reloader()
        if rl is None:
            return None
        if force:
            rl.current_draft_version = None  # reload the newest published draft even if "live"
        before = rl.current_draft_version
        try:
            v = await rl.amaybe_reload()
        except Exception:  # a reload must never take the rollout down; the old draft stays
            logger.exception("verl-specrollout: draft reload failed; keeping the live draft")
            return rl.current_draft_version
        if v != before:
            self._sr_reloads = getattr(self, "_sr_reloads", 0) + 1
            logger.info("verl-specrollout: draft v%s live (was v%s)", v, before)
        return v

    async def set_global_steps(self, global_steps: int):
        await super().set_global_steps(global_steps)
        await self._sr_reload()

    async def wake_up(self, *args, **kwargs):
        out = await super().wake_up(*args, **kwargs)
        if self.config.enable_sleep_mode and self._sr_reloader() is not None \
                and self._sr_reloader().current_draft_version is not None:
            await self._sr_reload(force=True)  # sleep may have discarded the draft's weights
        return out

    def _sr_live_version(self) -> int:
        rl = getattr(self, "_sr_reloader_obj", None)
        v = rl.current_draft_version if rl is not None else None
        return int(v) if v is not None else 0  # 0 = the draft_path checkpoint

    async def generate(self, *args, **kwargs):
        self._sr_rollout_version = self._sr_live_version()
        return await super().generate(*args, **kwargs)

    # ------------------------------------------------------------------ metrics
    async def specrollout_step_metrics(self) -> dict:
        """Raw per-step numbers since the previous call (summed by the trainer over servers)."""
        out: dict = {"draft_version": getattr(self, "_sr_rollout_version", self._sr_live_version()),
                     "draft_version_live": self._sr_live_version(),
                     "draft_reloads": getattr(self, "_sr_reloads", 0)}
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
        path = getattr(self, "_sr_stats_path", None)
        if path and os.path.isfile(path):
            try:
                with open(path) as f:
                    stats = json.load(f)
                prev_hist = getattr(self, "_sr_prev_k_hist", {})
                out["k_hist"] = _k_hist_delta(stats.get("k_hist") or {}, prev_hist)
                self._sr_prev_k_hist = stats.get("k_hist") or {}
                out["planner"] = {k: stats.get(k) for k in ("table", "table_changes", "replans", "mode", "alpha")}
            except (OSError, ValueError) as exc:
                logger.warning("verl-specrollout: cannot read planner stats %s: %r", path, exc)
        return out


class SpecRolloutReplica(vLLMReplica):
    def __init__(self, replica_rank, config, model_config, *args, **kwargs):
        super().__init__(replica_rank, config, model_config, *args, **kwargs)
        spec_cfg = SpecRolloutConfig.from_rollout_config(self.config)
        if spec_cfg.enable:
            # Fail in the trainer process, before any engine starts, on a bad config.
            check_versions()
            spec_cfg.validate(getattr(self.model_config, "local_path", None))
            self.server_class = ray.remote(SpecRolloutHttpServer)
