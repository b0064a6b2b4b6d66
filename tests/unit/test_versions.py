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
