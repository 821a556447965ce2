"""The training loop, its optimizer and schedule, and checkpoints (introduced in Chapter 06)."""

from .checkpoint import (
    RESERVED_KEYS,
    load_checkpoint,
    read_checkpoint_metadata,
    remove_orphaned_temp_files,
    save_checkpoint,
    tensor_checksum,
)
from .loop import TrainConfig, TrainHistory, autocast_context, causal_lm_loss, evaluate, train
from .optim import adamw_with_decay_groups, build_optimizer, fused_adamw_available, lr_at

__all__ = [
    "RESERVED_KEYS",
    "TrainConfig",
    "TrainHistory",
    "adamw_with_decay_groups",
    "autocast_context",
    "build_optimizer",
    "causal_lm_loss",
    "evaluate",
    "fused_adamw_available",
    "load_checkpoint",
    "lr_at",
    "read_checkpoint_metadata",
    "remove_orphaned_temp_files",
    "save_checkpoint",
    "tensor_checksum",
    "train",
]
