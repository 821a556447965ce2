"""Scaled dot-product attention, masks and multi-head attention (introduced in Chapter 03).

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V                               (Vaswani et al., 2017)
    MultiHead(X_q, X_kv) = Concat(head_1, ..., head_h) Wᴼ,  head_i = Attention(X_q W_iᵠ, X_kv W_iᴷ, X_kv W_iⱽ)

Two interchangeable paths compute the same numbers (the tests hold them to 1e-5 in fp32):

* ``impl="reference"``: explicit matmul, masked softmax, matmul. Readable, and the only path that
  can hand back the attention weights for plotting.
* ``impl="sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention`, which dispatches to a
  fused kernel (FlashAttention / memory-efficient / C++ math) and never stores the T×T weights
  when a fused kernel is available.

Mask convention (the one F.scaled_dot_product_attention uses): a **bool** mask is True where a
query *may* attend to a key; a **float** mask is an additive bias (``-inf`` forbids). A row whose
keys are all forbidden (e.g. a padding query, or a causal query ahead of every key) gives an
all-zero output and all-zero weights instead of NaN.

NaN inputs: both paths give the same NaN pattern (tested). A NaN query spoils its own output row; a
NaN key or value spoils every row of its (batch, head); fully masked rows stay zero. Nothing is
silently swallowed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("reference", "sdpa")


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def causal_mask(Tq: int, Tk: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Bool (Tq, Tk) mask, True where query i may attend to key j: ``j <= i + (Tk - Tq)``.

    The queries are the *last* Tq positions of the Tk keys (bottom-right alignment), which is what a
    decoder with a key/value cache needs: one new query (Tq=1) may see all Tk cached keys. For
    Tq == Tk it is the usual lower-triangular matrix. Introduced in Chapter 03.
    """
    Tk = Tq if Tk is None else Tk
    for name, value in (("Tq", Tq), ("Tk", Tk)):
        # torch.SymInt: a symbolic size while torch.export traces with dynamic shapes (Chapter 13)
        if not isinstance(value, (int, torch.SymInt)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"causal_mask: {name} must be a positive int; got {value!r}")
    ones = torch.ones(Tq, Tk, dtype=torch.bool, device=device)  # (Tq, Tk)
    return torch.tril(ones, diagonal=Tk - Tq)  # (Tq, Tk)


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Bool (B, 1, 1, Tk) "may attend" mask from a (B, Tk) keep-mask (1 = real token, 0 = padding).

    The two singleton axes broadcast over heads and queries. Introduced in Chapter 03.
    """
    if not isinstance(attention_mask, Tensor):
        raise TypeError(f"padding_mask expects a torch.Tensor; got {type(attention_mask).__name__}")
    if attention_mask.dim() != 2:
        raise ValueError(f"padding_mask expects shape (B, Tk); got {tuple(attention_mask.shape)}")
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(f"padding_mask expects a bool or integer 1/0 mask; got dtype {attention_mask.dtype}")
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("padding_mask expects only 0 (padding) and 1 (keep) values")
    return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)


def _check_mask(mask: Tensor, target: tuple[int, ...], who: str) -> None:
    """Raise unless ``mask`` is bool/float and broadcastable to ``target`` = (B, H, Tq, Tk)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{who}: mask must be a torch.Tensor; got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{who}: mask must be bool (True = may attend) or a float additive bias; got dtype {mask.dtype}"
        )
    ok = mask.dim() <= len(target) and all(
        m in (1, t) for m, t in zip(reversed(mask.shape), reversed(target), strict=False)
    )
    if not ok:
        raise ValueError(
            f"{who}: mask must be broadcastable to (B, H, Tq, Tk) = {target}; got shape {tuple(mask.shape)}"
        )


def _combine_masks(mask: Tensor | None, causal: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """One mask from an optional user mask and an optional bool causal mask (bool stays bool)."""
    if mask is None:
        return causal
    if mask.dtype != torch.bool:
        mask = mask.to(dtype)  # SDPA wants the bias in the query's dtype
        if causal is not None:
            mask = mask.masked_fill(~causal, float("-inf"))
        return mask
    return mask if causal is None else mask & causal


def _nan_in_nan_out(out: Tensor, q: Tensor, k: Tensor, v: Tensor, kv_nan: Tensor | None = None) -> Tensor:
    """One NaN rule for every path: a NaN query spoils its row; a NaN key or value spoils its (batch, head).

    Kernels disagree otherwise: some fused CPU kernels return a finite row for a NaN query, a fused
    causal kernel skips the keys ahead of a query (a NaN there never reaches it), while an explicit
    mask adds −inf, and NaN + (−inf) is NaN. Rather than silently swallowing a NaN on some paths, all
    paths report it. Cheap: one pass over q, k and v, no host sync. ``kv_nan`` (B, H): the k/v flags
    already known (a static KV cache keeps them as it is written), so the cached keys are not rescanned.
    """
    if kv_nan is not None:
        bad_kv = kv_nan[..., None, None]  # (B, H, 1, 1)
    else:
        bad_kv = (torch.isnan(k).any(dim=-1).any(dim=-1) | torch.isnan(v).any(dim=-1).any(dim=-1))[..., None, None]  # (B, H, 1, 1)
    return out.masked_fill(torch.isnan(q).any(dim=-1, keepdim=True) | bad_kv, float("nan"))  # (B, H, Tq, d_v)


def _dead_rows(mask: Tensor) -> Tensor:
    """Bool (..., Tq, 1): True for query rows in which every key is forbidden."""
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return torch.isneginf(mask).all(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Scaled dot-product attention
# --------------------------------------------------------------------------------------------
def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
    return_weights: bool = False,
    scale: float | None = None,
    kv_nan: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ · scale + M) V with scale = 1/√d_k by default. Introduced in Chapter 03.

    Args:
        q: (B, H, Tq, d_k) queries; k: (B, H, Tk, d_k) keys; v: (B, H, Tk, d_v) values.
        mask: bool, True = may attend, or float additive bias; broadcastable to (B, H, Tq, Tk).
        is_causal: also forbid keys after the query (see :func:`causal_mask` for Tq != Tk).
        dropout_p: dropout on the attention weights. Applied whenever > 0, as in F.scaled_dot_
            product_attention: a module passes 0.0 in eval mode.
        impl: "reference" (explicit matmul + masked softmax) or "sdpa" (PyTorch's fused kernel).
        return_weights: also return the (B, H, Tq, Tk) weights (forces the reference path).
        scale: multiplier of Q Kᵀ; None means 1/√d_k. (1/(τ√d_k) is softmax temperature τ.)
        kv_nan: optional (B, H) bool, True where some key or value of that (batch, head) is NaN —
            given by a :class:`~scratchlm.layers.StaticKVCache`, which flags NaNs as they are
            written, so that a decode step does not rescan all T_max cached keys (Chapter 13).

    Returns:
        out (B, H, Tq, d_v), or (out, weights) when ``return_weights``. Fully masked query rows
        give zeros in both.
    """
    who = "scaled_dot_product_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{who}: {name} must have rank 4 (B, H, T, d); got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{who}: {name} must be a floating-point tensor; got dtype {t.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{who}: q and k need the same head dim d_k; got q {q.shape[-1]} and k {k.shape[-1]}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"{who}: k and v need the same (B, H, Tk); got {tuple(k.shape[:3])} and {tuple(v.shape[:3])}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"{who}: q and k need the same (B, H); got {tuple(q.shape[:2])} and {tuple(k.shape[:2])}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{who}: q, k, v need one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if impl not in IMPLS:
        raise ValueError(f"{who}: impl must be one of {IMPLS}; got {impl!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{who}: dropout_p must be in [0, 1); got {dropout_p}")
    B, H, Tq, d_k = q.shape
    Tk = k.shape[2]
    if mask is not None:
        _check_mask(mask, (B, H, Tq, Tk), who)
    if kv_nan is not None and (not isinstance(kv_nan, Tensor) or kv_nan.dtype != torch.bool
                               or tuple(kv_nan.shape) != (B, H)):
        raise ValueError(f"{who}: kv_nan must be a bool tensor of shape (B, H) = {(B, H)}; got "
                         f"{getattr(kv_nan, 'dtype', type(kv_nan).__name__)} {tuple(getattr(kv_nan, 'shape', ()))}")
    scale = 1.0 / math.sqrt(d_k) if scale is None else float(scale)

    # Fast exits: no mask at all, or a square causal mask, go straight to the fused kernel.
    if impl == "sdpa" and not return_weights and mask is None and (not is_causal or Tq == Tk):
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        return _nan_in_nan_out(out, q, k, v, kv_nan)  # (B, H, Tq, d_v)

    causal = causal_mask(Tq, Tk, device=q.device) if is_causal else None  # (Tq, Tk)
    full = _combine_masks(mask, causal, q.dtype)  # broadcastable to (B, H, Tq, Tk)
    dead = None
    if full is not None:
        dead = _dead_rows(full)  # (..., Tq, 1)
        # Un-forbid dead rows before the softmax (no all -inf row, so no NaN in forward or
        # backward), then zero their output afterwards.
        full = full | dead if full.dtype == torch.bool else full.masked_fill(dead, 0.0)

    if impl == "sdpa" and not return_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=full, dropout_p=dropout_p, scale=scale)
        out = _nan_in_nan_out(out, q, k, v, kv_nan)  # (B, H, Tq, d_v)
        return out if dead is None else out.masked_fill(dead, 0.0)  # (B, H, Tq, d_v)

    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if full is not None:
        if full.dtype == torch.bool:
            scores = scores.masked_fill(~full, float("-inf"))  # (B, H, Tq, Tk)
        else:
            scores = scores + full  # (B, H, Tq, Tk)
    weights = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk); each row sums to 1
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)  # (B, H, Tq, Tk); dead rows sum to 0
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights  # (B, H, Tq, Tk)
    out = _nan_in_nan_out(dropped @ v, q, k, v, kv_nan)  # (B, H, Tq, d_v)
    if dead is not None:
        out = out.masked_fill(dead, 0.0)  # (B, H, Tq, d_v): dead rows are zero, as on the SDPA path
    return (out, weights) if return_weights else out
