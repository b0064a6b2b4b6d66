"""Live reload of a published EAGLE-3 draft into a *running* vLLM engine, in place.

The rollout side calls :class:`DraftReloader.maybe_reload` after each policy weight sync.
It reads ``<publish_dir>/LATEST`` (written by :mod:`verl_specrollout.learner.publisher`) and,
when a newer version is there, runs :func:`reload_draft_in_worker` inside every vLLM worker
(``collective_rpc`` with a callable: the worker object comes in as ``self``).  The worker
reaches the drafter through ``model_runner.get_draft_model()`` (vLLM 0.26+; older runners:
``model_runner.drafter.model``) and calls the draft model's own ``load_weights``. A version
already live is not reloaded (only LATEST is read). Each worker maps the checkpoint files rather
than reading them (vllm_adapter/draft_files.py: one read per node and version through the page
cache, no per-rank copy). After a sleep that discarded the draft (level 2), :meth:`DraftReloader.restore`
loads with ``restore=True``: the draft tensors no checkpoint holds come back from the host copy
taken before the sleep (:func:`keep_draft_in_worker`, vllm_adapter/draft_sleep.py), then the checkpoint.

Safety rules enforced here, not assumed:

* Modules the draft shares with the target (``embed_tokens``, ``lm_head`` when the draft
  checkpoint has none) are never written: checkpoint tensors under those names are skipped
  (writing them would overwrite the *policy's* embedding / head inside vLLM) and a fingerprint
  of the target's embedding and head (address, shape, dtype, a strided sample read in place:
  no full-size temporary) is asserted unchanged after the load.
* A version that fails to load (missing file, wrong shapes, NaN, any exception) leaves the last
  good draft in place (parameters are copied to host memory before the load and put back) and is
  logged at WARNING; the reload returns the version that is actually live.
* CPU only: vLLM-CPU repacks linear weights for oneDNN / sgl kernels at load time and replaces
  ``layer.weight`` by an empty Parameter (``dispatch_cpu_unquantized_gemm(remove_weight=True)``),
  so ``load_weights`` would have nowhere to write.  For the draft's linears only, we give such a
  layer a fresh full-size weight Parameter carrying its ``weight_loader``, load into it, then
  call the layer's ``quant_method.process_weights_after_loading`` to repack (which empties it
  again).  On failure the old packed kernel closure and empty weight are put back, so the last
  good draft keeps running.  If the CPU plain-weight plugin
  (``cpu_platform/plain_linear_weights.py``) is active, weights are already plain and this path is
  simply not taken.  GPU builds never take it (weights are never emptied there).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

import torch

from verl_specrollout import compat
from verl_specrollout.learner.publisher import list_versions, read_latest, version_name
from verl_specrollout.vllm_adapter.draft_files import check_finite, map_checkpoint
from verl_specrollout.vllm_adapter.draft_sleep import keep_draft_state, restore_draft_state

logger = logging.getLogger(__name__)

WORKER_VERSION_ATTR = "_specrollout_draft_version"


# ----------------------------------------------------------------------------- worker side

def _get_draft_model(worker) -> torch.nn.Module:
    runner = getattr(worker, compat.VLLM_WORKER_MODEL_RUNNER, worker)
    fn = getattr(runner, compat.VLLM_RUNNER_GET_DRAFT_MODEL, None)
    model = fn() if callable(fn) else None
    if model is None:
        for attr in compat.VLLM_RUNNER_DRAFTER_ATTRS:
            d = getattr(runner, attr, None)
            model = getattr(d, "model", None) if d is not None else None
            if model is not None:
                break
    if model is None:
        raise RuntimeError("no draft model found in this vLLM worker (is speculative decoding on?)")
    if hasattr(model, "unwrap"):
        model = model.unwrap()
    return model


def _get_target_model(worker) -> Optional[torch.nn.Module]:
    runner = getattr(worker, compat.VLLM_WORKER_MODEL_RUNNER, worker)
    fn = getattr(runner, compat.VLLM_RUNNER_GET_MODEL, None)
    try:
        return fn() if callable(fn) else None
    except Exception:
        return None


FINGERPRINT_SAMPLES = 4096


def _fingerprint(module: Optional[torch.nn.Module]) -> dict:
    """Per shared parameter (embed_tokens, lm_head) of the target: its address, shape, dtype and the
    bytes of a strided sample of about FINGERPRINT_SAMPLES elements, read in its own dtype. A load
    that wrote into it (a whole tensor or a TP shard of it) changes the sample; a module swapped for
    another changes the address. No copy of the parameter is made: the former float32 sums copied
    each 152064 x 3584 bf16 matrix of a 7B target twice (2.2 GB each, 4.4 GB transient)."""
    if module is None:
        return {}
    out = {}
    for name, p in module.named_parameters():
        if any(s in name for s in compat.VLLM_DRAFT_SHARED_MODULES) and p.numel() > 0:
            out[name] = (p.data_ptr(), tuple(p.shape), str(p.dtype), _strided_sample(p))
    return out


def _strided_sample(p: torch.Tensor) -> bytes:
    n = p.numel()
    step = max(1, n // FINGERPRINT_SAMPLES)
    if p.dim() > 1 and step % p.shape[-1] == 0:
        step += 1  # walk across columns as well as rows
    idx = torch.arange(0, n, step, device=p.device)
    sample = torch.take(p.detach(), idx).cpu()
    return sample.view(torch.uint8).numpy().tobytes() if sample.dtype != torch.bool else sample.numpy().tobytes()


def _shared_names(draft: torch.nn.Module, target: Optional[torch.nn.Module]) -> set:
    """Checkpoint names that must not be loaded: modules vLLM shares with the target.

    A module is shared when the draft's parameters under that name ARE the target's (vLLM assigns
    the target's embed_tokens / lm_head to an EAGLE draft that has none of its own); a small draft
    LM (method draft_model) owns both. Without a target to compare with, the EAGLE model's own
    has_own_* flags decide."""
    target_params = {id(p) for p in target.parameters()} if target is not None else None
    skip = set()
    for short, own_flag in zip(compat.VLLM_DRAFT_SHARED_MODULES,
                               (compat.VLLM_DRAFT_OWN_EMBED_FLAG, compat.VLLM_DRAFT_OWN_LM_HEAD_FLAG)):
        if target_params is None:
            if not getattr(draft, own_flag, False):
                skip.add(short)
            continue
        params = [p for n, p in draft.named_parameters(remove_duplicate=False) if short in n]
        if params and all(id(p) in target_params for p in params):
            skip.add(short)
    return skip


def _read_checkpoint(ckpt_dir: str) -> dict:
    """Every tensor of a draft checkpoint in any format draft/format.py knows (safetensors or a
    torch .bin read with weights_only, single file or sharded), as views of the mapped files (one
    read per node and version, shared by the TP ranks: vllm_adapter/draft_files.py); refuses
    non-finite values."""
    sd = map_checkpoint(ckpt_dir)
    check_finite(sd)
    return sd


def _cpu_packed_linears(draft: torch.nn.Module) -> list:
    """Draft linear layers whose weight vLLM-CPU emptied after repacking (CPU only)."""
    attr = compat.VLLM_CPU_LINEAR_ATTR
    out = []
    for name, mod in draft.named_modules():
        w = getattr(mod, "weight", None)
        if (isinstance(w, torch.nn.Parameter) and w.numel() == 0 and hasattr(mod, attr)
                and hasattr(mod, "output_partition_sizes") and hasattr(mod, "quant_method")):
            out.append((name, mod))
    return out


def _rematerialize_linear_weight(mod) -> None:
    """CPU only: re-create an emptied linear weight exactly as vLLM built it at load time
    (same Parameter class and weight_loader), so ``load_weights`` can write into it."""
    v2_ok = type(mod.quant_method).__name__ in _weight_loader_v2_supported()
    use_v2 = v2_ok and type(mod).__name__ not in compat.VLLM_LINEAR_V1_LOADER_CLASSES and hasattr(mod, "weight_loader_v2")
    loader = mod.weight_loader_v2 if use_v2 else mod.weight_loader
    dtype = getattr(mod, "params_dtype", None) or mod.weight.dtype
    del mod._parameters["weight"]
    mod.quant_method.create_weights(
        mod, getattr(mod, "input_size_per_partition", mod.input_size), list(mod.output_partition_sizes),
        mod.input_size, mod.output_size, dtype, weight_loader=loader)


def _weight_loader_v2_supported() -> list:
    try:
        return list(compat.resolve(f"{compat.VLLM_LINEAR_MODULE}:{compat.VLLM_LINEAR_V2_LIST}"))
    except Exception:
        return []


def _draft_weights(sd: dict, skip: set) -> tuple:
    """(checkpoint tensors to load, names skipped because the draft shares them with the target)."""
    weights, skipped = [], []
    for name, t in sd.items():
        if any(s in name for s in skip):
            skipped.append(name)
            continue
        weights.append((name, t))
    return weights, skipped


def keep_draft_in_worker(self, ckpt_dir: Optional[str], live: bool = True) -> dict:
    """Run inside a vLLM worker before a sleep that may discard weights: keep on the host every draft
    tensor that loading ``ckpt_dir`` (the checkpoint a restore will load) would not give back
    (vllm_adapter/draft_sleep.py). Reads only the checkpoint's header. Returns its summary."""
    draft = _get_draft_model(self)
    target = _get_target_model(self)
    weights = None
    if ckpt_dir:
        try:
            weights, _ = _draft_weights(map_checkpoint(ckpt_dir), _shared_names(draft, target))
        except Exception as exc:
            logger.warning("specrollout draft sleep state: cannot read %s (%r)", ckpt_dir, exc)
    return keep_draft_state(self, draft, target, weights, live=live)


def reload_draft_in_worker(self, ckpt_dir: str, version: int, restore: bool = False) -> dict:
    """Run inside a vLLM worker (``llm.collective_rpc(reload_draft_in_worker, args=(dir, v))``).

    ``restore``: the draft's weights were discarded (sleep level 2): the draft tensors kept on the
    host before the sleep go back first, then the checkpoint is loaded over them. Otherwise the
    draft is live, and what this checkpoint would not restore after a later sleep is kept first.

    Returns ``{"version": live_version, "ok": bool, "error": str|None, "loaded": n, "skipped": [...],
    "restored": [...], "lost": [...]}`` (``restored``: tensors put back from the host copy; ``lost``:
    discarded tensors that neither that copy nor the checkpoint holds).
    """
    prev = getattr(self, WORKER_VERSION_ATTR, None)
    try:
        draft = _get_draft_model(self)
    except Exception as exc:  # no drafter: nothing to keep
        logger.warning("specrollout draft reload v%s: %s", version, exc)
        return {"version": prev, "ok": False, "error": repr(exc), "loaded": 0, "skipped": []}
    target = _get_target_model(self)
    fp_before = _fingerprint(target)
    skip = _shared_names(draft, target)
    packed = _cpu_packed_linears(draft)
    saved_packed = []
    rollback = {}
    restored, lost = [], []
    try:
        if restore:  # before the checkpoint (which wins), and whether or not it loads
            restored = restore_draft_state(draft, target)
        sd = _read_checkpoint(ckpt_dir)
        weights, skipped = _draft_weights(sd, skip)
        if not weights:
            raise ValueError("checkpoint has no draft weights")
        if restore:
            lost = keep_draft_state(self, draft, target, weights, live=False)["lost"]
        else:
            keep_draft_state(self, draft, target, weights, live=True)
        # The last good draft, kept in host memory (not beside it on the device) in case the load fails.
        rollback = {n: p.detach().to("cpu", copy=True) for n, p in draft.named_parameters()
                    if p.numel() > 0 and not any(s in n for s in skip)}
        # CPU only: give repacked linears a full-size weight to load into (see module doc).
        if packed:
            for name, mod in packed:
                saved_packed.append((mod, mod.weight, getattr(mod, compat.VLLM_CPU_LINEAR_ATTR)))
                _rematerialize_linear_weight(mod)
        with torch.no_grad():
            draft.load_weights(iter(weights))
        if packed:
            for _, mod in packed:
                mod.quant_method.process_weights_after_loading(mod)
        fp_after = _fingerprint(target)
        assert fp_after == fp_before, "draft reload wrote into a module shared with the target"
        setattr(self, WORKER_VERSION_ATTR, version)
        return {"version": version, "ok": True, "error": None, "loaded": len(weights), "skipped": skipped,
                "restored": restored, "lost": lost}
    except Exception as exc:
        with torch.no_grad():
            for mod, w, lin in saved_packed:
                mod._parameters.pop("weight", None)
                mod.weight = w
                setattr(mod, compat.VLLM_CPU_LINEAR_ATTR, lin)
            params = dict(draft.named_parameters())
            for n, t in rollback.items():
                if n in params and params[n].shape == t.shape:
                    params[n].data.copy_(t)
        logger.warning("specrollout draft reload of v%s from %s failed, keeping v%s: %r",
                       version, ckpt_dir, prev, exc)
        return {"version": prev, "ok": False, "error": repr(exc), "loaded": 0, "skipped": [],
                "restored": restored, "lost": lost}


# ----------------------------------------------------------------------------- driver side

def _rpc_failure(exc: BaseException) -> dict:
    return {"version": None, "ok": False, "error": f"collective_rpc failed: {exc!r}", "loaded": 0, "skipped": []}


class DraftReloader:
    """Driver-side handle: ``rpc`` is ``llm.collective_rpc`` (in-process engine) or veRL's
    server-side ``engine.collective_rpc``; both take a callable and ``args``."""

    def __init__(self, rpc: Callable[..., list], publish_dir: Optional[str] = None,
                 initial_version: Optional[int] = None, method: Any = None, bootstrap_dir: Optional[str] = None,
                 keep_method: Any = None):
        """``method``: what ``rpc`` runs in the workers -- default the function
        :func:`reload_draft_in_worker` (in-process / pickling executors); a worker-extension method
        name (e.g. ``compat.WORKER_RELOAD_METHOD``) where the executor refuses callables.
        ``keep_method``: the same for :func:`keep_draft_in_worker` (default: the function, or
        ``compat.WORKER_KEEP_DRAFT_METHOD`` when ``method`` is a name)."""
        self._rpc = rpc
        self._method = method or reload_draft_in_worker
        self._keep_method = keep_method or (compat.WORKER_KEEP_DRAFT_METHOD if isinstance(self._method, str)
                                            else keep_draft_in_worker)
        self.last_keep: Optional[dict] = None
        self.publish_dir = publish_dir
        self.bootstrap_dir = bootstrap_dir  # the draft_path checkpoint: version 0
        self.current_draft_version: Optional[int] = initial_version
        self.last_result: Optional[dict] = None
        self.failures = 0
        self.bad_versions: set = set()  # not retried by maybe_reload (a newer version is)

    @classmethod
    def for_llm(cls, llm: Any, publish_dir: Optional[str] = None, **kw) -> "DraftReloader":
        return cls(llm.collective_rpc, publish_dir, **kw)

    def _args(self, ckpt_dir: str, version: int, restore: bool) -> tuple:
        return (ckpt_dir, int(version), True) if restore else (ckpt_dir, int(version))

    def load(self, ckpt_dir: str, version: int, restore: bool = False) -> Optional[int]:
        """Load ``ckpt_dir`` as ``version`` into every worker; returns the live version.
        ``restore``: after a sleep that discarded the draft (see :func:`reload_draft_in_worker`)."""
        try:
            results = self._rpc(self._method, args=self._args(ckpt_dir, version, restore))
        except Exception as exc:  # the call itself failed: a failed load like any other
            results = [_rpc_failure(exc)]
        return self._finish(results, version)

    def _finish(self, results, version: int) -> Optional[int]:
        # A version that failed is marked bad (never retried; a newer one is), so a broken
        # checkpoint costs one failed load and one log line, not one per weight sync.
        results = list(results or [])
        self.last_result = results[0] if results else None
        ok = bool(results) and all(r.get("ok") for r in results)
        if ok:
            self.current_draft_version = int(version)
        else:
            self.failures += 1
            self.bad_versions.add(int(version))
            logger.warning("specrollout: draft v%s not loaded (%s); live draft stays v%s", version,
                           [r.get("error") for r in results], self.current_draft_version)
        return self.current_draft_version

    def maybe_reload(self) -> Optional[int]:
        """Load the newest published version if it is newer than the live one."""
        if not self.publish_dir:
            return self.current_draft_version
        latest = read_latest(self.publish_dir)
        if latest is None:
            return self.current_draft_version
        version, path = latest
        if self.current_draft_version is not None and version <= self.current_draft_version:
            return self.current_draft_version
        if version in self.bad_versions:
            return self.current_draft_version
        return self.load(path, version)


    def restore_target(self) -> Optional[tuple]:
        """``(version, path)`` to load when the engine's draft weights were discarded (sleep
        level 2): the newest good published version -- LATEST, or when LATEST is a version that
        failed to load, the newest older one still on disk (the live one among them) -- else the
        bootstrap checkpoint (v0).  Falling back to v0 while a good published version is on disk
        would take the rollout's draft back to its start."""
        latest = read_latest(self.publish_dir) if self.publish_dir else None
        if latest is not None and latest[0] not in self.bad_versions:
            return latest
        if latest is not None:
            older = [v for v in list_versions(self.publish_dir) if v < latest[0] and v not in self.bad_versions]
            if older:
                return older[-1], os.path.join(self.publish_dir, version_name(older[-1]))
        return (0, self.bootstrap_dir) if self.bootstrap_dir else None

    def restore(self) -> Optional[int]:
        target = self.restore_target()
        if target is None:
            logger.warning("specrollout: draft weights were discarded and there is no checkpoint to restore")
            return self.current_draft_version
        return self.load(target[1], target[0], restore=True)

    def keep_target(self) -> Optional[str]:
        """The checkpoint a restore would load now (what the host copy must complement)."""
        target = self.restore_target()
        return target[1] if target is not None else None

    def keep(self, live: bool = True) -> Optional[dict]:
        """Before a sleep that may discard weights: every worker keeps on the host the draft tensors
        the restore checkpoint cannot give back. Returns the first worker's summary (None on failure)."""
        try:
            results = self._rpc(self._keep_method, args=(self.keep_target(), bool(live)))
        except Exception as exc:
            logger.warning("specrollout: cannot keep the draft's state before sleep: %r", exc)
            return None
        self.last_keep = (list(results or []) or [None])[0]
        return self.last_keep


class AsyncDraftReloader(DraftReloader):
    """For veRL's ``vLLMHttpServer`` (AsyncLLM): ``rpc`` is ``self.engine.collective_rpc`` (a
    coroutine).  Note veRL's own ``vLLMHttpServer.collective_rpc`` drops the results, so call the
    engine's directly."""

    async def aload(self, ckpt_dir: str, version: int, restore: bool = False) -> Optional[int]:
        try:
            results = await self._rpc(self._method, args=self._args(ckpt_dir, version, restore))
        except Exception as exc:  # the call itself failed: a failed load like any other
            results = [_rpc_failure(exc)]
        return self._finish(results, version)

    async def amaybe_reload(self) -> Optional[int]:
        if not self.publish_dir:
            return self.current_draft_version
        latest = read_latest(self.publish_dir)
        if latest is None or (self.current_draft_version is not None and latest[0] <= self.current_draft_version):
            return self.current_draft_version
        if latest[0] in self.bad_versions:
            return self.current_draft_version
        return await self.aload(latest[1], latest[0])

    async def arestore(self) -> Optional[int]:
        target = self.restore_target()
        if target is None:
            logger.warning("specrollout: draft weights were discarded and there is no checkpoint to restore")
            return self.current_draft_version
        return await self.aload(target[1], target[0], restore=True)

    async def akeep(self, live: bool = True) -> Optional[dict]:
        try:
            results = await self._rpc(self._keep_method, args=(self.keep_target(), bool(live)))
        except Exception as exc:
            logger.warning("specrollout: cannot keep the draft's state before sleep: %r", exc)
            return None
        self.last_keep = (list(results or []) or [None])[0]
        return self.last_keep
