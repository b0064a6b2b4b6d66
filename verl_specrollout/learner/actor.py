"""The learner sidecar: a named, detached Ray actor that keeps the EAGLE-3 draft matched to the
moving policy.  Capture (actor side) calls ``add_batch``; the actor worker calls
``train_and_publish`` once per rollout step (at most one call in flight, see :class:`TrainCalls`);
rollout servers reload ``<publish_dir>/LATEST``; the trainer reads ``metrics`` once per step.

``SpecLearner`` is a plain class (unit-testable without Ray); :func:`get_or_create_learner`
starts it as ``ray.remote(SpecLearner)`` with ``name``/``namespace``/``lifetime="detached"``
and the placement from ``LearnerConfig`` (cpu -> num_cpus=1, gpu -> num_gpus=1, shared_gpu ->
num_gpus=gpu_fraction).

* One learner per job: the actor's name is derived from the publish_dir unless
  ``actor_name`` is set (:func:`learner_actor_name`); an existing actor of that name is used only
  when its identity (target, publish_dir, aux layers) is this job's, else a
  SpecRolloutConfigError names both jobs' publish_dirs.
* Never stalls the trainer: it is a threaded actor (``add_batch`` is accepted while ``train``
  runs) and the cheap methods (``metrics``, ``identity``, ``lag``, ...) run in their own
  concurrency group without taking the training lock: ``metrics`` reads an immutable snapshot
  that ``train`` / ``publish`` swap in when they finish.
* Survives crashes: Ray restarts it (``max_restarts``) and ``__init__`` resumes from the saved
  state; the version counter starts above every version already on disk.
* State (``<state_dir>/learner_state.safetensors``): draft weights and optimizer state tensors,
  with the counters, the draft config and the optimizer's hyper-parameters as JSON in the
  safetensors header.  Nothing is ever unpickled: a file that is not this format (or an older
  ``learner_state.pt`` that ``torch.load(weights_only=True)`` refuses) is rejected with one
  clear error and the learner starts fresh.

Lag (reported by :meth:`SpecLearner.lag`): ``policy_step - trained_up_to_policy_step`` of the
published draft, where the latter is the newest policy step whose captured data was in the buffer
when the published draft's last training step ran.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Optional, Sequence

import torch

from verl_specrollout.config import LearnerConfig
from verl_specrollout.capture.budget import CaptureTotals
from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint
from verl_specrollout.errors import SpecRolloutConfigError

from .buffer import ReplayBuffer
from .journal import BatchJournal
from .publisher import Publisher
from .trainer import DraftTrainer

logger = logging.getLogger(__name__)

STATE_NAME = "learner_state.safetensors"
JOURNAL_DIR = "buffer"  # under state_dir: acknowledged batches not yet evicted (learner/journal.py)
LEGACY_STATE_NAME = "learner_state.pt"  # written by older versions; read with weights_only=True only
STATE_META_KEY = "specrollout_learner_state"
STATE_FORMAT = 1
DEFAULT_NAME = "specrollout_learner"  # LearnerConfig.actor_name's default: means "derive from publish_dir"
DEFAULT_NAMESPACE = "specrollout"
CONTROL_GROUP = "control"  # metrics / identity / lag: never queued behind add_batch or train calls
MAX_CONCURRENCY = 4  # default group: add_batch calls run while a train call holds the lock
MAX_RESTARTS = 3  # a crash restarts the learner from its saved state; a crash loop ends after this many
MAX_TASK_RETRIES = 1  # every method is safe to run again on the restarted learner
IDENTITY_TIMEOUT_S = 600.0  # an existing learner may still be loading the target's weights


class LearnerStateError(ValueError):
    """A learner state file this code will not load (not its format, or not safe to read)."""


def _open_journal(directory: str) -> Optional[BatchJournal]:
    """The batch journal, or None (logged) when its directory cannot be made: the learner then
    runs with an in-memory buffer only, as it would without a state dir."""
    try:
        return BatchJournal(directory)
    except OSError as exc:
        logger.error("specrollout learner: cannot keep a batch journal in %s (%r); acknowledged batches "
                     "are lost if the learner dies", directory, exc)
        return None


def _control(method):
    """Put a cheap, lock-free method in the control concurrency group (when Ray is installed)."""
    try:
        import ray
    except ImportError:
        return method
    return ray.method(concurrency_group=CONTROL_GROUP)(method)


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


def _as_config(cfg: Any) -> LearnerConfig:
    if isinstance(cfg, LearnerConfig):
        return cfg
    if cfg is None:
        return LearnerConfig()
    names = {f.name for f in dataclasses.fields(LearnerConfig)}
    return LearnerConfig(**{k: v for k, v in dict(cfg).items() if k in names})


def _as_dict(cfg: Any) -> dict:
    if isinstance(cfg, LearnerConfig):
        return dataclasses.asdict(cfg)
    return dict(cfg or {})


# ----------------------------------------------------------------------------- state file

def state_file(state_dir: str) -> Optional[str]:
    """The state file to resume from: ours, else an older version's ``.pt``, else None."""
    for name in (STATE_NAME, LEGACY_STATE_NAME):
        path = os.path.join(state_dir, name)
        if os.path.isfile(path):
            return path
    return None


def _plain_tensors(named: dict) -> dict:
    """CPU, contiguous, no two sharing storage: what safetensors accepts."""
    out, seen = {}, set()
    for k, t in named.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[k] = t
    return out


def state_tensors_and_meta(trainer: DraftTrainer, counters: dict) -> tuple:
    """Split the trainer's state into tensors (draft weights, optimizer state) and JSON."""
    opt = trainer.opt.state_dict()
    tensors = {f"draft.{k}": v for k, v in trainer.draft.state_dict().items()}
    scalars: dict = {}
    for idx, st in opt["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{key}"] = v
            else:
                scalars.setdefault(str(idx), {})[key] = v
    meta = {"format": STATE_FORMAT, "eagle3_config": dataclasses.asdict(trainer.draft.config),
            "draft_step": trainer.step, "opt_param_groups": opt["param_groups"], "opt_state_scalars": scalars,
            **counters}
    return _plain_tensors(tensors), meta


def trainer_state(tensors: dict, meta: dict) -> dict:
    """The inverse of :func:`state_tensors_and_meta`: a ``DraftTrainer.load_state_dict`` input."""
    draft = {k[len("draft."):]: v for k, v in tensors.items() if k.startswith("draft.")}
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    for idx, st in meta["opt_state_scalars"].items():
        opt_state.setdefault(int(idx), {}).update(st)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["opt_param_groups"]]
    return {"draft": draft, "opt": {"state": opt_state, "param_groups": groups}, "step": int(meta["draft_step"])}


def write_state_file(path: str, tensors: dict, meta: dict) -> None:
    """One file, replaced atomically (temp file + os.replace): a crash keeps the previous state."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=".tmp-state-", suffix=".safetensors", dir=os.path.dirname(path))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={STATE_META_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_state_file(path: str) -> tuple:
    """(tensors on CPU, meta); raises LearnerStateError for anything that is not a learner state."""
    if path.endswith(".pt"):
        return _read_legacy_state(path)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(STATE_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(raw) if raw else None
    except Exception as exc:
        raise LearnerStateError(f"{path} is not a safetensors learner state file ({exc!r})") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise LearnerStateError(f"{path} has no learner state header of format {STATE_FORMAT} "
                                f"(safetensors metadata key {STATE_META_KEY!r})")
    return tensors, meta


def _read_legacy_state(path: str) -> tuple:
    """An older version's ``torch.save`` blob, read with torch's restricted unpickler only (it
    runs no code from the file); anything it refuses is refused here."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        sd = blob["trainer"]
        tensors = {f"draft.{k}": v for k, v in sd["draft"].items()}
        meta = {"format": STATE_FORMAT, "eagle3_config": blob["eagle3_config"], "draft_step": int(sd["step"]),
                "opt_param_groups": sd["opt"]["param_groups"], "opt_state_scalars": {},
                **{k: blob[k] for k in ("version", "trained_up_to", "published_up_to", "data_policy_step")}}
        for idx, st in sd["opt"]["state"].items():
            for key, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"opt.{idx}.{key}"] = v
                else:
                    meta["opt_state_scalars"].setdefault(str(idx), {})[key] = v
    except Exception as exc:
        raise LearnerStateError(f"{path} is not a learner state torch.load(weights_only=True) reads "
                                f"({type(exc).__name__}); pickled objects are never loaded") from None
    return tensors, meta


# ----------------------------------------------------------------------------- the learner

class SpecLearner:
    def __init__(self, cfg: Any, target_dir: str, aux_layer_ids: Optional[Sequence[int]] = None, *,
                 bootstrap_dir: Optional[str] = None, state_dir: Optional[str] = None, keep: Optional[int] = None,
                 batch_size: Optional[int] = None, num_steps: Optional[int] = None,
                 heldout_every: Optional[int] = None, heldout_max: int = 64,
                 save_state_on_publish: bool = True, device: Optional[str] = None, seed: int = 0,
                 journal: bool = True):
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
        self.requested_aux_layer_ids = [int(i) for i in aux_layer_ids or []]
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
        self.heldout: collections.deque = collections.deque(maxlen=heldout_max)
        self.heldout_every = max(2, int(heldout_every))
        self.publisher = Publisher(self.cfg.publish_dir, keep=keep, target_config=self.target_config)
        self.state_dir = state_dir or os.path.join(self.cfg.publish_dir, "state")
        # Acknowledged batches survive a learner crash: journaled until the buffer evicts them.
        self.journal = _open_journal(os.path.join(self.state_dir, JOURNAL_DIR)) if journal else None
        self.buffer = ReplayBuffer(self.cfg.buffer_bytes, seed=seed,
                                   on_evict=self.journal.released if self.journal else None)
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
        self.state_error: Optional[str] = None  # why a state file present at start was refused
        self.shared_policy_step: Optional[int] = None  # policy step of the embedding / lm_head copies
        self.shared_refresh_cost: dict = {}  # seconds and MB of the last refresh, measured by the sender
        self._caller_stats: dict = {}  # the actor worker's train-call counters (see TrainCalls)
        self.capture_totals = CaptureTotals()  # per-step capture counts from every actor rank (own lock)
        self.publish_failures = 0  # publishes that raised (LATEST kept the last good version)
        self.state_save_failures = 0  # states not saved after a publish
        self._publish_failing = 0  # current run of failed publishes: the first one is logged
        self._state_save_failing = 0
        self._resume()
        self._replay_journal()
        self._refresh_snapshot()

    def _replay_journal(self) -> None:
        """Put the batches acknowledged before a restart back into the buffer, oldest first."""
        if self.journal is None:
            return
        batches = samples = 0
        for batch_id, got in self.journal.replay():
            batches += 1
            samples += len(got)
            for s in got:
                self.buffer.add(s, tag=batch_id)
        if batches:
            logger.warning("specrollout learner: %d acknowledged batches (%d samples) restored into the replay "
                           "buffer from %s", batches, samples, self.journal.directory)

    def _resume(self) -> None:
        """Resume from the saved state when there is one.  A file that is not a learner state (or
        not safe to read) is refused, logged, and left in place; the learner then starts fresh
        (the next save replaces it).  Either way the version counter starts above every version on
        disk: a publish cut short before its state was saved must not have its number reused."""
        if state_file(self.state_dir) is not None:
            try:
                self.load_state(self.state_dir)
                self.resumed = True
                # One line that says a restart happened and from what (the crash itself is Ray's).
                logger.warning("specrollout learner: resumed from %s: version %d, draft step %d, published up to "
                               "policy step %d", state_file(self.state_dir), self.version, self.trainer.step,
                               self.published_up_to)
            except LearnerStateError as exc:
                self.state_error = str(exc)
                logger.error("specrollout learner: refusing to resume: %s. Starting fresh from the initial draft "
                             "(draft_path, or a new head); delete the file or point learner.state_dir "
                             "elsewhere to silence this.", exc)
        on_disk = self.publisher.newest_version()
        if on_disk is not None and on_disk > self.version:
            self.version = on_disk

    def _refresh_snapshot(self) -> None:
        """Build the dict ``metrics`` returns and swap it in whole: readers never take the lock
        and never see a half-updated one."""
        snap = {"version": self.version, "loss": self.last_stats.get("loss"),
                "draft_step": self.trainer.step, "train_seconds": self.train_seconds,
                "trained_up_to_policy_step": self.trained_up_to,
                "published_up_to_policy_step": self.published_up_to,
                "shared_policy_step": self.shared_policy_step,
                # 1 when a state file was refused at start (the learner log says why)
                "state_refused": float(self.state_error is not None),
                "publish_failures": self.publish_failures, "state_save_failures": self.state_save_failures,
                **self.shared_refresh_cost}
        for k, v in self.last_stats.items():
            if isinstance(v, (int, float)) and k != "loss":
                snap[f"train/{k}"] = v
        self._snapshot = snap

    # ------------------------------------------------------------------ identity
    @_control
    def identity(self) -> dict:
        """What makes this learner one job's: checked before a second caller reuses it by name."""
        return {"target_dir": os.path.abspath(self.target_dir), "publish_dir": self.publisher.publish_dir,
                "aux_layer_ids": list(self.requested_aux_layer_ids)}

    # ------------------------------------------------------------------ data
    def add_batch(self, samples: Any, policy_step: Optional[int] = None) -> int:
        """Accepts a list of samples, an ObjectRef to one, or a list of such refs."""
        import ray

        if isinstance(samples, ray.ObjectRef):
            samples = ray.get(samples)
        elif isinstance(samples, list) and samples and isinstance(samples[0], ray.ObjectRef):
            samples = [s for part in ray.get(samples) for s in part]
        keep = []
        for s in samples:
            self._n_seen += 1
            if self._n_seen % self.heldout_every == 0:
                self.heldout.append(s)  # evaluation only: not journaled
            else:
                keep.append(s)
        batch_id = self.journal.record(keep) if (self.journal is not None and keep) else None
        n = sum(int(self.buffer.add(s, tag=batch_id)) for s in keep)
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
            self._refresh_snapshot()
        return {**self.last_stats, "trained": steps, "train_seconds": dt}

    def publish(self) -> int:
        """Write the next version and move LATEST to it.  A failed write (disk full, publish_dir not
        writable) raises after one clear error log (once per run of failures, then only counted as
        ``publish_failures``): LATEST still names the last good version, which rollouts keep, and the
        learner goes on training.  A failed state save after LATEST moved does not undo the publish."""
        with self._lock:
            last_good = self.version
            self.version += 1
            try:
                self.publisher.publish(self.trainer.draft, self.version,
                                       {"trained_up_to_policy_step": self.trained_up_to,
                                        "draft_step": self.trainer.step})
            except Exception as exc:
                self._publish_failed(last_good, exc)
                raise
            self._publish_worked()
            self.published_up_to = self.trained_up_to
            self._refresh_snapshot()
            if self.save_state_on_publish:
                self._save_state_after_publish()
            return self.version

    def _publish_failed(self, last_good: int, exc: BaseException) -> None:
        # Never reuse a number already on disk (a version dir renamed into place before LATEST
        # failed to move); otherwise the next publish takes the number this one did not use.
        try:
            on_disk = self.publisher.newest_version() or 0
            latest = self.publisher.latest_version()
        except OSError:  # publish_dir itself unreadable: nothing on disk can be counted on
            on_disk, latest = 0, None
        self.version = max(last_good, on_disk)
        self.publish_failures += 1
        self._publish_failing += 1
        if self._publish_failing == 1:
            logger.error("specrollout learner: publishing draft v%d to %s failed: %r. LATEST still names v%s and "
                         "rollouts keep it; training goes on and the next publish retries (further failures "
                         "are counted in specrollout/learner/publish_failures).", last_good + 1,
                         self.publisher.publish_dir, exc, latest)
        self._refresh_snapshot()

    def _publish_worked(self) -> None:
        if self._publish_failing:
            logger.warning("specrollout learner: publishing works again (v%d, after %d failed publishes)",
                           self.version, self._publish_failing)
        self._publish_failing = 0

    def _save_state_after_publish(self) -> None:
        """The version is live already: a state that cannot be written is logged (once per run of
        failures) and counted, not raised; a restart then resumes the previous state, and its
        version counter still starts above every version on disk."""
        try:
            self.save_state(self.state_dir)
        except Exception as exc:
            self.state_save_failures += 1
            self._state_save_failing += 1
            if self._state_save_failing == 1:
                logger.error("specrollout learner: saving the learner state to %s failed: %r. v%d is published; "
                             "a restart would resume an older state (counted in "
                             "specrollout/learner/state_save_failures).", self.state_dir, exc, self.version)
        else:
            self._state_save_failing = 0
        self._refresh_snapshot()

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
        try:
            version = self.publish()
        except Exception as exc:  # logged and counted by publish; the training step stands
            return {**out, "version": self.version, "published": False, "publish_error": repr(exc)}
        return {**out, "version": version, "published": True}

    @_control
    def metrics(self, policy_step: Optional[int] = None) -> dict:
        """Cheap scalars for the trainer's logger (no held-out evaluation).  Lock-free: it returns
        at once while a train / publish call runs, with the values of the last finished one."""
        snap = self._snapshot
        out = {**snap, **self._caller_stats, **self.capture_totals.metrics(), "buffer_samples": len(self.buffer)}
        if policy_step is not None:
            out["lag"] = int(policy_step) - snap["published_up_to_policy_step"]
        return out

    @_control
    def report_calls(self, stats: dict) -> None:
        """The actor worker's train-call counters (skipped / failed calls), shown by ``metrics``."""
        self._caller_stats = {k: float(v) for k, v in dict(stats).items()}

    @_control
    def add_capture_counts(self, policy_step: int, rank: int, counts: dict) -> None:
        """One actor rank's capture counts for one policy step (capture/budget.py: kept / dropped
        sequences, tokens and bytes; the shipper's dropped batches), summed over ranks and shown by
        ``metrics`` as ``capture/*``."""
        self.capture_totals.add(policy_step, rank, counts)

    @_control
    def latest_version(self) -> Optional[int]:
        return self.publisher.latest_version()

    @_control
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
            self._refresh_snapshot()

    def stats(self, evaluate: bool = True) -> dict:
        out = {"draft_step": self.trainer.step, "version": self.version,
               "trained_up_to_policy_step": self.trained_up_to,
               "published_up_to_policy_step": self.published_up_to,
               "data_policy_step": self.data_policy_step, "batches": self.n_batches,
               "heldout_samples": len(self.heldout), "train_seconds": self.train_seconds,
               "loss": self.last_stats.get("loss"), "resumed": self.resumed, "state_error": self.state_error,
               "publish_failures": self.publish_failures, "state_save_failures": self.state_save_failures,
               **self.buffer.stats()}
        if evaluate and self.heldout:
            with self._lock:
                ev = self.trainer.evaluate(list(self.heldout))
            out.update(ev)
            out["top1_agreement"] = ev.get("eval_step1_top1")
        return out

    # ------------------------------------------------------------------ state
    def save_state(self, state_dir: Optional[str] = None) -> str:
        """Draft + AdamW state + counters in one safetensors file, replaced atomically."""
        state_dir = state_dir or self.state_dir
        os.makedirs(state_dir, exist_ok=True)
        path = os.path.join(state_dir, STATE_NAME)
        with self._lock:
            tensors, meta = state_tensors_and_meta(self.trainer, {
                "version": self.version, "trained_up_to": self.trained_up_to,
                "published_up_to": self.published_up_to, "data_policy_step": self.data_policy_step})
            write_state_file(path, tensors, meta)
        return path

    def load_state(self, state_dir: Optional[str] = None) -> int:
        """Load a state :meth:`save_state` wrote.  All or nothing: on LearnerStateError (no state,
        not our format, not safe to read, does not fit) the learner keeps its current state."""
        state_dir = state_dir or self.state_dir
        path = state_file(state_dir)
        if path is None:
            raise LearnerStateError(f"no learner state in {state_dir}")
        tensors, meta = read_state_file(path)
        try:
            trainer = self._new_trainer(Eagle3Draft(Eagle3Config(**meta["eagle3_config"])))
            trainer.load_state_dict(trainer_state(tensors, meta))
            counters = {k: int(meta[k]) for k in ("version", "trained_up_to", "published_up_to",
                                                  "data_policy_step")}
        except Exception as exc:
            raise LearnerStateError(f"{path} does not fit this learner ({type(exc).__name__}: {exc})") from None
        with self._lock:
            self.trainer = trainer
            self.aux_layer_ids = list(trainer.draft.config.aux_layer_ids)
            self.version = counters["version"]
            self.trained_up_to = counters["trained_up_to"]
            self.published_up_to = counters["published_up_to"]
            self.data_policy_step = counters["data_policy_step"]
            self._refresh_snapshot()
        return self.version

    def _new_trainer(self, draft: Eagle3Draft) -> DraftTrainer:
        """A trainer like the current one (same frozen copies and settings) for ``draft``."""
        old = self.trainer
        return DraftTrainer(draft, old.embed_weight, old.lm_head_weight, lr=self.cfg.lr,
                            feature_loss_weight=old.feature_loss_weight,
                            soft_ce_loss_weight=old.soft_ce_loss_weight, num_steps=old.num_steps,
                            step_decay=old.step_decay, batch_size=old.batch_size,
                            max_grad_norm=old.max_grad_norm, device=self.device)


# ----------------------------------------------------------------------------- the caller's side

def _call_done(ref) -> bool:
    import ray

    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


def _call_result(ref):
    import ray

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


# ----------------------------------------------------------------------------- the Ray actor

def placement_options(cfg: Any) -> dict:
    cfg = _as_config(cfg)
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
    cfg_d = _as_dict(cfg)
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
    """The live actor of that name, or None (none, or one that died since)."""
    import ray

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
    import ray

    if not isinstance(cfg, (dict, LearnerConfig)) and cfg is not None:
        cfg = dict(cfg)
    cfg_d = _as_dict(cfg)
    name = name or learner_actor_name(cfg_d)
    namespace = namespace or cfg_d.get("actor_namespace") or DEFAULT_NAMESPACE
    h, have = _existing_learner(name, namespace)
    if h is not None:
        check_identity(have, _identity_wanted(cfg_d, target_dir, aux_layer_ids), name, namespace)
        return h
    opts = dict(name=name, namespace=namespace, lifetime="detached", get_if_exists=True,
                max_concurrency=MAX_CONCURRENCY, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                **placement_options(cfg_d))
    cls = ray.remote(concurrency_groups={CONTROL_GROUP: 2})(SpecLearner)  # not settable in .options()
    return cls.options(**opts).remote(cfg_d, target_dir, aux_layer_ids, **kwargs)
