"""Draft model definitions and checkpoint formats.

The torch-based names are resolved on first use: `verl_specrollout.config` imports
`verl_specrollout.draft.format` (JSON only), and importing this package must not pull in torch.
"""

_EAGLE3_NAMES = ("Eagle3Config", "Eagle3Draft", "eagle3_loss", "load_vllm_checkpoint", "save_vllm_checkpoint")

__all__ = list(_EAGLE3_NAMES)


def __getattr__(name):
    if name in _EAGLE3_NAMES:
        from . import eagle3

        return getattr(eagle3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
