"""EAGLE-3 draft head (one decoder layer over fused target features) in vLLM's checkpoint format.

We write our own module rather than use ``speculators`` 0.9.0 because that package imports
``hs_connectors``, ``datasets``, ``openai`` etc. (and requires torchvision/torchaudio) at import
time of its Eagle3 model, so it does not import cleanly on our CPU-only stack.

The module mirrors ``vllm/model_executor/models/llama_eagle3.py`` exactly (weight names,
norms, residual placement, RoPE), so the state dict saves as a checkpoint that vLLM loads with
``speculative_config={"method": "eagle3", "model": dir}``:

* ``fc.weight``                 [hidden, n_aux * target_hidden]   fuse the aux target features
* ``midlayer.hidden_norm``      RMSNorm on the fused feature (residual taken *before* it)
* ``midlayer.input_layernorm``  RMSNorm on the token embedding
* ``midlayer.self_attn.{q,k,v,o}_proj`` with q/k/v input width 2 * hidden ([embeds, hidden])
* ``midlayer.post_attention_layernorm``, ``midlayer.mlp.{gate,up,down}_proj``
* ``norm.weight``               final RMSNorm before the (shared) lm_head
* optional ``lm_head.weight`` / ``embed_tokens.weight`` (absent => vLLM shares the target's;
  never write into those shared modules).
* ``d2t`` (and ``t2d``) for a reduced draft vocabulary: the head's own lm_head has
  ``draft_vocab_size`` rows and draft id ``i`` is target id ``i + d2t[i]`` (vLLM's
  ``Eagle3LlamaForCausalLM.compute_logits``); ``t2d`` is the boolean mask of those target ids,
  which vLLM skips and we write for other tools.

:func:`load_vllm_checkpoint` also reads the EAGLE authors' ``pytorch_model.bin`` and the
speculators library's layout (see draft/format.py); :func:`save_vllm_checkpoint` always writes
vLLM's.

Alignment (vLLM's EAGLE proposer): draft slot ``t`` takes the target's aux hidden states at
position ``t`` and the embedding of token ``x[t+1]``, runs at position ``t`` and predicts
``x[t+2]``.  Later draft steps at the same slot feed back the draft's *pre-norm* output
(``hidden + residual``) with the next token, at position ``t + j - 1`` for step ``j``; their
attention sees step-1 keys at slots ``<= t`` and the keys of earlier steps at slot ``t`` only.
``forward(..., num_steps=k)`` implements that "training-time test" unroll.

Aux layer id ``L`` (vLLM) = the residual stream after ``L`` decoder layers = HF
``output_hidden_states[L]`` for ``L < num_hidden_layers``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from verl_specrollout.config import SpecRolloutConfigError
from verl_specrollout.draft.format import DraftInfo, learner_unsupported, read_draft_info

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EXTRA_NAME = "specrollout_draft.json"


@dataclass
class Eagle3Config:
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    aux_layer_ids: list = field(default_factory=list)
    target_hidden_size: Optional[int] = None
    head_dim: Optional[int] = None
    draft_vocab_size: Optional[int] = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    own_embed_tokens: bool = False
    own_lm_head: bool = False
    # vLLM's `norm_before_residual` (speculators heads): the residual is the *normed* fused feature.
    norm_before_residual: bool = False
    torch_dtype: str = "float32"

    def __post_init__(self):
        self.aux_layer_ids = [int(i) for i in self.aux_layer_ids]
        if self.target_hidden_size is None:
            self.target_hidden_size = self.hidden_size
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def from_target_config(cls, target_config, aux_layer_ids: Sequence[int], **overrides):
        """Shape the head like one decoder layer of the target (HF ``LlamaConfig``)."""
        tc = target_config
        rope_theta = getattr(tc, "rope_theta", None)
        rp = getattr(tc, "rope_parameters", None) or {}
        if rope_theta is None:
            rope_theta = rp.get("rope_theta", 10000.0) if isinstance(rp, dict) else 10000.0
        kw = dict(
            hidden_size=tc.hidden_size,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=getattr(tc, "num_key_value_heads", tc.num_attention_heads),
            intermediate_size=tc.intermediate_size,
            vocab_size=tc.vocab_size,
            aux_layer_ids=list(aux_layer_ids),
            target_hidden_size=tc.hidden_size,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
            rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position_embeddings=getattr(tc, "max_position_embeddings", 2048),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_vllm_config(self) -> dict:
        """The config.json vLLM's EAGLE-3 loader expects (a 1-layer Llama + eagle_config)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": 1,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "vocab_size": self.vocab_size,
            "draft_vocab_size": self.draft_vocab_size or self.vocab_size,
            "target_hidden_size": self.target_hidden_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": False,
            "norm_before_residual": self.norm_before_residual,
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": self.torch_dtype,
            "dtype": self.torch_dtype,
            "eagle_config": {
                "eagle_aux_hidden_state_layer_ids": list(self.aux_layer_ids),
                "use_aux_hidden_state": True,
            },
        }


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class _Attention(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.nh, self.nkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.q_proj = nn.Linear(2 * h, self.nh * d, bias=False)
        self.k_proj = nn.Linear(2 * h, self.nkv * d, bias=False)
        self.v_proj = nn.Linear(2 * h, self.nkv * d, bias=False)
        self.o_proj = nn.Linear(self.nh * d, h, bias=False)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.register_buffer("inv_freq", inv, persistent=False)

    def _rope(self, x, pos):  # x [B, H, T, d], pos [B, T]
        freqs = pos.float()[..., None] * self.inv_freq  # [B,T,d/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B,1,T,d]
        return x * emb.cos().to(x.dtype) + _rotate_half(x) * emb.sin().to(x.dtype)

    def forward(self, x, positions, cache: list, key_mask=None):
        """x [B,T,2h]. ``cache`` holds (k, v) of earlier unroll steps (step 1 first).

        Step 1 (empty cache): causal attention over the sequence.  Step j > 1: the query at
        slot t attends to step-1 keys at slots <= t plus, diagonally, the keys of steps 2..j at
        slot t.  ``key_mask`` [B,T] marks valid (non-pad) slots.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        q, k = self._rope(q, positions), self._rope(k, positions)
        cache.append((k, v))
        rep = self.nh // self.nkv
        if rep > 1:
            expand = lambda t: t.repeat_interleave(rep, dim=1)  # noqa: E731
        else:
            expand = lambda t: t  # noqa: E731
        k1, v1 = expand(cache[0][0]), expand(cache[0][1])
        scale = 1.0 / math.sqrt(self.d)
        s1 = torch.matmul(q, k1.transpose(-1, -2)) * scale  # [B,H,T,T]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        mask = causal[None, None]
        if key_mask is not None:
            mask = mask & key_mask[:, None, None, :].bool()
        s1 = s1.masked_fill(~mask, float("-inf"))
        if len(cache) == 1:
            p = torch.softmax(s1.float(), dim=-1).to(q.dtype)
            o = torch.matmul(p, v1)
        else:
            kd = torch.stack([expand(c[0]) for c in cache[1:]], dim=-2)  # [B,H,T,j-1,d]
            vd = torch.stack([expand(c[1]) for c in cache[1:]], dim=-2)
            sd = (q.unsqueeze(-2) * kd).sum(-1) * scale  # [B,H,T,j-1]
            p = torch.softmax(torch.cat([s1, sd], dim=-1).float(), dim=-1).to(q.dtype)
            o = torch.matmul(p[..., :T], v1) + (p[..., T:].unsqueeze(-1) * vd).sum(-2)
        o = o.transpose(1, 2).reshape(B, T, self.nh * self.d)
        return self.o_proj(o)


class _MLP(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _MidLayer(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = _Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = _MLP(cfg)
        self.norm_before_residual = cfg.norm_before_residual

    def forward(self, embeds, hidden, positions, cache, key_mask=None):
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)
        x = self.self_attn(x, positions, cache, key_mask)
        residual = x + residual
        x = self.mlp(self.post_attention_layernorm(residual))
        return x + residual  # pre-norm output ("aux_output" in vLLM)


class Eagle3Draft(nn.Module):
    """EAGLE-3 head.  ``embed_tokens`` / ``lm_head`` are the target's unless ``own_*`` is set:
    pass them to :meth:`forward` (they are not registered as parameters here then)."""

    def __init__(self, config: Eagle3Config):
        super().__init__()
        self.config = config
        n_aux = len(config.aux_layer_ids)
        assert n_aux > 0, "aux_layer_ids must be set"
        self.fc = nn.Linear(n_aux * config.target_hidden_size, config.hidden_size, bias=False)
        self.midlayer = _MidLayer(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        dv = config.draft_vocab_size or config.vocab_size
        if dv != config.vocab_size and not config.own_lm_head:
            raise ValueError(f"draft_vocab_size={dv} != vocab_size={config.vocab_size} needs the head's own "
                             "lm_head (own_lm_head=True): the target's has vocab_size rows")
        self.embed_tokens = (nn.Embedding(config.vocab_size, config.hidden_size)
                             if config.own_embed_tokens else None)
        self.lm_head = nn.Linear(config.hidden_size, dv, bias=False) if config.own_lm_head else None
        if dv != config.vocab_size:
            self.register_buffer("d2t", torch.zeros(dv, dtype=torch.long))
        else:
            self.d2t = None

    def target_ids(self) -> Optional[torch.Tensor]:
        """Target id of each draft id ([draft_vocab_size] long), or None when the vocab is not reduced."""
        if self.d2t is None:
            return None
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def combine_hidden_states(self, aux_hidden_states):
        """aux: list of [B,T,Ht] (in ``aux_layer_ids`` order) or a concatenated [B,T,n*Ht]."""
        if isinstance(aux_hidden_states, (list, tuple)):
            aux_hidden_states = torch.cat(list(aux_hidden_states), dim=-1)
        return self.fc(aux_hidden_states)

    def compute_logits(self, hidden_prenorm, lm_head_weight=None):
        w = self.lm_head.weight if self.lm_head is not None else lm_head_weight
        assert w is not None, "no own lm_head: pass the target's lm_head weight"
        return F.linear(self.norm(hidden_prenorm), w)

    def forward(self, aux_hidden_states, input_ids=None, input_embeds=None, *,
                embed_weight=None, lm_head_weight=None, attention_mask=None, num_steps=1,
                return_hidden=False):
        """Teacher-forced (training-time-test) unroll over a whole sequence.

        ``aux_hidden_states`` [B,T,n*Ht] (or list) are the target's features at positions
        0..T-1 of sequence ``input_ids`` x [B,T] (the *unshifted* sequence; shifting is done
        here).  Returns ``logits[j-1]`` [B,T,V] for step j = 1..num_steps, where slot t of
        step j predicts ``x[t+j+1]`` (i.e. its label is the target's prediction at position
        t+j); slots with t + j >= T are padding.  ``input_embeds`` may replace
        ``input_ids`` (embeddings of x, [B,T,H]).
        """
        if input_embeds is None:
            w = self.embed_tokens.weight if self.embed_tokens is not None else embed_weight
            assert w is not None, "no own embed_tokens: pass the target's embedding weight"
            input_embeds = F.embedding(input_ids, w)
        B, T, H = input_embeds.shape
        hidden = self.combine_hidden_states(aux_hidden_states)
        base_pos = torch.arange(T, device=input_embeds.device)[None].expand(B, T)
        zeros = input_embeds.new_zeros(B, num_steps, H)
        emb_pad = torch.cat([input_embeds, zeros], dim=1)  # allows shifting past the end
        key_mask = None
        if attention_mask is not None:
            am = torch.cat([attention_mask, attention_mask.new_zeros(B, num_steps)], dim=1)
            key_mask = am[:, 1:T + 1]  # step-1 slot t is valid iff token x[t+1] exists
        else:
            key_mask = torch.ones(B, T, dtype=torch.bool, device=input_embeds.device)
            if T > 0:
                key_mask[:, T - 1] = False
        cache: list = []
        logits, hiddens = [], []
        for j in range(1, num_steps + 1):
            emb = emb_pad[:, j:j + T]
            hidden = self.midlayer(emb, hidden, base_pos + (j - 1), cache, key_mask)
            logits.append(self.compute_logits(hidden, lm_head_weight))
            hiddens.append(hidden)
        return (logits, hiddens) if return_hidden else logits


def soft_targets(target_logits: torch.Tensor, target_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """The distribution a draft is trained towards: softmax of the target's logits over the ids
    the draft can propose.

    With a reduced draft vocabulary that is the target's logits at ``target_ids`` (draft id order),
    renormalised over them: what speculators trains against (``verifier_lm_head`` = the target's
    lm_head rows selected by ``t2d``, then softmax; models/eagle3/core.py, model.py, losses/eager.py).
    """
    if target_ids is not None:
        target_logits = target_logits.index_select(-1, target_ids)
    return torch.softmax(target_logits.float(), -1)


def top1_agrees(draft_logits: torch.Tensor, target_logits: torch.Tensor,
                target_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Whether the draft's top token is the target's, both as target ids (what vLLM's greedy
    verification compares), so a target top token outside the draft vocabulary counts as a miss."""
    pred = draft_logits.argmax(-1)
    if target_ids is not None:
        pred = target_ids[pred]
    return pred == target_logits.argmax(-1)


def check_target_vocab(draft: Eagle3Draft, rows: int, what: str) -> None:
    if rows != draft.config.vocab_size:
        raise ValueError(f"{what} has {rows} vocabulary rows; the draft's target vocab_size is "
                         f"{draft.config.vocab_size}")


def eagle3_loss(draft: Eagle3Draft, aux_hidden_states, input_ids, target_logits=None, *,
                target_hidden=None, embed_weight=None, lm_head_weight=None, attention_mask=None,
                loss_mask=None, num_steps=1, step_decay=0.8, soft_ce_weight=1.0, feature_weight=0.0):
    """The EAGLE-3 training loss, over ``num_steps`` training-time-test unroll steps.

    Step j slot t (see :meth:`Eagle3Draft.forward`) is scored against the target's prediction at
    position t+j, given either as ``target_logits`` [B,T,V] (full target vocabulary; the testbed
    build) or as ``target_hidden`` [B,T,H], the target's final post-norm hidden states, turned into
    logits here with the frozen ``lm_head_weight`` one step at a time (the online learner: capture
    never ships full-vocabulary logits). Per step::

        L_j = soft_ce_weight * CE(soft_targets(target_j), draft_logits_j)
              + feature_weight * SmoothL1(norm(draft_hidden_j), target_hidden_j)   (only with target_hidden)

    each a mean over the positions ``loss_mask`` [B,T] marks (default: all); the total is
    ``sum_j step_decay**(j-1) * L_j / sum_j step_decay**(j-1)``. The feature term regresses the
    draft's post-norm feature (what vLLM feeds to the shared lm_head) onto the target's (FastGRPO's
    recipe). ``attention_mask`` defaults to ``loss_mask > 0`` (no mask: every position). A reduced
    draft vocabulary is scored on its own ids (:func:`soft_targets`); top-1 agreement compares
    target ids (:func:`top1_agrees`).

    Returns (loss, stats): per step ``step{j}_ce``, ``step{j}_top1``, ``step{j}_tokens`` and, given
    ``target_hidden``, ``step{j}_feat``.

    Ours, not ``speculators.losses`` (0.9.0), for two measured reasons: installing speculators next
    to our pins would change them (it requires ``datasets<=5.1.0`` and ``loguru<=0.7.3``, we have
    5.2.0 and 0.8.0, plus torchvision, torchaudio and ``hs-connectors==0.9.0``); and its EAGLE-3
    loss is another number: ``kl_div_loss`` is KL(p||q), the soft CE minus the target's entropy
    (same gradient, different value), normalised per packed row then averaged over rows, with
    decayed step losses summed rather than averaged, and no feature term.
    """
    if (target_logits is None) == (target_hidden is None):
        raise ValueError("eagle3_loss: pass exactly one of target_logits and target_hidden")
    if target_logits is not None:
        B, T, V = target_logits.shape
        check_target_vocab(draft, V, "target_logits")
        device = target_logits.device
    else:
        if lm_head_weight is None:
            raise ValueError("eagle3_loss: target_hidden needs the target's lm_head_weight")
        B, T = target_hidden.shape[:2]
        check_target_vocab(draft, lm_head_weight.shape[0], "the target's lm_head")
        device = target_hidden.device
    if feature_weight and target_hidden is None:
        raise ValueError("eagle3_loss: the feature term needs target_hidden")
    if attention_mask is None and loss_mask is not None:
        attention_mask = loss_mask > 0
    if loss_mask is None:
        loss_mask = torch.ones(B, T, device=device)
    loss_mask = loss_mask.float()
    ids = draft.target_ids()  # None unless the draft vocabulary is reduced
    logits, hiddens = draft(aux_hidden_states, input_ids, embed_weight=embed_weight,
                            lm_head_weight=lm_head_weight, attention_mask=attention_mask,
                            num_steps=num_steps, return_hidden=True)
    total, wsum, stats = 0.0, 0.0, {}
    for j in range(1, num_steps + 1):
        if j >= T:
            break
        pred = logits[j - 1][:, : T - j].float()
        m = loss_mask[:, j:]
        denom = m.sum().clamp_min(1.0)
        with torch.no_grad():
            if target_logits is not None:
                t_logits = target_logits[:, j:]
            else:
                t_logits = F.linear(target_hidden[:, j:].float(), lm_head_weight)  # full target vocabulary
            p_t = soft_targets(t_logits, ids)
        ce = -(p_t * torch.log_softmax(pred, -1)).sum(-1)
        ce_l = (ce * m).sum() / denom
        step_loss = soft_ce_weight * ce_l
        if target_hidden is not None:  # computed at weight 0 too: its stat is still reported
            feat = draft.norm(hiddens[j - 1][:, : T - j]).float()
            fl = F.smooth_l1_loss(feat, target_hidden[:, j:].float(), reduction="none").mean(-1)
            f_l = (fl * m).sum() / denom
            step_loss = feature_weight * f_l + step_loss
            stats[f"step{j}_feat"] = float(f_l.detach())
        w = step_decay ** (j - 1)
        total, wsum = total + w * step_loss, wsum + w
        with torch.no_grad():
            agree = (top1_agrees(pred, t_logits, ids).float() * m).sum()
        stats[f"step{j}_top1"] = float(agree / denom)
        stats[f"step{j}_ce"] = float(ce_l.detach())
        stats[f"step{j}_tokens"] = float(m.sum())
    return total / max(wsum, 1e-9), stats


# ----------------------------------------------------------------------------- checkpoint I/O

def vllm_state_dict(model: Eagle3Draft) -> dict:
    """Tensors under vLLM's EAGLE-3 checkpoint names (contiguous CPU copies).

    A reduced-vocabulary head also gets ``t2d`` (vLLM skips it; the EAGLE authors' and
    speculators' tools expect it next to ``d2t``)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "d2t" and model.d2t is None:
            continue
        out[name] = t.detach().to("cpu").contiguous().clone()
    ids = model.target_ids()
    if ids is not None:
        t2d = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        t2d[ids.cpu()] = True
        out["t2d"] = t2d
    return out


def save_vllm_checkpoint(model: Eagle3Draft, out_dir: str, target_config=None, *,
                         dtype: torch.dtype | None = None, extra: dict | None = None) -> str:
    """Atomically write ``out_dir`` (config.json + model.safetensors): written to a temp dir
    next to it, then renamed over it.  ``target_config`` (HF config of the target, optional)
    is used to cross-check vocab/hidden sizes."""
    from safetensors.torch import save_file

    cfg = model.config
    if target_config is not None:
        assert cfg.vocab_size == target_config.vocab_size, "vocab_size must equal the target's"
        assert cfg.target_hidden_size == target_config.hidden_size

    def write(tmp: str) -> None:
        sd = vllm_state_dict(model)
        if dtype is not None:
            sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
        save_file(sd, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        vcfg = cfg.to_vllm_config()
        if dtype is not None:
            vcfg["torch_dtype"] = vcfg["dtype"] = str(dtype).replace("torch.", "")
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(vcfg, f, indent=2)
        with open(os.path.join(tmp, EXTRA_NAME), "w") as f:
            json.dump({"eagle3_config": asdict(cfg), **(extra or {})}, f, indent=2)

    return write_dir_atomically(out_dir, write)


def write_dir_atomically(out_dir: str, write) -> str:
    """Write into a temp dir beside ``out_dir`` via ``write(tmp)``, then rename it into place: a
    reader (a live reload, a second process) sees the old directory or the new one, never half."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
    try:
        write(tmp)
        if os.path.exists(out_dir):
            old = out_dir + ".old-" + os.path.basename(tmp)
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_vllm_checkpoint(ckpt_dir: str, map_location="cpu", aux_layer_ids: Optional[Sequence[int]] = None
                         ) -> Eagle3Draft:
    """Load an EAGLE-3 head with one decoder layer from any layout draft/format.py reads: ours
    (:func:`save_vllm_checkpoint`), vLLM's / the EAGLE authors' (``model.safetensors`` or
    ``pytorch_model.bin``) or the speculators library's (``layers.0.*``, nested config).

    ``aux_layer_ids`` is used only when the checkpoint names none. Raises
    SpecRolloutConfigError (a ValueError) naming what does not fit.
    """
    info = read_draft_info(ckpt_dir, eagle3=True)
    sd = to_vllm_names(read_weights(ckpt_dir, info.weight_files, map_location))
    extra_path = os.path.join(ckpt_dir, EXTRA_NAME)
    if info.format == "specrollout":
        with open(extra_path) as f:
            cfg = Eagle3Config(**json.load(f)["eagle3_config"])
    else:
        cfg = config_from_info(info, sd, aux_layer_ids)
    _fill_vocab_map(info, sd)
    model = Eagle3Draft(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("inv_freq")]
    if missing or unexpected:
        raise SpecRolloutConfigError(
            f"{ckpt_dir}: checkpoint does not fit an EAGLE-3 head with one decoder layer: "
            f"missing={missing} unexpected={unexpected}")
    return model


def read_weights(ckpt_dir: str, files: Sequence[str], map_location="cpu") -> dict:
    """All tensors of the listed weight files (safetensors, or torch .bin read with weights_only)."""
    from safetensors.torch import load_file

    sd = {}
    for name in files:
        path = os.path.join(ckpt_dir, name)
        if name.endswith(".safetensors"):
            sd.update(load_file(path, device=str(map_location)))
        else:
            sd.update(torch.load(path, map_location=map_location, weights_only=True))
    return sd


def to_vllm_names(sd: dict) -> dict:
    """speculators' ``layers.0.*`` -> ``midlayer.*``; ``t2d`` and speculators' frozen verifier
    copies (``verifier_lm_head`` / ``verifier_norm``) dropped (d2t carries the vocabulary map)."""
    out = {}
    for name, t in sd.items():
        if name == "t2d" or name.startswith("verifier_"):
            continue
        if name.startswith("layers."):
            layer, _, rest = name[len("layers."):].partition(".")
            if layer != "0":
                raise SpecRolloutConfigError(
                    f"checkpoint has decoder layer {layer} ({name}); only one-layer EAGLE-3 heads are supported")
            name = "midlayer." + rest
        out[name] = t
    if "t2d" in sd and "d2t" not in sd:
        out["d2t"] = d2t_from_t2d(sd["t2d"])
    return out


def d2t_from_t2d(t2d: torch.Tensor) -> torch.Tensor:
    """Offsets with target id = draft id + d2t[draft id], draft ids in target-id order."""
    ids = torch.nonzero(t2d.bool(), as_tuple=False).flatten()
    return ids - torch.arange(ids.numel(), device=ids.device)


def _fill_vocab_map(info: DraftInfo, sd: dict) -> None:
    """Check the vocabulary map a reduced head needs (a .bin could not be checked before loading)."""
    if not info.reduced_vocab:
        sd.pop("d2t", None)  # identity map: our head (like vLLM's) has no d2t then
        return
    for name in ("d2t", "lm_head.weight"):
        if name not in sd:
            raise SpecRolloutConfigError(
                f"{info.path}: draft_vocab_size={info.draft_vocab_size} < vocab_size={info.vocab_size} but the "
                f"weights have no '{name}' (nor 't2d' to derive d2t from)")
    d2t = sd["d2t"].long()
    if d2t.numel() != info.draft_vocab_size:
        raise SpecRolloutConfigError(f"{info.path}: d2t has {d2t.numel()} entries, draft_vocab_size is "
                                     f"{info.draft_vocab_size}")
    ids = torch.arange(d2t.numel()) + d2t.cpu()
    if ids.min() < 0 or ids.max() >= info.vocab_size:
        raise SpecRolloutConfigError(f"{info.path}: d2t maps draft ids outside the target vocabulary "
                                     f"0..{info.vocab_size - 1}")
    sd["d2t"] = d2t


def config_from_info(info: DraftInfo, sd: dict, aux_layer_ids: Optional[Sequence[int]] = None) -> Eagle3Config:
    """Our head's config from a foreign checkpoint's (flattened) config and its tensors."""
    c = info.layer_config
    _refuse_unsupported(info)
    if "fc.weight" not in sd:
        raise SpecRolloutConfigError(f"{info.path}: weights have no 'fc.weight' (not an EAGLE-3 head?)")
    n_aux = sd["fc.weight"].shape[1] // info.target_hidden_size
    ids = info.aux_layer_ids or (list(aux_layer_ids) if aux_layer_ids else None)
    if ids is None:
        # vLLM picks the target's default layers for such a head; a published copy would pin these.
        ids = list(range(n_aux))
        logger.warning("%s names no eagle_aux_hidden_state_layer_ids; using %s -- pass the target's layers "
                       "(specrollout.learner.aux_layer_ids) so a published copy keeps vLLM's choice",
                       info.path, ids)
    if len(ids) != n_aux:
        raise SpecRolloutConfigError(f"{info.path}: fc.weight takes {n_aux} target features but the aux layer "
                                     f"ids are {ids}")
    _warn_rope_scaling(info)
    return Eagle3Config(
        hidden_size=c["hidden_size"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], intermediate_size=c["intermediate_size"],
        vocab_size=info.vocab_size, aux_layer_ids=ids, target_hidden_size=info.target_hidden_size,
        head_dim=c["head_dim"], draft_vocab_size=info.draft_vocab_size if info.reduced_vocab else None,
        rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"],
        max_position_embeddings=c["max_position_embeddings"], hidden_act=c["hidden_act"],
        own_embed_tokens="embed_tokens.weight" in sd, own_lm_head="lm_head.weight" in sd,
        norm_before_residual=bool(c["norm_before_residual"]))


def _refuse_unsupported(info: DraftInfo) -> None:
    """Variants vLLM runs but this head does not compute: training them would train another model."""
    on = learner_unsupported(info.layer_config)
    if on:
        raise SpecRolloutConfigError(f"{info.path}: the learner's EAGLE-3 head does not implement "
                                     f"{', '.join(on)}; vLLM can still serve this head with learner.enable=false")


def _warn_rope_scaling(info: DraftInfo) -> None:
    c = info.layer_config
    for key in ("rope_scaling", "rope_parameters"):
        kind = (c.get(key) or {}).get("rope_type") or (c.get(key) or {}).get("type")
        if kind and kind != "default":
            logger.warning("%s uses %s rope_type=%s; the learner's head uses plain RoPE (theta=%s), so its "
                           "training positions differ slightly from vLLM's", info.path, key, kind, c["rope_theta"])
