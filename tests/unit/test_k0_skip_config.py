"""The K=0 skip reads the engine's config through the typed config: a key left out means the
config's default (on), the same default the planner prices K=0 with; an engine without our config
never skips."""

from types import SimpleNamespace

import pytest

from verl_specrollout.config import ADDITIONAL_CONFIG_KEY, SpecRolloutConfig

k0_skip = pytest.importorskip("verl_specrollout.vllm_adapter.k0_skip")


def _proposer(additional):
    return SimpleNamespace(vllm_config=SimpleNamespace(additional_config=additional))


def test_default_is_the_typed_configs():
    assert SpecRolloutConfig().planner.skip_draft_at_k0 is True
    assert k0_skip._skip_enabled(_proposer({ADDITIONAL_CONFIG_KEY: {"enable": True, "method": "eagle3"}}))


def test_explicit_off_and_foreign_engines():
    off = {ADDITIONAL_CONFIG_KEY: {"enable": True, "method": "eagle3", "planner": {"skip_draft_at_k0": False}}}
    assert not k0_skip._skip_enabled(_proposer(off))
    assert not k0_skip._skip_enabled(_proposer({}))
    assert not k0_skip._skip_enabled(_proposer(None))
