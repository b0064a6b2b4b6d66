"""Attach capture to veRL 0.9.1's FSDP engine (``FSDPEngineWithLMHead.forward_step``).

Where: the actor's ``compute_log_prob`` (``TrainingWorker.infer_batch`` -> engine
``forward_backward_batch(forward_only=True)`` -> ``forward_step`` per micro-batch) already runs
the policy over prompt + response, packed as (1, nnz) with ``position_ids`` and ``cu_seqlens``
(= ``input_ids.offsets()`` of veRL's jagged nested tensors).  We wrap ``forward_step`` on the
*actor's* engine instance only, and capture only when ``forward_only`` is true (so the policy
update's forward/backward passes are untouched and nothing is retained for autograd).

What is kept: per policy step and rank, a bounded random subset of whole response windows
(capture/budget.py); the step's samples are shipped once, by :meth:`EngineCapture.end_step`
(the actor hook calls it after ``infer_batch``) or when the policy step changes.

Supported: FSDP / FSDP2 engine, ``use_remove_padding=True`` (veRL's default no-padding mode,
optional static tail pad) and ``use_remove_padding=False`` (the engine right-pads the nested
micro-batch to (B, T_max) before the model: packed position ``cu[i] + t`` is padded row ``i``,
column ``t``; see :func:`padded_index`), text-only Llama/Qwen-style HF models.

Refused at start-up with one clear error (:func:`check_supported`; never captures misaligned data):
* Ulysses sequence parallelism (``ulysses_sequence_parallel_size > 1``): each rank sees a slice
  of the packed sequence, so the windows would not line up;
* multimodal rotary positions (mrope) named by the model config;
* a model without the HF decoder layout, aux layer ids out of range;
* Megatron / other engines (different forward path: not hooked).

Capture never breaks the policy's forward: anything that goes wrong while capturing (a micro-batch
only detectable as unsupported, e.g. 3-D position_ids the config did not announce, or an error
collecting or building samples) is logged once per distinct cause, capture is off for the rest of
that policy step, and the forward's output is returned as is.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from typing import Callable, Optional, Sequence

import torch

from verl_specrollout import compat

from .budget import Pick, StepBudget, bytes_per_token, rank_budget_bytes
from .hooks import HiddenStateCapture, find_decoder, unwrap_model
from .samples import build_samples, gather_index, response_windows

logger = logging.getLogger(__name__)

# HF model types whose positions are 3-D (temporal, height, width) even for text-only batches.
MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen2_5_omni", "qwen3_vl", "qwen3_vl_moe", "qwen3_omni_moe",
                     "glm4v", "glm4v_moe")


class CaptureUnsupported(RuntimeError):
    """This actor cannot be captured from: raised at start-up, never during training."""


class CaptureSkip(RuntimeError):
    """A micro-batch capture cannot handle, only visible once it arrives: logged, never raised
    out of the forward."""


def _unsupported(reason: str) -> CaptureUnsupported:
    return CaptureUnsupported(
        f"verl-specrollout: online draft learning cannot capture training data on this actor: {reason}. "
        "Set specrollout.learner.enable=false (rollouts still speculate with the fixed draft_path).")


def _get(td, key, default=None):
    try:
        return td[key] if key in td.keys() else default
    except Exception:
        return default


def response_info(micro_batch) -> tuple:
    """(cu_seqlens list, response lengths, response masks on CPU) from a veRL no-padding micro-batch."""
    ids = micro_batch[compat.VERL_BATCH_INPUT_IDS]
    if not getattr(ids, "is_nested", False):
        raise CaptureSkip("capture needs veRL's no-padding (nested input_ids) layout")
    cu = ids.offsets().tolist()
    rmask = _get(micro_batch, compat.VERL_BATCH_RESPONSE_MASK)
    if rmask is None:
        raise CaptureSkip("micro-batch has no response_mask")
    if getattr(rmask, "is_nested", False) and rmask.layout == torch.jagged:
        lens = [int(n) for n in (rmask.offsets()[1:] - rmask.offsets()[:-1]).tolist()]
        rows = list(torch.split(rmask.values().cpu(), lens))  # one device-to-host copy, not one per row
    elif getattr(rmask, "is_nested", False):
        rows = [r.cpu() for r in rmask.unbind()]
        lens = [int(r.numel()) for r in rows]
    else:
        am = _get(micro_batch, compat.VERL_BATCH_ATTENTION_MASK)
        R = rmask.shape[1]
        if am is not None and not getattr(am, "is_nested", False):
            lens = am[:, -R:].sum(-1).tolist()
        else:  # right-padded responses: length = last masked-in token + 1
            ar = torch.arange(1, R + 1, device=rmask.device)
            lens = (rmask.bool() * ar).max(-1).values.tolist()
        host = rmask.cpu()
        rows = [host[i, : int(lens[i])] for i in range(host.shape[0])]
    return cu, lens, rows


def check_positions(micro_batch) -> None:
    pos = micro_batch[compat.VERL_BATCH_POSITION_IDS]
    if pos.dim() == 3 or (getattr(pos, "is_nested", False) and pos.values().dim() > 1):
        raise CaptureSkip("3-D (mrope) position_ids, which the model config did not announce")


def uses_mrope(config) -> bool:
    """Multimodal rotary positions, as far as the HF config tells (top level or ``text_config``)."""
    for c in (config, getattr(config, "text_config", None)):
        if c is None:
            continue
        if getattr(c, "model_type", None) in MROPE_MODEL_TYPES:
            return True
        for attr in ("rope_scaling", "rope_parameters"):
            rope = getattr(c, attr, None)
            if isinstance(rope, dict) and ("mrope_section" in rope
                                           or "mrope" in (rope.get("type"), rope.get("rope_type"))):
                return True
    return False


def check_supported(engine, aux_layer_ids: Sequence[int] = ()) -> int:
    """Everything about this actor that makes capture impossible, decided once at start-up:
    raises :class:`CaptureUnsupported` with the reason; returns the target's hidden size."""
    sp = getattr(engine, compat.VERL_ENGINE_SP_SIZE_ATTR, 1) or 1
    if sp > 1:
        raise _unsupported(f"Ulysses sequence parallelism (ulysses_sequence_parallel_size={sp}) gives each rank a "
                           "slice of the packed sequences; use sp=1")
    module = getattr(engine, compat.VERL_ENGINE_MODULE_ATTR, None)
    forward_step = getattr(engine, compat.VERL_ENGINE_FORWARD_STEP, None)
    if not isinstance(module, torch.nn.Module) or not callable(forward_step):
        raise _unsupported(f"{type(engine).__name__} is not veRL's FSDP engine (no `module` model and "
                           "`forward_step`); Megatron and other engines are not hooked")
    config = getattr(unwrap_model(module), "config", None)
    if config is not None and uses_mrope(config):
        raise _unsupported(f"the model ({getattr(config, 'model_type', '?')}) uses multimodal rotary positions "
                           "(mrope, 3-D position_ids)")
    try:
        decoder = find_decoder(module)
    except ValueError as exc:
        raise _unsupported(str(exc)) from None
    missing = [a for a in (compat.HF_EMBED_ATTR, compat.HF_FINAL_NORM_ATTR) if not hasattr(decoder, a)]
    if missing:
        raise _unsupported(f"{type(decoder).__name__} has no {', '.join(missing)} (not the HF decoder layout)")
    n_layers = len(getattr(decoder, compat.HF_LAYERS_ATTR))
    bad = [L for L in aux_layer_ids if not 0 <= int(L) < n_layers]
    if bad:
        raise _unsupported(f"aux layer ids {bad} out of range for a {n_layers}-layer target")
    hidden = getattr(getattr(config, "text_config", None) or config, "hidden_size", None)
    if not isinstance(hidden, int) or hidden <= 0:
        raise _unsupported("the model config has no hidden_size")
    return hidden


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


def has_labels(windows: Sequence[Optional[tuple]], rows: Sequence[torch.Tensor]) -> list:
    """Per window: is any of its response tokens masked in (else there is nothing to learn)."""
    return [w is not None and bool(row.reshape(-1)[: w[2] - w[1]].any()) for w, row in zip(windows, rows)]


def picked_window(window: tuple, row: torch.Tensor, pick: Pick) -> tuple:
    """The captured part of a window as a build_samples window and its response mask.  A segment
    that starts inside the response is a window whose first position is its first response token."""
    s, r0, _ = window
    a = s + pick.start
    b = a + pick.take
    if a < r0:
        return (a, r0, b), row
    return (a, a, b), row.reshape(-1)[a - r0:]


@dataclasses.dataclass
class _Plan:
    step: StepBudget
    chosen: list  # (pick, captured window, its response mask) per captured sequence, in packed order


class EngineCapture:
    """Owns the hooks on one engine's module and the wrapped ``forward_step``.

    ``budget_bytes``: this rank's share of the step's budget (None: no limit, everything is held
    until the step ends: small models and tests only).  ``sink(samples, policy_step)`` receives the
    step's samples once, from :meth:`end_step`."""

    def __init__(self, engine, aux_layer_ids: Sequence[int], sink: Callable[[list, Optional[int]], object],
                 policy_step: Callable[[], Optional[int]] = lambda: None, context: int = 1,
                 budget_bytes: Optional[int] = None, rank: int = 0, seed: int = 0):
        hidden = check_supported(engine, aux_layer_ids)
        self.engine = engine
        self.sink = sink
        self.policy_step = policy_step
        self.context = context
        self.budget_bytes = budget_bytes
        self.rank = int(rank)
        self.seed = int(seed)
        self.token_bytes = bytes_per_token(hidden, len(aux_layer_ids))
        self.capture = HiddenStateCapture(getattr(engine, compat.VERL_ENGINE_MODULE_ATTR), aux_layer_ids)
        self.enabled = True
        self.n_samples = 0
        self.errors = 0
        self.last_counts: Optional[dict] = None  # counts of the last finished step
        self._step: Optional[StepBudget] = None
        self._logged: set = set()
        self._orig = getattr(engine, compat.VERL_ENGINE_FORWARD_STEP)
        setattr(engine, compat.VERL_ENGINE_FORWARD_STEP, self._wrap(self._orig))

    def _wrap(self, orig):
        @functools.wraps(orig)
        def forward_step(micro_batch, loss_function, forward_only):
            if not (self.enabled and forward_only):
                return orig(micro_batch, loss_function, forward_only)
            plan = self._arm(micro_batch)
            if plan is None:
                return orig(micro_batch, loss_function, forward_only)
            try:
                out = orig(micro_batch, loss_function, forward_only)
            except BaseException:
                self.capture.disarm()  # the policy's own error: ours to clean up, not to hide
                raise
            self._keep(micro_batch, plan)
            return out
        return forward_step

    # ------------------------------------------------------------------ one micro-batch
    def _current_step(self) -> StepBudget:
        step = self.policy_step()
        if self._step is not None and step != self._step.policy_step:
            self.end_step()  # no end_step call since the last step: ship it now
        if self._step is None:
            self._step = StepBudget(self.budget_bytes, self.token_bytes, step, self.rank, self.seed)
        return self._step

    def _arm(self, micro_batch) -> Optional[_Plan]:
        """Choose this micro-batch's windows and arm the hooks; None: nothing to capture."""
        try:
            step = self._current_step()
            if step.off:
                step.skipped_microbatches += 1
                return None
            check_positions(micro_batch)
            cu, lens, rows = response_info(micro_batch)
            windows = response_windows(cu, lens, self.context)
            picks = step.plan(windows, has_labels(windows, rows))
            chosen = [(p, *picked_window(w, r, p)) for w, r, p in zip(windows, rows, picks) if p is not None]
            index = gather_index([w for _, w, _ in chosen])
            if index.numel() == 0:
                return None
            if uses_remove_padding(self.engine, micro_batch):
                self.capture.arm(index)
            else:
                flat, shape = padded_index(index, cu)
                self.capture.arm(flat, padded_shape=shape)
            return _Plan(step, chosen)
        except Exception as exc:
            self._fail(exc)
            return None

    def _keep(self, micro_batch, plan: _Plan) -> None:
        """Collect the hooked features and hand this micro-batch's samples to the step's budget."""
        try:
            aux, final = self.capture.collect()
            ids = micro_batch[compat.VERL_BATCH_INPUT_IDS].values()
            new, row = [], 0
            for pick, w, mask in plan.chosen:
                n = w[2] - w[0]
                built = build_samples(ids, [w], aux[row:row + n], final[row:row + n], [mask],
                                      gathered=True, policy_step=plan.step.policy_step)
                row += n
                if built:
                    new.append((pick, built[0]))
            plan.step.commit(new)
        except Exception as exc:
            self._fail(exc)
        finally:
            self.capture.disarm()

    def _fail(self, exc: BaseException) -> None:
        """Capture off for the rest of this policy step; log each distinct cause once."""
        self.errors += 1
        self.capture.disarm()
        step = self._step
        if step is not None:
            step.off = True
            step.skipped_microbatches += 1
        cause = f"{type(exc).__name__}: {exc}"
        if cause in self._logged:
            return
        self._logged.add(cause)
        logger.warning("verl-specrollout capture: off for the rest of policy step %s, training unaffected "
                       "(%s; later failures with this cause are only counted)",
                       step.policy_step if step is not None else "?", cause,
                       exc_info=not isinstance(exc, CaptureSkip))

    # ------------------------------------------------------------------ step boundary
    def end_step(self) -> Optional[dict]:
        """Ship the current step's samples and return its counts (None when nothing was captured
        since the last call).  Never raises."""
        step, self._step = self._step, None
        if step is None:
            return None
        samples, counts = step.finish()
        if samples:
            try:
                self.sink(samples, step.policy_step)
                self.n_samples += len(samples)
            except Exception as exc:
                self.errors += 1
                counts["ship_failures"] = 1
                cause = f"ship {type(exc).__name__}: {exc}"
                if cause not in self._logged:
                    self._logged.add(cause)
                    logger.warning("verl-specrollout capture: could not ship policy step %s (%d samples) to the "
                                   "learner: %r", step.policy_step, len(samples), exc)
        self.last_counts = counts
        return counts

    def remove(self) -> None:
        self.capture.remove()
        setattr(self.engine, compat.VERL_ENGINE_FORWARD_STEP, self._orig)


def install_capture(engine, learner, aux_layer_ids: Sequence[int], policy_step: Callable[[], Optional[int]],
                    max_in_flight: int = 4, context: int = 1, budget_mb: Optional[float] = None,
                    world_size: int = 1, rank: int = 0) -> EngineCapture:
    """Hooks on ``engine.module`` + async shipping to ``learner``
    (the handle from ``learner.remote.get_or_create_learner`` / ``ray.get_actor(name, namespace)``).

    ``budget_mb``: the step's budget over all ``world_size`` data-parallel ranks (this rank keeps
    ``budget_mb / world_size``); None: no limit.  Raises :class:`CaptureUnsupported` here, at
    start-up, for an actor capture cannot serve."""
    from .shipper import SampleShipper

    budget = rank_budget_bytes(budget_mb, world_size) if budget_mb is not None else None
    shipper = SampleShipper(learner, max_in_flight=max_in_flight)
    cap = EngineCapture(engine, aux_layer_ids, shipper.ship, policy_step=policy_step, context=context,
                        budget_bytes=budget, rank=rank)
    cap.shipper = shipper
    return cap
