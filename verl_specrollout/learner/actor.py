"""The learner sidecar: a named, detached Ray actor that keeps the EAGLE-3 draft matched to the
moving policy.  Capture (actor side) calls ``add_batch``; the trainer loop calls ``train`` and
``publish`` once per rollout step; rollout servers reload ``<publish_dir>/LATEST``.

``SpecLearner`` is a plain class (unit-testable without Ray); :func:`get_or_create_learner`
starts it as ``ray.remote(SpecLearner)`` with ``name``/``namespace``/``lifetime="detached"``/
``get_if_exists=True`` and the placement from ``LearnerConfig`` (cpu -> num_cpus=1, gpu ->
num_gpus=1, shared_gpu -> num_gpus=gpu_fraction).  It is a threaded actor (max_concurrency=4):
``add_batch`` is accepted while a ``train`` call runs.

Lag (reported by :meth:`SpecLearner.lag`): ``policy_step - trained_up_to_policy_step`` of the
published draft, where the latter is the newest policy step whose captured data was in the buffer
when the published draft's last training step ran.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import tempfile
import threading
import time
from typing import Any, Optional, Sequence

import torch

from verl_specrollout.config import LearnerConfig
from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint

from .buffer import ReplayBuffer
from .publisher import Publisher
from .trainer import DraftTrainer

logger = logging.getLogger(__name__)

STATE_NAME = "learner_state.pt"
DEFAULT_NAME = "specrollout_learner"
DEFAULT_NAMESPACE = "specrollout"


def load_shared_weights(target_dir: str) -> tuple:
    """(embed_tokens.weight, lm_head.weight) read from the target's safetensors only."""
    import json

    from safetensors import safe_open

    files = sorted(f for f in os.listdir(target_dir) if f.endswith(".safetensors"))
    emb = head = None
    for fn in files:
        with safe_open(os.path.join(target_dir, fn), framework="pt") as f:
            for k in f.keys():
                if k.endswith("embed_tokens.weight"):
                    emb = f.get_tensor(k)
                elif k == "lm_head.weight" or k.endswith(".lm_head.weight"):
                    head = f.get_tensor(k)
    if head is None:
        with open(os.path.join(target_dir, "config.json")) as f:
            tied = json.load(f).get("tie_word_embeddings", False)
        if tied:
            head = emb
    if emb is None or head is None:
        raise ValueError(f"{target_dir}: embed_tokens / lm_head weights not found")
    return emb.float(), head.float()


def _as_config(cfg: Any) -> LearnerConfig:
    if isinstance(cfg, LearnerConfig):
        return cfg
    if cfg is None:
        return LearnerConfig()
    names = {f.name for f in dataclasses.fields(LearnerConfig)}
    return LearnerConfig(**{k: v for k, v in dict(cfg).items() if k in names})


class SpecLearner:
    def __init__(self, cfg: Any, target_dir: str, aux_layer_ids: Optional[Sequence[int]] = None, *,
                 bootstrap_dir: Optional[str] = None, state_dir: Optional[str] = None, keep: Optional[int] = None,
                 batch_size: Optional[int] = None, num_steps: Optional[int] = None,
                 heldout_every: Optional[int] = None, heldout_max: int = 64,
                 save_state_on_publish: bool = True, device: Optional[str] = None, seed: int = 0):
        """Keyword arguments left None come from ``cfg`` (LearnerConfig: state_dir, keep_versions,
        batch_size, num_unroll_steps, heldout_every, aux_layer_ids); given ones override it."""
        self.cfg = _as_config(cfg)
        if not self.cfg.publish_dir:
            raise ValueError("specrollout.learner.publish_dir must be set")
        state_dir = state_dir or self.cfg.state_dir
        keep = self.cfg.keep_versions if keep is None else keep
        batch_size = self.cfg.batch_size if batch_size is None else batch_size
        num_steps = self.cfg.num_unroll_steps if num_steps is None else num_steps
        heldout_every = self.cfg.heldout_every if heldout_every is None else heldout_every
        aux_layer_ids = aux_layer_ids or self.cfg.aux_layer_ids
        torch.manual_seed(seed)
        self.target_dir = target_dir
        if device is None:
            device = "cuda" if (self.cfg.placement in ("gpu", "shared_gpu") and torch.cuda.is_available()) else "cpu"
        self.device = device
        from transformers import AutoConfig

        self.target_config = AutoConfig.from_pretrained(target_dir)
        if bootstrap_dir:
            # A head from the EAGLE authors may name no aux layers: then the ones capture uses apply.
            draft = load_vllm_checkpoint(bootstrap_dir, aux_layer_ids=aux_layer_ids)
        else:
            if not aux_layer_ids:
                raise ValueError("aux_layer_ids are required to build a draft from scratch")
            draft = Eagle3Draft(Eagle3Config.from_target_config(self.target_config, aux_layer_ids))
        self.aux_layer_ids = list(draft.config.aux_layer_ids)
        emb, head = load_shared_weights(target_dir)
        self.trainer = DraftTrainer(draft, emb, head, lr=self.cfg.lr,
                                    feature_loss_weight=self.cfg.feature_loss_weight,
                                    soft_ce_loss_weight=self.cfg.soft_ce_loss_weight,
                                    num_steps=num_steps, batch_size=batch_size, device=device)
        self.buffer = ReplayBuffer(self.cfg.buffer_bytes, seed=seed)
        self.heldout: collections.deque = collections.deque(maxlen=heldout_max)
        self.heldout_every = max(2, int(heldout_every))
        self.publisher = Publisher(self.cfg.publish_dir, keep=keep, target_config=self.target_config)
        self.state_dir = state_dir or os.path.join(self.cfg.publish_dir, "state")
        self.save_state_on_publish = save_state_on_publish
        self.version = 0
        self.data_policy_step = -1          # newest policy step seen in captured data
        self.trained_up_to = -1             # newest policy step in the buffer at the last train step
        self.published_up_to = -1           # trained_up_to of the published version
        self.last_stats: dict = {}
        self.n_batches = 0
        self.train_seconds = 0.0
        self._lock = threading.RLock()
        self._n_seen = 0
        self.resumed = False
        self.shared_policy_step: Optional[int] = None  # policy step of the embedding / lm_head copies
        self.shared_refresh_cost: dict = {}  # seconds and MB of the last refresh, measured by the sender
        if os.path.isfile(os.path.join(self.state_dir, STATE_NAME)):
            self.load_state(self.state_dir)
            self.resumed = True
        else:
            latest = self.publisher.latest_version()
            if latest is not None:  # never reuse a version number already on disk
                self.version = latest

    # ------------------------------------------------------------------ data
    def add_batch(self, samples: Any, policy_step: Optional[int] = None) -> int:
        """Accepts a list of samples, an ObjectRef to one, or a list of such refs."""
        import ray

        if isinstance(samples, ray.ObjectRef):
            samples = ray.get(samples)
        elif isinstance(samples, list) and samples and isinstance(samples[0], ray.ObjectRef):
            samples = [s for part in ray.get(samples) for s in part]
        n = 0
        for s in samples:
            self._n_seen += 1
            if self._n_seen % self.heldout_every == 0:
                self.heldout.append(s)
            else:
                n += int(self.buffer.add(s))
        if policy_step is not None:
            self.data_policy_step = max(self.data_policy_step, int(policy_step))
        self.n_batches += 1
        return n

    # ------------------------------------------------------------------ training
    def train(self, steps: Optional[int] = None) -> dict:
        steps = int(steps or self.cfg.steps_per_rollout)
        if len(self.buffer) == 0:
            return {"trained": 0}
        with self._lock:
            t0 = time.perf_counter()
            up_to = self.data_policy_step
            for _ in range(steps):
                self.last_stats = self.trainer.train_step(self.buffer.sample(self.trainer.batch_size))
            self.trained_up_to = max(self.trained_up_to, up_to)
            dt = time.perf_counter() - t0
            self.train_seconds += dt
        return {**self.last_stats, "trained": steps, "train_seconds": dt}

    def publish(self) -> int:
        with self._lock:
            self.version += 1
            self.publisher.publish(self.trainer.draft, self.version,
                                   {"trained_up_to_policy_step": self.trained_up_to,
                                    "draft_step": self.trainer.step})
            self.published_up_to = self.trained_up_to
            if self.save_state_on_publish:
                self.save_state(self.state_dir)
            return self.version

    def train_and_publish(self, steps: Optional[int] = None, wait_for: Optional[list] = None,
                          wait_timeout: float = 60.0) -> dict:
        """One call per rollout step from the actor worker (fire-and-forget): wait for the
        ``add_batch`` calls in ``wait_for`` (ObjectRefs, wrapped in a list by the caller so Ray
        does not resolve them), train ``steps`` optimizer steps, publish a new version."""
        if wait_for:
            import ray

            try:
                ray.wait(list(wait_for), num_returns=len(wait_for), timeout=wait_timeout)
            except Exception as exc:  # a cancelled / failed add_batch: train on what arrived
                logger.warning("specrollout learner: waiting for captured batches failed: %r", exc)
        out = self.train(steps)
        if not out.get("trained"):
            return {**out, "version": self.version, "published": False}
        version = self.publish()
        return {**out, "version": version, "published": True}

    def metrics(self, policy_step: Optional[int] = None) -> dict:
        """Cheap scalars for the trainer's logger (no held-out evaluation)."""
        with self._lock:
            out = {"version": self.version, "loss": self.last_stats.get("loss"),
                   "draft_step": self.trainer.step, "buffer_samples": len(self.buffer),
                   "train_seconds": self.train_seconds,
                   "trained_up_to_policy_step": self.trained_up_to,
                   "published_up_to_policy_step": self.published_up_to,
                   "shared_policy_step": self.shared_policy_step, **self.shared_refresh_cost}
            for k, v in self.last_stats.items():
                if isinstance(v, (int, float)) and k != "loss":
                    out[f"train/{k}"] = v
        if policy_step is not None:
            out["lag"] = self.lag(policy_step)
        return out

    def latest_version(self) -> Optional[int]:
        return self.publisher.latest_version()

    def lag(self, policy_step: int) -> int:
        return int(policy_step) - self.published_up_to

    def refresh_shared(self, target_dir: str) -> None:
        """Reload the frozen embedding / lm_head copies from a newer policy checkpoint."""
        emb, head = load_shared_weights(target_dir)
        self.set_shared_weights(emb, head)

    def set_shared_weights(self, embed_weight, lm_head_weight, policy_step: Optional[int] = None,
                           cost: Optional[dict] = None) -> None:
        """The policy's current input embedding and lm_head (sent by the actor worker after a policy
        update): the soft-CE target and the draft's shared modules follow the policy the rollout runs."""
        with self._lock:
            self.trainer.set_shared_weights(embed_weight, lm_head_weight)
            self.shared_policy_step = policy_step
            self.shared_refresh_cost = dict(cost or {})

    def stats(self, evaluate: bool = True) -> dict:
        out = {"draft_step": self.trainer.step, "version": self.version,
               "trained_up_to_policy_step": self.trained_up_to,
               "published_up_to_policy_step": self.published_up_to,
               "data_policy_step": self.data_policy_step, "batches": self.n_batches,
               "heldout_samples": len(self.heldout), "train_seconds": self.train_seconds,
               "loss": self.last_stats.get("loss"), "resumed": self.resumed, **self.buffer.stats()}
        if evaluate and self.heldout:
            with self._lock:
                ev = self.trainer.evaluate(list(self.heldout))
            out.update(ev)
            out["top1_agreement"] = ev.get("eval_step1_top1")
        return out

    # ------------------------------------------------------------------ state
    def save_state(self, state_dir: Optional[str] = None) -> str:
        """Draft + AdamW state + counters, written atomically (temp file + os.replace)."""
        state_dir = state_dir or self.state_dir
        os.makedirs(state_dir, exist_ok=True)
        with self._lock:
            blob = {"trainer": self.trainer.state_dict(),
                    "eagle3_config": dataclasses.asdict(self.trainer.draft.config),
                    "version": self.version, "trained_up_to": self.trained_up_to,
                    "published_up_to": self.published_up_to, "data_policy_step": self.data_policy_step}
            fd, tmp = tempfile.mkstemp(prefix="tmp_state_", suffix=".pt", dir=state_dir)
            os.close(fd)
            try:
                torch.save(blob, tmp)
                os.replace(tmp, os.path.join(state_dir, STATE_NAME))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return os.path.join(state_dir, STATE_NAME)

    def load_state(self, state_dir: Optional[str] = None) -> int:
        state_dir = state_dir or self.state_dir
        blob = torch.load(os.path.join(state_dir, STATE_NAME), map_location=self.device, weights_only=False)
        with self._lock:
            cfg = Eagle3Config(**blob["eagle3_config"])
            if dataclasses.asdict(cfg) != dataclasses.asdict(self.trainer.draft.config):
                draft = Eagle3Draft(cfg)
                old = self.trainer
                self.trainer = DraftTrainer(draft, old.embed_weight, old.lm_head_weight, lr=self.cfg.lr,
                                            feature_loss_weight=old.feature_loss_weight,
                                            soft_ce_loss_weight=old.soft_ce_loss_weight,
                                            num_steps=old.num_steps, batch_size=old.batch_size, device=self.device)
            self.trainer.load_state_dict(blob["trainer"])
            self.version = int(blob["version"])
            self.trained_up_to = int(blob["trained_up_to"])
            self.published_up_to = int(blob["published_up_to"])
            self.data_policy_step = int(blob["data_policy_step"])
        return self.version


def placement_options(cfg: Any) -> dict:
    cfg = _as_config(cfg)
    if cfg.placement == "cpu":
        return {"num_cpus": 1}
    if cfg.placement == "gpu":
        return {"num_gpus": 1, "num_cpus": 1}
    if cfg.placement == "shared_gpu":
        return {"num_gpus": float(cfg.gpu_fraction), "num_cpus": 1}
    raise ValueError(f"unknown learner placement {cfg.placement!r}")


def get_or_create_learner(cfg: Any, target_dir: str, aux_layer_ids=None, *, name: Optional[str] = None,
                          namespace: Optional[str] = None, **kwargs):
    """The named detached learner actor (created on first call, found afterwards).  A restarted
    actor (after a crash) resumes from ``<state_dir>/learner_state.pt`` when present."""
    import ray

    if not isinstance(cfg, (dict, LearnerConfig)) and cfg is not None:
        cfg = dict(cfg)
    cfg_d = dataclasses.asdict(cfg) if isinstance(cfg, LearnerConfig) else dict(cfg or {})
    name = name or cfg_d.get("actor_name") or DEFAULT_NAME
    namespace = namespace or cfg_d.get("actor_namespace") or DEFAULT_NAMESPACE
    opts = dict(name=name, namespace=namespace, lifetime="detached", get_if_exists=True, max_concurrency=4,
                **placement_options(cfg_d))
    return ray.remote(SpecLearner).options(**opts).remote(cfg_d, target_dir, aux_layer_ids, **kwargs)
