"""End-to-end drivers that run real veRL jobs (CPU testing platform)."""
