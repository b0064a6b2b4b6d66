"""Online draft learning: the sidecar Ray actor (actor.py), its replay buffer (buffer.py),
training step (trainer.py) and versioned publishing in vLLM's EAGLE-3 format (publisher.py)."""
