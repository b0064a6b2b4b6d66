"""The learner's state on disk, so that a restarted learner (Ray restarts a crashed actor; a
resumed job starts a new one) goes on from where it was.

``<state_dir>/learner_state.safetensors`` holds the draft weights and the optimizer's state
tensors, with the counters (:class:`Progress`), the draft config and the optimizer's
hyper-parameters as JSON in the safetensors header. Nothing is ever unpickled: a file that is not
this format is refused with one clear error (:class:`LearnerState.resume` then starts fresh and
the next save replaces it). The file is replaced atomically, so a crash keeps the previous state.

``learner_state.pt`` (a ``torch.save`` pickle that only pre-release versions wrote) is not read.
A state dir holding one and no safetensors state stops the learner with an error naming it
(:func:`refuse_retired_state`): that directory holds training state this version cannot resume,
and starting over from the initial draft beside it would publish an untrained head as if nothing
had been there; a person decides (delete or move it, or point ``learner.state_dir`` elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from typing import Callable, Optional

import torch

from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft

from .failures import FailureRun
from .trainer import DraftTrainer

logger = logging.getLogger(__name__)

STATE_NAME = "learner_state.safetensors"
RETIRED_STATE_NAME = "learner_state.pt"  # pre-release pickle format: never read, see refuse_retired_state
STATE_META_KEY = "specrollout_learner_state"
STATE_FORMAT = 1


class LearnerStateError(ValueError):
    """A learner state file this code will not load (not its format, or not safe to read)."""


@dataclasses.dataclass
class Progress:
    """The learner's counters, saved with its weights (their names are the state header's keys)."""

    version: int = 0               # the newest version published (or on disk)
    trained_up_to: int = -1        # newest policy step in the buffer at the last train step
    published_up_to: int = -1      # trained_up_to of the published version
    data_policy_step: int = -1     # newest policy step seen in captured data


# ----------------------------------------------------------------------------- the file

def state_file(state_dir: str) -> Optional[str]:
    """The state file to resume from, or None."""
    path = os.path.join(state_dir, STATE_NAME)
    return path if os.path.isfile(path) else None


def refuse_retired_state(state_dir: str) -> None:
    """Raise when ``state_dir`` holds only a ``learner_state.pt``: see the module docstring."""
    path = os.path.join(state_dir, RETIRED_STATE_NAME)
    if os.path.isfile(path) and state_file(state_dir) is None:
        raise LearnerStateError(
            f"{path} is a learner state in the pickle format of pre-release versions, which this version "
            f"does not read (it never unpickles state). Refusing to start over from the initial draft while "
            f"it is there: delete or move it to start fresh, or point learner.state_dir at another directory.")


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
    from safetensors.torch import save_file  # looked up per call: a test fills the disk by patching it

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


# ----------------------------------------------------------------------------- save / resume

class LearnerState:
    """Saves and resumes one learner's trainer and :class:`Progress` in ``directory``."""

    def __init__(self, directory: str):
        self.directory = directory
        self.resumed = False
        self.error: Optional[str] = None  # why a state file present at start was refused
        self.save_failures = FailureRun()  # saves after a publish that failed

    def save(self, trainer: DraftTrainer, progress: Progress, directory: Optional[str] = None) -> str:
        directory = directory or self.directory
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, STATE_NAME)
        tensors, meta = state_tensors_and_meta(trainer, dataclasses.asdict(progress))
        write_state_file(path, tensors, meta)
        return path

    def load(self, make_trainer: Callable[[Eagle3Draft], DraftTrainer],
             directory: Optional[str] = None) -> tuple:
        """(trainer, progress) from a state :meth:`save` wrote; ``make_trainer`` builds a trainer
        for the saved draft config. Raises LearnerStateError (no state, not our format, not safe to
        read, does not fit) and changes nothing then."""
        directory = directory or self.directory
        path = state_file(directory)
        if path is None:
            raise LearnerStateError(f"no learner state in {directory}")
        tensors, meta = read_state_file(path)
        try:
            trainer = make_trainer(Eagle3Draft(Eagle3Config(**meta["eagle3_config"])))
            trainer.load_state_dict(trainer_state(tensors, meta))
            progress = Progress(**{f.name: int(meta[f.name]) for f in dataclasses.fields(Progress)})
        except Exception as exc:
            raise LearnerStateError(f"{path} does not fit this learner ({type(exc).__name__}: {exc})") from None
        return trainer, progress

    def resume(self, make_trainer: Callable[[Eagle3Draft], DraftTrainer]) -> Optional[tuple]:
        """(trainer, progress) of the saved state, or None: no state, or a file that is not a
        learner state (or not safe to read), which is refused, logged and left in place; the
        learner then starts fresh and its next save replaces the file. A retired ``.pt`` state
        raises (:func:`refuse_retired_state`)."""
        refuse_retired_state(self.directory)
        path = state_file(self.directory)
        if path is None:
            return None
        try:
            trainer, progress = self.load(make_trainer)
        except LearnerStateError as exc:
            self.error = str(exc)
            logger.error("specrollout learner: refusing to resume: %s. Starting fresh from the initial draft "
                         "(draft_path, or a new head); delete the file or point learner.state_dir "
                         "elsewhere to silence this.", exc)
            return None
        self.resumed = True
        # One line that says a restart happened and from what (the crash itself is Ray's).
        logger.warning("specrollout learner: resumed from %s: version %d, draft step %d, published up to "
                       "policy step %d", path, progress.version, trainer.step, progress.published_up_to)
        return trainer, progress

    def save_after_publish(self, trainer: DraftTrainer, progress: Progress) -> None:
        """The version is live already: a state that cannot be written is logged (once per run of
        failures) and counted, not raised; a restart then resumes the previous state, and its
        version counter still starts above every version on disk."""
        try:
            self.save(trainer, progress)
        except Exception as exc:
            if self.save_failures.failed():
                logger.error("specrollout learner: saving the learner state to %s failed: %r. v%d is published; "
                             "a restart would resume an older state (counted in "
                             "specrollout/learner/state_save_failures).", self.directory, exc, progress.version)
        else:
            self.save_failures.worked()
