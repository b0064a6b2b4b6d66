"""Attach capture to veRL 0.9.1's FSDP engine (``FSDPEngineWithLMHead.forward_step``).

Where: the actor's ``compute_log_prob`` (``TrainingWorker.infer_batch`` -> engine
``forward_backward_batch(forward_only=True)`` -> ``forward_step`` per micro-batch) already runs
the policy over prompt + response, packed as (1, nnz) with ``position_ids`` and ``cu_seqlens``
(= ``input_ids.offsets()`` of veRL's jagged nested tensors).  We wrap ``forward_step`` on the
*actor's* engine instance only, and capture only when ``forward_only`` is true (so the policy
update's forward/backward passes are untouched and nothing is retained for autograd).

Supported: FSDP / FSDP2 engine, ``use_remove_padding=True`` (veRL's default no-padding mode,
optional static tail pad) and ``use_remove_padding=False`` (the engine right-pads the nested
micro-batch to (B, T_max) before the model: packed position ``cu[i] + t`` is padded row ``i``,
column ``t``; see :func:`padded_index`), text-only Llama/Qwen-style HF models.
Refused with a clear error (never captures misaligned data):
* Ulysses sequence parallelism (``ulysses_sequence_parallel_size > 1``): each rank sees a slice
  of the packed sequence, so the windows would not line up;
* 3-D (multimodal / mrope) ``position_ids``;
* Megatron / other engines (different forward path: not hooked).
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Callable, Optional, Sequence

import torch

from verl_specrollout import compat

from .hooks import HiddenStateCapture
from .samples import build_samples, gather_index, response_windows

logger = logging.getLogger(__name__)


class CaptureUnsupported(RuntimeError):
    pass


def _get(td, key, default=None):
    try:
        return td[key] if key in td.keys() else default
    except Exception:
        return default


def response_info(micro_batch) -> tuple:
    """(cu_seqlens list, response lengths, response masks) from a veRL no-padding micro-batch."""
    ids = micro_batch[compat.VERL_BATCH_INPUT_IDS]
    if not getattr(ids, "is_nested", False):
        raise CaptureUnsupported("capture needs veRL's no-padding (nested input_ids) layout")
    cu = ids.offsets().tolist()
    rmask = _get(micro_batch, compat.VERL_BATCH_RESPONSE_MASK)
    if rmask is None:
        raise CaptureUnsupported("micro-batch has no response_mask")
    if getattr(rmask, "is_nested", False):
        rows = list(rmask.unbind())
        lens = [int(r.numel()) for r in rows]
    else:
        am = _get(micro_batch, compat.VERL_BATCH_ATTENTION_MASK)
        R = rmask.shape[1]
        if am is not None and not getattr(am, "is_nested", False):
            lens = am[:, -R:].sum(-1).tolist()
        else:  # right-padded responses: length = last masked-in token + 1
            ar = torch.arange(1, R + 1, device=rmask.device)
            lens = (rmask.bool() * ar).max(-1).values.tolist()
        rows = [rmask[i, : int(lens[i])] for i in range(rmask.shape[0])]
    return cu, lens, rows


def check_supported(engine) -> None:
    sp = getattr(engine, compat.VERL_ENGINE_SP_SIZE_ATTR, 1) or 1
    if sp > 1:
        raise CaptureUnsupported(
            "verl-specrollout capture does not support Ulysses sequence parallelism "
            f"(ulysses_sequence_parallel_size={sp}): set specrollout.learner.enable=false or sp=1")


def padded_index(packed_index: torch.Tensor, cu_seqlens) -> tuple:
    """Packed positions -> flat positions of veRL's padded (B, T_max) layout, and (B, T_max).

    veRL 0.9.1 (FSDP engine, use_remove_padding=False) builds the model input with
    ``torch.nested.to_padded_tensor(input_ids, output_size=(B, max_seq_len))``: each sequence
    starts at column 0 of its row (right padding)."""
    cu = torch.as_tensor([int(c) for c in cu_seqlens], dtype=torch.long)
    lens = cu[1:] - cu[:-1]
    B, T = int(lens.numel()), int(lens.max().item()) if lens.numel() else 0
    if packed_index.numel() == 0:
        return packed_index, (B, T)
    row = torch.searchsorted(cu[1:], packed_index, right=True)
    flat = row * T + (packed_index - cu[row])
    return flat, (B, T)


def uses_remove_padding(engine, micro_batch) -> bool:
    """The layout the engine's ``prepare_model_inputs`` will use for this micro-batch."""
    try:
        tu = importlib.import_module(compat.VERL_TENSORDICT_UTILS)
        return bool(tu.get_non_tensor_data(data=micro_batch, key=compat.VERL_ENGINE_REMOVE_PADDING,
                                           default=getattr(engine, compat.VERL_ENGINE_REMOVE_PADDING, True)))
    except Exception:
        return bool(getattr(engine, compat.VERL_ENGINE_REMOVE_PADDING, True))


class EngineCapture:
    """Owns the hooks on one engine's module and the wrapped ``forward_step``."""

    def __init__(self, engine, aux_layer_ids: Sequence[int], sink: Callable[[list, Optional[int]], object],
                 policy_step: Callable[[], Optional[int]] = lambda: None, context: int = 1):
        check_supported(engine)
        self.engine = engine
        self.sink = sink
        self.policy_step = policy_step
        self.context = context
        self.capture = HiddenStateCapture(getattr(engine, compat.VERL_ENGINE_MODULE_ATTR), aux_layer_ids)
        self.enabled = True
        self.n_samples = 0
        self.errors = 0
        orig = getattr(engine, compat.VERL_ENGINE_FORWARD_STEP)

        @functools.wraps(orig)
        def forward_step(micro_batch, loss_function, forward_only):
            if not (self.enabled and forward_only):
                return orig(micro_batch, loss_function, forward_only)
            try:
                pos = micro_batch[compat.VERL_BATCH_POSITION_IDS]
                if pos.dim() == 3 or (getattr(pos, "is_nested", False) and pos.values().dim() > 1):
                    raise CaptureUnsupported("capture does not support 3-D (mrope) position_ids")
                cu, lens, rows = response_info(micro_batch)
                windows = response_windows(cu, lens, self.context)
                index = gather_index(windows)
                if uses_remove_padding(self.engine, micro_batch):
                    self.capture.arm(index)
                else:
                    flat, shape = padded_index(index, cu)
                    self.capture.arm(flat, padded_shape=shape)
            except CaptureUnsupported:
                raise
            except Exception as exc:  # never break the policy's forward for capture
                self.errors += 1
                logger.warning("specrollout capture skipped a micro-batch: %r", exc)
                return orig(micro_batch, loss_function, forward_only)
            try:
                out = orig(micro_batch, loss_function, forward_only)
                aux, final = self.capture.collect()
            finally:
                self.capture.disarm()
            ids = micro_batch[compat.VERL_BATCH_INPUT_IDS].values()
            samples = build_samples(ids, windows, aux, final, rows, gathered=True,
                                    policy_step=self.policy_step())
            self.n_samples += len(samples)
            self.sink(samples, self.policy_step())
            return out

        setattr(engine, compat.VERL_ENGINE_FORWARD_STEP, forward_step)
        self._orig = orig

    def remove(self) -> None:
        self.capture.remove()
        setattr(self.engine, compat.VERL_ENGINE_FORWARD_STEP, self._orig)


def install_capture(engine, learner, aux_layer_ids: Sequence[int], policy_step: Callable[[], Optional[int]],
                    max_in_flight: int = 4, context: int = 1) -> EngineCapture:
    """Hooks on ``engine.module`` + async shipping to ``learner``
    (the handle from ``learner.actor.get_or_create_learner`` / ``ray.get_actor(name, namespace)``)."""
    from .shipper import SampleShipper

    shipper = SampleShipper(learner, max_in_flight=max_in_flight)
    cap = EngineCapture(engine, aux_layer_ids, shipper.ship, policy_step=policy_step, context=context)
    cap.shipper = shipper
    return cap
