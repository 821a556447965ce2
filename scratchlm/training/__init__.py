"""The training loop, its optimizer and schedule, and checkpoints (introduced in Chapter 06); BERT's
held-out metrics (Chapter 07)."""

from .checkpoint import (
    RESERVED_KEYS,
    load_checkpoint,
    read_checkpoint_metadata,
    remove_orphaned_temp_files,
    save_checkpoint,
    tensor_checksum,
)
from .config import TrainConfig, TrainHistory
from .distributed import all_ranks_ok, get_rank, grad_sync_context, is_main_process, unwrap_model
from .evaluation import BertEvaluation, evaluate_bert
from .loop import autocast_context, causal_lm_loss, evaluate, train
from .muon import (
    CUBIC_COEFFICIENTS,
    QUINTIC_BAND,
    QUINTIC_COEFFICIENTS,
    Muon,
    MuonAdamW,
    build_muon_adamw,
    muon_update_scale,
    newton_schulz_orthogonalize,
    split_parameters,
)
from .optim import adamw_with_decay_groups, build_optimizer, fused_adamw_available, lr_at
from .preflight import (
    batch_signature,
    check_checkpoint_writable,
    check_config_json,
    fingerprint_differences,
    model_signature,
    training_fingerprint,
)

__all__ = [
    "BertEvaluation",
    "CUBIC_COEFFICIENTS",
    "Muon",
    "MuonAdamW",
    "QUINTIC_BAND",
    "QUINTIC_COEFFICIENTS",
    "RESERVED_KEYS",
    "TrainConfig",
    "TrainHistory",
    "adamw_with_decay_groups",
    "all_ranks_ok",
    "autocast_context",
    "batch_signature",
    "build_muon_adamw",
    "build_optimizer",
    "causal_lm_loss",
    "check_checkpoint_writable",
    "check_config_json",
    "evaluate",
    "evaluate_bert",
    "fingerprint_differences",
    "fused_adamw_available",
    "get_rank",
    "grad_sync_context",
    "is_main_process",
    "load_checkpoint",
    "lr_at",
    "model_signature",
    "muon_update_scale",
    "newton_schulz_orthogonalize",
    "read_checkpoint_metadata",
    "remove_orphaned_temp_files",
    "save_checkpoint",
    "split_parameters",
    "tensor_checksum",
    "train",
    "training_fingerprint",
    "unwrap_model",
]
