"""The CPU testing platform installs into veRL only when asked for (fresh interpreters, ~30 s)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROBE = """
import verl, torch.distributed as dist
from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device, get_device_id
import verl.third_party.vllm as v
import vllm.model_executor.layers.utils as u
from vllm.plugins import load_general_plugins
load_general_plugins()  # what every vLLM engine process does first: our entry point patches here
m = get_torch_device()
try:
    dev_id = get_device_id()
except Exception:  # the default (nvidia) platform on a CPU-only host
    dev_id = "none"
print(get_device_name(), get_nccl_backend(), dev_id, v.vllm_version,
      hasattr(m, 'memory_reserved') and m.memory_reserved() > 0, getattr(m, 'get_device_name', lambda: 'none')(), getattr(u.dispatch_cpu_unquantized_gemm, '_specrollout_plain', False))
"""


OFF_PROBE = """
import verl
from verl.utils.device import get_device_name
import vllm.model_executor.layers.utils as u
from vllm.plugins import load_general_plugins
load_general_plugins()
print(get_device_name(), getattr(u.dispatch_cpu_unquantized_gemm, '_specrollout_plain', False))
"""


def _probe(probe=PROBE, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("SPECROLLOUT_PLATFORM", "VERL_PLATFORM")}
    e.update(env, VERL_USE_EXTERNAL_MODULES="verl_specrollout.cpu_platform.verl_activate")
    out = subprocess.run([sys.executable, "-c", probe], env=e, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1].split()


def test_cpu_platform_on_request():
    pytest.importorskip("verl")
    pytest.importorskip("vllm")
    dev, backend, dev_id, vllm_version, mem, name, plain = _probe(SPECROLLOUT_PLATFORM="cpu")
    assert (dev, backend, dev_id, mem, name, plain) == ("cpu", "gloo", "cpu", "True", "CPU", "True")
    assert vllm_version.endswith("+cpu")  # veRL's check passes AND vLLM still detects its CPU build


def test_off_by_default():
    pytest.importorskip("verl")
    pytest.importorskip("vllm")
    assert _probe(OFF_PROBE) == ["cuda", "False"]  # veRL's own fallback platform; vLLM untouched
