"""Draft model definitions and checkpoint formats."""

from .eagle3 import (  # noqa: F401
    Eagle3Config,
    Eagle3Draft,
    eagle3_loss,
    load_vllm_checkpoint,
    save_vllm_checkpoint,
)
