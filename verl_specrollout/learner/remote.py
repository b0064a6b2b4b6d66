"""The learner as a Ray actor, and its callers' side.

:func:`get_or_create_learner` starts :class:`SpecLearnerActor` (``SpecLearner`` plus what only
Ray needs) as a named, detached actor, placed by ``LearnerConfig`` (cpu -> num_cpus=1,
gpu -> num_gpus=1, shared_gpu -> num_gpus=gpu_fraction).

* One learner per job: the actor's name is derived from the publish_dir unless ``actor_name`` is
  set (:func:`learner_actor_name`); an existing actor of that name is used only when its identity
  (target, publish_dir, aux layers) is this job's, else a SpecRolloutConfigError names both jobs'
  publish_dirs.
* Never stalls the trainer: it is a threaded actor (``add_batch`` calls run while ``train`` holds
  the training lock) and the cheap methods (``metrics``, ``identity``, ``lag``, ...) run in their
  own concurrency group, never queued behind data or train calls.
* Survives crashes: Ray restarts it (``MAX_RESTARTS``) and ``SpecLearner.__init__`` resumes from
  the saved state (state.py) and the batch journal (journal.py); every method is safe to run
  again on the restarted learner (``MAX_TASK_RETRIES``).
* The actor worker keeps at most one ``train_and_publish`` call in flight (:class:`TrainCalls`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Optional, Sequence

import ray

from verl_specrollout.config import LearnerConfig
from verl_specrollout.errors import SpecRolloutConfigError

from .actor import SpecLearner, as_learner_config, learner_config_dict

logger = logging.getLogger(__name__)

DEFAULT_NAME = "specrollout_learner"  # LearnerConfig.actor_name's default: means "derive from publish_dir"
DEFAULT_NAMESPACE = "specrollout"
CONTROL_GROUP = "control"  # metrics / identity / lag: never queued behind add_batch or train calls
MAX_CONCURRENCY = 4  # default group: add_batch calls run while a train call holds the lock
MAX_RESTARTS = 3  # a crash restarts the learner from its saved state; a crash loop ends after this many
MAX_TASK_RETRIES = 1  # every method is safe to run again on the restarted learner
IDENTITY_TIMEOUT_S = 600.0  # an existing learner may still be loading the target's weights
WAIT_FOR_BATCHES_S = 60.0  # train_and_publish: how long to wait for this round's add_batch calls


def _control(method):
    return ray.method(concurrency_group=CONTROL_GROUP)(method)


class SpecLearnerActor(SpecLearner):
    """``SpecLearner`` as the Ray actor: batches may arrive as ObjectRefs, ``train_and_publish``
    first waits for this round's ``add_batch`` calls, and the lock-free readers are in the
    control concurrency group."""

    def add_batch(self, samples: Any, policy_step: Optional[int] = None) -> int:
        """Accepts a list of samples, an ObjectRef to one, or a list of such refs."""
        if isinstance(samples, ray.ObjectRef):
            samples = ray.get(samples)
        elif isinstance(samples, list) and samples and isinstance(samples[0], ray.ObjectRef):
            samples = [s for part in ray.get(samples) for s in part]
        return super().add_batch(samples, policy_step)

    def train_and_publish(self, steps: Optional[int] = None, wait_for: Optional[list] = None,
                          wait_timeout: float = WAIT_FOR_BATCHES_S) -> dict:
        """One call per rollout step from the actor worker (fire-and-forget): wait for the
        ``add_batch`` calls in ``wait_for`` (ObjectRefs, wrapped in a list by the caller so Ray
        does not resolve them), then train and publish."""
        if wait_for:
            try:
                ray.wait(list(wait_for), num_returns=len(wait_for), timeout=wait_timeout)
            except Exception as exc:  # a cancelled / failed add_batch: train on what arrived
                logger.warning("specrollout learner: waiting for captured batches failed: %r", exc)
        return super().train_and_publish(steps)

    @_control
    def metrics(self, policy_step: Optional[int] = None) -> dict:
        return super().metrics(policy_step)

    @_control
    def report_calls(self, stats: dict) -> None:
        return super().report_calls(stats)

    @_control
    def add_capture_counts(self, policy_step: int, rank: int, counts: dict) -> None:
        return super().add_capture_counts(policy_step, rank, counts)

    @_control
    def latest_version(self) -> Optional[int]:
        return super().latest_version()

    @_control
    def lag(self, policy_step: int) -> int:
        return super().lag(policy_step)

    @_control
    def identity(self) -> dict:
        return super().identity()


# ----------------------------------------------------------------------------- the caller's side

def _call_done(ref) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


def _call_result(ref):
    return ray.get(ref)


class TrainCalls:
    """The actor worker's ``train_and_publish`` calls: at most one in flight.

    When the next call is due, the previous one's result is checked: an error is counted (and
    logged the first time); a call still running means the learner is slower than a rollout
    step, so this round's call is skipped (its data is already on its way to the buffer) and
    counted, instead of queueing calls without bound.  The counters reach the trainer's metrics
    through the learner (``report_calls``) as ``train_calls_skipped`` / ``train_call_errors``."""

    def __init__(self, learner):
        self.learner = learner
        self.pending = None
        self.skipped = 0
        self.errors = 0

    def fire(self, steps: int, wait_for: Sequence) -> bool:
        """Start this round's call; False when it was skipped."""
        if self.pending is not None:
            if not _call_done(self.pending):
                self.skipped += 1
                self._report()
                return False
            self._check(self.pending)
            self.pending = None
        # The refs go inside a list: Ray must not resolve them (the learner waits for them itself).
        self.pending = self.learner.train_and_publish.remote(steps, list(wait_for))
        return True

    def _check(self, ref) -> None:
        try:
            _call_result(ref)
        except Exception as exc:
            self.errors += 1
            if self.errors == 1:
                logger.warning("verl-specrollout: the learner's train_and_publish failed: %r (further failures "
                               "are only counted: specrollout/learner/train_call_errors)", exc)
            self._report()

    def _report(self) -> None:
        try:
            self.learner.report_calls.remote({"train_calls_skipped": self.skipped,
                                              "train_call_errors": self.errors})
        except Exception:  # counters are best-effort: never fail the rollout step over them
            pass


# ----------------------------------------------------------------------------- finding / starting it

def placement_options(cfg: Any) -> dict:
    cfg = as_learner_config(cfg)
    if cfg.placement == "cpu":
        return {"num_cpus": 1}
    if cfg.placement == "gpu":
        return {"num_gpus": 1, "num_cpus": 1}
    if cfg.placement == "shared_gpu":
        return {"num_gpus": float(cfg.gpu_fraction), "num_cpus": 1}
    raise ValueError(f"unknown learner placement {cfg.placement!r}")


def learner_actor_name(cfg: Any) -> str:
    """The learner actor's name: ``actor_name`` when set to something other than the default,
    else one derived from the publish_dir, so two jobs on one Ray cluster get two learners."""
    cfg_d = learner_config_dict(cfg)
    name = cfg_d.get("actor_name") or DEFAULT_NAME
    publish_dir = cfg_d.get("publish_dir")
    if name != DEFAULT_NAME or not publish_dir:
        return name
    digest = hashlib.sha1(os.path.abspath(str(publish_dir)).encode()).hexdigest()[:10]
    return f"{DEFAULT_NAME}_{digest}"


def _identity_wanted(cfg_d: dict, target_dir: str, aux_layer_ids) -> dict:
    aux = aux_layer_ids or cfg_d.get("aux_layer_ids")
    return {"target_dir": os.path.abspath(target_dir),
            "publish_dir": os.path.abspath(cfg_d["publish_dir"]) if cfg_d.get("publish_dir") else None,
            "aux_layer_ids": [int(i) for i in aux] if aux else None}


def check_identity(have: dict, want: dict, name: str, namespace: str) -> None:
    """Refuse to reuse another job's learner (keys ``want`` leaves None are not compared)."""
    differs = [k for k, v in want.items() if v is not None and have.get(k) != v]
    if not differs:
        return
    raise SpecRolloutConfigError(
        f"specrollout.learner: the Ray actor {name!r} (namespace {namespace!r}) is another job's learner: "
        f"it publishes to {have.get('publish_dir')} (target {have.get('target_dir')}, aux layers "
        f"{have.get('aux_layer_ids')}); this job publishes to {want.get('publish_dir')} (target "
        f"{want.get('target_dir')}, aux layers {want.get('aux_layer_ids')}); they differ in {', '.join(differs)}. "
        f"Leave learner.actor_name at its default (one learner per publish_dir), give this job its own "
        f"actor_name, or stop the other learner: ray.kill(ray.get_actor({name!r}, namespace={namespace!r})).")


def _existing_learner(name: str, namespace: str):
    """The live actor of that name and its identity, or (None, None) (none, or one that died since)."""
    try:
        h = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None, None
    try:
        return h, ray.get(h.identity.remote(), timeout=IDENTITY_TIMEOUT_S)
    except ray.exceptions.RayActorError:
        return None, None


def get_or_create_learner(cfg: Any, target_dir: str, aux_layer_ids=None, *, name: Optional[str] = None,
                          namespace: Optional[str] = None, **kwargs):
    """This job's detached learner actor: found by name when it runs (and is this job's, else a
    SpecRolloutConfigError), created otherwise.  Ray restarts it after a crash (``MAX_RESTARTS``)
    and it resumes from ``<state_dir>/learner_state.safetensors``."""
    if not isinstance(cfg, (dict, LearnerConfig)) and cfg is not None:
        cfg = dict(cfg)
    cfg_d = learner_config_dict(cfg)
    name = name or learner_actor_name(cfg_d)
    namespace = namespace or cfg_d.get("actor_namespace") or DEFAULT_NAMESPACE
    h, have = _existing_learner(name, namespace)
    if h is not None:
        check_identity(have, _identity_wanted(cfg_d, target_dir, aux_layer_ids), name, namespace)
        return h
    opts = dict(name=name, namespace=namespace, lifetime="detached", get_if_exists=True,
                max_concurrency=MAX_CONCURRENCY, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                **placement_options(cfg_d))
    cls = ray.remote(concurrency_groups={CONTROL_GROUP: 2})(SpecLearnerActor)  # not settable in .options()
    return cls.options(**opts).remote(cfg_d, target_dir, aux_layer_ids, **kwargs)
