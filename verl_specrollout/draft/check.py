"""Preflight: does an EAGLE-3 head fit a target model?

    python -m verl_specrollout.draft check --draft DIR_OR_HUB_ID --target DIR_OR_HUB_ID

Reads config JSON, tokenizer.json and safetensors headers (plus the small ``d2t`` tensor of a
reduced-vocabulary head): no torch, no model load, no GPU, seconds on a 7B target. Each problem is
printed on its own line (``ERROR: ...``, ``WARN: ...``); the last line is the verdict, ``OK: draft
<dir> fits target <dir> (...)`` or ``FAIL: <first error>; <n> more``. Exit code 0 (fits, maybe with
warnings), 1 (does not fit), 2 (an input cannot be read: no such directory, a hub id neither cached
nor downloadable, no config.json, unreadable weights).

What is checked, and why each is an error or a warning:

* vocabulary: the head's ``vocab_size`` is the target vocabulary its drafted ids are in, so it must
  equal the target's; the target tokenizer's ids must fit in it. A reduced draft vocabulary needs
  ``d2t`` (draft id ``i`` -> target id ``i + d2t[i]``) with ``draft_vocab_size`` entries, every target
  id in range, and the head's own ``lm_head`` with ``draft_vocab_size`` rows (vLLM's loader).
* hidden size: ``target_hidden_size`` (default ``hidden_size``) is the width of the target features
  the head fuses, so it must be the target's ``hidden_size``, and ``fc.weight`` must take
  ``n_aux * target_hidden_size`` inputs. A head without its own ``embed_tokens`` / ``lm_head`` uses
  the target's, which only fits when the head's ``hidden_size`` is the target's (vLLM otherwise keeps
  the head's uninitialised embedding).
* aux layer ids (``eagle_config.eagle_aux_hidden_state_layer_ids``; absent: vLLM's default
  ``(2, L // 2, L - 3)``) for a target with ``L`` layers: id ``k`` is the residual stream after ``k``
  layers (0: the embeddings), so ``0..L`` (vLLM 0.24-0.31); a larger id is never captured and the head
  would get fewer features than ``fc`` takes -> error, as are repeated ids (each layer is captured
  once). ``L`` itself is a warning: vLLM serves it, the online learner's capture takes ``0..L-1``.
  Unsorted ids are a warning: vLLM concatenates the features in ascending layer order.
* RoPE: a different ``rope_theta`` from the target's means the head was built for another model
  (heads copy the target's) -> error. A different RoPE type / scaling, or a shorter
  ``max_position_embeddings``, is a warning: the head still runs with its own settings, but positions
  past what it was built for are drafted poorly (never wrongly: verification is exact).
* dtype: a warning at most. vLLM serves the head in the engine's dtype (veRL's ``rollout.dtype``,
  bfloat16 by default), casting its weights; only a cast into float16 from a bfloat16/float32 head
  (range overflow) or quantized weights deserve a look.
* attention shapes: ``num_attention_heads`` divisible by ``num_key_value_heads``; ``head_dim`` (or
  ``hidden_size / num_attention_heads``) matches ``q/k/v_proj``; ``q_proj`` takes ``2 * hidden_size``
  inputs (EAGLE-3 attends over [embedding, fused feature]).
* the online learner: variants it does not implement (``norm_before_fc``, biases, more layers, ...) are
  a warning: vLLM serves them, ``learner.enable=true`` refuses them.
"""

from __future__ import annotations

import array
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from verl_specrollout.draft import format as fmt_mod
from verl_specrollout.draft.format import (CONFIG_NAME, learner_unsupported, detect_format, find_weight_files,
                                           layer_fields, read_draft_info, read_json, safetensors_header)
from verl_specrollout.draft.resolve import ModelPathError, resolve_model_dir
from verl_specrollout.errors import SpecRolloutConfigError

# What reading a target's config and tokenizer needs when it is fetched from the hub for the check.
TARGET_PATTERNS = ("*.json", "tokenizer*", "*.model", "*.tiktoken", "*.txt")
PLAIN_FLOATS = ("F32", "F16", "BF16")
_INT_CODES = {"I64": "q", "I32": "i", "I16": "h", "I8": "b", "U8": "B"}


class Unreadable(Exception):
    """An input that cannot be read at all (exit code 2)."""


@dataclass
class Report:
    draft: str
    target: str
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def verdict(self) -> str:
        if self.errors:
            return f"FAIL: {self.errors[0]}; {len(self.errors) - 1} more"
        s = self.summary
        parts = [f"vocab {s.get('vocab')}"]
        if s.get("draft_vocab") != s.get("vocab"):
            parts.append(f"draft vocab {s.get('draft_vocab')}")
        parts += [f"hidden {s.get('hidden')}", f"aux layers {s.get('aux')} of {s.get('layers')}",
                  f"rope_theta {s.get('rope_theta'):g}" if s.get("rope_theta") is not None else "rope_theta ?",
                  f"dtype {s.get('dtype')} (target {s.get('target_dtype')})"]
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''}")
        return f"OK: draft {self.draft} fits target {self.target} ({', '.join(parts)})"

    def lines(self) -> list:
        return ([f"ERROR: {e}" for e in self.errors] + [f"WARN: {w}" for w in self.warnings] + [self.verdict()])


# ----------------------------------------------------------------------------- reading
def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _flat_target(cfg: dict) -> dict:
    """A multimodal target keeps its decoder's fields under text_config; those are what the head reads."""
    text = cfg.get("text_config")
    return {**cfg, **text} if isinstance(text, dict) else dict(cfg)


def _dtype(cfg: dict) -> Optional[str]:
    for k in ("torch_dtype", "dtype"):
        v = cfg.get(k)
        if isinstance(v, str) and v:
            return v.replace("torch.", "")
    return None


def _rope(flat: dict) -> tuple:
    """(theta, type, scaling dict or None) whichever of rope_theta / rope_parameters / rope_scaling holds them."""
    theta = fmt_mod._rope_theta(flat)  # noqa: SLF001  (one reader of rope_theta for the package)
    kind, scaling = "default", None
    for key in ("rope_scaling", "rope_parameters"):
        d = flat.get(key)
        if isinstance(d, dict):
            t = d.get("rope_type") or d.get("type")
            if t and t != "default":
                kind = t
                scaling = {k: v for k, v in d.items() if k not in ("rope_theta", "rope_type", "type")}
    return theta, kind, scaling


def tokenizer_size(model_dir: str) -> Optional[int]:
    """1 + the largest id tokenizer.json can produce (vocabulary and added tokens); None without one."""
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    try:
        tok = read_json(path, "tokenizer")
    except SpecRolloutConfigError:
        return None
    ids = []
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        ids += [v for v in vocab.values() if _int(v) is not None]
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        ids.append(len(vocab) - 1)
    ids += [t.get("id") for t in tok.get("added_tokens") or [] if isinstance(t, dict) and _int(t.get("id")) is not None]
    return max(ids) + 1 if ids else None


def _headers(path: str, files: list) -> Optional[dict]:
    """{tensor name: (file, header entry)} over the safetensors files; None when weights are .bin."""
    if not all(f.endswith(".safetensors") for f in files):
        return None
    out = {}
    for f in files:
        try:
            header = safetensors_header(os.path.join(path, f))
        except SpecRolloutConfigError as exc:
            raise Unreadable(str(exc)) from exc
        for name, meta in header.items():
            if name != "__metadata__" and isinstance(meta, dict):
                out[name] = (f, meta)
    return out


def _norm_name(name: str) -> str:
    """speculators' layers.0.* -> midlayer.* (the vLLM names the checks use)."""
    return "midlayer." + name[len("layers.0."):] if name.startswith("layers.0.") else name


def read_int_tensor(path: str, file: str, meta: dict) -> list:
    """A small integer tensor (d2t) straight from a safetensors file, without torch."""
    code = _INT_CODES.get(meta.get("dtype"))
    if code is None:
        raise ValueError(f"dtype {meta.get('dtype')}, expected an integer type")
    start, end = meta["data_offsets"]
    with open(os.path.join(path, file), "rb") as f:
        (n,) = array.array("Q", f.read(8))
        f.seek(8 + n + start)
        data = f.read(end - start)
    values = array.array(code)
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


# ----------------------------------------------------------------------------- the check
def check_draft(draft_dir: str, target_dir: str) -> Report:
    """Check a local EAGLE-3 head directory against a local target model directory.

    Raises Unreadable when either cannot be read at all; everything else lands in the Report.
    """
    try:
        tcfg = read_json(os.path.join(target_dir, CONFIG_NAME), "target config")
        draw = read_json(os.path.join(draft_dir, CONFIG_NAME), "draft config")
        files = find_weight_files(draft_dir)
    except SpecRolloutConfigError as exc:
        raise Unreadable(str(exc)) from exc
    if not files:
        raise Unreadable(f"{draft_dir}: no draft weights (looked for model.safetensors, pytorch_model.bin and "
                         "their sharded indexes)")
    headers = _headers(draft_dir, files)
    tensors = None if headers is None else {_norm_name(k): v for k, v in headers.items()}
    rep = Report(draft=draft_dir, target=target_dir)
    err, warn = rep.errors.append, rep.warnings.append

    t = _flat_target(tcfg)
    t_vocab, t_hidden, t_layers = _int(t.get("vocab_size")), _int(t.get("hidden_size")), _int(t.get("num_hidden_layers"))
    for k, v in (("vocab_size", t_vocab), ("hidden_size", t_hidden), ("num_hidden_layers", t_layers)):
        if v is None:
            raise Unreadable(f"{os.path.join(target_dir, CONFIG_NAME)}: missing or non-integer '{k}'")

    fmt = detect_format(draft_dir, draw)
    try:
        d = layer_fields(draw, fmt, os.path.join(draft_dir, CONFIG_NAME))
    except SpecRolloutConfigError as exc:
        err(str(exc))
        return rep
    d_vocab = _int(d.get("vocab_size"))
    d_draft_vocab = _int(d.get("draft_vocab_size")) or d_vocab
    d_hidden = _int(d.get("hidden_size"))
    d_target_hidden = _int(d.get("target_hidden_size")) or d_hidden

    # 1. vocabulary: the likeliest mistake, reported first
    if d_vocab is not None and d_vocab != t_vocab:
        err(f"vocab_size: the draft drafts in a vocabulary of {d_vocab} ids, the target has {t_vocab}; the head was "
            "made for another tokenizer")
    # 2. what read_draft_info refuses (missing keys, draft_vocab_size > vocab_size, no d2t / lm_head)
    info = None
    try:
        info = read_draft_info(draft_dir, eagle3=True)
    except SpecRolloutConfigError as exc:
        err(str(exc))
    n_tok = tokenizer_size(target_dir)
    if n_tok is not None and d_vocab is not None and n_tok > min(d_vocab, t_vocab):
        err(f"the target tokenizer produces ids up to {n_tok - 1}, beyond vocab_size {min(d_vocab, t_vocab)}")
    d_tok = tokenizer_size(draft_dir)
    if d_tok is not None and n_tok is not None and d_tok != n_tok:
        warn(f"the draft ships a tokenizer with {d_tok} ids, the target's has {n_tok}: was it made for this target?")

    # 3. reduced vocabulary map
    reduced = d_vocab is not None and d_draft_vocab is not None and d_draft_vocab < d_vocab
    if tensors is not None:
        _check_vocab_map(draft_dir, tensors, reduced, d_vocab, d_draft_vocab, t_vocab, err, warn)

    # 4. aux layer ids
    try:
        aux, defaulted = _serving_aux(draw, d, t_layers, os.path.join(draft_dir, CONFIG_NAME))
    except SpecRolloutConfigError as exc:
        err(str(exc))
        aux, defaulted = [], False
    aux_note = " (vLLM's default)" if defaulted else ""
    if defaulted:
        warn(f"the draft names no eagle_aux_hidden_state_layer_ids; vLLM then reads the target's layers {aux} "
             "(its default): the head must have been trained on those")
    bad = [i for i in aux if i < 0 or i > t_layers]
    if bad:
        err(f"aux layer ids {aux}{aux_note}: {bad} outside 0..{t_layers} (the target has num_hidden_layers="
            f"{t_layers}; id k is the residual stream after k layers), so vLLM never captures them")
    elif t_layers in aux:
        warn(f"aux layer id {t_layers} is the last layer's output: vLLM serves it, the online learner "
             f"(learner.enable=true) captures ids 0..{t_layers - 1} only")
    if len(set(aux)) != len(aux):
        err(f"aux layer ids {aux}{aux_note} repeat a layer; vLLM captures each layer once, so the head would get "
            f"{len(set(aux))} features instead of {len(aux)}")
    elif aux != sorted(aux):
        warn(f"aux layer ids {aux} are not ascending; vLLM concatenates the features in ascending layer order "
             f"({sorted(aux)}), so the head must have been trained that way")
    n_aux = _int(d.get("num_aux_hidden_states")) or len(aux) or 3

    # 5. hidden sizes and the fused-feature projection
    if d_target_hidden is not None and d_target_hidden != t_hidden:
        err(f"target_hidden_size: the draft fuses target features of width {d_target_hidden}, the target's "
            f"hidden_size is {t_hidden}")
    if tensors is not None:
        _check_hidden(tensors, d_hidden, t_hidden, n_aux, d_target_hidden, reduced, err)

    # 6. RoPE
    t_theta, t_kind, t_scaling = _rope(t)
    d_theta, d_kind, d_scaling = _rope(d)
    if abs(d_theta - t_theta) > 1e-6 * max(abs(t_theta), 1.0):
        err(f"rope_theta: the draft's is {d_theta:g}, the target's {t_theta:g}; a head copies its target's RoPE, so "
            "it was built for another model")
    if (d_kind, d_scaling) != (t_kind, t_scaling):
        warn(f"RoPE type: the draft uses {d_kind}{'' if not d_scaling else ' ' + str(d_scaling)}, the target "
             f"{t_kind}{'' if not t_scaling else ' ' + str(t_scaling)}; the head runs with its own (drafts at long "
             "positions may be accepted less; verification stays exact)")
    d_maxpos, t_maxpos = _int(d.get("max_position_embeddings")), _int(t.get("max_position_embeddings"))
    if d_maxpos and t_maxpos and d_maxpos < t_maxpos:
        warn(f"max_position_embeddings: the draft's is {d_maxpos}, the target's {t_maxpos}; vLLM limits the draft "
             f"to {d_maxpos} positions, so longer sequences are drafted poorly")

    # 7. attention shapes
    _check_heads(d, tensors, d_hidden, err)

    # 8. dtype
    d_dtype, t_dtype = _dtype(d) or _dtype(draw), _dtype(t)
    stored = sorted({meta.get("dtype") for _, meta in (tensors or {}).values()
                     if meta.get("dtype") and meta.get("dtype") not in _INT_CODES and meta.get("dtype") != "BOOL"})
    if d_dtype is None and stored:
        d_dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(stored[0], stored[0])
    odd = [s for s in stored if s not in PLAIN_FLOATS]
    if odd:
        warn(f"draft weights stored as {', '.join(odd)}: vLLM's EAGLE-3 loader expects unquantized float weights")
    if t_dtype == "float16" and (d_dtype in ("bfloat16", "float32") or "BF16" in stored):
        warn(f"the draft is {d_dtype}, the target float16: served in float16, values beyond its range (65504) "
             "overflow; serve both in bfloat16 (veRL's rollout.dtype default)")

    # 9. the online learner
    unsupported = learner_unsupported(info.layer_config if info is not None else {})
    if unsupported:
        warn(f"the online learner (learner.enable=true) does not implement {', '.join(unsupported)}; vLLM serves "
             "the head, the learner refuses it")

    rep.summary = {"vocab": d_vocab, "draft_vocab": d_draft_vocab, "hidden": d_hidden, "aux": aux,
                   "layers": t_layers, "rope_theta": d_theta, "dtype": d_dtype, "target_dtype": t_dtype,
                   "format": fmt}
    return rep


def vllm_default_aux_layer_ids(num_hidden_layers: int) -> list:
    """vLLM's SupportsEagle3 default (models/interfaces.py, 0.24-0.31) for a head that names none."""
    return [2, num_hidden_layers // 2, num_hidden_layers - 3]


def _serving_aux(draw: dict, d: dict, t_layers: int, where: str) -> tuple:
    ids = fmt_mod._aux_ids(draw, d, where)  # noqa: SLF001  (the package's one reader of the key)
    return (list(ids), False) if ids is not None else (vllm_default_aux_layer_ids(t_layers), True)


def serving_aux_layer_ids(draft_dir: str, target_dir: str) -> list:
    """The target layers vLLM feeds the head: the head's eagle_aux_hidden_state_layer_ids, else vLLM's
    default for the target's depth. What the online learner must capture (learner.aux_layer_ids)."""
    try:
        tcfg = _flat_target(read_json(os.path.join(target_dir, CONFIG_NAME), "target config"))
        draw = read_json(os.path.join(draft_dir, CONFIG_NAME), "draft config")
    except SpecRolloutConfigError as exc:
        raise Unreadable(str(exc)) from exc
    t_layers = _int(tcfg.get("num_hidden_layers"))
    if t_layers is None:
        raise Unreadable(f"{os.path.join(target_dir, CONFIG_NAME)}: missing or non-integer 'num_hidden_layers'")
    where = os.path.join(draft_dir, CONFIG_NAME)
    return _serving_aux(draw, layer_fields(draw, detect_format(draft_dir, draw), where), t_layers, where)[0]


def _check_vocab_map(path, tensors, reduced, d_vocab, d_draft_vocab, t_vocab, err, warn) -> None:
    if not reduced:
        if "d2t" in tensors:
            warn("the weights hold a d2t map but draft_vocab_size == vocab_size; vLLM ignores it")
        return
    if "d2t" in tensors:
        file, meta = tensors["d2t"]
        shape = meta.get("shape") or []
        if shape != [d_draft_vocab]:
            err(f"d2t has shape {shape}, draft_vocab_size is {d_draft_vocab}")
        else:
            try:
                d2t = read_int_tensor(path, file, meta)
            except (OSError, ValueError, KeyError) as exc:
                err(f"d2t cannot be read ({exc})")
            else:
                ids = [i + o for i, o in enumerate(d2t)]
                limit = min(d_vocab, t_vocab)
                out = [(i, tid) for i, tid in enumerate(ids) if tid < 0 or tid >= limit]
                if out:
                    i, tid = out[0]
                    err(f"d2t maps {len(out)} draft ids outside the target vocabulary 0..{limit - 1} "
                        f"(draft id {i} -> target id {tid})")
                elif len(set(ids)) != len(ids):
                    warn(f"d2t maps {len(ids) - len(set(ids))} draft ids onto target ids another draft id has "
                         "(wasted draft vocabulary)")
    if "lm_head.weight" in tensors:
        rows = (tensors["lm_head.weight"][1].get("shape") or [None])[0]
        if rows != d_draft_vocab:
            err(f"lm_head.weight has {rows} rows, draft_vocab_size is {d_draft_vocab}")
    if "t2d" in tensors:
        shape = tensors["t2d"][1].get("shape") or []
        if shape != [d_vocab]:
            warn(f"t2d has shape {shape}, vocab_size is {d_vocab} (vLLM ignores t2d; other tools read it)")


def _check_hidden(tensors, d_hidden, t_hidden, n_aux, d_target_hidden, reduced, err) -> None:
    fc = tensors.get("fc.weight")
    if fc is None:
        err("the weights have no fc.weight: not an EAGLE-3 head (it fuses the target's features through fc)")
    else:
        shape = fc[1].get("shape") or []
        want = n_aux * (d_target_hidden or t_hidden)
        if len(shape) != 2 or shape[1] != want or (d_hidden and shape[0] != d_hidden):
            err(f"fc.weight has shape {shape}; {n_aux} aux features of width {d_target_hidden or t_hidden} into "
                f"hidden_size {d_hidden} need [{d_hidden}, {want}]")
    if d_hidden is None or d_hidden == t_hidden:
        return
    if "embed_tokens.weight" not in tensors:
        err(f"hidden_size: the draft's is {d_hidden}, the target's {t_hidden}, and the draft has no embed_tokens of "
            "its own; vLLM cannot share the target's embedding and would run an uninitialised one")
    if "lm_head.weight" not in tensors and not reduced:
        err(f"hidden_size: the draft's is {d_hidden}, the target's {t_hidden}, and the draft has no lm_head of its "
            "own; the target's lm_head does not fit it")


def _check_heads(d, tensors, d_hidden, err) -> None:
    nh, nkv = _int(d.get("num_attention_heads")), _int(d.get("num_key_value_heads"))
    if not nh or not d_hidden:
        return
    nkv = nkv or nh
    if nh % nkv:
        err(f"num_attention_heads={nh} is not a multiple of num_key_value_heads={nkv}")
    head_dim = _int(d.get("head_dim"))
    if head_dim is None:
        if d_hidden % nh:
            err(f"hidden_size={d_hidden} is not divisible by num_attention_heads={nh} and no head_dim is given")
            return
        head_dim = d_hidden // nh
    if tensors is None:
        return
    for proj, heads in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
        t = tensors.get(f"midlayer.self_attn.{proj}.weight")
        if t is None:
            continue
        shape = t[1].get("shape") or []
        if shape != [heads * head_dim, 2 * d_hidden]:
            err(f"midlayer.self_attn.{proj}.weight has shape {shape}; {heads} heads x head_dim {head_dim} over "
                f"[embedding, fused feature] (2 x hidden_size {d_hidden}) need [{heads * head_dim}, {2 * d_hidden}]")


# ----------------------------------------------------------------------------- CLI
def run_aux_layers(draft: str, target: str, out=None) -> int:
    """Print serving_aux_layer_ids as a Hydra list (`[2,14,25]`); exit code 2 with one line if unreadable."""
    out = out or sys.stdout
    try:
        ids = serving_aux_layer_ids(resolve_model_dir(draft, "--draft"),
                                    resolve_model_dir(target, "--target", allow_patterns=TARGET_PATTERNS))
    except (ModelPathError, Unreadable, SpecRolloutConfigError) as exc:
        print(f"FAIL: {exc}", file=sys.stderr, flush=True)
        return 2
    print("[" + ",".join(str(i) for i in ids) + "]", file=out, flush=True)
    return 0


def run_check(draft: str, target: str, out=None) -> int:
    """Resolve both (local dir or hub id), check, print the lines; returns the exit code."""
    out = out or sys.stdout
    try:
        draft_dir = resolve_model_dir(draft, "--draft")
        target_dir = resolve_model_dir(target, "--target", allow_patterns=TARGET_PATTERNS)
        rep = check_draft(draft_dir, target_dir)
    except (ModelPathError, Unreadable) as exc:
        print(f"FAIL: {exc}", file=out, flush=True)
        return 2
    for line in rep.lines():
        print(line, file=out)
    out.flush()
    return rep.exit_code
