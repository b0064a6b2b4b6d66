"""veRL trainer hooks (``RayPPOTrainer``, legacy/v0 trainer), without editing veRL.

Installed through verl_adapter/import_hook.py by verl_adapter/registration.py:

* ``__init__``: resolves ``specrollout.learner.publish_dir`` (default
  ``<trainer.default_local_dir>/specrollout_drafts``, else a temp dir) into the config as an
  absolute path, so the actor workers and rollout servers built later agree on it (and on the
  learner actor's name derived from it);
* ``init_workers``: remembers the trainer (its rollout server handles feed the metrics);
* ``compute_spec_decode_metrics`` (module function that ``fit`` calls once per step with the
  batch): veRL's result plus ours (metrics.step_metrics) from the rollout servers and the learner.
  The learner's answer is awaited for at most ``LEARNER_METRICS_TIMEOUT_S``; the wait is logged
  as ``specrollout/learner/wait_s``, a missing answer as ``specrollout/learner/metrics_misses``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import weakref
from typing import Dict, Optional, Tuple

from verl_specrollout import compat
from verl_specrollout.verl_adapter.actor_hooks import learning_enabled, spec_config
from verl_specrollout.verl_adapter.import_hook import wrap_once

logger = logging.getLogger("verl_specrollout.trainer_hooks")

_trainer_ref: Optional[weakref.ref] = None
# The learner answers metrics without waiting for training (lock-free), so a few seconds is ample;
# past that the step is logged without learner metrics instead of blocking the training loop.
LEARNER_METRICS_TIMEOUT_S = 5.0


def default_publish_dir(default_local_dir: Optional[str]) -> str:
    if default_local_dir:
        return os.path.join(str(default_local_dir), "specrollout_drafts")
    return tempfile.mkdtemp(prefix="specrollout_drafts_")


# ----------------------------------------------------------------------------- trainer side
def _resolve_publish_dir(config) -> None:
    from omegaconf import OmegaConf, open_dict

    rollout = config.actor_rollout_ref.rollout
    if not learning_enabled(rollout):
        return
    given = spec_config(rollout).learner.publish_dir
    # Absolute, resolved here once: the actor workers, the rollout servers and the learner's name
    # (derived from it, see learner.actor.learner_actor_name) must agree whatever their cwd.
    path = os.path.abspath(given or default_publish_dir(config.trainer.get("default_local_dir")))
    if path == given:
        return
    with open_dict(config):
        OmegaConf.update(config, "actor_rollout_ref.rollout.custom.specrollout.learner.publish_dir", path,
                         force_add=True)
    logger.warning("verl-specrollout: learner.publish_dir = %s", path)


def fetch_learner_metrics(learner_cfg, policy_step, timeout: float) -> dict:
    """The learner's ``metrics`` (lock-free on its side), found by this job's learner name."""
    import ray

    from verl_specrollout.learner.actor import learner_actor_name

    h = ray.get_actor(learner_actor_name(learner_cfg), namespace=learner_cfg.actor_namespace)
    return ray.get(h.metrics.remote(policy_step), timeout=timeout)


def timed_learner_metrics(trainer, learner_cfg) -> Tuple[Optional[dict], Dict[str, float]]:
    """(learner metrics or None, {wait_s, metrics_misses}).  This runs after veRL's step timer,
    so the wait is logged on its own; a learner that does not answer within a few seconds is a
    counted, logged miss for this step rather than a long stall of the training loop."""
    from verl_specrollout.metrics import LEARNER_METRICS_MISSES, LEARNER_WAIT_S

    t0 = time.perf_counter()
    learner = None
    try:
        learner = fetch_learner_metrics(learner_cfg, getattr(trainer, compat.VERL_TRAINER_GLOBAL_STEPS_ATTR, None),
                                        LEARNER_METRICS_TIMEOUT_S)
    except Exception as exc:
        misses = trainer._sr_learner_misses = getattr(trainer, "_sr_learner_misses", 0) + 1
        logger.warning("verl-specrollout: learner metrics missed this step (%d so far; timeout %.0f s): %r",
                       misses, LEARNER_METRICS_TIMEOUT_S, exc)
    wait = time.perf_counter() - t0
    return learner, {LEARNER_WAIT_S: wait, LEARNER_METRICS_MISSES: float(getattr(trainer, "_sr_learner_misses", 0))}


def collect_step_metrics(trainer) -> Dict[str, float]:
    import ray

    from verl_specrollout.metrics import step_metrics

    rollout = trainer.config.actor_rollout_ref.rollout
    cfg = spec_config(rollout)
    if not cfg.enable:
        return {}
    mgr = getattr(trainer, compat.VERL_TRAINER_SERVER_MANAGER_ATTR, None)
    handles = list(getattr(mgr, compat.VERL_SERVER_MANAGER_HANDLES_ATTR, None) or [])
    results = []
    if handles:
        try:
            results = ray.get([h.specrollout_step_metrics.remote() for h in handles], timeout=60)
        except Exception as exc:
            logger.warning("verl-specrollout: rollout server metrics unavailable: %r", exc)
    learner = None
    wait = {}
    if cfg.learner.enable:
        learner, wait = timed_learner_metrics(trainer, cfg.learner)
    out = step_metrics(results, learner)
    out.update(wait)
    if cfg.learner.enable:
        from verl_specrollout.metrics import DRAFT_VERSION_LIVE, DraftStallDetector

        det = getattr(trainer, "_sr_stall", None)
        if det is None:
            det = trainer._sr_stall = DraftStallDetector()
        live = out.get(DRAFT_VERSION_LIVE)
        out.update(det.update(int(live) if live is not None else None, learner is not None))
    return out


def patch_trainer(module) -> None:
    cls = getattr(module, compat.VERL_TRAINER_CLASS)

    def make_init(init):
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            try:
                _resolve_publish_dir(self.config)
            except Exception:
                logger.exception("verl-specrollout: cannot resolve learner.publish_dir")
                raise
        return __init__

    def make_init_workers(init_workers):
        def wrapper(self, *args, **kwargs):
            global _trainer_ref
            out = init_workers(self, *args, **kwargs)
            if spec_config(self.config.actor_rollout_ref.rollout).enable:
                _trainer_ref = weakref.ref(self)
            return out
        return wrapper

    def make_metrics(compute_spec_decode_metrics):
        def wrapper(*args, **kwargs):
            out = compute_spec_decode_metrics(*args, **kwargs)
            trainer = _trainer_ref() if _trainer_ref is not None else None
            if trainer is not None:
                try:
                    out = {**out, **collect_step_metrics(trainer)}
                except Exception:  # metrics must never stop training
                    logger.exception("verl-specrollout: step metrics failed")
            return out
        return wrapper

    wrap_once(cls, "__init__", make_init)
    wrap_once(cls, compat.VERL_TRAINER_INIT_WORKERS, make_init_workers)
    wrap_once(module, compat.VERL_TRAINER_SPEC_METRICS_FN, make_metrics)
