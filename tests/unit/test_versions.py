"""Version guard: one clear error outside the supported veRL/vLLM range."""

import pytest

from verl_specrollout.config import SpecRolloutConfigError
from verl_specrollout import compat


def test_installed_versions_are_supported():
    compat.check_versions()  # the pinned CPU stack must pass


@pytest.mark.parametrize("which, bad", [("verl_version", "0.7.2"), ("vllm_version", "0.20.1"), ("vllm_version", "1.0.0")])
def test_out_of_range_version_rejected(monkeypatch, which, bad):
    monkeypatch.setattr(compat, which, lambda: bad)
    with pytest.raises(SpecRolloutConfigError, match="not supported"):
        compat.check_versions()


def test_missing_package(monkeypatch):
    monkeypatch.setattr(compat, "vllm_version", lambda: None)
    with pytest.raises(SpecRolloutConfigError, match="needs vLLM"):
        compat.check_versions()


def test_cpu_build_version_parses():
    assert compat._major_minor("0.31.0+cpu") == (0, 31)


def test_engine_without_dynamic_k_is_refused_at_start_up(monkeypatch):
    # A vLLM inside the version range whose build lacks num_speculative_tokens_per_batch_size:
    # one clear error at start-up, not a planner that silently never changes K.
    monkeypatch.setattr(compat, "vllm_has_dynamic_sd", lambda: False)
    with pytest.raises(SpecRolloutConfigError, match="num_speculative_tokens_per_batch_size"):
        compat.check_versions()


def test_installed_vllm_has_dynamic_k():
    assert compat.vllm_has_dynamic_sd()
