"""The CPU test rig: never imported by the product on a GPU cluster.

cpu_platform/ (veRL on CPU and the vLLM-CPU kernel fixes), testbed/ (tokenizer, task, trained
tiny targets and drafts, cached), e2e/ (real veRL GRPO runs on CPU), quickstart.py (the main job).
The product imports it only when the CPU platform is asked for (SPECROLLOUT_PLATFORM=cpu) or
vLLM runs on a CPU.
"""
