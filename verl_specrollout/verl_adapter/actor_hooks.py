"""Online draft learning on veRL's actor worker, without editing veRL.

``patch_actor_worker`` wraps ``ActorRolloutRefWorker.init_model`` (installed through
verl_adapter/import_hook.py by verl_adapter/registration.py). The wrapper is a pass-through
unless the worker's config has ``specrollout.enable`` and ``specrollout.learner.enable``; then,
for the actor role only (never the ref):

* get or create the detached learner actor (``learner.get_or_create_learner``), bootstrapped
  from ``specrollout.draft_path``;
* ``install_capture`` on the actor's FSDP engine: EAGLE-3 features are kept during
  ``compute_log_prob`` (``infer_batch`` -> ``forward_step`` with forward_only), at most
  ``learner.capture_budget_mb / world_size`` per rank and policy step (capture/budget.py);
* wrap that ``TrainingWorker.infer_batch`` instance: after each call, every rank ends its capture
  step (ships the step's samples, fire-and-forget, and reports the kept / dropped counts to the
  learner), then rank 0 fires ``learner.train_and_publish.remote(steps_per_rollout, [add_batch
  refs])`` -- off the critical path.

The rollout servers reload the newest draft after each weight sync (verl_adapter/server.py).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from verl_specrollout import compat
from verl_specrollout.verl_adapter.import_hook import wrap_once

logger = logging.getLogger("verl_specrollout.actor_hooks")

# ----------------------------------------------------------------------------- config helpers
def spec_config(rollout_config: Any):
    from verl_specrollout.config import SpecRolloutConfig

    return SpecRolloutConfig.from_rollout_config(rollout_config)


def learning_enabled(rollout_config: Any) -> bool:
    # A bad config raises SpecRolloutConfigError here with its one clear message: hiding it would
    # silently turn learning off.
    cfg = spec_config(rollout_config)
    return bool(cfg.enable and cfg.learner.enable)


# ----------------------------------------------------------------------------- actor worker side
class _ActorLearning:
    """Per-worker state: learner handle, capture, policy-step counter."""

    def __init__(self, worker, spec_cfg, model_path: str):
        import dataclasses

        import torch.distributed as dist

        from verl_specrollout.capture.verl_capture import install_capture
        from verl_specrollout.config import draft_aux_layer_ids
        from verl_specrollout.learner.remote import get_or_create_learner

        lc = spec_cfg.learner
        aux = list(lc.aux_layer_ids or draft_aux_layer_ids(spec_cfg.draft_path) or [])
        if not aux:
            raise ValueError("specrollout.learner: no aux_layer_ids (set learner.aux_layer_ids or use an "
                             "EAGLE-3 draft_path whose config.json has eagle_aux_hidden_state_layer_ids)")
        self.cfg = lc
        self.step = 0
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        world_size = dist.get_world_size() if distributed else 1
        self.learner = get_or_create_learner(dataclasses.asdict(lc), model_path, aux,
                                             bootstrap_dir=spec_cfg.draft_path)
        actor = getattr(worker, compat.VERL_WORKER_ACTOR_ATTR)
        engine = getattr(actor, compat.VERL_TRAINING_WORKER_ENGINE_ATTR)
        # An actor capture cannot serve (Ulysses SP, mrope, not an HF decoder) fails here, at start-up.
        self.capture = install_capture(engine, self.learner, aux, policy_step=lambda: self.step,
                                       max_in_flight=lc.max_in_flight, context=lc.capture_context,
                                       budget_mb=lc.capture_budget_mb, world_size=world_size, rank=self.rank)
        self._warned_counts = False
        self.pending = None
        orig = getattr(actor, compat.VERL_TRAINING_WORKER_INFER)

        self.module = getattr(engine, compat.VERL_ENGINE_MODULE_ATTR)

        @functools.wraps(orig)
        def infer_batch(*args, **kwargs):
            self.step += 1
            n0 = self.capture.n_samples
            out = orig(*args, **kwargs)
            self._end_capture_step()
            self._maybe_refresh_shared()
            if self.capture.n_samples > n0 and self.rank == 0:
                self._train_and_publish()
            return out

        setattr(actor, compat.VERL_TRAINING_WORKER_INFER, infer_batch)
        logger.warning("verl-specrollout: online draft learning on (aux layers %s, publish_dir %s, rank %d)",
                       aux, lc.publish_dir, self.rank)

    def _maybe_refresh_shared(self) -> None:
        """Every ``shared_refresh_every`` policy steps, send the policy's embedding and lm_head to the
        learner. Runs on every rank (gathering a sharded weight is a collective); rank 0 ships."""
        every = self.cfg.shared_refresh_every
        if not every or self.step % every:
            return
        import time

        t0 = time.perf_counter()
        try:
            weights = policy_shared_weights(self.module)
        except Exception as exc:
            if not getattr(self, "_warned_refresh", False):
                logger.warning("verl-specrollout: cannot read the policy's embedding / lm_head (%r); the learner "
                               "keeps its copies from the model path", exc)
                self._warned_refresh = True
            return
        if self.rank == 0 and weights is not None:
            import ray

            embed, head = (ray.put(w) for w in weights)
            cost = {"shared_refresh_s": time.perf_counter() - t0,  # gather + copy into the object store
                    "shared_refresh_mb": sum(w.numel() * w.element_size() for w in weights) / 2**20}
            self.learner.set_shared_weights.remote(embed, head, self.step, cost)

    def _end_capture_step(self) -> None:
        """Ship this step's captured samples and send its counts to the learner (every rank: the
        learner sums them into ``specrollout/learner/capture/*``)."""
        counts = self.capture.end_step()  # never raises
        if counts is None:
            return
        shipper = getattr(self.capture, "shipper", None)
        if shipper is not None:  # cumulative: batches the bounded queue dropped (oldest first)
            counts = {**counts, "shipper_dropped_batches_total": shipper.dropped,
                      "shipper_dropped_samples_total": shipper.dropped_samples}
        logger.info("verl-specrollout capture, policy step %d rank %d: %s", self.step, self.rank, counts)
        try:
            self.learner.add_capture_counts.remote(self.step, self.rank, counts)
        except AttributeError:  # a learner without the method: counts stay in this log
            if not self._warned_counts:
                self._warned_counts = True
                logger.warning("verl-specrollout: the learner takes no capture counts; they are only logged here")
        except Exception as exc:
            if not self._warned_counts:
                self._warned_counts = True
                logger.warning("verl-specrollout: cannot send capture counts to the learner: %r", exc)

    def _train_and_publish(self) -> None:
        from verl_specrollout.learner.remote import TrainCalls

        # At most one call in flight: a learner slower than a rollout step skips a round (counted)
        # instead of queueing calls; a failed call is logged once and counted.
        if not isinstance(self.pending, TrainCalls):
            self.pending = TrainCalls(self.learner)
        self.pending.fire(self.cfg.steps_per_rollout, self.capture.shipper._in_flight)


def _after_init_model(worker) -> None:
    config = getattr(worker, "config", None)
    if config is None or not learning_enabled(config.rollout):
        return
    role = str(getattr(worker, compat.VERL_WORKER_ROLE_ATTR, ""))
    if "actor" not in role or getattr(worker, compat.VERL_WORKER_ACTOR_ATTR, None) is None:
        return
    # validate() turns a hub-id draft_path into its local snapshot (the learner reads the directory).
    spec_cfg = spec_config(config.rollout).validate()
    if not spec_cfg.learner.publish_dir:
        raise ValueError("specrollout.learner.publish_dir is unset in the actor worker; it is resolved when veRL's "
                         "trainer (RayPPOTrainer or the V1 PPOTrainer) is built -- set it explicitly for a trainer "
                         "of your own")
    # The learner lists the target's files: a hub id (veRL's copy_to_local returns it unchanged) or an
    # hdfs path becomes a local directory here.
    from verl_specrollout.draft.resolve import resolve_model_dir

    model_path = resolve_model_dir(str(config.model.path), "actor_rollout_ref.model.path")
    worker._specrollout_learning = _ActorLearning(worker, spec_cfg, model_path)


def patch_actor_worker(module) -> None:
    def make(init_model):
        def wrapper(self, *args, **kwargs):
            out = init_model(self, *args, **kwargs)
            _after_init_model(self)
            return out
        return wrapper

    wrap_once(getattr(module, compat.VERL_ACTOR_WORKER_CLASS), compat.VERL_WORKER_INIT_METHOD, make)


def policy_shared_weights(module):
    """(input embedding, lm_head) of the policy as full CPU tensors, or None.

    FSDP2 shards each weight as a DTensor: ``full_tensor()`` all-gathers it (every rank calls
    this). FSDP1 flattens parameters and only ``summon_full_params`` -- the whole model on every
    rank -- recovers them, so it is refused with a clear error (use ``strategy=fsdp2`` or
    ``learner.shared_refresh_every=0``)."""
    from verl_specrollout.capture.hooks import unwrap_model

    model = unwrap_model(module)
    weights = []
    for get in ("get_input_embeddings", "get_output_embeddings"):
        layer = getattr(model, get)()
        w = getattr(layer, "weight", None)
        if w is None or (w.dim() != 2 and not hasattr(w, "full_tensor")):
            raise RuntimeError(f"{get}() has no 2-D weight here (FSDP1 flat parameters?)")
        if hasattr(w, "full_tensor"):
            w = w.full_tensor()
        weights.append(w.detach().to("cpu").clone())
    return tuple(weights)
