"""Sentence-level heads: classification (cross-entropy), regression (MSE) and a bi-encoder (cosine).

Each wraps an encoder that follows the model contract (see :mod:`scratchlm.heads.base`), pools
its hidden states to one vector per sequence (:mod:`scratchlm.heads.pooling`) and returns
``ModelOutput(logits=..., loss=...)``; ``loss`` is set when ``labels`` are given. Introduced in Chapter 09.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.outputs import ModelOutput
from .base import (
    EncoderHead,
    check_class_labels,
    check_keys,
    check_pooling,
    check_positive_int,
    validate_class_labels,
    validate_ids,
)

_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class SequenceClassifier(EncoderHead):
    """Encoder + pooling + dropout + linear layer → class logits (B, num_labels).

    Loss: cross-entropy over the labelled examples (label −100 = no loss),

        L = −(1/N) Σ_i log softmax(z_i)[y_i],   z_i = W · dropout(pool(h_i)) + b.

    ``pooling="cls"`` for BERT-style encoders, ``"mean"`` for sentence encoders, ``"pooler"`` for
    BERT's pooled [CLS], ``"last"`` for a decoder (GPT) used as a classifier. Introduced in Chapter 09.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, pooling: str = "cls",
                 dropout: float = 0.1) -> None:
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_labels", num_labels)
        check_pooling(pooling)
        super().__init__(encoder, hidden_size, dropout)
        self.num_labels = num_labels
        self.pooling = pooling
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        out = self.encode_tokens(input_ids, attention_mask, token_type_ids)
        pooled = self.pooled(out, attention_mask, self.pooling)  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            check_class_labels(labels, self.num_labels, (input_ids.shape[0],))
            loss = F.cross_entropy(logits.float(), labels.long())  # () mean over labels ≠ −100
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=out.last_hidden_state,
                           pooler_output=pooled)

    def validate_inputs(self, batch: Mapping[str, Tensor]) -> None:
        """Value checks of a batch (host sync; call before training, not in the step): ids, a 0/1
        mask with a real token per row, integer labels in [0, num_labels) or −100."""
        check_keys(batch, _KEYS)
        validate_ids(batch)
        if batch.get("labels") is not None:
            validate_class_labels(batch["labels"], self.num_labels, (batch["input_ids"].shape[0],))


def _check_targets(labels: object, shape: tuple[int, ...], name: str = "labels") -> None:
    """Metadata checks of real-valued targets (forward)."""
    if not isinstance(labels, Tensor) or labels.dtype == torch.bool or labels.is_complex():
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"{name} must be a real-valued tensor of targets; got {got}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (one target per example); got {tuple(labels.shape)}")


def _validate_targets(labels: Tensor, shape: tuple[int, ...], low: float | None = None,
                      high: float | None = None) -> None:
    _check_targets(labels, shape)
    if not bool(torch.isfinite(labels.float()).all()):
        raise ValueError("labels hold NaN or inf; regression targets must be finite")
    if low is not None and high is not None and not bool(((labels >= low) & (labels <= high)).all()):
        raise ValueError(f"labels must lie in [{low}, {high}]; got values in "
                         f"[{labels.min().item():g}, {labels.max().item():g}]")


class SequenceRegressor(EncoderHead):
    """Encoder + pooling + dropout + linear layer → one score per sequence, logits (B,).

    Loss: mean squared error, L = (1/N) Σ_i (ŷ_i − y_i)², ŷ_i = w · dropout(pool(h_i)) + b.
    For STS-B (scores 0–5) either keep the scale or divide by 5; the correlation metrics used to
    evaluate it do not care. Introduced in Chapter 09.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, pooling: str = "cls", dropout: float = 0.1) -> None:
        check_positive_int("hidden_size", hidden_size)
        check_pooling(pooling)
        super().__init__(encoder, hidden_size, dropout)
        self.pooling = pooling
        self.regressor = nn.Linear(hidden_size, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        out = self.encode_tokens(input_ids, attention_mask, token_type_ids)
        pooled = self.pooled(out, attention_mask, self.pooling)  # (B, C)
        scores = self.regressor(self.dropout(pooled)).squeeze(-1)  # (B,)
        loss = None
        if labels is not None:
            _check_targets(labels, (input_ids.shape[0],))
            loss = F.mse_loss(scores.float(), labels.float())  # ()
        return ModelOutput(logits=scores, loss=loss, last_hidden_state=out.last_hidden_state,
                           pooler_output=pooled)

    def validate_inputs(self, batch: Mapping[str, Tensor]) -> None:
        """Value checks of a batch (host sync): ids, mask, finite real-valued labels of shape (B,)."""
        check_keys(batch, _KEYS)
        validate_ids(batch)
        if batch.get("labels") is not None:
            _validate_targets(batch["labels"], (batch["input_ids"].shape[0],))


class BiEncoder(EncoderHead):
    """Sentence-BERT's bi-encoder: embed each sentence on its own, predict their cosine similarity.

        u = pool(enc(a)), v = pool(enc(b)),   ŷ = cos(u, v) = u·v / (‖u‖ ‖v‖)  ∈ [−1, 1]
        L = (1/N) Σ_i (ŷ_i − y_i)²

    Targets: by default in [0, 1] — STS-B's 0–5 score divided by 5, as Sentence-BERT's
    CosineSimilarityLoss trains (unrelated sentences then aim at cos = 0, orthogonal, not at −1).
    ``target_range=(-1.0, 1.0)`` accepts targets on the full cosine scale; ``validate_inputs``
    checks the labels lie in ``target_range``. Both sentences share one encoder (and its weights),
    so each sentence is embedded once and embeddings can be cached and compared with any other
    — the reason to prefer it to a cross-encoder for search. No parameters beyond the encoder.
    Introduced in Chapter 09.
    """

    def __init__(self, encoder: nn.Module, pooling: str = "mean", hidden_size: int | None = None,
                 target_range: tuple[float, float] = (0.0, 1.0)) -> None:
        check_pooling(pooling)
        if (not isinstance(target_range, tuple) or len(target_range) != 2
                or not all(isinstance(v, (int, float)) for v in target_range)
                or not -1.0 <= target_range[0] < target_range[1] <= 1.0):
            raise ValueError(f"target_range must be a (low, high) pair inside [-1, 1]; got {target_range!r}")
        super().__init__(encoder, hidden_size, dropout=0.0)
        self.pooling = pooling
        self.target_range = (float(target_range[0]), float(target_range[1]))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> Tensor:
        """Sentence embeddings (B, C): the pooled hidden states."""
        out = self.encode_tokens(input_ids, attention_mask, token_type_ids)
        return self.pooled(out, attention_mask, self.pooling)  # (B, C)

    def forward(self, input_ids_a: Tensor, input_ids_b: Tensor, attention_mask_a: Tensor | None = None,
                attention_mask_b: Tensor | None = None, token_type_ids_a: Tensor | None = None,
                token_type_ids_b: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        """Cosine similarities (B,) of the pairs (a_i, b_i) as ``logits``; MSE loss against ``labels``."""
        u = self.encode(input_ids_a, attention_mask_a, token_type_ids_a)  # (B, C)
        v = self.encode(input_ids_b, attention_mask_b, token_type_ids_b)  # (B, C)
        if u.shape[0] != v.shape[0]:
            raise ValueError(f"the two sides must have the same batch size; got {u.shape[0]} and {v.shape[0]}")
        cos = F.cosine_similarity(u, v, dim=-1)  # (B,)
        loss = None
        if labels is not None:
            _check_targets(labels, (u.shape[0],))
            loss = F.mse_loss(cos.float(), labels.float())  # ()
        return ModelOutput(logits=cos, loss=loss)

    def validate_inputs(self, batch: Mapping[str, Tensor]) -> None:
        """Value checks (host sync): both sides' ids and masks, finite labels (B,) in ``target_range``."""
        check_keys(batch, ("input_ids_a", "input_ids_b", "attention_mask_a", "attention_mask_b",
                           "token_type_ids_a", "token_type_ids_b", "labels"))
        validate_ids(batch, "_a")
        validate_ids(batch, "_b")
        B = batch["input_ids_a"].shape[0]
        if batch["input_ids_b"].shape[0] != B:
            raise ValueError(f"the two sides must have the same batch size; got {B} and "
                             f"{batch['input_ids_b'].shape[0]}")
        if batch.get("labels") is not None:
            _validate_targets(batch["labels"], (B,), *self.target_range)
