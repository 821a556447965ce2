"""What every Chapter 09 head shares: calling the encoder, pooling, and the checks of a batch.

A head wraps any encoder that follows the model contract: it is called as
``encoder(input_ids=..., attention_mask=..., token_type_ids=...)`` (``token_type_ids`` only when
given) and returns a :class:`~scratchlm.models.outputs.ModelOutput` whose ``last_hidden_state`` is
(B, T, C) and, for BERT-like encoders, whose ``pooler_output`` is (B, C).

Checks come in two kinds. Shape and dtype checks read only metadata, so ``forward`` does them (no
host sync, it still compiles). Value checks — labels in range, masks of 0/1, no NaN targets —
must read the tensors, so they live in each head's explicit ``validate_inputs(batch)``, to call
on a batch or two before training (or in a collator's tests), never inside the step.
Introduced in Chapter 09.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..models.outputs import ModelOutput
from .pooling import POOLINGS, pool

HEAD_POOLINGS = POOLINGS + ("pooler",)


def check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_dropout(dropout: object) -> None:
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1); got {dropout!r}")


def check_pooling(pooling: object) -> None:
    if pooling not in HEAD_POOLINGS:
        raise ValueError(f"pooling must be one of {HEAD_POOLINGS}; got {pooling!r}")


def _is_int(x: Tensor) -> bool:
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def check_ids(input_ids: object, attention_mask: object, token_type_ids: object, suffix: str = "") -> None:
    """Shape/dtype checks of the encoder inputs (metadata only, no host sync)."""
    if not isinstance(input_ids, Tensor) or not _is_int(input_ids) or input_ids.dim() != 2:
        got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor) \
            else type(input_ids).__name__
        raise TypeError(f"input_ids{suffix} must be an integer tensor of shape (B, T); got {got}")
    for name, x in ((f"attention_mask{suffix}", attention_mask), (f"token_type_ids{suffix}", token_type_ids)):
        if x is None:
            continue
        if not isinstance(x, Tensor) or x.is_floating_point() or x.is_complex():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{name} must be an integer or bool tensor (B, T); got {got}")
        if x.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids{suffix} {tuple(input_ids.shape)}; "
                             f"got {tuple(x.shape)}")


def validate_ids(batch: Mapping[str, object], suffix: str = "") -> None:
    """Value checks of input_ids / attention_mask / token_type_ids (host sync)."""
    ids, mask = batch.get(f"input_ids{suffix}"), batch.get(f"attention_mask{suffix}")
    if ids is None:
        raise ValueError(f"the batch has no 'input_ids{suffix}'")
    check_ids(ids, mask, batch.get(f"token_type_ids{suffix}"), suffix)
    if bool((ids < 0).any()):
        raise ValueError(f"input_ids{suffix} holds negative ids (padding must be a real id, e.g. 0)")
    if mask is not None:
        if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(f"attention_mask{suffix} must hold only 0 and 1")
        empty = ~mask.bool().any(dim=1)  # (B,)
        if bool(empty.any()):
            raise ValueError(f"attention_mask{suffix} rows {torch.nonzero(empty).flatten().tolist()} have no "
                             "real token")


def check_keys(batch: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    if not isinstance(batch, Mapping):
        raise TypeError(f"validate_inputs expects a dict of tensors; got {type(batch).__name__}")
    unknown = sorted(set(batch) - set(allowed))
    if unknown:
        raise ValueError(f"unexpected keys {unknown}; forward accepts {list(allowed)}")


def check_class_labels(labels: Tensor, num_classes: int, shape: tuple[int, ...], name: str = "labels") -> None:
    """Metadata checks of integer class labels (forward)."""
    if not isinstance(labels, Tensor) or not _is_int(labels):
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"{name} must be an integer tensor of class indices in [0, {num_classes}) "
                        f"(or {IGNORE_INDEX} to ignore); got {got}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(labels.shape)}")


def validate_class_labels(labels: Tensor, num_classes: int, shape: tuple[int, ...]) -> None:
    """Value checks of class labels (host sync): in [0, K) or IGNORE_INDEX, and not all ignored."""
    check_class_labels(labels, num_classes, shape)
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"labels must be in [0, {num_classes}) or {IGNORE_INDEX}; got "
                         f"{sorted(set(labels[bad].tolist()))}")
    if not bool((labels != IGNORE_INDEX).any()):
        raise ValueError(f"every label is {IGNORE_INDEX}: nothing to learn from (the mean loss would be NaN)")


class EncoderHead(nn.Module):
    """Base of the heads: holds the encoder, runs it, checks its output, pools. Introduced in Chapter 09."""

    def __init__(self, encoder: nn.Module, hidden_size: int | None, dropout: float = 0.1) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module; got {type(encoder).__name__}")
        if hidden_size is not None:
            check_positive_int("hidden_size", hidden_size)
        check_dropout(dropout)
        self.encoder = encoder
        self.hidden_size = hidden_size
        self.dropout = nn.Dropout(dropout)

    def encode_tokens(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      token_type_ids: Tensor | None = None, suffix: str = "") -> ModelOutput:
        """Run the encoder (``token_type_ids`` passed only when given) and check its output shape."""
        check_ids(input_ids, attention_mask, token_type_ids, suffix)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(**kwargs)
        hidden = getattr(out, "last_hidden_state", None)
        if not isinstance(hidden, Tensor):
            raise TypeError("the encoder must return a ModelOutput with last_hidden_state (B, T, C); got "
                            f"{type(out).__name__} with last_hidden_state={type(hidden).__name__}")
        B, T = input_ids.shape
        C = self.hidden_size if self.hidden_size is not None else hidden.shape[-1]
        if tuple(hidden.shape) != (B, T, C):
            raise ValueError(f"the encoder's last_hidden_state must have shape (B, T, hidden_size) = "
                             f"{(B, T, C)}; got {tuple(hidden.shape)}")
        return out

    def pooled(self, out: ModelOutput, attention_mask: Tensor | None, pooling: str) -> Tensor:
        """Sentence vector (B, C) by ``pooling`` ("pooler" = the encoder's own pooler_output)."""
        if pooling != "pooler":
            return pool(out.last_hidden_state, attention_mask, pooling)  # (B, C)
        pooled = out.pooler_output  # (B, C)
        B, _, C = out.last_hidden_state.shape
        if not isinstance(pooled, Tensor) or tuple(pooled.shape) != (B, C):
            got = tuple(pooled.shape) if isinstance(pooled, Tensor) else None
            raise ValueError(f"pooling='pooler' needs the encoder to return pooler_output (B, C) = {(B, C)}; "
                             f"got {got} (use 'cls' or 'mean' for encoders without a pooler)")
        return pooled  # (B, C)
