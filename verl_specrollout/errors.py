"""The one exception type for bad settings and bad inputs, importable from anywhere without
pulling in the config (draft/format.py reads checkpoints for the config's own validation)."""


class SpecRolloutConfigError(ValueError):
    """A bad verl-specrollout setting. The message names the key and the fix."""
