"""One typed config for everything verl-specrollout adds, with its validation.

Users set it under veRL's free-form rollout block, e.g.::

    +actor_rollout_ref.rollout.custom.specrollout.enable=true
    +actor_rollout_ref.rollout.custom.specrollout.method=eagle3
    +actor_rollout_ref.rollout.custom.specrollout.draft_path=/ckpt/eagle3

`rollout.custom` is an untyped dict in veRL 0.9.1, so the typing and the error
messages live here. This module imports neither torch nor vLLM.

Each key is declared once, with its type (the annotation), its default, its
constraint and its description (`key(...)`); validation and the reference in
docs/configuration.md are both driven by those declarations:

    python -m verl_specrollout.config --markdown   # the generated reference
    python tools/gen_config_docs.py                # rewrite docs/configuration.md

Typing policy (values arrive from Hydra overrides, YAML or Python):

* bool keys take only real booleans. The strings "true"/"false" are refused:
  a quoted "false" is a non-empty string, and reading it as a boolean in one
  place and as truthy in another is how speculation got switched on by
  `enable: "false"`. Hydra already turns unquoted `true`/`false` into booleans.
* int keys take integers only (not floats, not booleans, not numeric strings).
* float keys take any finite number; an int such as `lr=1` becomes a float.
* A section written as null (`planner: null`, or `planner:` with nothing under
  it in YAML) means all of that section's defaults; any other non-mapping is an error.

`from_dict` checks every key's type and range and the rules between keys,
whether or not `enable` is set. `validate()` checks the same again (for configs
built or changed in Python) and, when `enable` is true, what depends on it: the
draft checkpoint on disk and its vocabulary.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from verl_specrollout.errors import SpecRolloutConfigError  # noqa: F401  (re-exported: users import it from here)

from verl_specrollout.draft.format import draft_target_vocab, read_draft_info
from verl_specrollout.draft.resolve import looks_like_hub_id, resolve_model_dir

METHODS = ("eagle3", "draft_model", "ngram", "eagle3+group", "draft_model+group", "group")
# Best-of-N group drafting (vllm_adapter/group_proposer.py): the method vLLM is started with.
# `group` alone drafts from the group suffix index only and rides on vLLM's model-free ngram path.
DRAFT_SAMPLING = ("auto", "greedy", "probabilistic")
GROUP_BASE_METHODS = {"eagle3+group": "eagle3", "draft_model+group": "draft_model", "group": "ngram"}
MODES = ("adaptive", "static", "off")
PLACEMENTS = ("cpu", "gpu", "shared_gpu")
GRAPH_PLANS = ("auto", "keep_user_mode", "piecewise")
GRAPH_CAPTURES = ("all_k", "vllm")
# Key under vLLM's `additional_config` that carries this config into the engine processes.
ADDITIONAL_CONFIG_KEY = "specrollout"
# Largest draft length we support (vLLM's dynamic-K table and the planner's cost model stop there).
MAX_K_LIMIT = 16
ROOT = "specrollout"
# Keys whose values name files of one run (the per-process stats file veRL's server picks, a temp
# publish dir): they never reach the engine's additional_config, which vLLM hashes into its
# torch.compile cache key (VllmConfig.compute_hash: vllm/config/vllm.py:476-484 in 0.24, :564-572 in
# 0.31), so two starts of one job reuse compiled graphs. The engine reads the two it uses from the
# environment (vllm_adapter/engine_kwargs.py: STATS_PATH_ENV, CONTROL_PATH_ENV); the others are read
# in veRL's processes only.
RUN_SPECIFIC_KEYS = ("planner.stats_path", "planner.control_path", "learner.publish_dir", "learner.state_dir")




# ----------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Rule:
    """What one key accepts beyond its type (the type is the field's annotation).

    Bounds apply to numbers, `choices` to strings, `nonempty` to strings and lists.
    `check(value, key)` is an extra check for structured values (lists); `text` says
    in words what it checks, for the docs and the error messages.
    """

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: tuple = ()
    nonempty: bool = False
    check: Optional[Callable[[Any, str], Any]] = None
    text: str = ""


def key(default: Any, doc: str, *, example: Any = None, **rule: Any) -> Any:
    """A config key: its default, what it does, and what it accepts (see Rule)."""
    return field(default=default, metadata={"doc": doc, "rule": Rule(**rule), "example": example})


def section(cls: type, doc: str) -> Any:
    """A nested block of keys (null in the input means all its defaults)."""
    return field(default_factory=cls, metadata={"doc": doc, "section": cls})


def _layer_ids(value: list, where: str) -> list:
    """Each entry a layer index >= 0."""
    for i in value:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise SpecRolloutConfigError(f"{where} must be a non-empty list of layer indices >= 0, got {value!r}")
    return list(value)


def _table_rows(value: list, where: str) -> list:
    """Shape only here; that K fits max_k is a rule between keys (see _table_fits_max_k)."""
    validate_table(value, None)
    return [list(row) for row in value]


@dataclass
class PlannerConfig:
    """How draft length follows live concurrency (see planner/planner.py)."""

    mode: str = key(
        "adaptive",
        "`adaptive`: the planner picks K per batch size from measured costs and online acceptance; "
        "`static`: always `max_k` (or `table` if given); `off`: speculation configured but K=0.",
        choices=MODES)
    replan_interval: int = key(16, "Engine steps between re-plans of the batch-size -> K table.", ge=1)
    table: Optional[list] = key(
        None,
        "User-pinned table of `[min_batch, max_batch, K]` rows; wins over the planner.",
        example=[[1, 8, 4], [9, 1024, 2]],
        nonempty=True, check=_table_rows,
        text="rows `[min_batch, max_batch, K]` of integers, contiguous from batch 1, K in 0..max_k")
    max_batch: int = key(
        1024, "Largest batch size the table covers (capped at the engine's `max_num_seqs`).", ge=1)
    acceptance_decay: float = key(
        0.98, "Exponential decay of the online acceptance estimate per observed step.", gt=0.0, lt=1.0)
    prior_acceptance: float = key(
        0.6, "Cold-start per-position acceptance rate (pseudo-counts that wash out).", ge=0.0, le=1.0)
    hysteresis: float = key(
        0.03, "Relative gain a new K must show over the current one before the table changes.", ge=0.0, lt=1.0)
    explore_every: int = key(
        8, "Every this many re-plans, probe K+-1 where the fitted cost model predicts it within 3 % of the "
        "chosen K, so neighbouring costs stay measured (0: never).", ge=0)
    verify_budget: Optional[Union[str, int]] = key(
        None,
        "Per-request trimming of draft lists: null (off), `auto` (keep a draft token only if its "
        "expected gain pays for its measured verification cost), or a cap of draft tokens verified "
        "per step. Needs synchronous scheduling (always the case on CPU).",
        example="auto", choices=("auto",), ge=0)
    stats_path: Optional[str] = key(
        None, "Write the planner's stats as JSON here at every re-plan (engine processes have no other "
        "channel back to the trainer; veRL rollout servers pick a temp file per server process when unset). "
        "Reaches the engine through the environment (`SPECROLLOUT_STATS_PATH`), never vLLM's hashed config.",
        nonempty=True)
    control_path: Optional[str] = key(
        None, "A JSON control file `{\"mode\": ..., \"table\": ...}`, polled; changes the policy live.",
        nonempty=True)
    skip_draft_at_k0: bool = key(
        True,
        "Model drafters (`eagle3`, `draft_model`): a K=0 step runs no draft forward (vLLM runs one to "
        "keep the draft's KV cache in sync; see vllm_adapter/k0_skip.py), so \"speculation off\" costs "
        "what plain decoding costs. Positions decoded at K=0 then have no draft KV, which lowers "
        "acceptance when K rises again (measured: 0-6 % shorter acceptance in GRPO-shaped rollouts, "
        "docs/benchmarks.md). Sampling stays exact either way. `false` keeps vLLM's behaviour.")


@dataclass
class LearnerConfig:
    """The sidecar draft learner: trains the EAGLE-3 head online in a Ray actor."""

    enable: bool = key(False, "Train the draft online in a sidecar Ray actor (needs `method` `eagle3` or `eagle3+group`).")
    placement: str = key(
        "cpu", "Where the learner runs: `cpu`, `gpu` (its own GPU), `shared_gpu` (a fraction of one).",
        choices=PLACEMENTS)
    gpu_fraction: float = key(0.25, "GPU share with `placement=shared_gpu`.", gt=0.0, le=1.0)
    buffer_bytes: int = key(
        512 * 1024 * 1024, "Replay buffer cap in bytes (512 MiB); oldest batches are dropped first.",
        ge=1 << 20)
    lr: float = key(1e-4, "AdamW learning rate.", gt=0.0)
    steps_per_rollout: int = key(1, "Draft optimiser steps per rollout.", ge=1)
    feature_loss_weight: float = key(
        2.0, "Weight of the SmoothL1 loss on the draft's features (not 0 together with "
        "`soft_ce_loss_weight`).", ge=0.0)
    soft_ce_loss_weight: float = key(
        0.1, "Weight of the soft cross-entropy against the target's distribution.", ge=0.0)
    publish_dir: Optional[str] = key(
        None, "Where versioned drafts are published (`<publish_dir>/vN` + `LATEST`). Default (veRL): "
        "under `trainer.default_local_dir`, else a temp dir; resolved once in the trainer process.",
        nonempty=True)
    state_dir: Optional[str] = key(
        None, "Learner state (draft + optimizer) for resume; default `<publish_dir>/state`.", nonempty=True)
    keep_versions: int = key(3, "Published versions kept on disk (older ones are deleted).", ge=1)
    batch_size: int = key(16, "Samples per learner optimizer step.", ge=1)
    num_unroll_steps: int = key(3, "EAGLE-3 training-time-test unroll depth (draft steps trained per sample).", ge=1)
    max_in_flight: int = key(
        4, "Capture -> learner shipping: outstanding `add_batch` calls before the oldest is dropped.", ge=1)
    capture_context: int = key(1, "Prompt positions shipped before each response (see capture/samples.py).", ge=1)
    capture_budget_mb: float = key(
        256.0, "Most captured features shipped to the learner per policy step, in MiB, summed over all "
        "data-parallel ranks: each rank keeps `capture_budget_mb / world_size`. Kept: whole response windows of "
        "sequences drawn uniformly at random (seeded by policy step and rank, so reruns repeat), the last one "
        "cut to fit. A token costs (aux layers + 1) x hidden x 2 bytes: 28 KB for a 7B target (hidden 3584), "
        "so the default keeps about 9.4k tokens of a 128 x 8 x 2k-token step (0.45%); "
        "`python -m verl_specrollout.capture.budget` computes it for other shapes. Kept and dropped counts: "
        "`specrollout/learner/capture/*`.", gt=0.0)
    heldout_every: int = key(
        10, "Every this many captured sequences, one goes to the held-out set instead of the buffer.", ge=2)
    shared_refresh_every: int = key(
        1, "Every this many policy steps, the actor sends the policy's current `lm_head` and input embedding "
        "to the learner (its soft-CE target and the draft's shared modules follow the policy); 0 = never "
        "(the copies loaded from the model path at start stay). Costs one gather + ship of both matrices, "
        "logged as `specrollout/learner/shared_refresh_s` and `_mb`.", ge=0)
    actor_name: str = key(
        "specrollout_learner", "Name of the detached learner Ray actor. Left at this default, the name is "
        "derived from `publish_dir` (one learner per job on a shared Ray cluster); an existing actor of "
        "that name that serves another target or publish_dir is refused with an error.", nonempty=True)
    actor_namespace: str = key("specrollout", "Ray namespace of the learner actor.", nonempty=True)
    aux_layer_ids: Optional[list] = key(
        None, "Target layers feeding the EAGLE-3 head; default: the draft's config.json "
        "(`eagle_config.eagle_aux_hidden_state_layer_ids`).",
        example=[1, 13, 24], nonempty=True, check=_layer_ids, text="layer indices >= 0")


@dataclass
class GroupConfig:
    """Best-of-N group drafting (`method` `eagle3+group`, `draft_model+group`, `group`)."""

    max_index_tokens: int = key(
        1_000_000, "Most tokens the group suffix index of one engine worker holds (prompts, responses in flight, "
        "kept responses; CPU memory, ~0.5 KB per token at `max_match=8`); past it the least recently used prompts "
        "without live requests are dropped whole.", ge=1024)
    history_depth: int = key(
        16, "Finished responses kept per prompt as drafts for later samples and epochs of the same prompt "
        "(0: only the current rollout's samples and the prompt).", ge=0)
    max_match: int = key(
        8, "Longest context suffix (tokens) the index matches before proposing what followed it; the shortest "
        "is 2 tokens. Each token costs one index entry per length in 2..max_match.", ge=2, le=32)
    route_by_prompt: bool = key(
        True, "Send all samples of a prompt (and its later epochs) to one rollout replica, so its index sees "
        "every sibling and its history: veRL's router with consistent hashing under bounded loads "
        "(verl_adapter/group_router.py; a replica takes no new request past 1.25x the mean in-flight load, "
        "then the prompt's next replica is used). Only when `rollout.router_config_path` is unset.")


@dataclass
class EngineConfig:
    """How the vLLM engine is started around dynamic K: CUDA graphs and memory (vllm_adapter/engine_kwargs.py)."""

    graph_plan: str = key(
        "auto",
        "`keep_user_mode`: the K table is not sent as `speculative_config.num_speculative_tokens_per_batch_size`; "
        "our scheduler installs it, so vLLM keeps the job's cudagraph mode (veRL: `FULL_AND_PIECEWISE`): on the V1 "
        "runner decode steps at K=max_k replay full graphs, every other step its piecewise graph. `piecewise`: the "
        "table is sent and vLLM turns a full cudagraph mode into `PIECEWISE` for the whole engine (the V1 runner; "
        "every runner on vLLM 0.24). `auto`: `piecewise` (vLLM's own path, which it takes \"for reliability\") "
        "until a GPU run has shown `keep_user_mode` exact and faster; `keep_user_mode` is refused with a job's own "
        "`scheduler_cls`. A table that is `max_k` everywhere (`planner.mode=static` "
        "without `table`) is never sent: that is vLLM's static speculation.",
        choices=GRAPH_PLANS)
    graph_capture: str = key(
        "all_k",
        "`all_k`: where CUDA graphs are on and the job set no capture sizes, raise "
        "`compilation_config.max_cudagraph_capture_size` to min(max_num_seqs, 512) x (1 + max_k) tokens (at most "
        "`max_num_batched_tokens`), so every batch size a plain engine runs in a graph also runs in one at every "
        "K (vLLM's default ceiling, 512 tokens, covers B <= 512 / (1 + K)). `vllm`: vLLM's default ceiling.",
        choices=GRAPH_CAPTURES)
    reserve_draft_probs: bool = key(
        True,
        "With probabilistic drafts (`draft_sampling`), lower the engine's `gpu_memory_utilization` (or a given "
        "`kv_cache_memory_bytes`) by 2 x max_num_seqs x max_k x vocab x 4 bytes: the float32 draft probabilities "
        "(and their copy) a step holds beyond vLLM's start-up memory profile, which counts one draft token per "
        "request. Logged at start-up; not applied on vLLM-CPU.")


@dataclass
class SpecRolloutConfig:
    """Top level of `actor_rollout_ref.rollout.custom.specrollout`."""

    enable: bool = key(
        False, "Switch the speculative rollout on; `false` runs veRL's own vLLM server class.")
    method: str = key(
        "eagle3", "`eagle3` (EAGLE-3 head), `draft_model` (small draft LM), `ngram` (model-free prompt lookup); "
        "`eagle3+group`, `draft_model+group`: that draft model or, per request and step, a draft copied from the "
        "request's group (the other samples of its prompt in flight, earlier responses to it, its prompt), "
        "whichever is expected to be accepted longer; `group`: group drafts only (no draft model).",
        choices=METHODS)
    draft_path: Optional[str] = key(
        None, "Checkpoint directory of the draft (vLLM format, with `config.json`), or a Hugging Face hub id "
        "(its cached snapshot; downloaded unless `HF_HUB_OFFLINE` is set). Required unless "
        "`method` is `ngram` or `group`; must exist when `enable=true`.", nonempty=True)
    max_k: int = key(4, "Largest draft length; the planner chooses 0..max_k per batch size.", ge=1, le=MAX_K_LIMIT)
    draft_sampling: str = key(
        "auto", "How a draft model picks its tokens: `greedy` (its argmax) or `probabilistic` (sampled from its "
        "distribution at the request's temperature, and vLLM's rejection sampler puts the draft probabilities in "
        "its ratio test: exact either way, and at T > 0 a draft close to the target's distribution is accepted "
        "more often than its argmax; 1.3-1.4x the acceptance length at T=1 on the regime testbed). `auto`: "
        "probabilistic where vLLM implements it (every supported vLLM, 0.24 to 0.31; docs/supported-versions.md) "
        "and the method drafts with a model (`eagle3`, `draft_model`), else greedy. `probabilistic` needs both, "
        "and costs vLLM [draft tokens x vocab] float32 draft probabilities per step, beyond what it profiles "
        "at start-up.",
        choices=DRAFT_SAMPLING)
    prompt_lookup_min: int = key(2, "`ngram` only: shortest n-gram matched (<= `prompt_lookup_max`).", ge=1)
    prompt_lookup_max: int = key(4, "`ngram` only: longest n-gram matched.", ge=1)
    skip_vocab_check: bool = key(
        False, "Skip the draft/target vocabulary check (a draft whose config names another vocabulary "
        "size but that you know matches the target's tokenizer).")
    planner: PlannerConfig = section(PlannerConfig, "How draft length follows live concurrency.")
    learner: LearnerConfig = section(LearnerConfig, "Online draft learning.")
    group: GroupConfig = section(GroupConfig, "Best-of-N group drafting.")
    engine: EngineConfig = section(EngineConfig, "How the vLLM engine is started around dynamic K.")

    # ------------------------------------------------------------------ method
    @property
    def base_method(self) -> str:
        """The speculative method vLLM is started with (`eagle3+group` -> `eagle3`, `group` -> `ngram`)."""
        return GROUP_BASE_METHODS.get(self.method, self.method)

    @property
    def group_drafting(self) -> bool:
        """Group drafts replace or join the base method's (vllm_adapter/group_proposer.py)."""
        return self.method in GROUP_BASE_METHODS

    def draft_sample_method(self, vllm_has_it: Optional[bool] = None) -> str:
        """What `draft_sampling` means for an engine: "greedy" or "probabilistic". `vllm_has_it`:
        whether the vLLM implements probabilistic drafts (compat.vllm_probabilistic_drafts(), asked
        when None). `auto` drafts probabilistically where vLLM does and the method drafts with a model
        of its own; group and ngram drafts are copied tokens without a distribution."""
        if self.draft_sampling != "auto":
            return self.draft_sampling
        if not self.has_draft_model or self.group_drafting:
            return "greedy"
        if vllm_has_it is None:
            from verl_specrollout import compat

            vllm_has_it = compat.vllm_probabilistic_drafts()
        return "probabilistic" if vllm_has_it else "greedy"

    @property
    def has_draft_model(self) -> bool:
        """A draft with weights (checkpoint on disk, reloadable, lost by sleep level 2)."""
        return self.base_method != "ngram"

    # ------------------------------------------------------------------ build
    @classmethod
    def from_dict(cls, raw: Optional[Mapping[str, Any]]) -> "SpecRolloutConfig":
        """Build from the `rollout.custom.specrollout` mapping (dict or OmegaConf).

        Checks every key's type and range and the rules between keys; what needs the
        file system waits for validate().
        """
        cfg = _build(cls, raw, ROOT)
        cfg._check_relations()
        return cfg

    @classmethod
    def from_rollout_config(cls, rollout_config: Any) -> "SpecRolloutConfig":
        """Read our block out of veRL's RolloutConfig (or its DictConfig)."""
        custom = _to_plain(_get(rollout_config, "custom"), "rollout.custom")
        if custom is None:
            return cls.from_dict(None)
        if not isinstance(custom, Mapping):
            raise SpecRolloutConfigError(f"rollout.custom must be a mapping, got {_describe(custom)}")
        return cls.from_dict(custom.get(ROOT))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def engine_dict(self) -> dict:
        """What goes into vLLM's additional_config: to_dict() with RUN_SPECIFIC_KEYS set to null, so
        the same job config gives vLLM the same config hash in every process and every start."""
        d = self.to_dict()
        for dotted in RUN_SPECIFIC_KEYS:
            section_name, _, name = dotted.partition(".")
            d[section_name][name] = None
        return d

    # --------------------------------------------------------------- validate
    def validate(self, target_path: Optional[str] = None) -> "SpecRolloutConfig":
        """Check everything that can be checked without loading a model.

        Types, ranges and the rules between keys always; with `enable`, also the
        draft checkpoint. `target_path` enables the vocabulary check against the
        target's config.json. Returns self so calls chain. Raises SpecRolloutConfigError
        with one clear message.
        """
        _check_instance(self, ROOT)
        self._check_relations()
        if self.enable:
            for rule in ENABLED_RULES:
                rule(self)
            self._check_draft_files(target_path)
        return self

    def _check_relations(self) -> None:
        for rule in RELATION_RULES:
            rule(self)

    def _check_draft_files(self, target_path: Optional[str]) -> None:
        if not self.has_draft_model:
            return
        if not os.path.isdir(self.draft_path) and looks_like_hub_id(self.draft_path):
            # A hub id: its local snapshot (downloaded unless HF_HUB_OFFLINE), kept for the engine and the reloader.
            object.__setattr__(self, "draft_path", resolve_model_dir(self.draft_path, "specrollout.draft_path"))
        if not os.path.isdir(self.draft_path) or not os.path.isfile(os.path.join(self.draft_path, "config.json")):
            raise SpecRolloutConfigError(
                f"specrollout.draft_path={self.draft_path!r} is not a checkpoint directory with a config.json"
            )
        if target_path and not self.skip_vocab_check:
            check_vocab(target_path, self.draft_path)


# ----------------------------------------------------------------------------- rules between keys
# Each is a function of the whole config with a one-line docstring; the docs list the docstrings.
def _lookup_window(cfg: SpecRolloutConfig) -> None:
    """With `method=ngram` (or `group`, which vLLM runs as ngram): `prompt_lookup_min` <= `prompt_lookup_max`."""
    if cfg.base_method == "ngram" and cfg.prompt_lookup_max < cfg.prompt_lookup_min:
        raise SpecRolloutConfigError(
            "specrollout.prompt_lookup_min must be >= 1 and <= prompt_lookup_max, got "
            f"{cfg.prompt_lookup_min}, {cfg.prompt_lookup_max}"
        )


def _table_fits_max_k(cfg: SpecRolloutConfig) -> None:
    """Every K in `planner.table` is at most `max_k`."""
    if cfg.planner.table is not None:
        validate_table(cfg.planner.table, cfg.max_k)


def _loss_weights(cfg: SpecRolloutConfig) -> None:
    """`learner.feature_loss_weight` and `learner.soft_ce_loss_weight` are not both 0."""
    if cfg.learner.feature_loss_weight + cfg.learner.soft_ce_loss_weight == 0:
        raise SpecRolloutConfigError(
            "specrollout.learner loss weights must be >= 0 and not both 0 "
            "(feature_loss_weight, soft_ce_loss_weight)")


def _draft_sampling_needs_a_model(cfg: SpecRolloutConfig) -> None:
    """`draft_sampling=probabilistic` needs a draft model and no group drafting."""
    if cfg.draft_sampling != "probabilistic":
        return
    if not cfg.has_draft_model or cfg.group_drafting:
        raise SpecRolloutConfigError(
            f"specrollout.draft_sampling=probabilistic needs method=eagle3 or draft_model (a draft with its own "
            f"distribution; group and ngram drafts are copied tokens without one), got method={cfg.method}")


def _draft_path_given(cfg: SpecRolloutConfig) -> None:
    """With `enable=true` and a model drafter (not `ngram`, `group`): `draft_path` is a checkpoint directory."""
    if cfg.has_draft_model and not cfg.draft_path:
        raise SpecRolloutConfigError(
            f"specrollout.draft_path is required for method={cfg.method}; "
            "set +actor_rollout_ref.rollout.custom.specrollout.draft_path=<checkpoint dir>"
        )


def _learner_needs_eagle3(cfg: SpecRolloutConfig) -> None:
    """With `enable=true` and `learner.enable=true`: `method` is `eagle3` or `eagle3+group` (it trains an EAGLE-3 head)."""
    if cfg.learner.enable and cfg.base_method != "eagle3":
        raise SpecRolloutConfigError(
            f"specrollout.learner.enable=true needs method=eagle3 or eagle3+group (the learner trains an EAGLE-3 "
            f"head), got method={cfg.method}")


RELATION_RULES = (_lookup_window, _table_fits_max_k, _loss_weights, _draft_sampling_needs_a_model)
ENABLED_RULES = (_draft_path_given, _learner_needs_eagle3)


# ----------------------------------------------------------------------------- public helpers
def draft_aux_layer_ids(draft_path: Optional[str]) -> Optional[list]:
    """EAGLE-3 aux layer ids named by a draft checkpoint (any format draft/format.py reads), or None."""
    if not draft_path:
        return None
    return read_draft_info(draft_path).aux_layer_ids


def validate_table(table: Any, max_k: Optional[int]) -> list:
    """A user table is rows [min_batch, max_batch, K], contiguous from batch 1, K in 0..max_k.

    `max_k=None` checks the shape only.
    """
    if not isinstance(table, (list, tuple)) or not table:
        raise SpecRolloutConfigError("specrollout.planner.table must be a non-empty list of [min_batch, max_batch, K]")
    rows = []
    expect = 1
    for row in table:
        row = list(row) if isinstance(row, (list, tuple)) else row
        if not isinstance(row, list) or len(row) != 3 or not all(_is_int(v) for v in row):
            raise SpecRolloutConfigError(f"specrollout.planner.table row {row!r} is not [min_batch, max_batch, K] integers")
        lo, hi, k = row
        if lo != expect or hi < lo:
            raise SpecRolloutConfigError(
                f"specrollout.planner.table rows must be contiguous from batch 1; row {row} should start at {expect}"
            )
        if k < 0 or (max_k is not None and k > max_k):
            raise SpecRolloutConfigError(f"specrollout.planner.table row {row}: K must be in 0..max_k={max_k}")
        rows.append((lo, hi, k))
        expect = hi + 1
    return rows


def check_vocab(target_path: str, draft_path: str) -> None:
    """Target and draft must agree on the vocabulary the target verifies against.

    A draft's `vocab_size` is the target vocabulary its proposals are in; a smaller
    `draft_vocab_size` (the head's own lm_head) is fine with a `d2t` map, which
    read_draft_info checks in the weight file's header.
    """
    tgt = _read_json(os.path.join(target_path, "config.json"))
    if tgt is None:
        return  # a hub id or a non-local target: vLLM will check at load time
    tv = _vocab_size(tgt)
    # The vocabulary alone first: a mismatch is the likeliest mistake and needs nothing else.
    dv = draft_target_vocab(draft_path)
    if tv is not None and dv is not None and tv != dv:
        raise SpecRolloutConfigError(
            f"draft vocabulary ({dv}, {draft_path}) does not match the target's ({tv}, {target_path}); "
            "a draft must be trained for this target's tokenizer"
        )
    read_draft_info(draft_path)


def iter_keys(cls: type = SpecRolloutConfig, prefix: str = ROOT):
    """(full key, dataclass field, type annotation) for every leaf key, sections expanded."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}.{f.name}"
        if "section" in f.metadata:
            yield from iter_keys(f.metadata["section"], name)
        else:
            yield name, f, hints[f.name]


def iter_sections(cls: type = SpecRolloutConfig, prefix: str = ROOT):
    """(full key, dataclass) for the top level and every nested section."""
    yield prefix, cls
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            yield from iter_sections(f.metadata["section"], f"{prefix}.{f.name}")


# How each supported type reads in messages and in the docs; the order is the order they are listed in.
_TYPE_WORDS = {bool: "true or false", str: "a string", int: "an integer", float: "a number", list: "a list"}
_TYPE_NAMES = {bool: "bool", str: "str", int: "int", float: "float", list: "list"}


def accepted_types(annotation: Any) -> tuple:
    """(types a value may have, whether null is allowed) for a field annotation."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    # A fixed order: typing caches Union[int, str] and Union[str, int] as one object, so the
    # annotation's own order depends on what was imported first.
    kinds = sorted((a for a in args if a is not type(None)), key=list(_TYPE_WORDS).index)
    return tuple(kinds), type(None) in args


# ----------------------------------------------------------------------------- checking one value
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_type(value: Any, kind: type) -> tuple:
    """(True, value converted) if `value` is of `kind` under the typing policy, else (False, None)."""
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return _is_int(value), value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, None
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            return False, None
        return math.isfinite(number), number
    if kind is str:
        return isinstance(value, str), value
    if kind is list:
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, (list, tuple)) else None
    raise TypeError(f"config keys of type {kind!r} are not supported")  # a declaration bug, not user input


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _bounds_text(rule: Rule) -> str:
    """'>= 1', '> 0', 'in (0, 1]': one-sided bounds as comparisons, two-sided as an interval."""
    lower = f"[{_num(rule.ge)}" if rule.ge is not None else f"({_num(rule.gt)}" if rule.gt is not None else None
    upper = f"{_num(rule.le)}]" if rule.le is not None else f"{_num(rule.lt)})" if rule.lt is not None else None
    if lower and upper:
        return f"in {lower}, {upper}"
    if lower:
        return (">= " if lower[0] == "[" else "> ") + lower[1:]
    if upper:
        return ("<= " if upper[-1] == "]" else "< ") + upper[:-1]
    return ""


def _in_bounds(rule: Rule, number: float) -> bool:
    return ((rule.ge is None or number >= rule.ge) and (rule.gt is None or number > rule.gt)
            and (rule.le is None or number <= rule.le) and (rule.lt is None or number < rule.lt))


def _kind_phrase(kind: type, rule: Rule) -> str:
    """How one accepted type reads in an error message, with its constraint."""
    if kind is str and rule.choices:
        if len(rule.choices) == 1:
            return repr(rule.choices[0])
        return "one of " + ", ".join(rule.choices)
    words = _TYPE_WORDS[kind]
    if rule.nonempty and kind in (str, list):
        words = words.replace("a ", "a non-empty ", 1)
    if kind is list and rule.text:
        words += f" of {rule.text}"
    if kind in (int, float) and _bounds_text(rule):
        words += " " + _bounds_text(rule)
    return words


def allowed(annotation: Any, rule: Rule) -> str:
    """What a key accepts, in words, e.g. 'an integer >= 1' or "'auto', an integer >= 0, or null"."""
    kinds, optional = accepted_types(annotation)
    parts = [_kind_phrase(k, rule) for k in kinds] + (["null"] if optional else [])
    if len(parts) <= 2:
        return " or ".join(parts)
    return ", ".join(parts[:-1]) + ", or " + parts[-1]


def _check_value(f: dataclasses.Field, annotation: Any, value: Any, where: str) -> Any:
    """The value, converted (int -> float, tuple -> list); raises on a bad type or range."""
    rule = f.metadata["rule"]
    kinds, optional = accepted_types(annotation)
    if value is None:
        if optional:
            return None
        raise _bad(where, annotation, rule, value)
    for kind in kinds:
        ok, converted = _as_type(value, kind)
        if ok:
            return _check_rule(rule, kind, converted, annotation, where)
    raise _bad(where, annotation, rule, value)


def _check_rule(rule: Rule, kind: type, value: Any, annotation: Any, where: str) -> Any:
    if kind is str and rule.choices and value not in rule.choices:
        if accepted_types(annotation)[0] != (str,):  # e.g. 'auto' or an int: say both
            raise _bad(where, annotation, rule, value)
        raise SpecRolloutConfigError(
            f"{where}={value!r} is not supported; choose one of {', '.join(rule.choices)}")
    if kind in (int, float) and not _in_bounds(rule, value):
        raise _bad(where, annotation, rule, value)
    if kind in (str, list) and rule.nonempty and not value:
        raise _bad(where, annotation, rule, value)
    if kind is list and rule.check is not None:
        value = rule.check(value, where)
    return value


def _bad(where: str, annotation: Any, rule: Rule, value: Any) -> SpecRolloutConfigError:
    msg = f"{where} must be {allowed(annotation, rule)}, got {_describe(value)}"
    kinds = accepted_types(annotation)[0]
    if isinstance(value, str) and value.strip().lower() in ("true", "false") and bool in kinds:
        msg += f" (write {where.rsplit('.', 1)[-1]}={value.strip().lower()} unquoted: a quoted string is not a boolean)"
    elif float in kinds and _is_number(value) and not _as_type(value, float)[0]:
        msg += " (not a finite number)"
    return SpecRolloutConfigError(msg)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe(value: Any) -> str:
    """A value as an error message shows it: its repr (shortened) and its type."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


# ----------------------------------------------------------------------------- building
@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, where: str):
    """An instance of `cls` from a mapping: unknown keys refused, every value checked."""
    raw = _to_plain(raw, where)
    if raw is None:
        return cls()  # a null section: all defaults (see the module docstring)
    if not isinstance(raw, Mapping):
        raise SpecRolloutConfigError(
            f"{where} must be a mapping of its keys (or null for all defaults), got {_describe(raw)}")
    _refuse_unknown(cls, raw, where)
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        path = f"{where}.{f.name}"
        if "section" in f.metadata:
            values[f.name] = _build(f.metadata["section"], raw[f.name], path)
        else:
            values[f.name] = _check_value(f, hints[f.name], _to_plain(raw[f.name], path), path)
    return cls(**values)


def _refuse_unknown(cls: type, raw: Mapping, where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in raw if k not in names)
    if not unknown:
        return
    hints = [f"{m[0]} for {u}" for u in unknown for m in [difflib.get_close_matches(u, names, n=1)] if m]
    guess = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise SpecRolloutConfigError(
        f"unknown key(s) under {where}: {', '.join(unknown)}{guess}; known: {', '.join(sorted(names))}")


def _check_instance(obj: Any, where: str) -> None:
    """Re-check an instance built or changed in Python; converts values in place like _build."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{where}.{f.name}"
        value = getattr(obj, f.name)
        if "section" in f.metadata:
            if not isinstance(value, f.metadata["section"]):
                raise SpecRolloutConfigError(
                    f"{path} must be a {f.metadata['section'].__name__}, got {_describe(value)}")
            _check_instance(value, path)
        else:
            setattr(obj, f.name, _check_value(f, hints[f.name], value, path))


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


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    try:
        return obj.get(key)  # DictConfig
    except Exception:
        return getattr(obj, key, None)


def _to_plain(obj: Any, where: str = ROOT) -> Any:
    """Plain dicts and lists from OmegaConf containers (interpolations resolved)."""
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj
    try:
        from omegaconf import OmegaConf  # veRL always has it
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:
        OmegaConf = None
    if OmegaConf is not None and OmegaConf.is_config(obj):
        try:
            return OmegaConf.to_container(obj, resolve=True)
        except OmegaConfBaseException as exc:
            raise SpecRolloutConfigError(f"{where} cannot be read: {exc}") from exc
    if isinstance(obj, Mapping):
        return dict(obj)
    return obj


# ----------------------------------------------------------------------------- reference docs
def _default_text(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _type_text(annotation: Any) -> str:
    kinds, optional = accepted_types(annotation)
    names = [_TYPE_NAMES[k] for k in kinds] + (["null"] if optional else [])
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _constraint_text(annotation: Any, rule: Rule) -> str:
    """The constraint column: the rule alone (the type has its own column)."""
    kinds, _ = accepted_types(annotation)
    alternatives = []
    if rule.choices:
        quoted = ", ".join(f"`{c}`" for c in rule.choices)
        alternatives.append(quoted if len(rule.choices) == 1 else f"one of {quoted}")
    if _bounds_text(rule):
        number = "int" if int in kinds else "number"
        alternatives.append(_bounds_text(rule) if len(kinds) == 1 else f"{number} {_bounds_text(rule)}")
    parts = [" or ".join(alternatives)] if alternatives else []
    if rule.nonempty:
        parts.append("non-empty")
    if rule.text:
        parts.append(rule.text)
    return "; ".join(parts) or "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section_table(cls: type, prefix: str) -> list:
    hints = _hints(cls)
    lines = [f"## `{prefix}`", "", _cell(cls.__doc__.strip().splitlines()[0]), "",
             "| key | type | default | constraint | description |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            continue
        doc = f.metadata["doc"]
        if f.metadata.get("example") is not None:
            doc += f" Example: `{json.dumps(f.metadata['example'])}`."
        default = f.default if f.default is not dataclasses.MISSING else None
        lines.append(f"| `{f.name}` | {_type_text(hints[f.name])} | {_default_text(default)} | "
                     f"{_cell(_constraint_text(hints[f.name], f.metadata['rule']))} | {_cell(doc)} |")
    return lines + [""]


def markdown_reference() -> str:
    """The key reference for docs/configuration.md, generated from the declarations above."""
    lines = [
        "Types are strict. `true`/`false` must be booleans: Hydra's unquoted `enable=true`, YAML's `true`; "
        "the strings `\"true\"`/`\"false\"` are refused. Integers must be integers (not `4.0`, not `\"4\"`); "
        "a float key also takes an integer (`lr=1`). A section given as null (`planner: null`, or `planner:` "
        "with nothing under it) means all of its defaults; a section given as anything else but a mapping is "
        "an error. Unknown keys are errors (a typo must not silently fall back to a default).",
        "",
        "Every key's type and range is checked whether or not `enable` is set; the draft checkpoint "
        "(`draft_path` exists, vocabulary matches the target's) only when `enable=true`.",
        "",
    ]
    for prefix, cls in iter_sections():
        lines += _section_table(cls, prefix)
    lines += ["## Rules between keys", ""]
    lines += [f"- {rule.__doc__.strip()}" for rule in RELATION_RULES + ENABLED_RULES]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--markdown"]:
        print("usage: python -m verl_specrollout.config --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
