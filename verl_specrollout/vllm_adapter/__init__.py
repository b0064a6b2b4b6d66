"""What runs inside vLLM: engine kwargs, the scheduler that re-plans K live, the K=0 draft skip,
worker-side draft reload, spec-decode counters, and vLLM's plugin entry point."""
