"""An in-process vLLM engine built through the same kwargs path veRL's server uses.

veRL's `vLLMHttpServer` runs inside a Ray actor with an HTTP front end; the engine
it starts is configured by `build_engine_kwargs` (see verl_server.py). This helper
starts `vllm.LLM` with exactly those kwargs, which is the nearest path to veRL's
server that runs in one process on CPU. Used by the quickstart, tests and benchmarks.
"""

from __future__ import annotations

import gc
import os
from typing import Optional

from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.vllm_adapter.engine_kwargs import apply_channel_env, build_engine_kwargs


# The defaults of this in-process engine, made for vLLM-CPU (tests, the quickstart, benchmarks on the
# testbed): eager mode (nothing to capture on a CPU), a 512-token context (the testbed's prompts and
# responses fit), and a fixed 2 GiB KV budget: vLLM-CPU's default reserves 92 % of RAM and refuses to
# start when other processes (tests, Ray, a second engine) hold some of it. A GPU pair at real lengths
# passes its own (benchmarks: --max-model-len, --kv-cache-gb, --no-enforce-eager).
CPU_MAX_MODEL_LEN = 512
CPU_KV_CACHE_GB = 2.0
CPU_ENFORCE_EAGER = True


def make_llm(target_dir: str, spec: Optional[SpecRolloutConfig] = None, *, max_model_len: Optional[int] = None,
             kv_cache_gb: Optional[float] = None, enforce_eager: Optional[bool] = None, **overrides):
    """`vllm.LLM` for `target_dir`; speculative when `spec.enable`. Stats are on (we read them).

    ``max_model_len``, ``kv_cache_gb`` (GiB of KV cache) and ``enforce_eager``: None = the CPU defaults
    above. ``overrides`` are vLLM engine arguments and win over everything here (a caller's own
    ``kv_cache_memory_bytes`` or ``max_model_len`` still works as before).

    Determinism comes from the engine seed. Do not pass per-request `SamplingParams(seed=...)`
    on vLLM-CPU: with chunked prefill vLLM rewinds the request's generator (`set_offset`), which
    CPU generators do not support ("CPU Generator does not use offset").
    """
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
    if kv_cache_gb is not None and not kv_cache_gb > 0:
        raise ValueError(f"kv_cache_gb must be > 0 GiB, got {kv_cache_gb}")
    # In-process engine: starts in ~1.5 s instead of 15-25 s and keeps our plugins in one process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    kwargs = dict(
        model=target_dir,
        dtype="float32",
        enforce_eager=CPU_ENFORCE_EAGER if enforce_eager is None else bool(enforce_eager),
        disable_log_stats=False,
        max_model_len=CPU_MAX_MODEL_LEN if max_model_len is None else int(max_model_len),
        seed=0,
        kv_cache_memory_bytes=int((CPU_KV_CACHE_GB if kv_cache_gb is None else kv_cache_gb) * (1 << 30)),
    )
    kwargs.update(overrides)
    if spec is not None and spec.enable:
        kwargs.update(build_engine_kwargs(spec, target_path=target_dir, existing=kwargs))
        apply_channel_env(spec)  # planner.stats_path / control_path reach the scheduler this way
        from verl_specrollout.vllm_adapter import k0_skip

        k0_skip.install()  # also an entry point; explicit here so an in-process engine has it
    # An in-process engine that was dropped but sits in a reference cycle tears vLLM's process-global
    # parallel state down (destroy_model_parallel) whenever the collector reaches it; if that happens
    # while this engine's model is being built, its layers find no tensor-parallel group. Collect first.
    gc.collect()
    return LLM(**kwargs)
