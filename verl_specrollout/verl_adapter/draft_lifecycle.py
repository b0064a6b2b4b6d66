"""The live draft of one rollout server: which version runs, reloads after weight syncs, restores
after sleeps that discard it (owned by verl_adapter/server.py's SpecRolloutHttpServer).

* With the learner on, the newest published draft is reloaded right after each weight sync
  (the server's ``set_global_steps``, which veRL calls after update_weights + clear_kv_cache).
* Sleep level 2 (veRL's HYBRID default, ``_resolve_sleep_level``) discards every tensor in vLLM's
  "weights" pool, the draft's included; veRL's weight sync restores only the target. So after a
  sleep at level 2 the draft is reloaded from disk (the newest published version, else
  draft_path) once weights are back -- at wake-up, at resume after a weight sync, and as a last
  guard before the next generate -- and the draft tensors no checkpoint holds (its own RoPE cache,
  vLLM 0.24's draft_id_to_target_id, ...) come back from a host copy the workers take before the
  first such sleep (vllm_adapter/draft_sleep.py). Level 1 (COLOCATED mode, MTP, LoRA adapters)
  offloads the weights to host memory and brings them back whole: nothing to reload. Reloading
  costs one read of the draft checkpoint per node (an EAGLE-3 head is a few hundred MB at 7B);
  level 1 instead would pin a host copy of the whole target (~15 GB per 7B replica).

Only the server of node 0 of a replica reloads (its engine drives every worker of the replica).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional

from verl_specrollout import compat
from verl_specrollout.config import SpecRolloutConfig

logger = logging.getLogger("verl_specrollout.verl_adapter.server")


class DraftLifecycle:
    def __init__(self, cfg: SpecRolloutConfig, engine: Callable[[], Any], lead: Callable[[], bool],
                 sleep_mode: Callable[[], bool]):
        # The engine exists only once veRL's launch_server ran, after the server's __init__: read it when used.
        self._cfg = cfg
        self._engine = engine
        self._lead = lead  # this server drives the replica's engine (node 0)
        self._sleep_mode = sleep_mode
        self._reloader = None
        self._restore_lock = asyncio.Lock()
        self._sleep_watched = False
        self._logged_keep = False
        self.discarded = False  # a sleep discarded the draft; restore before it drafts again
        self.reloads = 0  # successful loads of a new version (reload or restore)
        self.restores = 0  # restores after a sleep that discarded the draft
        self.rollout_version: Optional[int] = None  # the version the last generate ran
        # Awaited with the new version after each load that changed it (the server's decoupled hooks).
        self.on_version: Optional[Callable[[int], Awaitable[None]]] = None

    @property
    def has_draft(self) -> bool:
        return self._cfg.enable and self._cfg.has_draft_model

    def reloader(self):
        """The engine's draft loader: newest published version (learner on), else draft_path; None
        without a draft model."""
        if self._reloader is None and self.has_draft:
            from verl_specrollout.vllm_adapter.draft_reload import AsyncDraftReloader

            publish_dir = self._cfg.learner.publish_dir if self._cfg.learner.enable else None
            self._reloader = AsyncDraftReloader(self._engine().collective_rpc, publish_dir,
                                                method=compat.WORKER_RELOAD_METHOD, bootstrap_dir=self._cfg.draft_path)
        return self._reloader

    @property
    def failures(self) -> Optional[int]:
        return self._reloader.failures if self._reloader is not None else None

    def live_version(self) -> int:
        v = self._reloader.current_draft_version if self._reloader is not None else None
        return int(v) if v is not None else 0  # 0 = the draft_path checkpoint

    def version_used(self) -> int:
        """The version the step's rollout ran (the live one when nothing was generated yet)."""
        return self.rollout_version if self.rollout_version is not None else self.live_version()

    # ------------------------------------------------------------------ reload
    async def reload_after_sync(self) -> Optional[int]:
        """After a weight sync: the newest published draft, if newer than the live one."""
        if not self._lead():
            return None
        rl = self.reloader()
        if rl is None or not rl.publish_dir:
            return None
        return await self._guarded(rl.amaybe_reload)

    async def _guarded(self, load: Callable[[], Awaitable[Optional[int]]]) -> Optional[int]:
        rl = self.reloader()
        before = rl.current_draft_version
        try:
            v = await load()
        except Exception:  # a reload must never take the rollout down; the old draft stays
            logger.exception("verl-specrollout: draft reload failed; keeping the live draft")
            return rl.current_draft_version
        if v != before:
            self.reloads += 1
            logger.info("verl-specrollout: draft v%s live (was v%s)", v, before)
            if self.on_version is not None and v is not None:
                try:
                    await self.on_version(int(v))
                except Exception:  # passing the version on must not undo the reload
                    logger.exception("verl-specrollout: passing draft v%s on failed", v)
        return v

    # ------------------------------------------------------------------- sleep
    def weights_may_be_discarded(self, level) -> bool:
        """Whether an engine sleep at ``level`` discards the draft's weights (and we have a draft)."""
        try:
            level = int(level)
        except (TypeError, ValueError):
            level = compat.VLLM_SLEEP_LEVEL_DISCARDS_WEIGHTS  # unknown: assume the worst
        return level >= compat.VLLM_SLEEP_LEVEL_DISCARDS_WEIGHTS and self._sleep_mode() \
            and self.reloader() is not None and self._lead()

    def watch_engine_sleep(self) -> None:
        """Wrap the engine's sleep once: veRL picks the level (sleep, release_kv_cache), we see it. Before
        a level that discards weights the workers keep what the restore checkpoint cannot give back."""
        if self._sleep_watched or self.reloader() is None:
            return
        engine = self._engine()
        engine_sleep = getattr(engine, compat.VLLM_ENGINE_SLEEP)

        async def sleep(*args, **kwargs):
            level = kwargs.get(compat.VLLM_SLEEP_LEVEL_ARG, args[0] if args else 1)
            if self.weights_may_be_discarded(level):
                # A draft already discarded (slept again before a restore) holds nothing worth keeping.
                kept = await self.reloader().akeep(live=not self.discarded)
                if kept and not self._logged_keep:
                    self._logged_keep = True
                    logger.info("verl-specrollout: draft tensors kept on the host across sleep level %s: %s "
                                "(%d bytes per worker; vLLM saves the draft's buffers itself: %s)", level,
                                kept.get("names"), kept.get("kept_bytes", 0), kept.get("vllm_saves_draft_buffers"))
                self.discarded = True
            return await engine_sleep(*args, **kwargs)

        setattr(engine, compat.VLLM_ENGINE_SLEEP, sleep)
        self._sleep_watched = True

    async def restore_if_discarded(self) -> None:
        if not self.discarded:
            return
        async with self._restore_lock:
            if not self.discarded:
                return
            self.discarded = False
            await self._guarded(self.reloader().arestore)
            self.restores += 1
