"""One typed config for everything verl-specrollout adds, with its validation.

Users set it under veRL's free-form rollout block, e.g.::

    +actor_rollout_ref.rollout.custom.specrollout.enable=true
    +actor_rollout_ref.rollout.custom.specrollout.method=eagle3
    +actor_rollout_ref.rollout.custom.specrollout.draft_path=/ckpt/eagle3

`rollout.custom` is an untyped dict in veRL 0.9.1, so the typing and the error
messages live here. This module imports neither torch nor vLLM.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

METHODS = ("eagle3", "draft_model", "ngram")
MODES = ("adaptive", "static", "off")
PLACEMENTS = ("cpu", "gpu", "shared_gpu")
# Key under vLLM's `additional_config` that carries this config into the engine processes.
ADDITIONAL_CONFIG_KEY = "specrollout"


class SpecRolloutConfigError(ValueError):
    """A bad verl-specrollout setting. The message names the key and the fix."""


@dataclass
class PlannerConfig:
    """How draft length follows live concurrency (see policy/planner.py)."""

    # adaptive: the planner picks K per batch size from measured costs and acceptance.
    # static: always `max_k` (or `table` if given). off: speculation configured but K=0.
    mode: str = "adaptive"
    # Re-plan the batch-size -> K table every this many engine steps.
    replan_interval: int = 16
    # Optional user-pinned table: list of [min_batch, max_batch, K] rows; wins over the planner.
    table: Optional[list] = None
    # Largest batch size the table covers (vLLM looks the running batch size up in it).
    max_batch: int = 1024
    # Decay of the online acceptance estimate per observed step (0 < decay < 1).
    acceptance_decay: float = 0.98
    # Prior per-position acceptance rate for a cold start (pseudo-counts; washes out).
    prior_acceptance: float = 0.6
    # Relative gain a new K must show over the current one before the table changes.
    hysteresis: float = 0.03
    # Every this many re-plans, try K+-1 so the draft's cost stays measured.
    explore_every: int = 8
    # Per-request trimming of draft lists: None (off), "auto" (keep a draft token only if its
    # expected gain pays for its measured verification cost), or an int cap of draft tokens
    # verified per step. Needs synchronous scheduling (always the case on CPU).
    verify_budget: Optional[Any] = None
    # Write the planner's stats as JSON here at every re-plan (engine processes have no
    # other channel back to the trainer). Control file: {"mode": ..., "table": ...}, polled.
    stats_path: Optional[str] = None
    control_path: Optional[str] = None
    # Model drafters (eagle, eagle3, draft_model): at K=0 skip the draft forward vLLM still runs
    # to keep the draft's KV cache in sync (vllm_adapter/k0_skip.py). Makes "speculation off" as cheap
    # as plain decoding; the draft then misses KV for positions decoded at K=0, which lowers
    # acceptance when K rises again. Sampling stays exact either way.
    skip_draft_at_k0: bool = False


@dataclass
class LearnerConfig:
    """The sidecar draft learner (issue 4); validated now so configs stay stable."""

    enable: bool = False
    placement: str = "cpu"
    gpu_fraction: float = 0.25
    buffer_bytes: int = 512 * 1024 * 1024
    lr: float = 1e-4
    steps_per_rollout: int = 1
    feature_loss_weight: float = 2.0
    soft_ce_loss_weight: float = 0.1
    # Versioned drafts land here (<publish_dir>/vN + LATEST). Default (veRL): under
    # trainer.default_local_dir, else a temp dir; resolved once in the trainer process.
    publish_dir: Optional[str] = None
    # Learner state (draft + optimizer) for resume; default <publish_dir>/state.
    state_dir: Optional[str] = None
    # Published versions kept on disk (older ones are deleted).
    keep_versions: int = 3
    # Samples per learner optimizer step.
    batch_size: int = 16
    # EAGLE-3 training-time-test unroll depth (draft steps trained per sample).
    num_unroll_steps: int = 3
    # Capture -> learner shipping: outstanding add_batch calls before the oldest is dropped.
    max_in_flight: int = 4
    # Prompt positions shipped before each response (>= 1; see capture/samples.py).
    capture_context: int = 1
    # Every this many captured sequences, one goes to the held-out set instead of the buffer.
    heldout_every: int = 10
    # Reserved for multi-node runs: a node-local mirror of publish_dir read by rollout servers
    # (not used yet: single-node runs read publish_dir directly).
    node_local_dir: Optional[str] = None
    # Name / namespace of the detached learner Ray actor.
    actor_name: str = "specrollout_learner"
    actor_namespace: str = "specrollout"
    # Target layers feeding the EAGLE-3 head; default: the draft's config.json
    # (eagle_config.eagle_aux_hidden_state_layer_ids).
    aux_layer_ids: Optional[list] = None


@dataclass
class SpecRolloutConfig:
    enable: bool = False
    method: str = "eagle3"
    # Checkpoint directory of the draft (EAGLE-3 head or small LM). Not needed for ngram.
    draft_path: Optional[str] = None
    # Largest draft length; the planner chooses 0..max_k per batch size.
    max_k: int = 4
    # ngram only.
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    # Skip the draft/target vocabulary check (only for drafts with a d2t map you trust).
    skip_vocab_check: bool = False
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_dict(cls, raw: Optional[Mapping[str, Any]]) -> "SpecRolloutConfig":
        """Build from the `rollout.custom.specrollout` mapping (dict or OmegaConf)."""
        raw = _to_plain(raw) or {}
        if not isinstance(raw, dict):
            raise SpecRolloutConfigError(f"specrollout config must be a mapping, got {type(raw).__name__}")
        raw = dict(raw)
        planner = _build(PlannerConfig, raw.pop("planner", None) or {}, "specrollout.planner")
        learner = _build(LearnerConfig, raw.pop("learner", None) or {}, "specrollout.learner")
        cfg = _build(cls, raw, "specrollout")
        cfg.planner, cfg.learner = planner, learner
        return cfg

    @classmethod
    def from_rollout_config(cls, rollout_config: Any) -> "SpecRolloutConfig":
        """Read our block out of veRL's RolloutConfig (or its DictConfig)."""
        custom = _get(rollout_config, "custom")
        custom = _to_plain(custom) or {}
        return cls.from_dict(custom.get("specrollout"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --------------------------------------------------------------- validate
    def validate(self, target_path: Optional[str] = None) -> "SpecRolloutConfig":
        """Check everything that can be checked without loading a model.

        `target_path` enables the vocabulary check against the target's config.json.
        Returns self so calls chain. Raises SpecRolloutConfigError with one clear message.
        """
        if not self.enable:
            return self
        if self.method not in METHODS:
            raise SpecRolloutConfigError(
                f"specrollout.method={self.method!r} is not supported; choose one of {', '.join(METHODS)}"
            )
        if not isinstance(self.max_k, int) or self.max_k < 1:
            raise SpecRolloutConfigError(f"specrollout.max_k must be an integer >= 1, got {self.max_k!r}")
        if self.max_k > 16:
            raise SpecRolloutConfigError(f"specrollout.max_k={self.max_k} is above the supported maximum of 16")
        if self.method != "ngram":
            if not self.draft_path:
                raise SpecRolloutConfigError(
                    f"specrollout.draft_path is required for method={self.method}; "
                    "set +actor_rollout_ref.rollout.custom.specrollout.draft_path=<checkpoint dir>"
                )
            if not os.path.isdir(self.draft_path) or not os.path.isfile(os.path.join(self.draft_path, "config.json")):
                raise SpecRolloutConfigError(
                    f"specrollout.draft_path={self.draft_path!r} is not a checkpoint directory with a config.json"
                )
            if target_path and not self.skip_vocab_check:
                check_vocab(target_path, self.draft_path)
        elif self.prompt_lookup_min < 1 or self.prompt_lookup_max < self.prompt_lookup_min:
            raise SpecRolloutConfigError(
                "specrollout.prompt_lookup_min must be >= 1 and <= prompt_lookup_max, got "
                f"{self.prompt_lookup_min}, {self.prompt_lookup_max}"
            )
        self._validate_planner()
        self._validate_learner()
        return self

    def _validate_planner(self) -> None:
        p = self.planner
        if p.mode not in MODES:
            raise SpecRolloutConfigError(f"specrollout.planner.mode={p.mode!r}; choose one of {', '.join(MODES)}")
        if not isinstance(p.replan_interval, int) or p.replan_interval < 1:
            raise SpecRolloutConfigError(f"specrollout.planner.replan_interval must be >= 1, got {p.replan_interval!r}")
        if not isinstance(p.max_batch, int) or p.max_batch < 1:
            raise SpecRolloutConfigError(f"specrollout.planner.max_batch must be >= 1, got {p.max_batch!r}")
        if not 0.0 < p.acceptance_decay < 1.0:
            raise SpecRolloutConfigError(f"specrollout.planner.acceptance_decay must be in (0, 1), got {p.acceptance_decay}")
        if not 0.0 <= p.prior_acceptance <= 1.0:
            raise SpecRolloutConfigError(f"specrollout.planner.prior_acceptance must be in [0, 1], got {p.prior_acceptance}")
        if p.table is not None:
            validate_table(p.table, self.max_k)
        if not 0.0 <= p.hysteresis < 1.0:
            raise SpecRolloutConfigError(f"specrollout.planner.hysteresis must be in [0, 1), got {p.hysteresis}")
        if not isinstance(p.explore_every, int) or p.explore_every < 0:
            raise SpecRolloutConfigError(f"specrollout.planner.explore_every must be an integer >= 0, got {p.explore_every!r}")
        if not isinstance(p.skip_draft_at_k0, bool):
            raise SpecRolloutConfigError(f"specrollout.planner.skip_draft_at_k0 must be true or false, got {p.skip_draft_at_k0!r}")
        vb = p.verify_budget
        if vb is not None and vb != "auto" and (isinstance(vb, bool) or not isinstance(vb, int) or vb < 0):
            raise SpecRolloutConfigError(f"specrollout.planner.verify_budget must be null, 'auto' or an int >= 0, got {vb!r}")

    def _validate_learner(self) -> None:
        lc = self.learner
        if not lc.enable:
            return
        if self.method != "eagle3":
            raise SpecRolloutConfigError("specrollout.learner.enable=true needs method=eagle3 (the learner trains an EAGLE-3 head)")
        if lc.placement not in PLACEMENTS:
            raise SpecRolloutConfigError(f"specrollout.learner.placement={lc.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if lc.placement == "shared_gpu" and not 0.0 < lc.gpu_fraction <= 1.0:
            raise SpecRolloutConfigError(f"specrollout.learner.gpu_fraction must be in (0, 1], got {lc.gpu_fraction}")
        if lc.buffer_bytes < 1 << 20:
            raise SpecRolloutConfigError(f"specrollout.learner.buffer_bytes must be >= 1 MiB, got {lc.buffer_bytes}")
        if lc.lr <= 0 or lc.steps_per_rollout < 1:
            raise SpecRolloutConfigError("specrollout.learner.lr must be > 0 and steps_per_rollout >= 1")
        if lc.feature_loss_weight < 0 or lc.soft_ce_loss_weight < 0 or lc.feature_loss_weight + lc.soft_ce_loss_weight == 0:
            raise SpecRolloutConfigError("specrollout.learner loss weights must be >= 0 and not both 0")
        for key in ("keep_versions", "batch_size", "num_unroll_steps", "max_in_flight", "capture_context"):
            v = getattr(lc, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecRolloutConfigError(f"specrollout.learner.{key} must be an integer >= 1, got {v!r}")
        if isinstance(lc.heldout_every, bool) or not isinstance(lc.heldout_every, int) or lc.heldout_every < 2:
            raise SpecRolloutConfigError(f"specrollout.learner.heldout_every must be an integer >= 2, got {lc.heldout_every!r}")
        for key in ("actor_name", "actor_namespace"):
            if not isinstance(getattr(lc, key), str) or not getattr(lc, key):
                raise SpecRolloutConfigError(f"specrollout.learner.{key} must be a non-empty string")
        if lc.aux_layer_ids is not None:
            ids = lc.aux_layer_ids
            if (not isinstance(ids, (list, tuple)) or not ids
                    or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
                raise SpecRolloutConfigError(
                    f"specrollout.learner.aux_layer_ids must be a non-empty list of layer indices >= 0, got {ids!r}")


def draft_aux_layer_ids(draft_path: Optional[str]) -> Optional[list]:
    """EAGLE-3 aux layer ids from a vLLM-format draft's config.json (None if absent)."""
    if not draft_path:
        return None
    cfg = _read_json(os.path.join(draft_path, "config.json")) or {}
    ids = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") or cfg.get(
        "eagle_aux_hidden_state_layer_ids")
    return [int(i) for i in ids] if ids else None


def validate_table(table: Any, max_k: int) -> list:
    """A user table is rows [min_batch, max_batch, K], contiguous from batch 1, K in 0..max_k."""
    if not isinstance(table, (list, tuple)) or not table:
        raise SpecRolloutConfigError("specrollout.planner.table must be a non-empty list of [min_batch, max_batch, K]")
    rows = []
    expect = 1
    for row in table:
        row = list(row) if isinstance(row, (list, tuple)) else None
        if row is None or len(row) != 3 or not all(isinstance(v, int) for v in row):
            raise SpecRolloutConfigError(f"specrollout.planner.table row {row!r} is not [min_batch, max_batch, K] integers")
        lo, hi, k = row
        if lo != expect or hi < lo:
            raise SpecRolloutConfigError(
                f"specrollout.planner.table rows must be contiguous from batch 1; row {row} should start at {expect}"
            )
        if not 0 <= k <= max_k:
            raise SpecRolloutConfigError(f"specrollout.planner.table row {row}: K must be in 0..max_k={max_k}")
        rows.append((lo, hi, k))
        expect = hi + 1
    return rows


def check_vocab(target_path: str, draft_path: str) -> None:
    """Target and draft must agree on the vocabulary the target verifies against."""
    tgt = _read_json(os.path.join(target_path, "config.json"))
    drf = _read_json(os.path.join(draft_path, "config.json"))
    if tgt is None or drf is None:
        return  # a hub id or a non-local target: vLLM will check at load time
    tv = _vocab_size(tgt)
    dv = _vocab_size(drf)
    if tv is not None and dv is not None and tv != dv:
        raise SpecRolloutConfigError(
            f"draft vocabulary ({dv}, {draft_path}) does not match the target's ({tv}, {target_path}); "
            "a draft must be trained for this target's tokenizer"
        )


def _vocab_size(cfg: dict) -> Optional[int]:
    if "vocab_size" in cfg:
        return cfg["vocab_size"]
    text = cfg.get("text_config") or {}
    return text.get("vocab_size")


def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _build(cls, raw: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise SpecRolloutConfigError(f"unknown key(s) under {where}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**{k: v for k, v in raw.items()})


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    try:
        return obj.get(key)  # DictConfig
    except Exception:
        return getattr(obj, key, None)


def _to_plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj
    try:
        from omegaconf import OmegaConf  # veRL always has it

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:
        pass
    if isinstance(obj, Mapping):
        return dict(obj)
    return obj
