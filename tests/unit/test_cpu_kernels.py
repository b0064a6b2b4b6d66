"""The vLLM-CPU expand_kernel replacement (verl_specrollout/cpu_platform/expand_kernel.py)."""

import numpy as np
import pytest
import torch

from verl_specrollout.cpu_platform.expand_kernel import make_expand_kernel_impl, torch_expand

GREEDY_TEMPERATURE = 0  # what the rejection sampler passes as replace_from for temperatures


def naive_expand(input_val, cu_num_tokens, replace_from, replace_to, num_tokens):
    out, start = [], 0
    for i, end in enumerate(cu_num_tokens.tolist()):
        v = input_val[i].item()
        if v == replace_from:
            v = replace_to
        out += [v] * (end - start)
        start = end
    assert len(out) == num_tokens
    return torch.tensor(out, dtype=input_val.dtype)


def _cases():
    rng = np.random.default_rng(0)
    for dtype in (torch.int32, torch.int64, torch.float32):
        for batch in (1, 3, 17):
            counts = rng.integers(0, 5, size=batch)  # 0 drafts for a request is legal
            cu = torch.tensor(np.cumsum(counts), dtype=torch.int32)
            if dtype.is_floating_point:
                vals = torch.tensor(rng.uniform(0.1, 2.0, size=batch), dtype=dtype)
                vals[:: max(1, batch // 2)] = 0.0  # "greedy" entries, replaced by 1
                yield dtype, vals, cu, 0, 1
            else:
                vals = torch.tensor(rng.integers(0, 50, size=batch), dtype=dtype)
                vals[0] = 7
                yield dtype, vals, cu, 7, 1000 if dtype == torch.int64 else -1


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: f"{c[0]}-b{c[1].numel()}")
def test_torch_expand_matches_naive(case):
    dtype, vals, cu, rf, rt = case
    n = int(cu[-1])
    ref = naive_expand(vals, cu, rf, rt, n)
    out = torch.full((n + 2,), -123, dtype=dtype)  # slack: must not be touched
    torch_expand(out, vals, cu, rf, rt)
    assert out.dtype == dtype
    assert torch.equal(out[:n], ref)
    assert (out[n:] == -123).all()


def _vllm_original():
    pytest.importorskip("vllm")
    try:
        import vllm._custom_ops  # noqa: F401  (loads torch.ops._C on CPU)
        from vllm.utils import cpu_triton_utils as cpu_tl

        fn = cpu_tl._expand_kernel_impl
        fn = getattr(fn, "_specrollout_int64_impl", None) or fn  # unwrap if our plugin already ran
        torch.ops._C.expand_kernel_impl  # noqa: B018
    except Exception as exc:  # not a vLLM-CPU build
        pytest.skip(f"vLLM-CPU fallback kernels not available: {exc!r}")
    return fn


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: f"{c[0]}-b{c[1].numel()}")
def test_replacement_with_vllm_int64_path_matches_naive(case):
    """The full replacement (C++ op for int64, torch otherwise) == naive, for every dtype."""
    impl = make_expand_kernel_impl(int64_impl=_vllm_original())
    dtype, vals, cu, rf, rt = case
    n = int(cu[-1])
    out = torch.empty(n, dtype=dtype)
    impl(out, vals, cu, rf, rt, 8)
    assert torch.equal(out, naive_expand(vals, cu, rf, rt, n))


def test_original_vllm_cpu_kernel_is_wrong_for_float32():
    """Documents the bug: vLLM-CPU's fallback writes a float32 `output` into a dropped int64 copy."""
    original = _vllm_original()
    temps = torch.tensor([0.7, 0.0, 1.3], dtype=torch.float32)
    cu = torch.tensor([2, 4, 5], dtype=torch.int32)
    ref = naive_expand(temps, cu, GREEDY_TEMPERATURE, 1, 5)
    out = torch.full((5,), float("nan"), dtype=torch.float32)  # stands in for new_empty's garbage
    original(out, temps, cu, GREEDY_TEMPERATURE, 1, 8)
    if torch.equal(out, ref):
        pytest.skip("this vLLM-CPU build's expand fallback is correct for float32 (bug fixed upstream)")
    assert not torch.equal(out, ref)
    assert torch.isnan(out).all(), "output was expected to be left untouched"


def test_plugin_installs_and_vllm_routes_to_it(caplog):
    """install() swaps the fallback; after vLLM registers its overrides the dispatcher uses ours."""
    _vllm_original()
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("not a vLLM-CPU platform")
    from vllm.triton_utils import dispatcher
    from vllm.utils import cpu_triton_utils as cpu_tl

    from verl_specrollout.cpu_platform import sampling_kernel_fix

    assert sampling_kernel_fix.install() is True
    assert getattr(cpu_tl._expand_kernel_impl, "_specrollout_fix", False)
    current_platform.register_triton_kernel_overrides()  # what every vLLM worker does at init
    entry = dispatcher._registry.get(sampling_kernel_fix.EXPAND_KERNEL_NAME)
    if entry is not None:  # None when real Triton is present (no fallbacks at all)
        assert getattr(entry[1], "_specrollout_fix", False)
        from vllm.v1.sample import rejection_sampler as rs

        temps = torch.tensor([0.5, 0.0], dtype=torch.float32)
        cu = torch.tensor([1, 3], dtype=torch.int32)
        out = rs.expand_batch_to_tokens(temps, cu, 3, replace_from=0, replace_to=1)
        assert torch.equal(out, torch.tensor([0.5, 1.0, 1.0]))
    assert sampling_kernel_fix.install() is True  # idempotent


def test_plugin_warns_instead_of_crashing_on_unknown_vllm(monkeypatch, caplog):
    _vllm_original()
    from verl_specrollout.cpu_platform import sampling_kernel_fix

    monkeypatch.setattr(sampling_kernel_fix, "CPU_TRITON_UTILS_MODULE", "vllm.no_such_module_xyz")
    with caplog.at_level("WARNING", logger="vllm.specrollout_cpu"):
        assert sampling_kernel_fix.install() is False
    assert "may be lossy" in caplog.text


def test_plugin_env_switch_disables(monkeypatch):
    from verl_specrollout.cpu_platform import sampling_kernel_fix

    monkeypatch.setenv("SPECROLLOUT_CPU_FIX", "0")
    assert not sampling_kernel_fix._fix_enabled()
    monkeypatch.setenv("SPECROLLOUT_CPU_FIX", "1")
    assert sampling_kernel_fix._fix_enabled()


def test_plugin_is_noop_off_cpu(monkeypatch):
    from verl_specrollout.cpu_platform import sampling_kernel_fix

    called = []
    monkeypatch.setattr(sampling_kernel_fix, "_state", {"done": False, "logged": False})
    monkeypatch.setattr(sampling_kernel_fix, "_is_cpu_platform", lambda: False)
    monkeypatch.setattr(sampling_kernel_fix, "install", lambda: called.append(1))
    sampling_kernel_fix.register()
    assert called == [] and sampling_kernel_fix._state["done"]


def test_tolerant_rebind_survives_objects_without_a_dict_namespace():
    """vLLM's own rebinding crashes on e.g. llvmlite's ffi.lib (any attribute, __dict__ included,
    is a function wrapper); ours skips such objects and still rebinds real references."""
    import sys
    import types

    from verl_specrollout.cpu_platform.dispatcher_fix import tolerant_rebind_kernels

    class AnswersEverything:  # like llvmlite's _lib_wrapper: no real __dict__, any name answers
        __slots__ = ()

        def __getattr__(self, name):
            return lambda *a: None

    def original():
        pass

    def wrapper():
        pass

    class Owner:
        kernel = None

    owner = Owner()
    owner.kernel = original
    owner._kernel_arg_names = ("x",)
    mod = types.ModuleType("_specrollout_probe_mod")
    mod.weird = AnswersEverything()
    mod.copy = original
    mod.owner = owner
    sys.modules[mod.__name__] = mod
    try:
        from vllm.triton_utils import dispatcher

        vllm_rebind = getattr(dispatcher, "_rebind_kernels")
        if vllm_rebind is not tolerant_rebind_kernels:  # vLLM's own scan trips on it
            with pytest.raises(AttributeError):
                vllm_rebind([(original, wrapper)])
            mod.copy, owner.kernel = original, original
        tolerant_rebind_kernels([(original, wrapper)])
    finally:
        del sys.modules[mod.__name__]
    assert mod.copy is wrapper and owner.kernel is wrapper and "_kernel_arg_names" not in owner.__dict__
