"""One typed config for everything verl-specrollout adds, with its validation.

Users set it under veRL's free-form rollout block, e.g.::

    +actor_rollout_ref.rollout.custom.specrollout.enable=true
    +actor_rollout_ref.rollout.custom.specrollout.method=eagle3
    +actor_rollout_ref.rollout.custom.specrollout.draft_path=/ckpt/eagle3

`rollout.custom` is an untyped dict in veRL 0.9.1, so the typing and the error messages live here.
This package imports neither torch nor vLLM. By job:

* schema.py      the declarations (pydantic dataclasses) and the rules between keys
* keys.py        how a key is declared and read back (full name, type, constraint, description)
* messages.py    pydantic's errors as our one-line messages (full key, what it accepts, did-you-mean)
* docs.py        the reference in docs/configuration.md, generated from the declarations
* checkpoint.py  what is checked on disk: the draft's vocabulary against the target's, its aux layers

Inside a vLLM engine the config arrives as `additional_config["specrollout"]`; read it there with
vllm_adapter/engine_config.py, which parses it once per process.

`from_dict` checks every key's type and range and the rules between keys, whether or not `enable`
is set. `validate()` checks the same again (for configs built or changed in Python) and, when
`enable` is true, what depends on it: the draft checkpoint on disk and its vocabulary.

    python -m verl_specrollout.config --markdown   # the generated reference
    python tools/gen_config_docs.py                # rewrite docs/configuration.md
"""

from verl_specrollout.errors import SpecRolloutConfigError
from verl_specrollout.config.checkpoint import _read_json, _vocab_size, check_vocab, draft_aux_layer_ids
from verl_specrollout.config.keys import ROOT, KeySpec, Rule, accepted_types, iter_keys, iter_sections, key, section
from verl_specrollout.config.messages import allowed
from verl_specrollout.config.schema import (
    ADDITIONAL_CONFIG_KEY, DRAFT_SAMPLING, ENABLED_RULES, GRAPH_CAPTURES, GRAPH_PLANS, GROUP_BASE_METHODS,
    MAX_K_LIMIT, METHODS, MODES, PLACEMENTS, RELATION_RULES, RUN_SPECIFIC_KEYS, EngineConfig, GroupConfig,
    LearnerConfig, PlannerConfig, SpecRolloutConfig, runs_draft_model, validate_table)
from verl_specrollout.config.docs import main, markdown_reference

__all__ = [
    "ADDITIONAL_CONFIG_KEY", "DRAFT_SAMPLING", "ENABLED_RULES", "GRAPH_CAPTURES", "GRAPH_PLANS",
    "GROUP_BASE_METHODS", "MAX_K_LIMIT", "METHODS", "MODES", "PLACEMENTS", "RELATION_RULES", "ROOT",
    "RUN_SPECIFIC_KEYS", "EngineConfig", "GroupConfig", "KeySpec", "LearnerConfig", "PlannerConfig", "Rule",
    "SpecRolloutConfig", "SpecRolloutConfigError", "accepted_types", "allowed", "check_vocab",
    "draft_aux_layer_ids", "iter_keys", "iter_sections", "key", "main", "markdown_reference",
    "runs_draft_model", "section", "validate_table",
]
