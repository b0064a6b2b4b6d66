"""The decoupled source's two ends as a rollout replica runs them.

* ``link_for`` (inside vLLM's engine process, called where the group drafter is made): the
  verifier link to the job's exchange actor, or None -- decoupled off, tensor parallelism (each TP
  rank would see tails at its own moments and draft differently, while the ranks' draft forwards
  must match; deciding on rank 0 and broadcasting is not built), or no Ray cluster to join (logged
  once: the engine drafts as without).
* ``IdleDrafter`` (in the rollout server's process): the drafter this replica runs while its
  engine has no work. The server calls ``on_idle`` when its last request finished, ``on_work``
  when a request arrives (the drafter thread stops before the engine needs the device),
  ``release`` when the engine sleeps (the draft LM's KV caches go, its weights move to host memory
  until the next ``on_idle``: a sleeping replica's accelerator memory is training's), and
  ``set_version`` after each draft reload (a drafter on an old version is refused by the
  exchange). ``stats`` gives cumulative seconds: ``busy_s`` drafting, ``idle_s`` the replica
  offered (between on_idle and on_work); their ratio over an interval is the drafter's utilisation
  in it (verl_adapter/decoupled_hooks.py takes the per-step deltas).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Optional

from verl_specrollout import compat
from verl_specrollout.decoupled.exchange import ray_exchange
from verl_specrollout.decoupled.link import ExchangeClient, VerifierLink

logger = logging.getLogger("vllm.specrollout_decoupled")


def exchange_job(cfg) -> str:
    return cfg.decoupled.exchange_name or cfg.learner.actor_name


def link_for(cfg, runner) -> Optional[VerifierLink]:
    d = cfg.decoupled
    if not (cfg.enable and d.enable):
        return None
    tp = compat.vllm_tensor_parallel_size(getattr(runner, compat.VLLM_RUNNER_VLLM_CONFIG_ATTR, None))
    if tp > 1:
        logger.warning("specrollout: decoupled drafting is off for this engine (tensor_parallel_size=%d: every rank "
                       "must draft the same tokens, and tails reach ranks at different moments)", tp)
        return None
    try:
        import ray

        if not ray.is_initialized():
            ray.init(address="auto", namespace=cfg.learner.actor_namespace, log_to_driver=False)
        handle = ray_exchange(exchange_job(cfg), namespace=cfg.learner.actor_namespace)
    except Exception as e:  # no cluster to join: draft as without
        logger.warning("specrollout: decoupled drafting is off for this engine: no exchange actor (%s: %s)",
                       type(e).__name__, e)
        return None
    verifier = f"{socket.gethostname()}:{os.getpid()}"
    logger.info("specrollout: decoupled drafting on (verifier %s, exchange %s)", verifier, exchange_job(cfg))
    return VerifierLink(verifier, ExchangeClient(handle), interval_s=d.exchange_ms / 1e3, max_bytes=d.max_tail_mb << 20)


class IdleDrafter:
    def __init__(self, cfg, replica_id: str, device: str = "cpu", client=None, version: int = 0):
        self.cfg, self.replica_id, self.device = cfg, replica_id, device
        self._client = client
        self.version = int(version)
        self._lm = None
        self._drafter = None
        self._thread: Optional[threading.Thread] = None
        self._idle = threading.Event()
        self._idle_since: Optional[float] = None  # when the running idle period began
        self._idle_s = 0.0  # closed idle periods
        self._busy_s = 0.0  # drafting seconds of drafters replaced after a reload

    def _draft_lm_path(self) -> str:
        return self.cfg.decoupled.draft_lm_path or self.cfg.draft_path

    def _make(self):
        from verl_specrollout.decoupled.drafter import Drafter, DraftLM

        if self._client is None:
            self._client = ExchangeClient(ray_exchange(exchange_job(self.cfg), self.cfg.learner.actor_namespace))
        if self._lm is None:
            self._lm = DraftLM(self._draft_lm_path(), device=self.device)
        self._lm.restore()
        d = self.cfg.decoupled
        self._drafter = Drafter(self.replica_id, self._client, self._lm, self.version, depth=d.depth,
                                branches=d.branches, max_branches=d.max_branches, should_run=self._idle.is_set,
                                on_stale_version=lambda: None)

    def on_idle(self) -> None:
        """The engine has no work: draft for the busy replicas until on_work."""
        if not self.cfg.decoupled.enable or (self._thread is not None and self._thread.is_alive()):
            return
        self._idle.set()
        try:
            if self._drafter is None or self._drafter.version != self.version:
                self._make()
            else:
                self._lm.restore()
        except Exception as e:
            logger.warning("specrollout: no decoupled drafter on %s (%s: %s)", self.replica_id, type(e).__name__, e)
            self._idle.clear()
            return
        self._idle_since = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"specrollout-drafter-{self.replica_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._drafter.run()
        except Exception as e:  # a drafter failure must never reach the server; the verifiers fall back
            logger.warning("specrollout: decoupled drafter on %s stopped (%s: %s)", self.replica_id,
                           type(e).__name__, e)

    def on_work(self, timeout_s: float = 5.0) -> None:
        """A request arrived: stop drafting before the engine needs the device."""
        self._idle.clear()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if self._idle_since is not None:
            self._idle_s += time.perf_counter() - self._idle_since
            self._idle_since = None

    def release(self) -> None:
        """The engine sleeps: stop drafting and give the accelerator memory back."""
        self.on_work()
        if self._lm is not None:
            self._lm.offload()

    def set_version(self, version: int) -> None:
        """After this replica reloaded its draft: a drafter on the old version would be refused."""
        self.version = int(version)
        if self._drafter is not None and self._drafter.version != self.version:
            running = self._idle.is_set()
            self.on_work()
            self._busy_s += self._drafter.busy_s
            self._drafter = None
            if running:
                self.on_idle()

    def stats(self) -> dict:
        idle = self._idle_s + (time.perf_counter() - self._idle_since if self._idle_since is not None else 0.0)
        busy = self._busy_s + (self._drafter.busy_s if self._drafter is not None else 0.0)
        out = {"drafter/busy_s": busy, "drafter/idle_s": idle,
               "drafter/utilisation": busy / idle if idle > 0 else 0.0,
               "drafter/running": int(self._thread is not None and self._thread.is_alive())}
        if self._drafter is not None:
            out.update({f"drafter/{k}": v for k, v in self._drafter.counters.items()})
        return out
