"""Knowledge distillation: train a small student on a big teacher's softened outputs (Chapter 12).

Introduced in Chapter 12.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import IGNORE_INDEX


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    T: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """L = α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) · CE(z_s, y)   (Hinton et al., 2015).

    Logits are (..., V) — (B, V) for a classifier, (B, T, V) token-level — and ``labels`` (...).
    Both terms are means over the positions whose label is not ``ignore_index`` (all positions
    when ``labels`` is None, which needs α = 1): KL = (1/N) Σ_positions Σ_v p_t,v (log p_t,v − log p_s,v).
    The teacher's logits are detached (the teacher is not trained).

    Why T²: with p = softmax(z/T), ∂KL/∂z_s = (p_s − p_t)/T, and for large T (zero-mean logits)
    p ≈ (1 + z/T)/V, so the gradient shrinks like (z_s − z_t)/(V·T²). Multiplying by T² keeps the
    soft-target gradient the same size whatever T is, so α weighs the two terms the same way when T
    changes. A larger T exposes more of the teacher's "dark knowledge": the relative probabilities of
    the wrong classes. Introduced in Chapter 12.
    """
    if not isinstance(student_logits, Tensor) or not isinstance(teacher_logits, Tensor):
        raise TypeError("student_logits and teacher_logits must be tensors of shape (..., V)")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 1:
        raise ValueError(f"student and teacher logits must have the same shape (..., V); got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if isinstance(T, bool) or not isinstance(T, (int, float)) or T <= 0:
        raise ValueError(f"T (temperature) must be a positive number; got {T!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)  # (N, V)
    t = teacher_logits.detach().reshape(-1, V).to(s.dtype)  # (N, V)
    if labels is None:
        if alpha != 1.0:
            raise ValueError("labels are needed for the cross-entropy term (alpha < 1)")
        keep = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)  # (N,)
        y = None
    else:
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"labels must be an integer tensor; got {getattr(labels, 'dtype', type(labels).__name__)}")
        if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
            raise ValueError(f"labels must have shape {tuple(student_logits.shape[:-1])}; got {tuple(labels.shape)}")
        y = labels.reshape(-1).long()  # (N,)
        keep = y != ignore_index  # (N,)
    log_p_s = F.log_softmax(s / T, dim=-1)  # (N, V)
    log_p_t = F.log_softmax(t / T, dim=-1)  # (N, V)
    kl_per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # (N,)
    n = keep.sum().clamp(min=1)  # () positions that count
    kl = (kl_per_position * keep).sum() / n  # ()
    loss = alpha * T * T * kl  # ()
    if alpha < 1.0:
        ce = F.cross_entropy(s, y, ignore_index=ignore_index, reduction="sum") / n  # ()
        loss = loss + (1.0 - alpha) * ce  # ()
    return loss


def make_distillation_loss_fn(teacher: torch.nn.Module, T: float = 2.0, alpha: float = 0.5,
                              label_key: str = "labels") -> Callable[[torch.nn.Module, dict], Tensor]:
    """A ``loss_fn(student, batch)`` for :func:`scratchlm.training.train` that distils ``teacher``.

    Both models get the batch without its labels; the teacher runs in eval mode under
    ``torch.no_grad`` (its dropout off, no graph kept), and the loss is
    :func:`distillation_loss` (student logits, teacher logits, ``batch[label_key]``, T, α).
    ``alpha=0`` is ordinary training on the hard labels. Introduced in Chapter 12.
    """
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(f"teacher must be an nn.Module; got {type(teacher).__name__}")
    distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), T, alpha)  # check T, α now
    teacher.eval()

    def loss_fn(student: torch.nn.Module, batch: dict) -> Tensor:
        inputs = {k: v for k, v in batch.items() if k != label_key}
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits  # (B, K)
        student_logits = student(**inputs).logits  # (B, K)
        return distillation_loss(student_logits, teacher_logits, batch[label_key], T, alpha)

    return loss_fn
