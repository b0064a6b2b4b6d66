"""The declarations: every key with its type, default, constraint and description, and the rules
between keys. Validation is pydantic's (strict types, `Literal` choices, `Field` bounds); the
messages are ours (messages.py); docs/configuration.md is generated from these (docs.py).

Typing policy (values arrive from Hydra overrides, YAML or Python):

* bool keys take only real booleans (`StrictBool`). The strings "true"/"false" are refused:
  a quoted "false" is a non-empty string, and reading it as a boolean in one
  place and as truthy in another is how speculation got switched on by
  `enable: "false"`. Hydra already turns unquoted `true`/`false` into booleans.
* int keys take integers only (`StrictInt`: not floats, not booleans, not numeric strings).
* float keys take any finite number (`StrictFloat`, `allow_inf_nan=False`); an int such as
  `lr=1` becomes a float.
* list keys take a list or a tuple (stored as a list); their items are checked by the key's validator.
* A section written as null (`planner: null`, or `planner:` with nothing under
  it in YAML) means all of that section's defaults; any other non-mapping is an error.
* Unknown keys are errors (`extra="forbid"`): a typo must not silently fall back to a default.

The sections are pydantic dataclasses, not BaseModels: they stay plain dataclasses to the code that
reads them (`dataclasses.asdict`, `dataclasses.fields`, `==`, pickling to Ray actors), and pydantic
checks them where they are built from a mapping (`from_dict`) or re-checked (`validate`).
"""

import dataclasses
import os
from typing import Annotated, Any, Literal, Mapping, Optional, Union, get_args

from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, Strict, StrictBool, StrictFloat, StrictInt,
                      StrictStr, TypeAdapter, ValidationError, field_validator, model_validator)
from pydantic.dataclasses import dataclass

from verl_specrollout.config.checkpoint import check_vocab
from verl_specrollout.config.keys import ROOT, key, section
from verl_specrollout.config.messages import describe, translate
from verl_specrollout.draft.resolve import looks_like_hub_id, resolve_model_dir
from verl_specrollout.errors import SpecRolloutConfigError

Method = Literal["eagle3", "draft_model", "ngram", "eagle3+group", "draft_model+group", "group"]
METHODS = get_args(Method)
# Best-of-N group drafting (vllm_adapter/group_proposer.py): the method vLLM is started with.
# `group` alone drafts from the group suffix index only and rides on vLLM's model-free ngram path.
GROUP_BASE_METHODS = {"eagle3+group": "eagle3", "draft_model+group": "draft_model", "group": "ngram"}
DraftSampling = Literal["auto", "greedy", "probabilistic"]
DRAFT_SAMPLING = get_args(DraftSampling)
Mode = Literal["adaptive", "static", "off"]
MODES = get_args(Mode)
Placement = Literal["cpu", "gpu", "shared_gpu"]
PLACEMENTS = get_args(Placement)
GraphPlan = Literal["auto", "keep_user_mode", "piecewise"]
GRAPH_PLANS = get_args(GraphPlan)
GraphCapture = Literal["all_k", "vllm"]
GRAPH_CAPTURES = get_args(GraphCapture)
# Key under vLLM's `additional_config` that carries this config into the engine processes
# (read back there by vllm_adapter/engine_config.py).
ADDITIONAL_CONFIG_KEY = "specrollout"
# Largest draft length we support (vLLM's dynamic-K table and the planner's cost model stop there).
MAX_K_LIMIT = 16
# Keys whose values name files of one run (the per-process stats file veRL's server picks, a temp
# publish dir): they never reach the engine's additional_config, which vLLM hashes into its
# torch.compile cache key (VllmConfig.compute_hash: vllm/config/vllm.py:476-484 in 0.24, :564-572 in
# 0.31), so two starts of one job reuse compiled graphs. The engine reads the two it uses from the
# environment (vllm_adapter/engine_kwargs.py: STATS_PATH_ENV, CONTROL_PATH_ENV); the others are read
# in veRL's processes only.
RUN_SPECIFIC_KEYS = ("planner.stats_path", "planner.control_path", "learner.publish_dir", "learner.state_dir")

_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def runs_draft_model(vllm_method: str) -> bool:
    """Whether vLLM's speculative `vllm_method` loads and runs a draft model.

    The one place that decides it (checkpoint checks, draft reload and sleep, K=0 pricing, group
    drafting). vLLM 0.24-0.31 (config/speculative.py) gives `ngram`, `ngram_gpu` and `suffix` no draft
    model (`model` is set to the method's own name; `uses_draft_kv_cache()` is false for them); every
    other method (eagle, eagle3, draft_model, the MTP family, ...) loads one and runs its forward even
    at K=0. The list of model-free names is vLLM's, so it lives in compat.py.
    """
    from verl_specrollout import compat  # compat imports this package: resolved at call time

    return vllm_method not in compat.MODEL_FREE_DRAFT_METHODS


def _list_or_tuple(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # YAML/Hydra give lists; Python code tuples


def _table_rows(value: list) -> list:
    """Shape only here; that K fits max_k is a rule between keys (see _table_fits_max_k)."""
    if not value:
        return value  # refused by the key's min_length, with the message every key gets
    validate_table(value, None)
    return [list(row) for row in value]


def _layer_ids(value: list) -> list:
    """Each entry a layer index >= 0."""
    for i in value:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise SpecRolloutConfigError(
                f"specrollout.learner.aux_layer_ids must be a non-empty list of layer indices >= 0, got {value!r}")
    return list(value)


TableRows = Annotated[list, BeforeValidator(_list_or_tuple), Strict(), AfterValidator(_table_rows)]
LayerIds = Annotated[list, BeforeValidator(_list_or_tuple), Strict(), AfterValidator(_layer_ids)]


@dataclass(config=_CONFIG)
class PlannerConfig:
    """How draft length follows live concurrency (see planner/planner.py)."""

    mode: Mode = key(
        "adaptive",
        "`adaptive`: the planner picks K per batch size from measured costs and online acceptance; "
        "`static`: always `max_k` (or `table` if given); `off`: speculation configured but K=0.")
    replan_interval: StrictInt = key(16, "Engine steps between re-plans of the batch-size -> K table.", ge=1)
    table: Optional[TableRows] = key(
        None,
        "User-pinned table of `[min_batch, max_batch, K]` rows; wins over the planner.",
        example=[[1, 8, 4], [9, 1024, 2]],
        min_length=1,
        text="rows `[min_batch, max_batch, K]` of integers, contiguous from batch 1, K in 0..max_k")
    max_batch: StrictInt = key(
        1024, "Largest batch size the table covers (capped at the engine's `max_num_seqs`).", ge=1)
    acceptance_decay: StrictFloat = key(
        0.98, "Exponential decay of the online acceptance estimate per observed step.", gt=0.0, lt=1.0)
    prior_acceptance: StrictFloat = key(
        0.6, "Cold-start per-position acceptance rate (pseudo-counts that wash out).", ge=0.0, le=1.0)
    hysteresis: StrictFloat = key(
        0.03, "Relative gain a new K must show over the current one before the table changes.", ge=0.0, lt=1.0)
    explore_every: StrictInt = key(
        8, "Every this many re-plans, probe K+-1 where the fitted cost model predicts it within 3 % of the "
        "chosen K, so neighbouring costs stay measured (0: never).", ge=0)
    verify_budget: Optional[Union[Literal["auto"], Annotated[StrictInt, Field(ge=0)]]] = key(
        None,
        "Per-request trimming of draft lists: null (off), `auto` (keep a draft token only if its "
        "expected gain pays for its measured verification cost), or a cap of draft tokens verified "
        "per step. Needs synchronous scheduling (always the case on CPU).",
        example="auto")
    stats_path: Optional[StrictStr] = key(
        None, "Write the planner's stats as JSON here at every re-plan (engine processes have no other "
        "channel back to the trainer; veRL rollout servers pick a temp file per server process when unset). "
        "Reaches the engine through the environment (`SPECROLLOUT_STATS_PATH`), never vLLM's hashed config.",
        min_length=1)
    control_path: Optional[StrictStr] = key(
        None, "A JSON control file `{\"mode\": ..., \"table\": ...}`, polled; changes the policy live.",
        min_length=1)
    skip_draft_at_k0: StrictBool = key(
        True,
        "Model drafters (`eagle3`, `draft_model`): a K=0 step runs no draft forward (vLLM runs one to "
        "keep the draft's KV cache in sync; see vllm_adapter/k0_skip.py), so \"speculation off\" costs "
        "what plain decoding costs. Positions decoded at K=0 then have no draft KV, which lowers "
        "acceptance when K rises again (measured: 0-6 % shorter acceptance in GRPO-shaped rollouts, "
        "docs/benchmarks.md). Sampling stays exact either way. `false` keeps vLLM's behaviour.")


@dataclass(config=_CONFIG)
class LearnerConfig:
    """The sidecar draft learner: trains the EAGLE-3 head online in a Ray actor."""

    enable: StrictBool = key(False, "Train the draft online in a sidecar Ray actor (needs `method` `eagle3` or `eagle3+group`).")
    placement: Placement = key(
        "cpu", "Where the learner runs: `cpu`, `gpu` (its own GPU), `shared_gpu` (a fraction of one).")
    gpu_fraction: StrictFloat = key(0.25, "GPU share with `placement=shared_gpu`.", gt=0.0, le=1.0)
    buffer_bytes: StrictInt = key(
        512 * 1024 * 1024, "Replay buffer cap in bytes (512 MiB); oldest batches are dropped first.",
        ge=1 << 20)
    lr: StrictFloat = key(1e-4, "AdamW learning rate.", gt=0.0)
    steps_per_rollout: StrictInt = key(1, "Draft optimiser steps per rollout.", ge=1)
    feature_loss_weight: StrictFloat = key(
        2.0, "Weight of the SmoothL1 loss on the draft's features (not 0 together with "
        "`soft_ce_loss_weight`).", ge=0.0)
    soft_ce_loss_weight: StrictFloat = key(
        0.1, "Weight of the soft cross-entropy against the target's distribution.", ge=0.0)
    publish_dir: Optional[StrictStr] = key(
        None, "Where versioned drafts are published (`<publish_dir>/vN` + `LATEST`). Default (veRL): "
        "under `trainer.default_local_dir`, else a temp dir; resolved once in the trainer process.",
        min_length=1)
    state_dir: Optional[StrictStr] = key(
        None, "Learner state (draft + optimizer) for resume; default `<publish_dir>/state`.", min_length=1)
    keep_versions: StrictInt = key(3, "Published versions kept on disk (older ones are deleted).", ge=1)
    batch_size: StrictInt = key(16, "Samples per learner optimizer step.", ge=1)
    num_unroll_steps: StrictInt = key(3, "EAGLE-3 training-time-test unroll depth (draft steps trained per sample).", ge=1)
    max_in_flight: StrictInt = key(
        4, "Capture -> learner shipping: outstanding `add_batch` calls before the oldest is dropped.", ge=1)
    capture_context: StrictInt = key(1, "Prompt positions shipped before each response (see capture/samples.py).", ge=1)
    capture_budget_mb: StrictFloat = key(
        256.0, "Most captured features shipped to the learner per policy step, in MiB, summed over all "
        "data-parallel ranks: each rank keeps `capture_budget_mb / world_size`. Kept: whole response windows of "
        "sequences drawn uniformly at random (seeded by policy step and rank, so reruns repeat), the last one "
        "cut to fit. A token costs (aux layers + 1) x hidden x 2 bytes: 28 KB for a 7B target (hidden 3584), "
        "so the default keeps about 9.4k tokens of a 128 x 8 x 2k-token step (0.45%); "
        "`python -m verl_specrollout.capture.budget` computes it for other shapes. Kept and dropped counts: "
        "`specrollout/learner/capture/*`.", gt=0.0)
    heldout_every: StrictInt = key(
        10, "Every this many captured sequences, one goes to the held-out set instead of the buffer.", ge=2)
    shared_refresh_every: StrictInt = key(
        1, "Every this many policy steps, the actor sends the policy's current `lm_head` and input embedding "
        "to the learner (its soft-CE target and the draft's shared modules follow the policy); 0 = never "
        "(the copies loaded from the model path at start stay). Costs one gather + ship of both matrices, "
        "logged as `specrollout/learner/shared_refresh_s` and `_mb`.", ge=0)
    actor_name: StrictStr = key(
        "specrollout_learner", "Name of the detached learner Ray actor. Left at this default, the name is "
        "derived from `publish_dir` (one learner per job on a shared Ray cluster); an existing actor of "
        "that name that serves another target or publish_dir is refused with an error.", min_length=1)
    actor_namespace: StrictStr = key("specrollout", "Ray namespace of the learner actor.", min_length=1)
    aux_layer_ids: Optional[LayerIds] = key(
        None, "Target layers feeding the EAGLE-3 head; default: the draft's config.json "
        "(`eagle_config.eagle_aux_hidden_state_layer_ids`).",
        example=[1, 13, 24], min_length=1, text="layer indices >= 0")


@dataclass(config=_CONFIG)
class GroupConfig:
    """Best-of-N group drafting (`method` `eagle3+group`, `draft_model+group`, `group`)."""

    max_index_tokens: StrictInt = key(
        1_000_000, "Most tokens the group suffix index of one engine worker holds (prompts, responses in flight, "
        "kept responses; CPU memory, ~0.5 KB per token at `max_match=8`); past it the least recently used prompts "
        "without live requests are dropped whole.", ge=1024)
    history_depth: StrictInt = key(
        16, "Finished responses kept per prompt as drafts for later samples and epochs of the same prompt "
        "(0: only the current rollout's samples and the prompt).", ge=0)
    max_match: StrictInt = key(
        8, "Longest context suffix (tokens) the index matches before proposing what followed it; the shortest "
        "is 2 tokens. Each token costs one index entry per length in 2..max_match.", ge=2, le=32)
    route_by_prompt: StrictBool = key(
        True, "Send all samples of a prompt (and its later epochs) to one rollout replica, so its index sees "
        "every sibling and its history: veRL's router with consistent hashing under bounded loads "
        "(verl_adapter/group_router.py; a replica takes no new request past 1.25x the mean in-flight load, "
        "then the prompt's next replica is used). Only when `rollout.router_config_path` is unset.")


@dataclass(config=_CONFIG)
class DecoupledConfig:
    """Decoupled speculation: idle rollout replicas draft ahead for the busy ones (verl_specrollout/decoupled)."""

    enable: StrictBool = key(
        False, "Replicas with no work left run a draft LM ahead of the requests still running on other replicas "
        "and send their drafts (tails) to them; each busy step uses a tail that fits what it committed, else drafts "
        "as without (docs/how-it-works.md, \"Decoupled speculation\"). Needs a group method (`eagle3+group`, "
        "`draft_model+group`, `group`): the tails are one more source of the group drafter.")
    draft_lm_path: Optional[StrictStr] = key(
        None, "The draft LM the idle replicas run (a small causal LM with the target's tokenizer, Hugging Face "
        "format); default: `draft_path` when `method=draft_model+group`.", min_length=1)
    exchange_name: Optional[StrictStr] = key(
        None, "Names the job's exchange Ray actor (`specrollout_tails_<name>`, in `learner.actor_namespace`); "
        "default: `learner.actor_name`, so jobs sharing a Ray cluster never share an exchange.", min_length=1)
    depth: StrictInt = key(8, "Tokens a drafter drafts ahead of a request's committed tokens (more than `max_k`: "
                           "the same tail also serves the next step when a whole draft is accepted).", ge=1, le=64)
    branches: StrictInt = key(1, "Extra tails per request that guess a rejection: the first j draft tokens, "
                              "then the draft's runner-up token (pre-drafted outcomes).", ge=0, le=8)
    max_branches: StrictInt = key(4, "Rejection guesses per prefix in all: rounds with nothing new to draft (the "
                                  "verifier has not stepped since) add guesses for later positions j up to this "
                                  "many (at least `branches`, at most `depth`).", ge=0, le=64)
    exchange_ms: StrictFloat = key(2.0, "How often an engine sends its commits and collects tails (a background "
                                   "thread; the engine step never waits for it).", gt=0.0)
    max_tail_mb: StrictInt = key(64, "Tail memory an engine keeps (tokens and draft probabilities).", ge=1)


@dataclass(config=_CONFIG)
class EngineConfig:
    """How the vLLM engine is started around dynamic K: CUDA graphs and memory (vllm_adapter/engine_kwargs.py)."""

    graph_plan: GraphPlan = key(
        "auto",
        "`keep_user_mode`: the K table is not sent as `speculative_config.num_speculative_tokens_per_batch_size`; "
        "our scheduler installs it, so vLLM keeps the job's cudagraph mode (veRL: `FULL_AND_PIECEWISE`): on the V1 "
        "runner decode steps at K=max_k replay full graphs, every other step its piecewise graph. `piecewise`: the "
        "table is sent and vLLM turns a full cudagraph mode into `PIECEWISE` for the whole engine (the V1 runner; "
        "every runner on vLLM 0.24). `auto`: `piecewise` (vLLM's own path, which it takes \"for reliability\") "
        "until a GPU run has shown `keep_user_mode` exact and faster; `keep_user_mode` is refused with a job's own "
        "`scheduler_cls`. A table that is `max_k` everywhere (`planner.mode=static` "
        "without `table`) is never sent: that is vLLM's static speculation.")
    graph_capture: GraphCapture = key(
        "all_k",
        "`all_k`: where CUDA graphs are on and the job set no capture sizes, raise "
        "`compilation_config.max_cudagraph_capture_size` to min(max_num_seqs, 512) x (1 + max_k) tokens (at most "
        "`max_num_batched_tokens`), so every batch size a plain engine runs in a graph also runs in one at every "
        "K (vLLM's default ceiling, 512 tokens, covers B <= 512 / (1 + K)). `vllm`: vLLM's default ceiling.")
    reserve_draft_probs: StrictBool = key(
        True,
        "With probabilistic drafts (`draft_sampling`), lower the engine's `gpu_memory_utilization` (or a given "
        "`kv_cache_memory_bytes`) by 2 x max_num_seqs x max_k x vocab x 4 bytes: the float32 draft probabilities "
        "(and their copy) a step holds beyond vLLM's start-up memory profile, which counts one draft token per "
        "request. Logged at start-up; not applied on vLLM-CPU.")


@dataclass(config=_CONFIG)
class SpecRolloutConfig:
    """Top level of `actor_rollout_ref.rollout.custom.specrollout`."""

    enable: StrictBool = key(
        False, "Switch the speculative rollout on; `false` runs veRL's own vLLM server class.")
    method: Method = key(
        "eagle3", "`eagle3` (EAGLE-3 head), `draft_model` (small draft LM), `ngram` (model-free prompt lookup); "
        "`eagle3+group`, `draft_model+group`: that draft model or, per request and step, a draft copied from the "
        "request's group (the other samples of its prompt in flight, earlier responses to it, its prompt), "
        "whichever is expected to be accepted longer; `group`: group drafts only (no draft model).")
    draft_path: Optional[StrictStr] = key(
        None, "Checkpoint directory of the draft (vLLM format, with `config.json`), or a Hugging Face hub id "
        "(its cached snapshot; downloaded unless `HF_HUB_OFFLINE` is set). Required unless "
        "`method` is `ngram` or `group`; must exist when `enable=true`.", min_length=1)
    max_k: StrictInt = key(4, "Largest draft length; the planner chooses 0..max_k per batch size.", ge=1, le=MAX_K_LIMIT)
    draft_sampling: DraftSampling = key(
        "auto", "How a draft model picks its tokens: `greedy` (its argmax) or `probabilistic` (sampled from its "
        "distribution at the request's temperature, and vLLM's rejection sampler puts the draft probabilities in "
        "its ratio test: exact either way, and at T > 0 a draft close to the target's distribution is accepted "
        "more often than its argmax; 1.3-1.4x the acceptance length at T=1 on the regime testbed). `auto`: "
        "probabilistic where vLLM implements it (every supported vLLM, 0.24 to 0.31; docs/supported-versions.md) "
        "and the method drafts with a model (`eagle3`, `draft_model`), else greedy. `probabilistic` needs both, "
        "and costs vLLM [draft tokens x vocab] float32 draft probabilities per step, beyond what it profiles "
        "at start-up.")
    prompt_lookup_min: StrictInt = key(2, "`ngram` only: shortest n-gram matched (<= `prompt_lookup_max`).", ge=1)
    prompt_lookup_max: StrictInt = key(4, "`ngram` only: longest n-gram matched.", ge=1)
    skip_vocab_check: StrictBool = key(
        False, "Skip the draft/target vocabulary check (a draft whose config names another vocabulary "
        "size but that you know matches the target's tokenizer).")
    planner: PlannerConfig = section(PlannerConfig, "How draft length follows live concurrency.")
    learner: LearnerConfig = section(LearnerConfig, "Online draft learning.")
    group: GroupConfig = section(GroupConfig, "Best-of-N group drafting.")
    engine: EngineConfig = section(EngineConfig, "How the vLLM engine is started around dynamic K.")
    decoupled: DecoupledConfig = section(DecoupledConfig, "Decoupled speculation on idle replicas.")

    @field_validator("planner", "learner", "group", "engine", "decoupled", mode="before")
    @classmethod
    def _null_section_is_default(cls, value: Any) -> Any:
        return {} if value is None else value  # `planner:` with nothing under it in YAML

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
        """A draft with weights (checkpoint on disk, reloadable, lost by sleep level 2, a draft forward
        at K=0 unless skipped): the one answer to "does this method run a draft model?"."""
        return runs_draft_model(self.base_method)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_dict(cls, raw: Optional[Mapping[str, Any]]) -> "SpecRolloutConfig":
        """Build from the `rollout.custom.specrollout` mapping (dict or OmegaConf).

        Checks every key's type and range and the rules between keys; what needs the
        file system waits for validate().
        """
        raw = _to_plain(raw, ROOT)
        if raw is None:
            raw = {}  # no block at all: every default (speculation off)
        return _parse(cls, raw, ROOT)

    @classmethod
    def from_rollout_config(cls, rollout_config: Any) -> "SpecRolloutConfig":
        """Read our block out of veRL's RolloutConfig (or its DictConfig)."""
        custom = _to_plain(_get(rollout_config, "custom"), "rollout.custom")
        if custom is None:
            return cls.from_dict(None)
        if not isinstance(custom, Mapping):
            raise SpecRolloutConfigError(f"rollout.custom must be a mapping, got {describe(custom)}")
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
        _copy_into(self, _parse(type(self), self.to_dict(), ROOT))  # values set in Python, checked again
        if self.enable:
            for rule in ENABLED_RULES:
                rule(self)
            self._check_draft_files(target_path)
        return self

    @model_validator(mode="after")
    def _check_relations(self) -> "SpecRolloutConfig":
        for rule in RELATION_RULES:
            rule(self)
        return self

    def _check_draft_files(self, target_path: Optional[str]) -> None:
        if not self.has_draft_model:
            return
        if not os.path.isdir(self.draft_path) and looks_like_hub_id(self.draft_path):
            # A hub id: its local snapshot (downloaded unless HF_HUB_OFFLINE), kept for the engine and the reloader.
            self.draft_path = resolve_model_dir(self.draft_path, "specrollout.draft_path")
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


def _decoupled_needs_group(cfg: SpecRolloutConfig) -> None:
    """With `enable=true` and `decoupled.enable=true`: a group method, and a draft LM (`decoupled.draft_lm_path`, or `draft_path` with `method=draft_model+group`)."""
    d = cfg.decoupled
    if not d.enable:
        return
    if not cfg.group_drafting:
        raise SpecRolloutConfigError(
            "specrollout.decoupled.enable=true needs method=eagle3+group, draft_model+group or group (decoupled tails "
            f"are a source of the group drafter), got method={cfg.method}")
    if d.draft_lm_path is None and cfg.method != "draft_model+group":
        raise SpecRolloutConfigError(
            "specrollout.decoupled.enable=true needs decoupled.draft_lm_path (the draft LM idle replicas run) "
            f"unless method=draft_model+group, got method={cfg.method}")


RELATION_RULES = (_lookup_window, _table_fits_max_k, _loss_weights, _draft_sampling_needs_a_model)
ENABLED_RULES = (_draft_path_given, _learner_needs_eagle3, _decoupled_needs_group)


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- building
_adapters: dict = {}


def _parse(cls: type, raw: Mapping, where: str):
    """An instance of `cls` from a mapping, or one SpecRolloutConfigError naming the key."""
    if not isinstance(raw, Mapping):
        raise SpecRolloutConfigError(
            f"{where} must be a mapping of its keys (or null for all defaults), got {describe(raw)}")
    adapter = _adapters.get(cls)
    if adapter is None:
        adapter = _adapters[cls] = TypeAdapter(cls)
    try:
        return adapter.validate_python(dict(raw))
    except ValidationError as exc:
        raise translate(exc, raw, cls, where) from None


def _copy_into(dst: Any, src: Any) -> None:
    """Checked values back into the instance the caller holds (sections stay the same objects)."""
    for f in dataclasses.fields(src):
        new, old = getattr(src, f.name), getattr(dst, f.name, None)
        if dataclasses.is_dataclass(new) and type(old) is type(new):
            _copy_into(old, new)
        else:
            setattr(dst, f.name, new)


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return obj.get(name)  # DictConfig
    except Exception:
        return getattr(obj, name, None)


def _to_plain(obj: Any, where: str = ROOT) -> Any:
    """Plain dicts and lists from OmegaConf containers (interpolations resolved), at any depth."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
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
        return {k: _to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v, where) for v in obj]
    return obj
