"""What a draft checkpoint directory holds, read from JSON only (no torch, no vLLM).

`verl_specrollout.config` validates user configs without importing torch and reads drafts through
this module, so it must stay import-light: the standard library and verl_specrollout.errors only.

Three layouts of an EAGLE-3 head are understood:

* ``vllm``: vLLM's / the EAGLE authors' format. config.json carries Llama fields at the top level
  (``hidden_size``, ``vocab_size`` = the target's vocabulary, optional ``draft_vocab_size``,
  ``target_hidden_size``, ``eagle_config.eagle_aux_hidden_state_layer_ids``); weights under
  ``midlayer.*``, ``fc.weight``, ``norm.weight``, optional ``lm_head.weight`` /
  ``embed_tokens.weight``, and ``d2t`` / ``t2d`` for a reduced draft vocabulary.
* ``speculators``: the speculators library's format (``speculators_model_type: "eagle3"``). The
  layer's fields sit under ``transformer_layer_config``; ``draft_vocab_size``,
  ``target_hidden_size``, ``norm_before_residual`` and ``eagle_aux_hidden_state_layer_ids`` at the
  top level; the decoder layer's weights under ``layers.0.*``.
* ``specrollout``: what ``save_vllm_checkpoint`` writes: the ``vllm`` layout plus
  ``specrollout_draft.json`` (our exact head config).

Weights may be ``model.safetensors``, ``pytorch_model.bin`` or a sharded index of either. Tensor
names of safetensors files are read from the file's JSON header (8-byte little-endian length, then
JSON), so the d2t check needs no torch; a ``.bin`` cannot be read without torch and is checked at
load time instead.

Any config or file this cannot read raises SpecRolloutConfigError with one message naming the key
or file.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Optional

from verl_specrollout.errors import SpecRolloutConfigError

CONFIG_NAME = "config.json"
SPECROLLOUT_NAME = "specrollout_draft.json"
# Looked for in this order; an index wins over a single file of the same kind (HF's own order).
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys of the decoder layer a head needs to be built; the rest have Llama's defaults.
LAYER_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
LAYER_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
                  "hidden_act": "silu", "num_hidden_layers": 1, "attention_bias": False, "mlp_bias": False}
# Variants vLLM runs but our training head does not implement (see draft/eagle3.py).
UNSUPPORTED_FLAGS = ("norm_before_fc", "fc_norm", "norm_output")


def learner_unsupported(layer_config: dict) -> list:
    """The head variants vLLM serves but the online learner's EAGLE-3 head does not compute (training
    them would train another model): the names of what is on, empty when the learner can train it."""
    c = layer_config or {}
    on = [k for k in UNSUPPORTED_FLAGS + ("attention_bias", "mlp_bias") if c.get(k)]
    if c.get("num_hidden_layers", 1) != 1:
        on.append(f"num_hidden_layers={c['num_hidden_layers']}")
    if c.get("hidden_act", "silu") != "silu":
        on.append(f"hidden_act={c['hidden_act']}")
    return on


def _error(message: str) -> Exception:
    return SpecRolloutConfigError(message)


@dataclass
class DraftInfo:
    """A draft checkpoint as read from its config.json and weight-file headers."""

    path: str
    format: str                      # "vllm" | "speculators" | "specrollout"
    eagle3: bool                     # an EAGLE-3 head (False: e.g. a small draft LM for draft_model)
    vocab_size: int                  # the target's vocabulary, which drafted ids refer to
    draft_vocab_size: int            # rows of the head's own lm_head (== vocab_size: not reduced)
    hidden_size: Optional[int]
    target_hidden_size: Optional[int]
    aux_layer_ids: Optional[list]    # None: the checkpoint does not say (vLLM then uses its default)
    weight_files: list = field(default_factory=list)   # relative to path
    tensor_names: Optional[frozenset] = None           # None when a .bin hides them
    layer_config: dict = field(default_factory=dict)   # flat Llama-style fields of the decoder layer

    @property
    def reduced_vocab(self) -> bool:
        return self.draft_vocab_size != self.vocab_size


# ----------------------------------------------------------------------------- config.json
def read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise _error(f"{what}: {path} not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise _error(f"{what}: {path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _error(f"{what}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def detect_format(path: str, raw: dict) -> str:
    if "speculators_model_type" in raw:
        return "speculators"
    if os.path.isfile(os.path.join(path, SPECROLLOUT_NAME)):
        return "specrollout"
    return "vllm"


def _looks_like_eagle3(raw: dict) -> bool:
    """A vLLM-format EAGLE head rather than a plain LM (a `draft_model` draft has none of these)."""
    archs = " ".join(str(a) for a in raw.get("architectures") or []).lower()
    markers = ("eagle_config", "draft_vocab_size", "target_hidden_size", "eagle_aux_hidden_state_layer_ids")
    return "eagle" in archs or any(k in raw for k in markers)


def layer_fields(raw: dict, fmt: str, config_path: str) -> dict:
    """The decoder layer's fields, flat, whatever the format nests them under."""
    if fmt != "speculators":
        flat = dict(raw)
        if "vocab_size" not in flat and isinstance(flat.get("text_config"), dict):
            flat = {**flat["text_config"], **flat}
        return flat
    if raw.get("speculators_model_type") != "eagle3":
        raise _error(f"{config_path}: speculators_model_type={raw.get('speculators_model_type')!r} is not "
                     "supported; only 'eagle3' heads load")
    layer = raw.get("transformer_layer_config")
    if not isinstance(layer, dict):
        raise _error(f"{config_path}: missing key 'transformer_layer_config' (a speculators config nests "
                     "the draft layer's hidden_size, vocab_size, ... there)")
    flat = dict(layer)
    for k in ("draft_vocab_size", "target_hidden_size", "eagle_aux_hidden_state_layer_ids") + UNSUPPORTED_FLAGS:
        if raw.get(k) is not None:
            flat[k] = raw[k]
    # vLLM's converter (transformers_utils/configs/speculators/algos.py) defaults this to True.
    flat["norm_before_residual"] = bool(raw.get("norm_before_residual", True))
    return flat


def _rope_theta(flat: dict) -> float:
    for holder in (flat, flat.get("rope_parameters") or {}, flat.get("rope_scaling") or {}):
        if isinstance(holder, dict) and holder.get("rope_theta") is not None:
            return float(holder["rope_theta"])
    return LAYER_DEFAULTS["rope_theta"]


def _require(flat: dict, keys, where: str) -> None:
    for k in keys:
        if flat.get(k) is None:
            raise _error(f"{where}: missing key '{k}'")


def _as_int(flat: dict, k: str, where: str) -> int:
    v = flat[k]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _error(f"{where}: '{k}' must be a positive integer, got {v!r}")
    return v


def _aux_ids(raw: dict, flat: dict, where: str) -> Optional[list]:
    ids = ((raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
           or raw.get("eagle_aux_hidden_state_layer_ids") or flat.get("eagle_aux_hidden_state_layer_ids"))
    if not ids:
        return None
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise _error(f"{where}: 'eagle_aux_hidden_state_layer_ids' must be a list of layer indices >= 0, "
                     f"got {ids!r}")
    return list(ids)


# ----------------------------------------------------------------------------- weight files
def find_weight_files(path: str) -> list:
    """Weight files (relative names) in HF's order of preference; [] when there are none."""
    for index in WEIGHT_INDEXES:
        if os.path.isfile(os.path.join(path, index)):
            return _index_shards(path, index)
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return [name]
    return []


def _index_shards(path: str, index: str) -> list:
    data = read_json(os.path.join(path, index), "draft weight index")
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise _error(f"{os.path.join(path, index)}: missing key 'weight_map'")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if not os.path.isfile(os.path.join(path, shard)):
            raise _error(f"{os.path.join(path, index)} names {shard}, which is not in {path}")
    return shards


def safetensors_names(file_path: str) -> frozenset:
    """Tensor names from a safetensors header, without torch."""
    return frozenset(k for k in safetensors_header(file_path) if k != "__metadata__")


def safetensors_header(file_path: str) -> dict:
    """A safetensors file's JSON header ({name: {dtype, shape, data_offsets}}, "__metadata__"), without torch."""
    try:
        with open(file_path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > os.path.getsize(file_path) - 8:
                raise ValueError(f"header length {n} runs past the end of the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise _error(f"{file_path} is not a readable safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise _error(f"{file_path} is not a readable safetensors file (its header is not a JSON object)")
    return header


def _tensor_names(path: str, files: list) -> Optional[frozenset]:
    if not files or not all(f.endswith(".safetensors") for f in files):
        return None
    names: set = set()
    for f in files:
        names |= safetensors_names(os.path.join(path, f))
    return frozenset(names)


# ----------------------------------------------------------------------------- entry points
def draft_target_vocab(path: str) -> Optional[int]:
    """The target vocabulary a draft's config names (None if it names none); reads config.json only."""
    config_path = os.path.join(path, CONFIG_NAME)
    raw = read_json(config_path, "draft config")
    vocab = layer_fields(raw, detect_format(path, raw), config_path).get("vocab_size")
    return vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None


def read_draft_info(path: str, eagle3: Optional[bool] = None) -> DraftInfo:
    """Read a draft checkpoint directory; raises SpecRolloutConfigError naming what is missing.

    ``eagle3=True`` reads it as an EAGLE-3 head whatever its config says; None tells from the
    config and the weight names (a plain LM, e.g. a `draft_model` draft, needs only vocab_size).
    """
    config_path = os.path.join(path, CONFIG_NAME)
    raw = read_json(config_path, "draft config")
    fmt = detect_format(path, raw)
    files = find_weight_files(path)
    if eagle3 is None:
        eagle3 = fmt != "vllm" or _looks_like_eagle3(raw) or "fc.weight" in (_tensor_names(path, files) or ())
    flat = layer_fields(raw, fmt, config_path)
    where = f"{config_path}" + (" (transformer_layer_config)" if fmt == "speculators" else "")
    _require(flat, LAYER_KEYS if eagle3 else ("vocab_size",), where)
    vocab = _as_int(flat, "vocab_size", where)
    draft_vocab = _as_int(flat, "draft_vocab_size", config_path) if flat.get("draft_vocab_size") else vocab
    if draft_vocab > vocab:
        raise _error(f"{config_path}: draft_vocab_size={draft_vocab} is larger than vocab_size={vocab} "
                     "(vocab_size is the target's vocabulary)")
    hidden = _as_int(flat, "hidden_size", where) if flat.get("hidden_size") is not None else None
    if eagle3 and not files:
        raise _error(f"{path}: no draft weights (looked for {', '.join(WEIGHT_INDEXES + WEIGHT_FILES)})")
    info = DraftInfo(
        path=path, format=fmt, eagle3=eagle3, vocab_size=vocab, draft_vocab_size=draft_vocab,
        hidden_size=hidden, target_hidden_size=flat.get("target_hidden_size") or hidden,
        aux_layer_ids=_aux_ids(raw, flat, config_path), weight_files=files,
        tensor_names=_tensor_names(path, files) if eagle3 else None,
        layer_config=_layer_config(flat) if eagle3 else {})
    if info.reduced_vocab:
        _check_reduced_vocab(info)
    return info


def _layer_config(flat: dict) -> dict:
    out = {**LAYER_DEFAULTS, **{k: v for k, v in flat.items() if v is not None}}
    out["rope_theta"] = _rope_theta(flat)
    out.setdefault("num_key_value_heads", out["num_attention_heads"])
    out.setdefault("head_dim", out["hidden_size"] // out["num_attention_heads"])
    out.setdefault("norm_before_residual", False)
    return out


def _check_reduced_vocab(info: DraftInfo) -> None:
    """A reduced draft vocabulary needs its map to target ids and its own head (vLLM's loader)."""
    if info.tensor_names is None:
        return  # a .bin: checked when loaded
    for name in ("d2t", "lm_head.weight"):
        if name not in info.tensor_names:
            raise _error(
                f"{info.path}: draft_vocab_size={info.draft_vocab_size} < vocab_size={info.vocab_size} but the "
                f"weights ({', '.join(info.weight_files)}) have no '{name}' tensor; a reduced-vocabulary head "
                "needs 'd2t' (draft id -> target id offsets) and its own 'lm_head.weight'")


def describe(info: DraftInfo) -> dict[str, Any]:
    """A short summary for logs."""
    return {"format": info.format, "vocab_size": info.vocab_size, "draft_vocab_size": info.draft_vocab_size,
            "hidden_size": info.hidden_size, "aux_layer_ids": info.aux_layer_ids,
            "weights": info.weight_files}
