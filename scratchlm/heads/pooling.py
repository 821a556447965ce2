"""Pooling: one vector per sequence from an encoder's hidden states (shared by the Chapter 09 heads).

A sentence-level head (classification, regression, similarity) needs one vector per sequence, but
an encoder returns one per token, h (B, T, C), with a padding mask m (B, T) (1 = real token):

    cls   h[b, f_b]                   f_b = the first real position (0 under right padding): BERT's
                                      [CLS], which pretraining (NSP) taught to summarise the pair
    mean  Σ_t m_bt h_bt / Σ_t m_bt    the masked mean over real tokens only (Sentence-BERT's
                                      default); averaging the padding too would make a sentence's
                                      vector depend on the batch it was padded in
    last  h[b, l_b]                   l_b = the last real position: the only token a causal decoder
                                      (GPT) lets see the whole sequence; found from the mask, so it
                                      is right under right padding (l_b = len_b − 1) and left
                                      padding (l_b = T − 1) alike

(``"pooler"``, BERT's tanh(W h_[CLS] + b), is the encoder's own ``pooler_output``, so the heads
take it from there.) Everything is index arithmetic on the mask: no host sync. Introduced in Chapter 09.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLINGS = ("cls", "mean", "last")
"""What :func:`pool` computes; the heads add ``"pooler"`` (the encoder's ``pooler_output``)."""


def _check(hidden: Tensor, mask: Tensor | None, how: str) -> None:
    if how not in POOLINGS:
        extra = " ('pooler' is the encoder's pooler_output; the heads handle it)" if how == "pooler" else ""
        raise ValueError(f"pooling must be one of {POOLINGS}; got {how!r}{extra}")
    if not isinstance(hidden, Tensor) or not hidden.is_floating_point() or hidden.dim() != 3:
        got = f"{hidden.dtype} {tuple(hidden.shape)}" if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be a floating-point tensor of shape (B, T, C); got {got}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool or 0/1 integer tensor (B, T), 1 = real token; got {got}")
        if tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"mask must have shape (B, T) = {tuple(hidden.shape[:2])}; got {tuple(mask.shape)}")


def first_real_index(mask: Tensor) -> Tensor:
    """Index (B,) of each row's first real position (argmax returns the first maximum)."""
    return mask.long().argmax(dim=1)  # (B,)


def last_real_index(mask: Tensor) -> Tensor:
    """Index (B,) of each row's last real position: the first maximum of the flipped row, mirrored."""
    T = mask.shape[1]
    return T - 1 - mask.long().flip(1).argmax(dim=1)  # (B,)


def pool(hidden: Tensor, mask: Tensor | None = None, how: str = "mean") -> Tensor:
    """One vector (B, C) per row of ``hidden`` (B, T, C); ``mask`` (B, T) bool or 0/1, 1 = real token.

    ``how`` is "cls" (first real token), "mean" (masked mean) or "last" (last real token); see the
    module docstring for why each exists. ``mask=None`` means no padding. A row without any real
    token pools to zeros under "mean" (the heads' ``validate_inputs`` rejects such rows).
    Introduced in Chapter 09.
    """
    _check(hidden, mask, how)
    B, T, C = hidden.shape
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=hidden.device)  # (B, T)
    rows = torch.arange(B, device=hidden.device)  # (B,)
    if how == "cls":
        return hidden[rows, first_real_index(mask)]  # (B, C)
    if how == "last":
        return hidden[rows, last_real_index(mask)]  # (B, C)
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, C)
