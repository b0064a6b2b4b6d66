"""offline_engine.make_llm: engine settings are parameters with the CPU defaults it always had."""

import pytest

from verl_specrollout.vllm_adapter import offline_engine


def test_cpu_defaults_are_the_values_it_always_used():
    assert offline_engine.CPU_MAX_MODEL_LEN == 512 and offline_engine.CPU_ENFORCE_EAGER is True
    assert int(offline_engine.CPU_KV_CACHE_GB * (1 << 30)) == 2 << 30


@pytest.mark.parametrize("kw, msg", [({"max_model_len": 0}, "max_model_len must be >= 1"),
                                     ({"kv_cache_gb": 0}, "kv_cache_gb must be > 0"),
                                     ({"kv_cache_gb": float("nan")}, "kv_cache_gb must be > 0")])
def test_bad_settings_are_refused_before_an_engine_starts(kw, msg):
    with pytest.raises(ValueError, match=msg):
        offline_engine.make_llm("/nonexistent", **kw)
