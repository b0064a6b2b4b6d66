"""The learner: keeps the EAGLE-3 draft matched to the moving policy. Capture calls ``add_batch``;
the actor worker calls ``train_and_publish`` once per rollout step; rollout servers reload
``<publish_dir>/LATEST``; the trainer reads ``metrics`` once per step.

:class:`SpecLearner` is the training loop only, a plain class (unit-testable without Ray): the
replay buffer feeds :class:`DraftTrainer`, and each call trains, then publishes a version. Around it:

* remote.py runs it as a named, detached Ray actor (one per job; ObjectRef batches, the control
  concurrency group, the caller's :class:`TrainCalls`);
* state.py saves it after every publish and resumes it after a restart (the version counter
  then starts above every version already on disk);
* journal.py keeps the batches it acknowledged until the buffer evicts them, so a restart
  loses none.

Never stalls the trainer: ``add_batch`` is accepted while ``train`` runs (the buffer has its own
lock) and ``metrics`` returns an immutable snapshot that ``train`` / ``publish`` swap in when they
finish, without taking the training lock.

Lag (reported by :meth:`SpecLearner.lag`): ``policy_step - trained_up_to_policy_step`` of the
published draft, where the latter is the newest policy step whose captured data was in the buffer
when the published draft's last training step ran.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from typing import Any, Optional, Sequence

import torch

from verl_specrollout.capture.budget import CaptureTotals
from verl_specrollout.config import LearnerConfig
from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint

from .buffer import HeldOutSplit, ReplayBuffer
from .failures import FailureRun
from .journal import JOURNAL_DIR, open_journal
from .publisher import Publisher
from .state import LearnerState, Progress
from .trainer import DraftTrainer

logger = logging.getLogger(__name__)


def load_shared_weights(target_dir: str) -> tuple:
    """(embed_tokens.weight, lm_head.weight) read from the target's safetensors only."""
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


def as_learner_config(cfg: Any) -> LearnerConfig:
    if isinstance(cfg, LearnerConfig):
        return cfg
    if cfg is None:
        return LearnerConfig()
    names = {f.name for f in dataclasses.fields(LearnerConfig)}
    return LearnerConfig(**{k: v for k, v in dict(cfg).items() if k in names})


def learner_config_dict(cfg: Any) -> dict:
    """The learner config as a plain dict (what travels to the Ray actor)."""
    if isinstance(cfg, LearnerConfig):
        return dataclasses.asdict(cfg)
    return dict(cfg or {})


class SpecLearner:
    def __init__(self, cfg: Any, target_dir: str, aux_layer_ids: Optional[Sequence[int]] = None, *,
                 bootstrap_dir: Optional[str] = None, state_dir: Optional[str] = None, keep: Optional[int] = None,
                 batch_size: Optional[int] = None, num_steps: Optional[int] = None,
                 heldout_every: Optional[int] = None, heldout_max: int = 64,
                 save_state_on_publish: bool = True, device: Optional[str] = None, seed: int = 0,
                 journal: bool = True):
        """Keyword arguments left None come from ``cfg`` (LearnerConfig: state_dir, keep_versions,
        batch_size, num_unroll_steps, heldout_every, aux_layer_ids); given ones override it."""
        self.cfg = as_learner_config(cfg)
        if not self.cfg.publish_dir:
            raise ValueError("specrollout.learner.publish_dir must be set")
        aux_layer_ids = aux_layer_ids or self.cfg.aux_layer_ids
        # What makes this learner one job's: checked before a second caller reuses it by name.
        self._identity = {"target_dir": os.path.abspath(target_dir),
                          "publish_dir": os.path.abspath(self.cfg.publish_dir),
                          "aux_layer_ids": [int(i) for i in aux_layer_ids or []]}
        torch.manual_seed(seed)
        from transformers import AutoConfig

        self.target_config = AutoConfig.from_pretrained(target_dir)
        if bootstrap_dir:
            # A head from the EAGLE authors may name no aux layers: then the ones capture uses apply.
            draft = load_vllm_checkpoint(bootstrap_dir, aux_layer_ids=aux_layer_ids)
        else:
            if not aux_layer_ids:
                raise ValueError("aux_layer_ids are required to build a draft from scratch")
            draft = Eagle3Draft(Eagle3Config.from_target_config(self.target_config, aux_layer_ids))
        if device is None:
            device = "cuda" if (self.cfg.placement in ("gpu", "shared_gpu") and torch.cuda.is_available()) else "cpu"
        emb, head = load_shared_weights(target_dir)
        self.trainer = DraftTrainer(
            draft, emb, head, lr=self.cfg.lr, feature_loss_weight=self.cfg.feature_loss_weight,
            soft_ce_loss_weight=self.cfg.soft_ce_loss_weight, device=device,
            num_steps=self.cfg.num_unroll_steps if num_steps is None else num_steps,
            batch_size=self.cfg.batch_size if batch_size is None else batch_size)
        self.heldout = HeldOutSplit(self.cfg.heldout_every if heldout_every is None else heldout_every, heldout_max)
        self.publisher = Publisher(self.cfg.publish_dir, keep=self.cfg.keep_versions if keep is None else keep,
                                   target_config=self.target_config)
        self._publish_failures = FailureRun()
        self.save_state_on_publish = save_state_on_publish
        self.state = LearnerState(state_dir or self.cfg.state_dir or os.path.join(self.cfg.publish_dir, "state"))
        # Acknowledged batches survive a learner crash: journaled until the buffer evicts them.
        self.journal = open_journal(os.path.join(self.state.directory, JOURNAL_DIR)) if journal else None
        self.buffer = ReplayBuffer(self.cfg.buffer_bytes, seed=seed,
                                   on_evict=self.journal.released if self.journal else None)
        self.progress = Progress()
        self.last_stats: dict = {}
        self.n_batches = 0
        self.train_seconds = 0.0
        self._lock = threading.RLock()  # train / publish / state: one at a time
        self.shared_weights: dict = {}  # policy step of the embedding / lm_head copies, cost of the last refresh
        self._caller_stats: dict = {}  # the actor worker's train-call counters (see remote.TrainCalls)
        self.capture_totals = CaptureTotals()  # per-step capture counts from every actor rank (own lock)
        resumed = self.state.resume(self._new_trainer)
        if resumed is not None:
            self.trainer, self.progress = resumed
        # A publish cut short before its state was saved must not have its number reused.
        self.progress.version = max(self.progress.version, self.publisher.newest_version() or 0)
        if self.journal is not None:
            self.journal.restore_into(self.buffer)
        self._refresh_snapshot()

    @property
    def version(self) -> int:
        return self.progress.version

    @property
    def publish_failures(self) -> int:
        """Publishes that raised (LATEST kept the last good version)."""
        return self._publish_failures.total

    def _refresh_snapshot(self) -> None:
        """Build the dict ``metrics`` returns and swap it in whole: readers never take the lock
        and never see a half-updated one."""
        p = self.progress
        snap = {"version": p.version, "loss": self.last_stats.get("loss"),
                "draft_step": self.trainer.step, "train_seconds": self.train_seconds,
                "trained_up_to_policy_step": p.trained_up_to,
                "published_up_to_policy_step": p.published_up_to,
                "shared_policy_step": self.shared_weights.get("policy_step"),
                # 1 when a state file was refused at start (the learner log says why)
                "state_refused": float(self.state.error is not None),
                "publish_failures": self.publish_failures,
                "state_save_failures": self.state.save_failures.total,
                **self.shared_weights.get("cost", {})}
        for k, v in self.last_stats.items():
            if isinstance(v, (int, float)) and k != "loss":
                snap[f"train/{k}"] = v
        self._snapshot = snap

    def identity(self) -> dict:
        return dict(self._identity)

    # ------------------------------------------------------------------ data
    def add_batch(self, samples: list, policy_step: Optional[int] = None) -> int:
        """Returns how many samples went into the replay buffer (the held-out ones do not)."""
        keep = self.heldout.split(samples)
        batch_id = self.journal.record(keep) if (self.journal is not None and keep) else None
        n = sum(int(self.buffer.add(s, tag=batch_id)) for s in keep)
        if policy_step is not None:
            self.progress.data_policy_step = max(self.progress.data_policy_step, int(policy_step))
        self.n_batches += 1
        return n

    # ------------------------------------------------------------------ training
    def train(self, steps: Optional[int] = None) -> dict:
        steps = int(steps or self.cfg.steps_per_rollout)
        if len(self.buffer) == 0:
            return {"trained": 0}
        with self._lock:
            t0 = time.perf_counter()
            up_to = self.progress.data_policy_step
            for _ in range(steps):
                self.last_stats = self.trainer.train_step(self.buffer.sample(self.trainer.batch_size))
            self.progress.trained_up_to = max(self.progress.trained_up_to, up_to)
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            self._refresh_snapshot()
        return {**self.last_stats, "trained": steps, "train_seconds": dt}

    def publish(self) -> int:
        """Write the next version and move LATEST to it.  A failed write (disk full, publish_dir not
        writable) raises after one clear error log (once per run of failures, then only counted as
        ``publish_failures``): LATEST still names the last good version, which rollouts keep, and the
        learner goes on training.  A failed state save after LATEST moved does not undo the publish."""
        with self._lock:
            p = self.progress
            last_good = p.version
            p.version += 1
            try:
                self.publisher.publish(self.trainer.draft, p.version,
                                       {"trained_up_to_policy_step": p.trained_up_to,
                                        "draft_step": self.trainer.step})
            except Exception as exc:
                self._publish_failed(last_good, exc)
                raise
            failed_before = self._publish_failures.worked()
            if failed_before:
                logger.warning("specrollout learner: publishing works again (v%d, after %d failed publishes)",
                               p.version, failed_before)
            p.published_up_to = p.trained_up_to
            if self.save_state_on_publish:
                self.state.save_after_publish(self.trainer, p)
            self._refresh_snapshot()
            return p.version

    def _publish_failed(self, last_good: int, exc: BaseException) -> None:
        # Never reuse a number already on disk (a version dir renamed into place before LATEST
        # failed to move); otherwise the next publish takes the number this one did not use.
        try:
            on_disk = self.publisher.newest_version() or 0
            latest = self.publisher.latest_version()
        except OSError:  # publish_dir itself unreadable: nothing on disk can be counted on
            on_disk, latest = 0, None
        self.progress.version = max(last_good, on_disk)
        if self._publish_failures.failed():
            logger.error("specrollout learner: publishing draft v%d to %s failed: %r. LATEST still names v%s and "
                         "rollouts keep it; training goes on and the next publish retries (further failures "
                         "are counted in specrollout/learner/publish_failures).", last_good + 1,
                         self.publisher.publish_dir, exc, latest)
        self._refresh_snapshot()

    def train_and_publish(self, steps: Optional[int] = None) -> dict:
        """One rollout step's learning: train ``steps`` optimizer steps, publish a new version."""
        out = self.train(steps)
        if not out.get("trained"):
            return {**out, "version": self.version, "published": False}
        try:
            version = self.publish()
        except Exception as exc:  # logged and counted by publish; the training step stands
            return {**out, "version": self.version, "published": False, "publish_error": repr(exc)}
        return {**out, "version": version, "published": True}

    # ------------------------------------------------------------------ reading (lock-free)
    def metrics(self, policy_step: Optional[int] = None) -> dict:
        """Cheap scalars for the trainer's logger (no held-out evaluation).  Lock-free: it returns
        at once while a train / publish call runs, with the values of the last finished one."""
        snap = self._snapshot
        out = {**snap, **self._caller_stats, **self.capture_totals.metrics(), "buffer_samples": len(self.buffer)}
        if policy_step is not None:
            out["lag"] = int(policy_step) - snap["published_up_to_policy_step"]
        return out

    def report_calls(self, stats: dict) -> None:
        """The actor worker's train-call counters (skipped / failed calls), shown by ``metrics``."""
        # Reports are fire-and-forget calls served by a threaded group, so an older one can land
        # after a newer one: the counters only grow, and a late report must not lower them.
        merged = dict(self._caller_stats)
        for k, v in dict(stats).items():
            merged[k] = max(float(v), merged.get(k, float("-inf")))
        self._caller_stats = merged

    def add_capture_counts(self, policy_step: int, rank: int, counts: dict) -> None:
        """One actor rank's capture counts for one policy step (capture/budget.py: kept / dropped
        sequences, tokens and bytes; the shipper's dropped batches), summed over ranks and shown by
        ``metrics`` as ``capture/*``."""
        self.capture_totals.add(policy_step, rank, counts)

    def latest_version(self) -> Optional[int]:
        return self.publisher.latest_version()

    def lag(self, policy_step: int) -> int:
        return int(policy_step) - self.progress.published_up_to

    def stats(self, evaluate: bool = True) -> dict:
        p = self.progress
        out = {"draft_step": self.trainer.step, "version": p.version,
               "trained_up_to_policy_step": p.trained_up_to, "published_up_to_policy_step": p.published_up_to,
               "data_policy_step": p.data_policy_step, "batches": self.n_batches,
               "heldout_samples": len(self.heldout), "train_seconds": self.train_seconds,
               "loss": self.last_stats.get("loss"), "resumed": self.state.resumed, "state_error": self.state.error,
               "publish_failures": self.publish_failures,
               "state_save_failures": self.state.save_failures.total, **self.buffer.stats()}
        if evaluate and len(self.heldout):
            with self._lock:
                ev = self.trainer.evaluate(list(self.heldout.samples))
            out.update(ev)
            out["top1_agreement"] = ev.get("eval_step1_top1")
        return out

    # ------------------------------------------------------------------ shared weights
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
            self.shared_weights = {"policy_step": policy_step, "cost": dict(cost or {})}
            self._refresh_snapshot()

    # ------------------------------------------------------------------ state (state.py)
    def save_state(self, state_dir: Optional[str] = None) -> str:
        """Draft + AdamW state + counters in one safetensors file, replaced atomically."""
        with self._lock:
            return self.state.save(self.trainer, self.progress, state_dir)

    def load_state(self, state_dir: Optional[str] = None) -> int:
        """Load a state :meth:`save_state` wrote.  All or nothing: on LearnerStateError (no state,
        not our format, not safe to read, does not fit) the learner keeps its current state."""
        trainer, progress = self.state.load(self._new_trainer, state_dir)
        with self._lock:
            self.trainer, self.progress = trainer, progress
            self._refresh_snapshot()
        return self.version

    def _new_trainer(self, draft: Eagle3Draft) -> DraftTrainer:
        """A trainer like the current one (same frozen copies and settings) for ``draft``."""
        old = self.trainer
        return DraftTrainer(draft, old.embed_weight, old.lm_head_weight, lr=self.cfg.lr,
                            feature_loss_weight=old.feature_loss_weight,
                            soft_ce_loss_weight=old.soft_ce_loss_weight, num_steps=old.num_steps,
                            step_decay=old.step_decay, batch_size=old.batch_size,
                            max_grad_norm=old.max_grad_norm, device=old.device)
