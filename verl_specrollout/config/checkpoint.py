"""What the config checks on disk: the draft checkpoint against the target (vocabulary) and the
EAGLE-3 aux layers a draft names. Read-only and torch-free (draft/format.py reads headers only)."""

from __future__ import annotations

import json
import os
from typing import Optional

from verl_specrollout.draft.format import draft_target_vocab, read_draft_info
from verl_specrollout.errors import SpecRolloutConfigError


def draft_aux_layer_ids(draft_path: Optional[str]) -> Optional[list]:
    """EAGLE-3 aux layer ids named by a draft checkpoint (any format draft/format.py reads), or None."""
    if not draft_path:
        return None
    return read_draft_info(draft_path).aux_layer_ids


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
