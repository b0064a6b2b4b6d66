"""The engine-side reader: one typed config per engine config, parsed once, None for engines
that are not ours, one clear error for a bad block."""

import copy
from types import SimpleNamespace

import pytest

from verl_specrollout.config import ADDITIONAL_CONFIG_KEY, SpecRolloutConfig, SpecRolloutConfigError
from verl_specrollout.vllm_adapter import engine_config as ec


@pytest.fixture(autouse=True)
def _fresh_cache():
    ec.clear_cache()
    yield
    ec.clear_cache()


def _vllm_config(block):
    return SimpleNamespace(additional_config={ADDITIONAL_CONFIG_KEY: block})


def _block(**kw):
    raw = {"enable": True, "method": "ngram", "max_k": 3}
    raw.update(kw)
    return SpecRolloutConfig.from_dict(raw).engine_dict()


def test_typed_config_with_defaults():
    cfg = ec.engine_config(_vllm_config({"enable": True, "method": "ngram"}))
    assert isinstance(cfg, SpecRolloutConfig)
    assert cfg.method == "ngram" and cfg.planner.skip_draft_at_k0 is True  # the declared default


def test_parsed_once_same_object_back(monkeypatch):
    a = _vllm_config(_block())
    another = _vllm_config(_block(max_k=2))
    calls = []
    real = SpecRolloutConfig.from_dict

    def counting(raw):
        calls.append(raw)
        return real(raw)

    monkeypatch.setattr(SpecRolloutConfig, "from_dict", staticmethod(counting))
    # A copy of the same config (vLLM copies VllmConfig between the engine core and its workers).
    b = copy.deepcopy(a)
    first = ec.engine_config(a)
    assert ec.engine_config(a) is first and ec.engine_config(b) is first
    assert len(calls) == 1
    # Another engine with another config in the same process gets its own.
    other = ec.engine_config(another)
    assert other is not first and other.max_k == 2 and first.max_k == 3
    assert len(calls) == 2


@pytest.mark.parametrize("vllm_config", [
    SimpleNamespace(additional_config={}),
    SimpleNamespace(additional_config=None),
    SimpleNamespace(additional_config={ADDITIONAL_CONFIG_KEY: None}),
    SimpleNamespace(additional_config={ADDITIONAL_CONFIG_KEY: {}}),
    SimpleNamespace(),
    None,
], ids=["empty", "null", "null-block", "empty-block", "no-attr", "none"])
def test_none_without_our_config(vllm_config):
    assert ec.engine_config(vllm_config) is None


def test_bad_block_is_one_clear_error_every_time():
    bad = _vllm_config({"enable": True, "method": "ngram", "planner": {"max_k": 3}})
    for _ in range(2):  # not cached as good, not swallowed on the second ask
        with pytest.raises(SpecRolloutConfigError,
                           match=r"additional_config\['specrollout'\]: unknown key\(s\) under specrollout.planner: max_k"):
            ec.engine_config(bad)


def test_real_vllm_config():
    vllm_config_mod = pytest.importorskip("vllm.config")
    vcfg = vllm_config_mod.VllmConfig(additional_config={ADDITIONAL_CONFIG_KEY: _block()})
    cfg = ec.engine_config(vcfg)
    assert cfg is not None and cfg.max_k == 3 and cfg.planner.stats_path is None
    assert ec.engine_config(vcfg) is cfg
    assert ec.engine_config(vllm_config_mod.VllmConfig()) is None
