"""CPU-platform (vLLM-CPU) fixes. Nothing heavy is imported here."""
