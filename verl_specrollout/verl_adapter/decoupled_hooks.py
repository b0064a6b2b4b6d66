"""When this rollout server's idle drafter runs (decoupled speculation; owned by
verl_adapter/server.py's SpecRolloutHttpServer, the drafter is decoupled/engine.py's IdleDrafter).

* A request arriving while none was in flight stops the drafter (``on_work``) before the request
  reaches the engine: every request that arrives meanwhile waits for that stop too.
* The last in-flight request finishing starts it (``on_idle``), unless the engine sleeps; first
  ``engine_idle`` (the server's: the engine's verifier link closes its requests, which the engine
  itself would learn of only at a next step) so no drafter keeps drafting for them.
* Sleep (veRL's ``sleep``, ``release_kv_cache``) stops it, keeps it stopped and has it release its
  accelerator memory (``release``: KV caches dropped, draft LM weights to host); a full wake-up
  (``wake_up`` with the KV cache back, ``resume_kv_cache``) starts it again when nothing is in flight.
* A draft reload passes the new version on (``set_version``).

The drafter's calls block (joining its thread, loading its draft LM on first use), so they run in
one worker thread, in the order they were made, off the server's event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Optional

logger = logging.getLogger("verl_specrollout.verl_adapter.server")


class DecoupledHooks:
    def __init__(self, drafter, engine_idle=None):
        self.drafter = drafter  # decoupled.engine.IdleDrafter (or anything with its four methods)
        self.engine_idle = engine_idle  # async () -> None, or None
        self.inflight = 0
        self.asleep = False
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._stopping: Optional[asyncio.Future] = None  # on_work in progress: requests wait for it
        self._prev_counts: dict = {}

    async def _call(self, name: str, *args):
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="specrollout-idle")
        fn = getattr(self.drafter, name)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except Exception as e:  # the drafter must never fail a request or a lifecycle call
            logger.warning("verl-specrollout: decoupled drafter %s failed (%s: %s)", name, type(e).__name__, e)
            return None

    # ------------------------------------------------------------------ requests
    async def request_begins(self) -> None:
        self.inflight += 1
        if self.inflight == 1:
            self._stopping = asyncio.ensure_future(self._call("on_work"))
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    async def request_ends(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            if self.engine_idle is not None:
                try:
                    await self.engine_idle()
                except Exception as e:  # never fails a request
                    logger.warning("verl-specrollout: decoupled engine_idle failed (%s: %s)", type(e).__name__, e)
            await self._start_if_idle()

    async def _start_if_idle(self) -> None:
        if self._stopping is not None and not self._stopping.done():
            await asyncio.shield(self._stopping)
        if self.inflight == 0 and not self.asleep:
            await self._call("on_idle")

    # ------------------------------------------------------------------ sleep
    async def sleep(self) -> None:
        self.asleep = True
        await self._call("release")

    async def wake(self) -> None:
        self.asleep = False
        await self._start_if_idle()

    # ------------------------------------------------------------------ draft versions
    async def set_version(self, version: int) -> None:
        # IdleDrafter.set_version restarts the drafter only if it was running (idle and awake).
        await self._call("set_version", int(version))

    def step_stats(self) -> dict:
        """IdleDrafter.stats as deltas since the previous call: counts and seconds (a drafter remade
        after a reload restarts its counts), utilisation = drafting seconds / idle seconds in the
        interval, running as it is now."""
        try:
            now = dict(self.drafter.stats())
        except Exception as e:
            logger.warning("verl-specrollout: no decoupled drafter stats (%s: %s)", type(e).__name__, e)
            return {}
        out = {}
        for k, v in now.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "drafter/utilisation":
                continue
            if k == "drafter/running":
                out[k] = float(v)
                continue
            prev = self._prev_counts.get(k, 0)
            out[k] = float(v - prev if v >= prev else v)
            self._prev_counts[k] = v
        idle = out.get("drafter/idle_s", 0.0)
        out["drafter/utilisation"] = out.get("drafter/busy_s", 0.0) / idle if idle > 0 else 0.0
        return out
