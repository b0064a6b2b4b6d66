"""veRL trainer hooks: one set for every trainer veRL 0.9 ships, without editing veRL.

veRL 0.9 has two trainer families: the legacy ``RayPPOTrainer`` (``trainer.use_v1=false``) and the
V1 ``PPOTrainer`` (veRL's default: ``sync``, ``colocate_async``, ``separate_async`` subclasses, batches
in TransferQueue). They share three seams, so each hook exists once:

* **construction** (``__init__`` of each class in ``compat.VERL_TRAINER_CLASSES``; the V1 modes all
  run the base class's): resolves ``specrollout.learner.publish_dir`` (default
  ``<trainer.default_local_dir>/specrollout_drafts``, else a temp dir) into the config as an absolute
  path before any worker starts, so the actor workers, the rollout servers and the learner's name
  derived from it agree; then runs the job-level start-up checks (startup_checks.check_job).
* **our rollout replica** (verl_adapter/server.py), which every trainer builds in the trainer process
  through veRL's ``LLMServerManager`` (two of them in ``separate_async``): each one registers here,
  so the per-step metrics reach every server without a trainer reference.
* **veRL's ``Tracking.log``**, through which every trainer logs each training step (the step's
  dict carries ``training/global_step``; validation-only logs do not): our metrics are added to that
  dict -- ``specrollout/*`` from the rollout servers and the learner, and veRL's own
  ``rollout/spec_accept_rate`` / ``rollout/spec_accept_length`` where the trainer did not compute
  them (V1 computes them only for its MTP rollout), from the same per-request vLLM stats veRL's
  legacy trainer reads, with veRL's own function.

The learner's answer is awaited for at most ``LEARNER_METRICS_TIMEOUT_S``; the wait is logged as
``specrollout/learner/wait_s``, a missing answer as ``specrollout/learner/metrics_misses``.
In the async trainers a step's metrics cover what the servers did since the previous log call
(rollouts overlap training there), not exactly the batch that was trained on.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import weakref
from typing import Dict, Optional, Tuple

from verl_specrollout import compat
from verl_specrollout.rollout_stats import RolloutStepStats
from verl_specrollout.verl_adapter.actor_hooks import learning_enabled, spec_config
from verl_specrollout.verl_adapter.import_hook import patch_on_import, wrap_once
from verl_specrollout.verl_adapter.startup_checks import check_job

logger = logging.getLogger("verl_specrollout.trainer_hooks")

# The learner answers metrics without waiting for training (lock-free), so a few seconds is ample;
# past that the step is logged without learner metrics instead of blocking the training loop.
LEARNER_METRICS_TIMEOUT_S = 5.0
SERVER_METRICS_TIMEOUT_S = 60.0

# Our rollout replicas alive in this (trainer) process, registered by SpecRolloutReplica.__init__.
_replicas: "weakref.WeakSet" = weakref.WeakSet()


class _StepState:
    """Trainer-process bookkeeping across steps (one job per process)."""

    def __init__(self):
        from verl_specrollout.metrics import DraftStallDetector

        self.learner_misses = 0
        self.stall = DraftStallDetector()


_state: Optional[_StepState] = None


def register_replica(replica) -> None:
    _replicas.add(replica)


def default_publish_dir(default_local_dir: Optional[str]) -> str:
    if default_local_dir:
        return os.path.join(str(default_local_dir), "specrollout_drafts")
    return tempfile.mkdtemp(prefix="specrollout_drafts_")


# ----------------------------------------------------------------------------- construction
def _resolve_publish_dir(config) -> None:
    from omegaconf import OmegaConf, open_dict

    rollout = config.actor_rollout_ref.rollout
    if not learning_enabled(rollout):
        return
    given = spec_config(rollout).learner.publish_dir
    # Absolute, resolved here once: the actor workers, the rollout servers and the learner's name
    # (derived from it, see learner.remote.learner_actor_name) must agree whatever their cwd.
    path = os.path.abspath(given or default_publish_dir(config.trainer.get("default_local_dir")))
    if path == given:
        return
    with open_dict(config):
        OmegaConf.update(config, "actor_rollout_ref.rollout.custom.specrollout.learner.publish_dir", path,
                         force_add=True)
    logger.warning("verl-specrollout: learner.publish_dir = %s", path)


def on_trainer_config(config) -> None:
    """Everything the trainer process settles once, before workers start (both trainer families)."""
    if not spec_config(config.actor_rollout_ref.rollout).enable:
        return
    check_job(config)  # one clear error before any worker starts, for a setting that would bypass us
    _resolve_publish_dir(config)


# ----------------------------------------------------------------------------- per-step metrics
def fetch_learner_metrics(learner_cfg, policy_step, timeout: float) -> dict:
    """The learner's ``metrics`` (lock-free on its side), found by this job's learner name."""
    import ray

    from verl_specrollout.learner.remote import learner_actor_name

    h = ray.get_actor(learner_actor_name(learner_cfg), namespace=learner_cfg.actor_namespace)
    return ray.get(h.metrics.remote(policy_step), timeout=timeout)


def timed_learner_metrics(state: _StepState, learner_cfg, step) -> Tuple[Optional[dict], Dict[str, float]]:
    """(learner metrics or None, {wait_s, metrics_misses}).  This runs after veRL's step timer,
    so the wait is logged on its own; a learner that does not answer within a few seconds is a
    counted, logged miss for this step rather than a long stall of the training loop."""
    from verl_specrollout.metrics import LEARNER_METRICS_MISSES, LEARNER_WAIT_S

    t0 = time.perf_counter()
    learner = None
    try:
        learner = fetch_learner_metrics(learner_cfg, step, LEARNER_METRICS_TIMEOUT_S)
    except Exception as exc:
        state.learner_misses += 1
        logger.warning("verl-specrollout: learner metrics missed this step (%d so far; timeout %.0f s): %r",
                       state.learner_misses, LEARNER_METRICS_TIMEOUT_S, exc)
    wait = time.perf_counter() - t0
    return learner, {LEARNER_WAIT_S: wait, LEARNER_METRICS_MISSES: float(state.learner_misses)}


def verl_spec_metrics(server_results: list) -> Dict[str, float]:
    """veRL's ``rollout/spec_accept_rate`` / ``rollout/spec_accept_length``, computed by veRL's own
    function from the per-request (drafted, accepted, verify steps) the servers kept this step
    (rollout_stats.RolloutStepStats.requests)."""
    drafts, accepts, verifies = [], [], []
    for r in server_results or []:
        req = RolloutStepStats.read(r).requests if r else None
        if req is not None:
            drafts += req.drafts
            accepts += req.accepts
            verifies += req.verifies
    if not drafts:
        return {}
    fn = compat.resolve(compat.VERL_SPEC_METRICS_FN)
    return {k: float(v) for k, v in fn(drafts, accepts, verifies).items()}


def server_handles() -> list:
    handles = []
    for replica in list(_replicas):
        h = getattr(replica, compat.VERL_REPLICA_SERVER_HANDLE_ATTR, None)
        if h is not None:
            handles.append(h)
    return handles


def collect_step_metrics(spec_cfg, step, handles: Optional[list] = None) -> Dict[str, float]:
    """``specrollout/*`` (and veRL's ``rollout/spec_*``) for one training step."""
    import ray

    from verl_specrollout.metrics import DRAFT_VERSION_LIVE, step_metrics

    global _state
    if _state is None:
        _state = _StepState()
    handles = server_handles() if handles is None else handles
    results = []
    if handles:
        try:
            results = ray.get([h.specrollout_step_metrics.remote() for h in handles], timeout=SERVER_METRICS_TIMEOUT_S)
        except Exception as exc:
            logger.warning("verl-specrollout: rollout server metrics unavailable: %r", exc)
    servers = [RolloutStepStats.read(r) for r in results if r]  # read once, used by both below
    learner = None
    wait = {}
    if spec_cfg.learner.enable:
        learner, wait = timed_learner_metrics(_state, spec_cfg.learner, step)
    out = step_metrics(servers, learner)
    out.update(wait)
    out.update(verl_spec_metrics(servers))
    if spec_cfg.learner.enable:
        live = out.get(DRAFT_VERSION_LIVE)
        out.update(_state.stall.update(int(live) if live is not None else None, learner is not None))
    return out


def is_training_step(data) -> bool:
    # Both trainers put training/global_step in every training step's dict and nowhere else.
    return isinstance(data, dict) and compat.VERL_STEP_METRIC_KEY in data


def add_step_metrics(data: dict, step) -> dict:
    """``data`` with our step metrics added (veRL's own keys win where the trainer set them)."""
    replicas = list(_replicas)
    if not replicas or not is_training_step(data):
        return data
    spec_cfg = spec_config(replicas[0].config)
    if not spec_cfg.enable:
        return data
    ours = collect_step_metrics(spec_cfg, step)
    return {**ours, **data}


# ----------------------------------------------------------------------------- installation
def patch_trainer_class(module, class_name: str) -> None:
    cls = getattr(module, class_name)

    def make_init(init):
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if getattr(self, "_specrollout_configured", False):  # a subclass's __init__ ran ours already
                return
            self._specrollout_configured = True
            on_trainer_config(self.config)
        return __init__

    wrap_once(cls, "__init__", make_init)


def patch_tracking(module) -> None:
    def make_log(log):
        def wrapper(self, data, step, *args, **kwargs):
            try:
                data = add_step_metrics(data, step)
            except Exception:  # metrics must never stop training
                logger.exception("verl-specrollout: step metrics failed")
            return log(self, data, step, *args, **kwargs)
        return wrapper

    wrap_once(getattr(module, compat.VERL_TRACKING_CLASS), compat.VERL_TRACKING_LOG, make_log)


def install() -> None:
    for module_name, class_name in compat.VERL_TRAINER_CLASSES:
        patch_on_import(module_name, lambda m, c=class_name: patch_trainer_class(m, c))
    patch_on_import(compat.VERL_TRACKING_MODULE, patch_tracking)
