"""Target verification cost and EAGLE-3 draft cost vs tokens per step, at real model shapes.

    python tools/gpu_verify_cost.py [--out results/gpu_verify_cost.json] [--budget-s 240]
    python tools/gpu_verify_cost.py --device cpu --tiny        # toy shapes, seconds on a CPU

torch only (no vLLM, no veRL, no downloads): weights are random, built at the real shapes of
Qwen2.5-7B, Llama-3-8B and (a few points) Qwen2.5-32B. Everything runs in bf16.

What one measured point is
--------------------------
One engine decode step with ``batch`` running requests, each verifying ``k + 1`` tokens (its
last accepted token plus ``k`` draft tokens), every request holding ``--context`` (1024)
tokens of KV cache:

* target body: embedding, then per decoder layer RMSNorm, fused QKV matmul, RoPE, the write
  of the new K/V into a contiguous per-request KV cache, ``scaled_dot_product_attention``
  over the cache (GQA folded into the query length, so no K/V copy; a causal mask over the
  new tokens when k > 0), O projection, RMSNorm, fused gate/up matmul, SiLU*up, down matmul;
* target head: final RMSNorm, lm_head over all ``batch * (k + 1)`` tokens (every verified
  position needs logits), argmax;
* draft first pass (EAGLE-3): fc over the 3 concatenated auxiliary hidden states of all
  ``batch * (k + 1)`` tokens, one decoder layer whose QKV reads [norm(embedding), norm(hidden)]
  (2 * hidden wide), lm_head on a 32k draft vocabulary for the last token of each request;
* draft next pass: the same layer and head for 1 token per request, without the fc (later
  draft passes feed the draft's own hidden state back).

A paged KV cache, fused kernels and the scheduler of a real engine are not modelled: the
curve is roofline-like (weights and KV bytes vs matmul FLOPs), which is what the planner's
knee is about. On CUDA every piece is captured in a CUDA graph (as vLLM does for decode)
and timed with CUDA events: ``--warmup`` replays, then the median of ``--repeats``.
When a model is built with fewer layers than it has (``layers_timed < layers``), the body
time is scaled by ``layers / layers_timed``; the JSON says so per model.

``--budget-s`` is checked before every point: past it the run stops and writes what it has
(``complete: false``). The JSON file is rewritten after every point, so a killed run still
leaves every finished point on disk.

JSON schema (``schema: "specrollout.gpu_verify_cost/1"``)
-------------------------------------------------------
::

    {
      "schema": "specrollout.gpu_verify_cost/1",
      "device": {"type": "cuda"|"cpu", "name": str, "total_memory_gib": float|null},
      "torch": str, "cuda": str|null, "dtype": "bfloat16",
      "settings": {"context": int, "warmup": int, "repeats": int, "cuda_graphs": bool,
                   "budget_s": float|null, "tiny": bool, "threshold": 1.3},
      "complete": bool,               # false: stopped by --budget-s (or a model failed)
      "stopped_early": str|null,      # why
      "elapsed_s": float,
      "notes": [str],
      "models": [{
        "name": str,
        "shape": {"hidden", "layers", "q_heads", "kv_heads", "head_dim", "intermediate",
                  "vocab", "draft_vocab"},            # all int
        "layers_timed": int,          # decoder layers actually built and timed
        "layer_scale": float,         # layers / layers_timed, applied to body times
        "cuda_graphs": bool,          # false: eager timing (capture failed or --no-graphs)
        "attention": str,             # k > 0 attention: "unmasked" | "lower-right" | "mask (why)"
        "batches": [int], "ks": [int],                # the grid asked for
        "points": [{                  # the step-cost table, one row per (batch, k)
          "batch": int, "k": int, "tokens": int,      # tokens = batch * (k + 1)
          "target_ms": float,         # body_ms * layer_scale + head_ms: one verify step
          "body_ms": float, "head_ms": float,         # medians, body as timed (unscaled)
          "body_min_ms": float, "body_max_ms": float,
          "draft_first_ms": float,    # one EAGLE-3 pass over batch*(k+1) tokens
          "draft_ms": float,          # all k draft passes of a step: first + (k-1) * next;
                                      # 0 for k = 0 (no drafting at all)
          "step_ms": float,           # target_ms + draft_ms
          "est_weight_gb": float, "est_kv_gb": float, "est_tflop": float  # per step
        }],
        "draft_next": [{"batch": int, "draft_next_ms": float}],
        "errors": [str],              # points that failed (e.g. out of memory)
        "derived": {
          "base_ms": float,           # target_ms at batch 1, k 0
          "crossover_tokens": int|null,
              # smallest tokens per step t such that every measured point with
              # tokens >= t has target_ms > threshold * base_ms (lower envelope);
              # null: never crossed inside the grid
          "verify5_over_decode1": float|null,   # target(batch 1, k 4) / target(batch 1, k 0)
          "per_batch": [{"batch": int, "k0_ms": float,
                         "max_k_within_threshold": int,  # largest k with target <= thr * k0
                         "draft_first_frac": float|null, # draft_first(k 0) / target(k 0)
                         "draft_next_frac": float|null}] # draft_next / target(k 0)
        },
        "step_observations": [[tokens, requests, passes, seconds], ...]
            # one per point: passes = k draft passes, seconds = step_ms / 1000;
            # ready for verl_specrollout.planner.cost_model.StepCostModel.observe_many
      }],
      "skipped_models": [{"name": str, "reason": str}]
    }
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

try:  # torch >= 2.3
    from torch.nn.attention.bias import causal_lower_right
except ImportError:
    causal_lower_right = None

SCHEMA = "specrollout.gpu_verify_cost/1"
THRESHOLD = 1.3
FULL_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
FULL_KS = [0, 1, 2, 3, 4, 6, 8]


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    draft_vocab: int = 32000


@dataclass(frozen=True)
class ModelPlan:
    name: str
    shape: Shape
    layers_timed: int
    batches: List[int]
    ks: List[int]


def gpu_plans() -> List[ModelPlan]:
    qwen7 = Shape(3584, 28, 28, 4, 128, 18944, 152064)
    llama8 = Shape(4096, 32, 32, 8, 128, 14336, 128256)
    qwen32 = Shape(5120, 64, 40, 8, 128, 27648, 152064)
    return [
        ModelPlan("qwen2.5-7b", qwen7, 28, FULL_BATCHES, FULL_KS),
        ModelPlan("llama-3-8b", llama8, 32, FULL_BATCHES, FULL_KS),
        # 64 layers of 32B are ~64 GB of weights; 16 timed layers show the same per-layer
        # cost in a quarter of the memory and build time.
        ModelPlan("qwen2.5-32b", qwen32, 16, [1, 8, 64, 256], [0, 2, 4, 8]),
    ]


def tiny_plans() -> List[ModelPlan]:
    small = Shape(64, 2, 4, 2, 16, 128, 256, draft_vocab=128)
    scaled = Shape(64, 4, 4, 1, 16, 96, 200, draft_vocab=96)
    return [
        ModelPlan("tiny", small, 2, [1, 2, 4], [0, 1, 2, 4]),
        # Builds 2 of 4 layers, to run the layer-scaling path.
        ModelPlan("tiny-scaled", scaled, 2, [1, 4], [0, 2]),
    ]


# ----------------------------------------------------------------------------------------
# Weights and caches


def rand(*size, device, dtype) -> torch.Tensor:
    return torch.empty(size, device=device, dtype=dtype).normal_(0.0, 0.02)


def make_layer(shape: Shape, in_dim: int, device, dtype) -> Dict[str, torch.Tensor]:
    qkv_out = (shape.q_heads + 2 * shape.kv_heads) * shape.head_dim
    return {
        "ln1": torch.ones(shape.hidden, device=device, dtype=dtype),
        "ln2": torch.ones(shape.hidden, device=device, dtype=dtype),
        "qkv": rand(qkv_out, in_dim, device=device, dtype=dtype),
        "o": rand(shape.hidden, shape.q_heads * shape.head_dim, device=device, dtype=dtype),
        "gate_up": rand(2 * shape.intermediate, shape.hidden, device=device, dtype=dtype),
        "down": rand(shape.hidden, shape.intermediate, device=device, dtype=dtype),
    }


def make_cache(shape: Shape, max_batch: int, length: int, device, dtype):
    # Contiguous per-request KV: [batch, kv_heads, positions, head_dim]. Values are
    # irrelevant to timing but kept finite.
    size = (max_batch, shape.kv_heads, length, shape.head_dim)
    return rand(*size, device=device, dtype=dtype), rand(*size, device=device, dtype=dtype)


class Model:
    """Random-weight target (layers_timed layers) and EAGLE-3 draft at one shape."""

    def __init__(self, plan: ModelPlan, context: int, device, dtype):
        s = plan.shape
        self.plan, self.shape, self.context = plan, s, context
        self.device, self.dtype = device, dtype
        length = context + max(plan.ks) + 1
        max_batch = max(plan.batches)
        self.embed = rand(s.vocab, s.hidden, device=device, dtype=dtype)
        self.layers = [make_layer(s, s.hidden, device, dtype) for _ in range(plan.layers_timed)]
        self.caches = [make_cache(s, max_batch, length, device, dtype) for _ in self.layers]
        self.norm = torch.ones(s.hidden, device=device, dtype=dtype)
        self.lm_head = rand(s.vocab, s.hidden, device=device, dtype=dtype)
        # EAGLE-3 draft: fc over 3 aux hidden states, one layer whose QKV reads
        # [norm(embedding), norm(hidden)], its own KV cache, a small-vocab lm_head.
        self.fc = rand(s.hidden, 3 * s.hidden, device=device, dtype=dtype)
        self.draft_layer = make_layer(s, 2 * s.hidden, device, dtype)
        self.draft_layer["ln_embed"] = torch.ones(s.hidden, device=device, dtype=dtype)
        self.draft_cache = make_cache(s, max_batch, length, device, dtype)
        self.draft_head = rand(s.draft_vocab, s.hidden, device=device, dtype=dtype)
        half = s.head_dim // 2
        self.inv_freq = 1.0 / (1e6 ** (torch.arange(half, device=device, dtype=torch.float32) / half))
        self.attention = "mask"  # k > 0 attention, set by choose_attention


def choose_attention(model: "Model", wanted: str) -> str:
    """The k > 0 attention the timing uses, recorded in the JSON.

    "lower-right" is checked against the mask on one layer (batch 2, q 3) first and falls
    back to the mask when it fails or differs. Measured on an H200 (torch 2.11): "mask" puts
    the memory-efficient kernel on every k > 0 step (+25 % at batch 1 from k = 0 to k = 1,
    the kernel switch alone), "lower-right" took a materialised path 4x slower at batch 256,
    so "unmasked" (the default) is what the step-cost tables are made with.
    """
    model.attention = wanted
    if wanted != "lower-right":
        return wanted
    if causal_lower_right is None:
        model.attention = "mask"
        return "mask (no causal_lower_right in this torch)"
    inp = StepInputs(model, 2, 3)
    layer, cache = model.layers[0], model.caches[0]
    x = rms_norm(F.embedding(inp.ids, model.embed), layer["ln1"])
    try:
        with torch.inference_mode():
            fast = attention(model, layer, cache, x, inp).float()
            model.attention = "mask"
            ref = attention(model, layer, cache, x, inp).float()
    except RuntimeError as exc:
        model.attention = "mask"
        print(f"[verify-cost] bottom-right causal attention failed, using the mask: "
              f"{first_line(exc)}", flush=True)
        return "mask (lower-right failed)"
    err = (fast - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    if not err < 2e-2:
        print(f"[verify-cost] bottom-right causal attention differs from the mask "
              f"(relative {err:.3g}), using the mask", flush=True)
        return f"mask (lower-right differs by {err:.3g})"
    model.attention = "lower-right"
    return "lower-right"


# ----------------------------------------------------------------------------------------
# Forward pieces


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if hasattr(F, "rms_norm"):  # torch >= 2.4
        return F.rms_norm(x, (x.shape[-1],), weight, 1e-6)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class StepInputs:
    """Static tensors of one step: what a CUDA graph reads on every replay."""

    def __init__(self, model: Model, batch: int, q: int):
        s, dev = model.shape, model.device
        self.batch, self.q, self.tokens = batch, q, batch * q
        self.ids = torch.randint(0, s.vocab, (self.tokens,), device=dev)
        pos = (model.context + torch.arange(q, device=dev)).repeat(batch).float()
        angles = pos[:, None] * model.inv_freq[None, :]
        self.cos = angles.cos().to(model.dtype)[:, None, :]
        self.sin = angles.sin().to(model.dtype)[:, None, :]
        self.mask = causal_mask(model, q)
        self.aux = rand(self.tokens, 3 * s.hidden, device=dev, dtype=model.dtype)


def causal_mask(model: Model, q: int) -> Optional[torch.Tensor]:
    """Additive mask for q new tokens after `context` cached ones, rows tiled per GQA group.

    None for q = 1 (the token sees the whole cache), which lets SDPA pick its flash kernel.
    The row stride is padded to a multiple of 16, as the memory-efficient kernel wants.
    """
    if q == 1:
        return None
    s = model.shape
    span = model.context + q
    group = s.q_heads // s.kv_heads
    padded = -(-span // 16) * 16
    store = torch.zeros(group * q, padded, device=model.device, dtype=model.dtype)
    key_pos = torch.arange(span, device=model.device)
    row_pos = model.context + torch.arange(q, device=model.device).repeat(group)
    store[:, :span].masked_fill_(key_pos[None, :] > row_pos[:, None], float("-inf"))
    return store[:, :span]


def attention(model: Model, layer, cache, x_norm, inp: StepInputs) -> torch.Tensor:
    s = model.shape
    b, q, d = inp.batch, inp.q, s.head_dim
    hq, hkv = s.q_heads, s.kv_heads
    group = hq // hkv
    qkv = F.linear(x_norm, layer["qkv"])
    qh, kh, vh = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    qh = rope(qh.view(-1, hq, d), inp.cos, inp.sin)
    kh = rope(kh.view(-1, hkv, d), inp.cos, inp.sin)
    kc, vc = cache
    ctx = model.context
    kc[:b, :, ctx:ctx + q].copy_(kh.view(b, q, hkv, d).transpose(1, 2))
    vc[:b, :, ctx:ctx + q].copy_(vh.view(b, q, hkv, d).transpose(1, 2))
    keys, values = kc[:b, :, :ctx + q], vc[:b, :, :ctx + q]
    if q > 1 and model.attention == "lower-right":
        # Each new token sees the cache and the new tokens before it: a causal mask aligned
        # to the bottom right, which torch hands to flash attention (with native GQA) when
        # it can, and otherwise materialises.
        qt = qh.view(b, q, hq, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            qt, keys, values, attn_mask=causal_lower_right(q, ctx + q), enable_gqa=True)
        return out.transpose(1, 2).reshape(b * q, hq * d)
    # GQA without copying K/V: the q heads sharing one kv head become extra query rows.
    # "unmasked" leaves out the causal triangle among the q new tokens: the same kernel and
    # the same K/V traffic as vLLM's varlen flash kernel on a verification step, with
    # q^2/2 of q*(ctx+q) scores computed needlessly (< 0.5 % at ctx 1024, q 9).
    mask = inp.mask if model.attention == "mask" else None
    qf = qh.view(b, q, hkv, group, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, group * q, d)
    out = F.scaled_dot_product_attention(qf, keys, values, attn_mask=mask)
    return out.view(b, hkv, group, q, d).permute(0, 3, 1, 2, 4).reshape(b * q, hq * d)


def mlp(layer, x_norm: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x_norm, layer["gate_up"]).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, layer["down"])


def decoder_layer(model: Model, layer, cache, x, attn_in, inp: StepInputs) -> torch.Tensor:
    x = x + F.linear(attention(model, layer, cache, attn_in, inp), layer["o"])
    return x + mlp(layer, rms_norm(x, layer["ln2"]))


def target_body(model: Model, inp: StepInputs) -> torch.Tensor:
    x = F.embedding(inp.ids, model.embed)
    for layer, cache in zip(model.layers, model.caches):
        x = decoder_layer(model, layer, cache, x, rms_norm(x, layer["ln1"]), inp)
    return x


def target_head(model: Model, hidden: torch.Tensor) -> torch.Tensor:
    return F.linear(rms_norm(hidden, model.norm), model.lm_head).argmax(dim=-1)


def draft_pass(model: Model, inp: StepInputs, hidden: torch.Tensor) -> torch.Tensor:
    layer = model.draft_layer
    emb = F.embedding(inp.ids, model.embed)
    attn_in = torch.cat((rms_norm(emb, layer["ln_embed"]), rms_norm(hidden, layer["ln1"])), -1)
    x = decoder_layer(model, layer, model.draft_cache, hidden, attn_in, inp)
    last = x.view(inp.batch, inp.q, -1)[:, -1]  # only the last position drafts a token
    return F.linear(rms_norm(last, model.norm), model.draft_head).argmax(dim=-1)


def draft_first(model: Model, inp: StepInputs) -> torch.Tensor:
    return draft_pass(model, inp, F.linear(inp.aux, model.fc))


# ----------------------------------------------------------------------------------------
# Timing


def prepare(fn: Callable[[], object], device, use_graphs: bool) -> Callable[[], object]:
    """A CUDA-graph replay of fn when possible (decode runs graphed in vLLM), else fn."""
    if device.type != "cuda" or not use_graphs:
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # cuBLAS handles and workspaces exist before capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_ms(run: Callable[[], object], device, warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


class Timer:
    def __init__(self, device, warmup: int, repeats: int, use_graphs: bool):
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self.use_graphs = use_graphs and device.type == "cuda"

    def measure(self, fn: Callable[[], object]) -> List[float]:
        if not self.use_graphs:
            return time_ms(fn, self.device, self.warmup, self.repeats)
        try:
            return time_ms(prepare(fn, self.device, True), self.device, self.warmup, self.repeats)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            capture_error = first_line(exc)
        torch.cuda.synchronize()
        # Capture is an optimisation: when the same work runs eagerly, the eager curve is
        # still valid (slower at small batches) and the rest of the run stays eager. When
        # eager fails too, the op itself is the problem and the error is the point's.
        times = time_ms(fn, self.device, self.warmup, self.repeats)
        print(f"[verify-cost] CUDA graph capture failed, timing eagerly from now on: "
              f"{capture_error}", flush=True)
        self.use_graphs = False
        return times


@torch.inference_mode()
def measure_point(model: Model, timer: Timer, batch: int, k: int) -> Dict[str, float]:
    inp = StepInputs(model, batch, k + 1)
    body = timer.measure(lambda: target_body(model, inp))
    hidden = target_body(model, inp)  # static input of the head's graph
    head = timer.measure(lambda: target_head(model, hidden))
    first = timer.measure(lambda: draft_first(model, inp))
    scale = model.shape.layers / model.plan.layers_timed
    body_ms, head_ms = statistics.median(body), statistics.median(head)
    return {
        "batch": batch, "k": k, "tokens": inp.tokens,
        "target_ms": body_ms * scale + head_ms,
        "body_ms": body_ms, "head_ms": head_ms,
        "body_min_ms": min(body), "body_max_ms": max(body),
        "draft_first_ms": statistics.median(first),
        **estimates(model.shape, model.context, batch, k + 1),
    }


@torch.inference_mode()
def measure_draft_next(model: Model, timer: Timer, batch: int) -> float:
    inp = StepInputs(model, batch, 1)
    hidden = rand(batch, model.shape.hidden, device=model.device, dtype=model.dtype)
    return statistics.median(timer.measure(lambda: draft_pass(model, inp, hidden)))


def estimates(s: Shape, context: int, batch: int, q: int) -> Dict[str, float]:
    """Bytes and FLOPs of one target step (full depth), to read timings against a roofline."""
    d = s.head_dim
    per_layer = s.hidden * (s.q_heads + 2 * s.kv_heads) * d + s.q_heads * d * s.hidden \
        + 3 * s.hidden * s.intermediate
    linear = s.layers * per_layer + s.vocab * s.hidden
    tokens = batch * q
    kv_bytes = s.layers * batch * (context + q) * 2 * s.kv_heads * d * 2
    attn_flops = s.layers * 4 * tokens * (context + q) * s.q_heads * d
    return {
        "est_weight_gb": linear * 2 / 1e9,
        "est_kv_gb": kv_bytes / 1e9,
        "est_tflop": (2 * linear * tokens + attn_flops) / 1e12,
    }


# ----------------------------------------------------------------------------------------
# Derived numbers


def find_point(points, batch: int, k: int) -> Optional[dict]:
    return next((p for p in points if p["batch"] == batch and p["k"] == k), None)


def crossover_tokens(points: List[dict], base_ms: float, threshold: float) -> Optional[int]:
    """Smallest tokens-per-step past which every measured step costs > threshold * base.

    A lower envelope from the right, so one noisy point cannot set the knee, and points of
    different (batch, k) with the same token count (different KV traffic) are all honoured.
    """
    ordered = sorted(points, key=lambda p: p["tokens"])
    envelope = math.inf
    crossing = None
    for p in reversed(ordered):
        envelope = min(envelope, p["target_ms"])
        if envelope > threshold * base_ms:
            crossing = p["tokens"]
        else:
            break
    return crossing


def draft_ms_for(point: dict, next_ms: Optional[float]) -> Optional[float]:
    k = point["k"]
    if k == 0:
        return 0.0  # K = 0 skips the drafter entirely
    if k > 1 and next_ms is None:
        return None
    return point["draft_first_ms"] + (k - 1) * (next_ms or 0.0)


def per_batch(points: List[dict], draft_next: Dict[int, float], threshold: float) -> List[dict]:
    rows = []
    for batch in sorted({p["batch"] for p in points}):
        k0 = find_point(points, batch, 0)
        if k0 is None:
            continue
        within = [p["k"] for p in points
                  if p["batch"] == batch and p["target_ms"] <= threshold * k0["target_ms"]]
        nxt = draft_next.get(batch)
        rows.append({
            "batch": batch, "k0_ms": k0["target_ms"],
            "max_k_within_threshold": max(within),
            "draft_first_frac": k0["draft_first_ms"] / k0["target_ms"],
            "draft_next_frac": None if nxt is None else nxt / k0["target_ms"],
        })
    return rows


def derive(entry: dict, threshold: float) -> None:
    points = entry["points"]
    draft_next = {r["batch"]: r["draft_next_ms"] for r in entry["draft_next"]}
    observations = []
    for p in points:
        p["draft_ms"] = draft_ms_for(p, draft_next.get(p["batch"]))
        p["step_ms"] = None if p["draft_ms"] is None else p["target_ms"] + p["draft_ms"]
        if p["step_ms"] is not None:
            observations.append([p["tokens"], p["batch"], p["k"], p["step_ms"] / 1e3])
    entry["step_observations"] = observations
    base = find_point(points, 1, 0)
    if base is None:
        entry["derived"] = {"base_ms": None, "crossover_tokens": None,
                            "verify5_over_decode1": None, "per_batch": []}
        return
    v5 = find_point(points, 1, 4)
    entry["derived"] = {
        "base_ms": base["target_ms"],
        "crossover_tokens": crossover_tokens(points, base["target_ms"], threshold),
        "verify5_over_decode1": None if v5 is None else v5["target_ms"] / base["target_ms"],
        "per_batch": per_batch(points, draft_next, threshold),
    }


# ----------------------------------------------------------------------------------------
# Run


def device_info(device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name,
                "total_memory_gib": round(props.total_memory / 2**30, 1)}
    return {"type": "cpu", "name": f"cpu ({torch.get_num_threads()} threads)",
            "total_memory_gib": None}


def write_json(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


def free_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class Run:
    def __init__(self, args, device, dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.start = time.monotonic()
        self.result = {
            "schema": SCHEMA,
            "device": device_info(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "dtype": str(dtype).replace("torch.", ""),
            "settings": {"context": args.context, "warmup": args.warmup, "repeats": args.repeats,
                         "cuda_graphs": device.type == "cuda" and not args.no_graphs,
                         "budget_s": args.budget_s, "tiny": args.tiny, "threshold": THRESHOLD},
            "complete": True, "stopped_early": None, "elapsed_s": 0.0,
            "notes": [
                "random weights; contiguous per-request KV cache; SDPA attention",
                "target_ms = body_ms * layer_scale + head_ms; layer_scale > 1 means only "
                "layers_timed layers were built and timed",
                "draft_ms = draft_first_ms + (k - 1) * draft_next_ms; 0 at k = 0",
                "k = 0 attention runs unmasked (flash kernel on CUDA); k > 0 per model's "
                "'attention': 'unmasked' = the same flash kernel over cache + new tokens "
                "(vLLM's kernel and K/V traffic; the causal triangle among new tokens left "
                "out), 'lower-right' = torch's bottom-right causal bias, 'mask' = an additive "
                "mask (memory-efficient kernel, whose switch inflates the k = 0 -> 1 step)",
            ],
            "models": [], "skipped_models": [],
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def over_budget(self) -> bool:
        return self.args.budget_s is not None and self.elapsed() > self.args.budget_s

    def save(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 2)
        write_json(self.args.out, self.result)

    def stop(self, reason: str) -> None:
        self.result["complete"] = False
        self.result["stopped_early"] = reason
        print(f"[verify-cost] stopping early: {reason}", flush=True)

    def run_model(self, plan: ModelPlan) -> bool:
        """Measures one model's grid; False when the budget ran out."""
        entry = {"name": plan.name, "shape": asdict(plan.shape), "layers_timed": plan.layers_timed,
                 "layer_scale": plan.shape.layers / plan.layers_timed,
                 "cuda_graphs": False, "batches": plan.batches, "ks": plan.ks,
                 "points": [], "draft_next": [], "errors": []}
        t0 = time.monotonic()
        model = Model(plan, self.args.context, self.device, self.dtype)
        entry["attention"] = choose_attention(model, self.args.attention)
        timer = Timer(self.device, self.args.warmup, self.args.repeats, not self.args.no_graphs)
        print(f"[verify-cost] {plan.name}: built {plan.layers_timed}/{plan.shape.layers} layers "
              f"in {time.monotonic() - t0:.1f}s", flush=True)
        self.result["models"].append(entry)
        try:
            return self.run_grid(model, timer, entry)
        finally:
            entry["cuda_graphs"] = timer.use_graphs
            derive(entry, THRESHOLD)
            self.save()
            del model
            free_memory(self.device)

    def run_grid(self, model: Model, timer: Timer, entry: dict) -> bool:
        for batch in model.plan.batches:
            for k in model.plan.ks:
                if self.over_budget():
                    self.stop(f"budget of {self.args.budget_s}s reached in {model.plan.name} "
                              f"before batch {batch}, k {k}")
                    return False
                self.guarded(entry, f"batch {batch} k {k}",
                             lambda: entry["points"].append(measure_point(model, timer, batch, k)))
            self.guarded(entry, f"draft_next batch {batch}", lambda: entry["draft_next"].append(
                {"batch": batch, "draft_next_ms": measure_draft_next(model, timer, batch)}))
            derive(entry, THRESHOLD)
            self.save()
            free_memory(self.device)  # graph pools of this row go back before the next, larger one
        return True

    def guarded(self, entry: dict, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except torch.cuda.OutOfMemoryError as exc:
            entry["errors"].append(f"{what}: out of memory ({first_line(exc)})")
            free_memory(self.device)
        except RuntimeError as exc:
            # One shape a kernel refuses should not cost the rest of the grid.
            entry["errors"].append(f"{what}: {type(exc).__name__}: {first_line(exc)}")
            free_memory(self.device)

    def main(self, plans: List[ModelPlan]) -> int:
        for i, plan in enumerate(plans):
            if self.over_budget():
                self.stop(f"budget of {self.args.budget_s}s reached before {plan.name}")
                for rest in plans[i:]:
                    self.result["skipped_models"].append({"name": rest.name, "reason": "budget"})
                break
            try:
                if not self.run_model(plan):
                    for rest in plans[i + 1:]:
                        self.result["skipped_models"].append({"name": rest.name, "reason": "budget"})
                    break
            except torch.cuda.OutOfMemoryError as exc:
                self.result["skipped_models"].append(
                    {"name": plan.name, "reason": f"out of memory: {first_line(exc)}"})
                self.result["complete"] = False
                free_memory(self.device)
        self.save()
        print_summary(self.result)
        print(f"[verify-cost] wrote {self.args.out}", flush=True)
        models = self.result["models"]
        ok = bool(models) and models[0]["derived"]["base_ms"] is not None
        return 0 if ok else 2


# ----------------------------------------------------------------------------------------
# Summary


def fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_summary(result: dict) -> None:
    dev = result["device"]
    print(f"\n== verification cost on {dev['name']} (torch {result['torch']}, {result['dtype']}, "
          f"context {result['settings']['context']}, graphs {result['settings']['cuda_graphs']}) ==")
    for m in result["models"]:
        print_model(m)
    for s in result["skipped_models"]:
        print(f"-- {s['name']}: skipped ({s['reason']})")
    if not result["complete"]:
        print(f"(incomplete: {result['stopped_early']})")
    print(f"elapsed {result['elapsed_s']:.1f}s")


def print_model(m: dict) -> None:
    d = m["derived"]
    scaled = "" if m["layer_scale"] == 1 else (
        f", {m['layers_timed']}/{m['shape']['layers']} layers timed, body scaled x{m['layer_scale']:g}")
    print(f"\n-- {m['name']}{scaled}")
    print("   target step ms (rows batch, columns k):")
    ks = m["ks"]
    print("   " + "batch".rjust(6) + "".join(f"k={k}".rjust(9) for k in ks) + "   draft1/step  next/step")
    for row in d["per_batch"]:
        b = row["batch"]
        cells = "".join(fmt((find_point(m["points"], b, k) or {}).get("target_ms")).rjust(9) for k in ks)
        print("   " + str(b).rjust(6) + cells
              + fmt(row["draft_first_frac"], ".3f").rjust(13) + fmt(row["draft_next_frac"], ".3f").rjust(11))
    crossing = "none within grid" if d["crossover_tokens"] is None else f"{d['crossover_tokens']} tokens/step"
    print(f"   base (batch 1, k 0): {fmt(d['base_ms'], '.3f')} ms; "
          f"crossover (> {THRESHOLD}x base): {crossing}; "
          f"verify 5 tokens / decode 1 at batch 1: {fmt(d['verify5_over_decode1'], '.3f')}")
    free = ", ".join(f"B{r['batch']}:{r['max_k_within_threshold']}" for r in d["per_batch"])
    print(f"   largest k within {THRESHOLD}x of k=0 per batch: {free}")
    for e in m["errors"]:
        print(f"   error: {e}")


# ----------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--tiny", action="store_true", help="toy shapes (tests, CPU)")
    p.add_argument("--out", default="results/gpu_verify_cost.json")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="stop starting new points after this many seconds (<= 0: no limit)")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of model names (default: all of the preset)")
    p.add_argument("--context", type=int, default=None, help="KV tokens per request (default 1024; tiny 32)")
    p.add_argument("--warmup", type=int, default=None, help="default 3 (tiny 1)")
    p.add_argument("--repeats", type=int, default=None, help="default 10 (tiny 3)")
    p.add_argument("--no-graphs", action="store_true", help="time eagerly, without CUDA graphs")
    p.add_argument("--attention", choices=["unmasked", "lower-right", "mask"], default="unmasked",
                   help="attention of k > 0 steps: the unmasked flash kernel over cache and new "
                        "tokens (default: vLLM's kernel and K/V traffic, the causal triangle "
                        "among the k+1 new tokens left out); flash with torch's bottom-right "
                        "causal bias (checked against the mask first); an additive mask "
                        "(memory-efficient kernel)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 with --tiny)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.context is None:
        args.context = 32 if args.tiny else 1024
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 3
    if args.repeats is None:
        args.repeats = 3 if args.tiny else 10
    if args.budget_s is not None and args.budget_s <= 0:
        args.budget_s = None
    return args


def select_plans(args) -> List[ModelPlan]:
    plans = tiny_plans() if args.tiny else gpu_plans()
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        known = {p.name for p in plans}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; known: {sorted(known)}")
        plans = [p for p in plans if p.name in wanted]
    return plans


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("[verify-cost] --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(args.threads or (1 if args.tiny else torch.get_num_threads()))
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    print(f"[verify-cost] device {args.device}, out {args.out}, budget {args.budget_s}s", flush=True)
    with attention_backends(device):
        return Run(args, device, torch.bfloat16).main(select_plans(args))


def attention_backends(device):
    """On CUDA: flash (1 new token) or memory-efficient (masked) SDPA, math as last resort.

    cuDNN attention is left out: vLLM does not use it, and some torch releases raise on
    shapes it claims to support, which would cost the point.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: its default choice
        return contextlib.nullcontext()
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


if __name__ == "__main__":
    sys.exit(main())
