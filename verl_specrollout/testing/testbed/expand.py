"""Function-preserving expansion of a trained HF Llama (Net2Net-style) and of its EAGLE-3 head.

The expanded model does the matrix work of a bigger model (wider residual stream, more heads,
wider MLP, more layers) while computing the original model's logits up to rounding. Used to build
a testbed target whose decode step costs what a big model's does relative to a draft pass, without
training a big model (see the ``regime`` size in build.py).

How the function is kept (original units keep their index, new ones are appended):

* Residual stream H -> H': every writer into it (``embed_tokens``, ``o_proj``, ``down_proj``, and the
  head's ``fc``) has zero rows for the new units, so those stay exactly 0. RMSNorm then averages over
  H' instead of H: mean(x^2) shrinks by H/H', so the normalised values *grow* by sqrt(H'/H); each norm
  weight is scaled by sqrt(H/H') and ``rms_norm_eps`` by H/H', which makes the normalised original
  units equal to the original's (rsqrt(H/H' * (ms + eps)) = sqrt(H'/H) * rsqrt(ms + eps)).
* Readers of the residual (q/k/v, gate/up, ``lm_head``, the head's q/k/v) get random columns for the
  new units: those inputs are 0.
* New attention heads and MLP units read with random weights and write through zero columns of
  ``o_proj`` / ``down_proj``. ``head_dim`` (and so RoPE and the 1/sqrt(d) scale) is unchanged. With
  grouped-query attention, original q head i of kv group g moves to slot ``g * r' + i % r`` (r, r' =
  q heads per kv head before / after), so it still reads kv head g.
* New layers are identity residual blocks: random reads, all-zero ``o_proj`` and ``down_proj``.
* EAGLE-3 aux layer id L (the residual after L decoder layers) maps to the expanded model's index of
  original layer L (identity layers do not change the residual); the head is widened like the target
  (it must be, to share the target's embedding and lm_head in vLLM) and its ``fc`` columns follow
  the aux features' new layout.

Random values are drawn from one seeded generator, with each tensor's original standard deviation,
so the kernels multiply realistic non-zero numbers wherever zeros are not needed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import torch

from verl_specrollout.draft.eagle3 import write_dir_atomically

WEIGHTS_NAME = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".pt")
_UNSUPPORTED_FLAGS = ("attention_bias", "mlp_bias")


class ExpandError(ValueError):
    """A checkpoint or an expansion shape that cannot be expanded function-preservingly."""


@dataclass(frozen=True)
class ExpandShape:
    """The expanded model's size. ``new_layers``: where the identity layers go: "spread" (evenly
    between the original layers), "end" (after them) or the list of their indices in the expanded
    model. ``head_*``: the EAGLE-3 head's attention heads / MLP width (None: the expanded target's,
    so the head stays one decoder layer of the target as in EAGLE-3)."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    num_hidden_layers: int
    new_layers: Union[str, Sequence[int]] = "spread"
    head_num_attention_heads: Optional[int] = None
    head_num_key_value_heads: Optional[int] = None
    head_intermediate_size: Optional[int] = None
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "ExpandShape":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExpandError(f"unknown expansion keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        d = dict(d)
        if isinstance(d.get("new_layers"), list):
            d["new_layers"] = tuple(d["new_layers"])
        return cls(**d)


@dataclass
class LayerPlan:
    """Where the original layers sit in the expanded model."""

    positions: list          # expanded index of original layer i
    num_hidden_layers: int   # of the expanded model
    identity: list = field(default_factory=list)  # indices of the identity layers

    def aux_id(self, old_id: int) -> int:
        """Expanded aux id of original aux id ``old_id`` (the residual after ``old_id`` layers)."""
        n_old = len(self.positions)
        if not 0 <= old_id <= n_old:
            raise ExpandError(f"aux layer id {old_id} is outside 0..{n_old}")
        return self.positions[old_id] if old_id < n_old else self.num_hidden_layers


# ----------------------------------------------------------------------------- index maps

def layer_plan(n_old: int, n_new: int, new_layers: Union[str, Sequence[int]] = "spread") -> LayerPlan:
    if n_new < n_old:
        raise ExpandError(f"num_hidden_layers {n_new} < the original {n_old}")
    if new_layers == "end":
        positions = list(range(n_old))
    elif new_layers == "spread":
        positions = [int(math.floor(i * n_new / n_old + 0.5)) for i in range(n_old)]
    elif isinstance(new_layers, (list, tuple)):
        ident = sorted(int(i) for i in new_layers)
        if len(set(ident)) != n_new - n_old or any(not 0 <= i < n_new for i in ident):
            raise ExpandError(f"new_layers={list(new_layers)} must name {n_new - n_old} distinct indices in "
                              f"0..{n_new - 1}")
        positions = [i for i in range(n_new) if i not in set(ident)]
    else:
        raise ExpandError(f"new_layers must be 'spread', 'end' or a list of indices, got {new_layers!r}")
    ident = [i for i in range(n_new) if i not in set(positions)]
    return LayerPlan(positions=positions, num_hidden_layers=n_new, identity=ident)


def q_head_slots(nh: int, nkv: int, nh2: int, nkv2: int) -> list:
    """New slot of each original q head, keeping its kv head (GQA groups stay intact)."""
    for what, n, n2 in (("num_attention_heads", nh, nh2), ("num_key_value_heads", nkv, nkv2)):
        if n2 < n:
            raise ExpandError(f"{what} {n2} < the original {n}")
    if nh % nkv or nh2 % nkv2:
        raise ExpandError(f"attention heads must be a multiple of kv heads ({nh}/{nkv} -> {nh2}/{nkv2})")
    r, r2 = nh // nkv, nh2 // nkv2
    if r2 < r:
        raise ExpandError(f"q heads per kv head {r2} < the original {r}: an original kv group would not fit")
    return [(i // r) * r2 + i % r for i in range(nh)]


def _rows(slots: Sequence[int], d: int) -> torch.Tensor:
    return torch.cat([torch.arange(s * d, (s + 1) * d) for s in slots]) if len(slots) else torch.zeros(0, dtype=torch.long)


class _Filler:
    """Builds expanded tensors: the original placed at index maps, the rest random or zero."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(int(seed))

    def random(self, shape, like: torch.Tensor) -> torch.Tensor:
        x = like.detach().float()
        std = float(x.std()) if x.numel() > 1 else 0.02
        mean = float(x.mean()) if x.dim() == 1 else 0.0  # norm weights sit around their mean
        return (torch.randn(shape, generator=self.g) * (std or 0.02) + mean).to(like.dtype)

    def place(self, old: torch.Tensor, shape, index, fill: str) -> torch.Tensor:
        """``fill`` in {"random", "zero"}; ``index`` one LongTensor per dim of ``old``."""
        new = self.random(shape, old) if fill == "random" else torch.zeros(shape, dtype=old.dtype)
        if old.dim() == 1:
            new[index[0]] = old
        else:
            new[index[0][:, None], index[1][None, :]] = old
        return new


# ----------------------------------------------------------------------------- target

def _cfg_int(cfg: dict, key: str, default=None) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise ExpandError(f"config has no '{key}'")
    return int(v)


def check_source_config(cfg: dict) -> None:
    if cfg.get("model_type") != "llama":
        raise ExpandError(f"only Llama checkpoints expand (model_type={cfg.get('model_type')!r})")
    on = [k for k in _UNSUPPORTED_FLAGS if cfg.get(k)]
    if on:
        raise ExpandError(f"expansion does not handle {', '.join(on)}")


def expand_target_state(sd: dict, cfg: dict, shape: ExpandShape) -> tuple:
    """-> (expanded state dict, expanded config dict, LayerPlan) for an HF Llama state dict."""
    check_source_config(cfg)
    H, H2 = _cfg_int(cfg, "hidden_size"), shape.hidden_size
    nh, nkv = _cfg_int(cfg, "num_attention_heads"), _cfg_int(cfg, "num_key_value_heads", cfg["num_attention_heads"])
    d = int(cfg.get("head_dim") or H // nh)
    I, I2 = _cfg_int(cfg, "intermediate_size"), shape.intermediate_size
    L = _cfg_int(cfg, "num_hidden_layers")
    if H2 < H or I2 < I:
        raise ExpandError(f"hidden_size / intermediate_size must not shrink ({H}->{H2}, {I}->{I2})")
    slots = q_head_slots(nh, nkv, shape.num_attention_heads, shape.num_key_value_heads)
    plan = layer_plan(L, shape.num_hidden_layers, shape.new_layers)
    nq2, nkv2 = shape.num_attention_heads * d, shape.num_key_value_heads * d
    hid, inter = torch.arange(H), torch.arange(I)
    qrows, kvrows = _rows(slots, d), _rows(range(nkv), d)
    norm_scale = math.sqrt(H / H2)
    f = _Filler(shape.seed)
    tied = bool(cfg.get("tie_word_embeddings", False))

    def layer(i: int, identity: bool) -> dict:
        p = f"model.layers.{i}."
        o = {}
        o["self_attn.q_proj.weight"] = f.place(sd[p + "self_attn.q_proj.weight"], (nq2, H2), (qrows, hid), "random")
        for n in ("k_proj", "v_proj"):
            o[f"self_attn.{n}.weight"] = f.place(sd[p + f"self_attn.{n}.weight"], (nkv2, H2), (kvrows, hid), "random")
        o["self_attn.o_proj.weight"] = f.place(sd[p + "self_attn.o_proj.weight"], (H2, nq2), (hid, qrows), "zero")
        for n in ("gate_proj", "up_proj"):
            o[f"mlp.{n}.weight"] = f.place(sd[p + f"mlp.{n}.weight"], (I2, H2), (inter, hid), "random")
        o["mlp.down_proj.weight"] = f.place(sd[p + "mlp.down_proj.weight"], (H2, I2), (hid, inter), "zero")
        for n in ("input_layernorm", "post_attention_layernorm"):
            o[f"{n}.weight"] = f.place(sd[p + f"{n}.weight"] * norm_scale, (H2,), (hid,), "random")
        if identity:  # reads stay (real work), writes go: the block adds exactly 0 to the residual
            o["self_attn.o_proj.weight"].zero_()
            o["mlp.down_proj.weight"].zero_()
        return o

    out = {}
    emb = sd["model.embed_tokens.weight"]
    out["model.embed_tokens.weight"] = f.place(emb, (emb.shape[0], H2), (torch.arange(emb.shape[0]), hid), "zero")
    old_at = {p: i for i, p in enumerate(plan.positions)}
    for j in range(plan.num_hidden_layers):
        # an identity layer copies the shape of the original layer before it (its reads then see
        # activations of a realistic scale; they never reach the output)
        src = old_at.get(j, max([i for p, i in old_at.items() if p < j], default=0))
        for k, v in layer(src, j not in old_at).items():
            out[f"model.layers.{j}.{k}"] = v
    out["model.norm.weight"] = f.place(sd["model.norm.weight"] * norm_scale, (H2,), (hid,), "random")
    if not tied:
        head = sd["lm_head.weight"]
        out["lm_head.weight"] = f.place(head, (head.shape[0], H2), (torch.arange(head.shape[0]), hid), "random")

    cfg2 = dict(cfg)
    cfg2.update(hidden_size=H2, num_attention_heads=shape.num_attention_heads,
                num_key_value_heads=shape.num_key_value_heads, intermediate_size=I2,
                num_hidden_layers=plan.num_hidden_layers, head_dim=d,
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)) * H / H2)
    cfg2["specrollout_expanded_from"] = {
        k: cfg.get(k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                "intermediate_size", "num_hidden_layers", "rms_norm_eps")}
    cfg2["specrollout_expanded_from"]["layer_positions"] = plan.positions
    return out, cfg2, plan


# ----------------------------------------------------------------------------- EAGLE-3 head

def expand_eagle3_state(sd: dict, head_cfg, target_hidden: int, shape: ExpandShape, plan: LayerPlan) -> tuple:
    """-> (state dict, Eagle3Config) of the head widened to ``shape`` (vLLM tensor names)."""
    from verl_specrollout.draft.eagle3 import Eagle3Config

    c = head_cfg
    H, H2 = c.hidden_size, shape.hidden_size
    if c.target_hidden_size != target_hidden or H != target_hidden:
        raise ExpandError(f"the head's hidden_size ({H}) and target_hidden_size ({c.target_hidden_size}) must be "
                          f"the target's ({target_hidden}) to expand with it")
    nh2 = shape.head_num_attention_heads or shape.num_attention_heads
    nkv2 = shape.head_num_key_value_heads or shape.num_key_value_heads
    I2 = shape.head_intermediate_size or shape.intermediate_size
    if I2 < c.intermediate_size:
        raise ExpandError(f"head intermediate_size {I2} < the original {c.intermediate_size}")
    d = c.head_dim
    slots = q_head_slots(c.num_attention_heads, c.num_key_value_heads, nh2, nkv2)
    qrows, kvrows = _rows(slots, d), _rows(range(c.num_key_value_heads), d)
    hid, inter = torch.arange(H), torch.arange(c.intermediate_size)
    hid2x = torch.cat([hid, H2 + hid])  # q/k/v read [embeds, hidden]
    n_aux = len(c.aux_layer_ids)
    fc_cols = torch.cat([a * H2 + hid for a in range(n_aux)])
    norm_scale = math.sqrt(H / H2)
    f = _Filler(shape.seed + 1)
    p = "midlayer."
    out = {}
    fc = f.place(sd["fc.weight"], (H2, n_aux * H2), (hid, fc_cols), "random")
    fc[H:] = 0  # fc writes the head's residual stream
    out["fc.weight"] = fc
    for n in ("hidden_norm", "input_layernorm", "post_attention_layernorm"):
        out[p + n + ".weight"] = f.place(sd[p + n + ".weight"] * norm_scale, (H2,), (hid,), "random")
    out["norm.weight"] = f.place(sd["norm.weight"] * norm_scale, (H2,), (hid,), "random")
    out[p + "self_attn.q_proj.weight"] = f.place(sd[p + "self_attn.q_proj.weight"], (nh2 * d, 2 * H2),
                                                 (qrows, hid2x), "random")
    for n in ("k_proj", "v_proj"):
        out[p + f"self_attn.{n}.weight"] = f.place(sd[p + f"self_attn.{n}.weight"], (nkv2 * d, 2 * H2),
                                                   (kvrows, hid2x), "random")
    out[p + "self_attn.o_proj.weight"] = f.place(sd[p + "self_attn.o_proj.weight"], (H2, nh2 * d), (hid, qrows), "zero")
    for n in ("gate_proj", "up_proj"):
        out[p + f"mlp.{n}.weight"] = f.place(sd[p + f"mlp.{n}.weight"], (I2, H2), (inter, hid), "random")
    out[p + "mlp.down_proj.weight"] = f.place(sd[p + "mlp.down_proj.weight"], (H2, I2), (hid, inter), "zero")
    if "lm_head.weight" in sd:  # own (e.g. reduced-vocabulary) lm_head reads the head's residual
        w = sd["lm_head.weight"]
        out["lm_head.weight"] = f.place(w, (w.shape[0], H2), (torch.arange(w.shape[0]), hid), "random")
    if "embed_tokens.weight" in sd:  # own embedding writes it
        w = sd["embed_tokens.weight"]
        out["embed_tokens.weight"] = f.place(w, (w.shape[0], H2), (torch.arange(w.shape[0]), hid), "zero")
    if "d2t" in sd:
        out["d2t"] = sd["d2t"].clone()
    cfg2 = Eagle3Config(**{**asdict(c), "hidden_size": H2, "target_hidden_size": H2,
                           "num_attention_heads": nh2, "num_key_value_heads": nkv2, "intermediate_size": I2,
                           "head_dim": d, "rms_norm_eps": c.rms_norm_eps * H / H2,
                           "aux_layer_ids": [plan.aux_id(i) for i in c.aux_layer_ids]})
    return out, cfg2


# ----------------------------------------------------------------------------- checkpoint dirs

def _read_config(src_dir: str) -> dict:
    path = os.path.join(src_dir, "config.json")
    if not os.path.isfile(path):
        raise ExpandError(f"{src_dir}: no config.json")
    with open(path) as f:
        return json.load(f)


def _read_state(src_dir: str) -> dict:
    from verl_specrollout.draft.eagle3 import read_weights
    from verl_specrollout.draft.format import find_weight_files

    files = find_weight_files(src_dir)
    if not files:
        raise ExpandError(f"{src_dir}: no weights (model.safetensors, pytorch_model.bin or a sharded index)")
    return read_weights(src_dir, files)


def expand_checkpoint(src_dir: str, out_dir: str, shape: ExpandShape) -> dict:
    """Expand the HF Llama checkpoint ``src_dir`` into ``out_dir`` (model.safetensors, config.json and
    every other non-weight file, e.g. the tokenizer, copied). Returns a summary with the LayerPlan."""
    from safetensors.torch import save_file

    cfg = _read_config(src_dir)
    sd = _read_state(src_dir)
    sd2, cfg2, plan = expand_target_state(sd, cfg, shape)

    def write(tmp):
        save_file({k: v.contiguous() for k, v in sd2.items()}, os.path.join(tmp, WEIGHTS_NAME),
                  metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(cfg2, fh, indent=2)
        for name in os.listdir(src_dir):
            src = os.path.join(src_dir, name)
            if name == "config.json" or name.endswith(_WEIGHT_SUFFIXES) or not os.path.isfile(src):
                continue
            shutil.copy2(src, os.path.join(tmp, name))

    write_dir_atomically(out_dir, write)
    return {"plan": plan, "params": sum(v.numel() for v in sd2.values()),
            "source_params": sum(v.numel() for v in sd.values()), "config": cfg2}


def expand_eagle3_checkpoint(head_dir: str, out_dir: str, source_target_dir: str, shape: ExpandShape,
                             plan: Optional[LayerPlan] = None) -> dict:
    """Widen the EAGLE-3 head at ``head_dir`` (trained on ``source_target_dir``) to run on the target
    expanded with ``shape``; writes our vLLM-format checkpoint to ``out_dir``."""
    from verl_specrollout.draft.eagle3 import Eagle3Draft, load_vllm_checkpoint, save_vllm_checkpoint

    tcfg = _read_config(source_target_dir)
    if plan is None:
        plan = layer_plan(_cfg_int(tcfg, "num_hidden_layers"), shape.num_hidden_layers, shape.new_layers)
    head = load_vllm_checkpoint(head_dir)
    sd = {k: v for k, v in head.state_dict().items() if k != "d2t" or head.d2t is not None}
    sd2, cfg2 = expand_eagle3_state(sd, head.config, _cfg_int(tcfg, "hidden_size"), shape, plan)
    model = Eagle3Draft(cfg2)
    model.load_state_dict(sd2, strict=True)
    extra = {"expanded_from": os.path.abspath(head_dir), "expand_shape": asdict(shape)}
    save_vllm_checkpoint(model, out_dir, extra=extra)
    return {"params": sum(v.numel() for v in model.parameters()), "config": cfg2,
            "aux_layer_ids": cfg2.aux_layer_ids}


def llama_param_count(vocab: int, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                      layers: int, tied: bool = False) -> int:
    """Parameters of a bias-free HF Llama of this shape (what the expanded checkpoint should hold)."""
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + hidden + layers * per_layer


@torch.no_grad()
def logits_check(source_dir: str, expanded_dir: str, input_ids: torch.Tensor, attention_mask=None,
                 tol: float = 1e-3) -> dict:
    """Run both HF checkpoints on ``input_ids`` [B,T]; max |logit difference| and argmax agreement
    over the unmasked positions. Raises ExpandError when the difference exceeds ``tol``."""
    from transformers import AutoModelForCausalLM

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out = []
    for d in (source_dir, expanded_dir):
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        out.append(model(input_ids=input_ids, attention_mask=attention_mask).logits.float())
        del model
    m = attention_mask.bool()
    a, b = out[0][m], out[1][m]
    res = {"max_abs_diff": float((a - b).abs().max()), "max_abs_logit": float(a.abs().max()),
           "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()), "positions": int(m.sum())}
    if not res["max_abs_diff"] <= tol:
        raise ExpandError(f"{expanded_dir} does not compute {source_dir}'s logits: max |diff| "
                          f"{res['max_abs_diff']:.3e} > {tol:g}")
    return res


def main(argv=None) -> None:
    """python -m verl_specrollout.testing.testbed.expand SRC OUT --hidden-size ... [--eagle3 HEAD --eagle3-out DIR]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m verl_specrollout.testing.testbed.expand",
                                 description="Expand an HF Llama checkpoint (and its EAGLE-3 head) "
                                             "function-preservingly to a bigger shape.")
    ap.add_argument("src")
    ap.add_argument("out")
    for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "num_hidden_layers"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, required=True)
    ap.add_argument("--new-layers", default="spread",
                    help="'spread', 'end' or comma-separated indices of the identity layers in the expanded model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eagle3", default=None, help="EAGLE-3 head trained on SRC, to widen with it")
    ap.add_argument("--eagle3-out", default=None)
    a = ap.parse_args(argv)
    if bool(a.eagle3) != bool(a.eagle3_out):
        ap.error("--eagle3 and --eagle3-out go together")
    new_layers = a.new_layers
    if new_layers not in ("spread", "end"):
        try:
            new_layers = tuple(int(x) for x in new_layers.split(","))
        except ValueError:
            ap.error(f"--new-layers: 'spread', 'end' or comma-separated integers, got {a.new_layers!r}")
    shape = ExpandShape(hidden_size=a.hidden_size, num_attention_heads=a.num_attention_heads,
                        num_key_value_heads=a.num_key_value_heads, intermediate_size=a.intermediate_size,
                        num_hidden_layers=a.num_hidden_layers, new_layers=new_layers, seed=a.seed)
    try:
        info = expand_checkpoint(a.src, a.out, shape)
        print(f"{a.out}: {info['source_params'] / 1e6:.1f} M -> {info['params'] / 1e6:.1f} M params, original layers at "
              f"{info['plan'].positions}")
        if a.eagle3:
            head = expand_eagle3_checkpoint(a.eagle3, a.eagle3_out, a.src, shape, info["plan"])
            print(f"{a.eagle3_out}: {head['params'] / 1e6:.1f} M params, aux layers {head['aux_layer_ids']}")
    except ExpandError as exc:
        raise SystemExit(f"error: {exc}")


if __name__ == "__main__":
    main()
