"""Online draft learning wired into a real veRL run, without editing veRL.

Installed from the plugin (``verl_specrollout.plugin`` -> :func:`install`) in every process that
imports veRL. veRL modules are patched when they are imported (a post-import hook), via the names
in :mod:`verl_specrollout.engine.compat`. The class-level wrappers are pass-throughs unless that
process's config has ``specrollout.enable`` and ``specrollout.learner.enable`` true; everything
that changes behaviour is installed per instance, only then.

Actor worker (``ActorRolloutRefWorker.init_model``, actor role only, never the ref):
  * get or create the detached learner actor (``learner.get_or_create_learner``), bootstrapped
    from ``specrollout.draft_path``;
  * ``install_capture`` on the actor's FSDP engine: EAGLE-3 features are kept during
    ``compute_log_prob`` (``infer_batch`` -> ``forward_step`` with forward_only) and shipped to
    the learner (bounded, fire-and-forget);
  * wrap that ``TrainingWorker.infer_batch`` instance: after each call, rank 0 fires
    ``learner.train_and_publish.remote(steps_per_rollout, [add_batch refs])`` -- off the
    critical path, no trainer patch needed.

Rollout server (engine/verl_server.py): reloads the newest draft after each weight sync.

Trainer (``RayPPOTrainer``, legacy/v0):
  * ``__init__``: resolves ``specrollout.learner.publish_dir`` (default
    ``<trainer.default_local_dir>/specrollout_drafts``, else a temp dir) into the config, so the
    actor workers and rollout servers built later agree on it;
  * ``init_workers``: remembers the trainer;
  * ``compute_spec_decode_metrics`` (module function that ``fit`` calls once per step with the
    batch): veRL's result plus ours (metrics.step_metrics) from the rollout servers and the learner.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import weakref
from typing import Any, Callable, Dict, Optional

from verl_specrollout.engine import compat

logger = logging.getLogger("verl_specrollout.actor_hooks")

_PATCHED_ATTR = "__specrollout_patched__"
_trainer_ref: Optional[weakref.ref] = None


# ----------------------------------------------------------------------------- config helpers
def _spec_cfg(rollout_config: Any):
    from verl_specrollout.config import SpecRolloutConfig

    return SpecRolloutConfig.from_rollout_config(rollout_config)


def learning_enabled(rollout_config: Any) -> bool:
    try:
        cfg = _spec_cfg(rollout_config)
    except Exception:
        return False
    return bool(cfg.enable and cfg.learner.enable)


def default_publish_dir(default_local_dir: Optional[str]) -> str:
    if default_local_dir:
        return os.path.join(str(default_local_dir), "specrollout_drafts")
    return tempfile.mkdtemp(prefix="specrollout_drafts_")


# ----------------------------------------------------------------------------- actor worker side
class _ActorLearning:
    """Per-worker state: learner handle, capture, policy-step counter."""

    def __init__(self, worker, spec_cfg, model_path: str):
        import dataclasses

        import torch.distributed as dist

        from verl_specrollout.capture.verl_capture import install_capture
        from verl_specrollout.config import draft_aux_layer_ids
        from verl_specrollout.learner.actor import get_or_create_learner

        lc = spec_cfg.learner
        aux = list(lc.aux_layer_ids or draft_aux_layer_ids(spec_cfg.draft_path) or [])
        if not aux:
            raise ValueError("specrollout.learner: no aux_layer_ids (set learner.aux_layer_ids or use an "
                             "EAGLE-3 draft_path whose config.json has eagle_aux_hidden_state_layer_ids)")
        self.cfg = lc
        self.step = 0
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.learner = get_or_create_learner(dataclasses.asdict(lc), model_path, aux,
                                             bootstrap_dir=spec_cfg.draft_path)
        actor = getattr(worker, compat.VERL_WORKER_ACTOR_ATTR)
        engine = getattr(actor, compat.VERL_TRAINING_WORKER_ENGINE_ATTR)
        self.capture = install_capture(engine, self.learner, aux, policy_step=lambda: self.step,
                                       max_in_flight=lc.max_in_flight, context=lc.capture_context)
        self.pending = None
        orig = getattr(actor, compat.VERL_TRAINING_WORKER_INFER)

        @functools.wraps(orig)
        def infer_batch(*args, **kwargs):
            self.step += 1
            n0 = self.capture.n_samples
            out = orig(*args, **kwargs)
            if self.capture.n_samples > n0 and self.rank == 0:
                self._train_and_publish()
            return out

        setattr(actor, compat.VERL_TRAINING_WORKER_INFER, infer_batch)
        logger.warning("verl-specrollout: online draft learning on (aux layers %s, publish_dir %s, rank %d)",
                       aux, lc.publish_dir, self.rank)

    def _train_and_publish(self) -> None:
        refs = list(self.capture.shipper._in_flight)
        # The refs go inside a list: Ray must not resolve them (the learner waits for them itself).
        self.pending = self.learner.train_and_publish.remote(self.cfg.steps_per_rollout, refs)


def _after_init_model(worker) -> None:
    config = getattr(worker, "config", None)
    if config is None or not learning_enabled(config.rollout):
        return
    role = str(getattr(worker, compat.VERL_WORKER_ROLE_ATTR, ""))
    if "actor" not in role or getattr(worker, compat.VERL_WORKER_ACTOR_ATTR, None) is None:
        return
    spec_cfg = _spec_cfg(config.rollout)
    if not spec_cfg.learner.publish_dir:
        raise ValueError("specrollout.learner.publish_dir is unset in the actor worker; it is resolved by the "
                         "trainer (RayPPOTrainer hook) -- set it explicitly for other trainers")
    model_path = str(config.model.path)
    if not os.path.isdir(model_path):
        from verl.utils.fs import copy_to_local

        model_path = copy_to_local(model_path)
    worker._specrollout_learning = _ActorLearning(worker, spec_cfg, model_path)


def patch_actor_worker(module) -> None:
    cls = getattr(module, compat.VERL_ACTOR_WORKER_CLASS)
    orig = getattr(cls, compat.VERL_WORKER_INIT_METHOD)
    if getattr(orig, _PATCHED_ATTR, False):
        return

    @functools.wraps(orig)
    def init_model(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        _after_init_model(self)
        return out

    setattr(init_model, _PATCHED_ATTR, True)
    setattr(cls, compat.VERL_WORKER_INIT_METHOD, init_model)


# ----------------------------------------------------------------------------- trainer side
def _resolve_publish_dir(config) -> None:
    from omegaconf import OmegaConf, open_dict

    rollout = config.actor_rollout_ref.rollout
    if not learning_enabled(rollout):
        return
    cfg = _spec_cfg(rollout)
    if cfg.learner.publish_dir:
        return
    path = default_publish_dir(config.trainer.get("default_local_dir"))
    with open_dict(config):
        OmegaConf.update(config, "actor_rollout_ref.rollout.custom.specrollout.learner.publish_dir", path,
                         force_add=True)
    logger.warning("verl-specrollout: learner.publish_dir = %s", path)


def collect_step_metrics(trainer) -> Dict[str, float]:
    import ray

    from verl_specrollout.metrics import step_metrics

    rollout = trainer.config.actor_rollout_ref.rollout
    cfg = _spec_cfg(rollout)
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
    if cfg.learner.enable:
        try:
            h = ray.get_actor(cfg.learner.actor_name, namespace=cfg.learner.actor_namespace)
            learner = ray.get(h.metrics.remote(getattr(trainer, compat.VERL_TRAINER_GLOBAL_STEPS_ATTR, None)),
                              timeout=60)
        except Exception as exc:
            logger.warning("verl-specrollout: learner metrics unavailable: %r", exc)
    out = step_metrics(results, learner)
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
    init = cls.__init__
    if getattr(init, _PATCHED_ATTR, False):
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        try:
            _resolve_publish_dir(self.config)
        except Exception:
            logger.exception("verl-specrollout: cannot resolve learner.publish_dir")
            raise

    setattr(__init__, _PATCHED_ATTR, True)
    cls.__init__ = __init__

    orig_init_workers = getattr(cls, compat.VERL_TRAINER_INIT_WORKERS)

    @functools.wraps(orig_init_workers)
    def init_workers(self, *args, **kwargs):
        global _trainer_ref
        out = orig_init_workers(self, *args, **kwargs)
        if _spec_cfg(self.config.actor_rollout_ref.rollout).enable:
            _trainer_ref = weakref.ref(self)
        return out

    setattr(cls, compat.VERL_TRAINER_INIT_WORKERS, init_workers)

    orig_fn = getattr(module, compat.VERL_TRAINER_SPEC_METRICS_FN)

    @functools.wraps(orig_fn)
    def compute_spec_decode_metrics(*args, **kwargs):
        out = orig_fn(*args, **kwargs)
        trainer = _trainer_ref() if _trainer_ref is not None else None
        if trainer is not None:
            try:
                out = {**out, **collect_step_metrics(trainer)}
            except Exception:  # metrics must never stop training
                logger.exception("verl-specrollout: step metrics failed")
        return out

    setattr(module, compat.VERL_TRAINER_SPEC_METRICS_FN, compute_spec_decode_metrics)


# ----------------------------------------------------------------------------- post-import hook
_PATCHES: Dict[str, Callable] = {
    compat.VERL_ACTOR_WORKER_MODULE: patch_actor_worker,
    compat.VERL_TRAINER_MODULE: patch_trainer,
}


def _apply(name: str, module) -> None:
    try:
        _PATCHES[name](module)
    except Exception:
        logger.warning("verl-specrollout: patching %s failed; online draft learning is OFF", name, exc_info=True)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, name):
        self._inner, self._name = inner, name

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def __getattr__(self, item):  # get_source, get_code, is_package, ... of the real loader
        return getattr(self._inner, item)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _apply(self._name, module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


_installed = False


def install() -> None:
    """Patch the veRL modules now if already imported, else when they are imported."""
    global _installed
    if _installed:
        return
    _installed = True
    for name in _PATCHES:
        if name in sys.modules:
            _apply(name, sys.modules[name])
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
