"""Importing this module installs the CPU testing platform (if ``SPECROLLOUT_PLATFORM=cpu``).

For ``VERL_USE_EXTERNAL_MODULES=verl_specrollout.cpu_platform.verl_activate`` (read by
``import verl`` in every process, Ray workers and vLLM workers included).
"""

from verl_specrollout.cpu_platform.verl_platform import maybe_install

maybe_install()
