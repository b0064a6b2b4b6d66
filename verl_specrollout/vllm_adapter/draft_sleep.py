"""The draft tensors a level-2 sleep discards and the draft checkpoint cannot give back, kept on the host.

vLLM's ``sleep(level=2)`` drops the whole "weights" memory pool, the draft's parameters *and*
buffers included, and wake-up hands back uninitialised memory. What vLLM saves across it
(``vllm/v1/worker/gpu_worker.py``, ``Worker.sleep`` / ``wake_up``):

* 0.24-0.26 (veRL 0.9.1 pins 0.24): the target's buffers only (``model_runner.model.named_buffers()``);
* 0.27+: the draft's buffers too (``Worker._sleep_saved_draft_buffers``,
  ``compat.VLLM_WORKER_SLEEP_SAVED_DRAFT_BUFFERS``, put back when the weights wake up);
* no version: draft parameters.

Our restore reloads the draft checkpoint, so what the checkpoint does not carry stayed garbage:
the draft's RoPE ``cos_sin_cache`` whenever it is not the target's object (vLLM's ``get_rope``
shares one module between layers with identical rope settings and max positions; a head whose
``max_position_embeddings`` or rope settings differ from the target's has its own), and on 0.24
``draft_id_to_target_id``, an integer Parameter every EAGLE-3 head has there (zeros for a
full-vocabulary head, ``llama_eagle3.py`` ~323) that no full-vocabulary checkpoint carries: garbage
offsets send the draft's scatter into the target vocabulary out of range.

So before the first sleep that may discard weights (and before any reload), every draft tensor a
load of the checkpoint does not write is copied to host memory (:func:`keep_draft_state`); after
every wake that may have discarded it, the copy goes back *before* the checkpoint is loaded
(:func:`restore_draft_state`), so where both hold a tensor the checkpoint wins. Never kept, never
written: tensors whose storage is the target's (the shared embedding / lm_head, a shared rope
cache); vLLM restores the target's buffers and veRL's weight sync its parameters. On vLLM 0.27+ the
draft's buffers are left to vLLM's own save.

Which tensors a load writes is found without reading tensor data: a dry run of the draft's own
``load_weights`` on meta tensors (the checkpoint's names, shapes and dtypes) under a dispatch mode
that records the storage of every real tensor an op would write and skips the write. Should the dry
run fail (a loader that reads values), floating-point parameters are taken as the checkpoint's and
every buffer and non-floating parameter is kept.

Size (Qwen2.5-7B target, one-layer EAGLE-3 head, bf16, TP=1, vLLM 0.24): the head's own
``cos_sin_cache``, max_position x head_dim = 32768 x 128 x 2 B = 8 MiB (2048 positions: 0.5 MiB),
and a full-vocabulary head's ``draft_id_to_target_id``, 152064 x 8 B = 1.2 MiB. A reduced-vocabulary
head's ``d2t`` and every weight are in its checkpoint. vLLM 0.27+: the 1.2 MiB alone.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from verl_specrollout import compat

logger = logging.getLogger(__name__)

KEEP_ATTR = "_specrollout_sleep_keep"  # on the draft module: {"tensors": {name: host tensor}}


def vllm_saves_draft_buffers(worker) -> bool:
    """Whether this vLLM's Worker.sleep(level=2) saves the draft's buffers itself (0.27+)."""
    return hasattr(worker, compat.VLLM_WORKER_SLEEP_SAVED_DRAFT_BUFFERS)


def _storage(t: torch.Tensor) -> Optional[int]:
    return None if t.device.type == "meta" or t.numel() == 0 else t.untyped_storage().data_ptr()


def _live_tensors(module: torch.nn.Module) -> dict:
    """{name: (kind, tensor)} of the module's non-empty parameters and buffers."""
    out = {}
    for n, p in module.named_parameters():
        if p.numel() > 0:
            out[n] = ("parameter", p)
    for n, b in module.named_buffers():
        if b is not None and b.numel() > 0:
            out[n] = ("buffer", b)
    return out


def target_storages(target: Optional[torch.nn.Module]) -> set:
    if target is None:
        return set()
    return {s for t in list(target.parameters()) + list(target.buffers()) if (s := _storage(t)) is not None}


class _SkipWrites(TorchDispatchMode):
    """Records the storage of every non-meta tensor an op would write, and skips the op."""

    def __init__(self):
        super().__init__()
        self.written: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        targets = []
        for i, arg in enumerate(func._schema.arguments):
            info = arg.alias_info
            if info is None or not info.is_write:
                continue
            value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
            targets.extend(value if isinstance(value, (list, tuple)) else [value])
        targets = [t for t in targets if isinstance(t, torch.Tensor)]
        if targets:
            for t in targets:
                if (s := _storage(t)) is not None:
                    self.written.add(s)
            return targets[0] if len(targets) == 1 else tuple(targets)
        if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            kwargs = {**kwargs, "device": torch.device("meta")}  # a meta weight moved to the param's device
        return func(*args, **kwargs)


def _owner(module: torch.nn.Module, name: str):
    mod_name, _, attr = name.rpartition(".")
    return (module.get_submodule(mod_name) if mod_name else module), attr


def written_by_load(draft: torch.nn.Module, weights: Iterable) -> set:
    """Names of the draft's tensors that ``draft.load_weights(weights)`` writes, found by a dry run
    on meta copies of ``weights`` that writes nothing (see the module doc)."""
    from verl_specrollout.vllm_adapter.draft_reload import _cpu_packed_linears, _rematerialize_linear_weight

    meta = [(n, t.to("meta")) for n, t in weights]
    live = _live_tensors(draft)
    by_storage: dict = {}
    for n, (_, t) in live.items():
        by_storage.setdefault(_storage(t), []).append(n)
    # What the dry run must leave as it found it, whatever a loader reassigns.
    before = {n: (kind, t, t.data) for n, (kind, t) in live.items()}
    packed = []
    recorder = _SkipWrites()
    try:
        for _, mod in _cpu_packed_linears(draft):  # vLLM-CPU emptied these: a meta weight to load into
            packed.append((mod, mod.weight))
            with torch.device("meta"):
                _rematerialize_linear_weight(mod)
        with torch.no_grad(), recorder:
            draft.load_weights(iter(meta))
    finally:
        for mod, w in packed:
            mod._parameters.pop("weight", None)
            mod.weight = w
        for n, (kind, t, data) in before.items():
            owner, attr = _owner(draft, n)
            table = owner._parameters if kind == "parameter" else owner._buffers
            if table.get(attr) is not t:
                table[attr] = t
            if _storage(t) != _storage(data):
                t.data = data
    out = set()
    for s in recorder.written:
        out.update(by_storage.get(s, ()))
    return out


def keep_draft_state(worker, draft: torch.nn.Module, target: Optional[torch.nn.Module],
                     weights: Optional[list], live: bool = True) -> dict:
    """Copy to host memory every draft tensor that loading ``weights`` (the checkpoint a restore will
    load, as (name, tensor) pairs; None: unknown) would not give back, unless already kept.

    ``live``: the draft's tensors hold good values now (before a sleep, or a reload of a live draft);
    when False (a restore after a sleep) nothing is copied and what would be needed is reported as
    ``lost``. Returns ``{"kept": n, "kept_bytes": b, "names": [...], "lost": [...], "dry_run": ...}``.
    """
    state = draft.__dict__.setdefault(KEEP_ATTR, {"tensors": {}})
    vllm_buffers = vllm_saves_draft_buffers(worker)
    dry_run = "ok"
    written = None
    if weights is not None:
        try:
            written = written_by_load(draft, weights)
        except Exception as exc:  # a loader that needs values: fall back to the dtype rule
            dry_run = f"failed: {exc!r}"
    else:
        dry_run = "no checkpoint"
    if written is None and not state.get("warned"):
        state["warned"] = True
        logger.warning("specrollout draft sleep state: cannot tell which draft tensors the checkpoint restores "
                       "(dry run %s); keeping every buffer and non-floating parameter", dry_run)
    shared = target_storages(target)
    lost = []
    for name, (kind, t) in _live_tensors(draft).items():
        if name in state["tensors"] or _storage(t) in shared:
            continue
        if kind == "buffer" and vllm_buffers:
            continue
        if written is not None:
            if name in written:
                continue
        elif kind == "parameter" and t.is_floating_point():
            continue
        if live:
            state["tensors"][name] = t.detach().to("cpu", copy=True)
        else:
            lost.append(name)
    if lost:
        logger.warning("specrollout draft sleep state: %s were discarded and are neither kept nor in the "
                       "checkpoint; the draft may be wrong until the engine restarts", lost)
    kept = state["tensors"]
    return {"kept": len(kept), "kept_bytes": int(sum(t.numel() * t.element_size() for t in kept.values())),
            "names": sorted(kept), "lost": lost, "dry_run": dry_run, "vllm_saves_draft_buffers": vllm_buffers}


def restore_draft_state(draft: torch.nn.Module, target: Optional[torch.nn.Module]) -> list:
    """Copy the kept tensors back into the draft (never into a tensor whose storage is the target's);
    returns the names written."""
    state = draft.__dict__.get(KEEP_ATTR)
    if not state or not state["tensors"]:
        return []
    live = _live_tensors(draft)
    shared = target_storages(target)
    done = []
    with torch.no_grad():
        for name, saved in state["tensors"].items():
            entry = live.get(name)
            if entry is None or entry[1].shape != saved.shape or _storage(entry[1]) in shared:
                logger.warning("specrollout draft sleep state: %s changed since it was kept; not restored", name)
                continue
            entry[1].data.copy_(saved)
            done.append(name)
    return done
