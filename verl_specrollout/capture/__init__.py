"""Actor-side capture of EAGLE-3 training data during veRL's existing forward (no extra forward):
hooks.py (forward hooks), samples.py (pure packed-batch -> samples), budget.py (the per-step
budget: which windows are kept, the counts, the bytes calculator), shipper.py (async Ray shipping
with a bounded in-flight queue), verl_capture.py (wraps veRL's FSDP engine forward_step)."""
