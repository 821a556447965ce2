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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
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
    scale = 1.0 / math.sqrt(d_k) if scale is None else float(scale)

    # Fast exits: no mask at all, or a square causal mask, go straight to the fused kernel.
    if impl == "sdpa" and not return_weights and mask is None and (not is_causal or Tq == Tk):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale)

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
    out = dropped @ v  # (B, H, Tq, d_v)
    return (out, weights) if return_weights else out


# --------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------
KeyValue = tuple[Tensor, Tensor]  # (k, v), each (B, H, T, head_dim): projected, split into heads


class MultiHeadAttention(nn.Module):
    """MultiHead(X_q, X_kv) = Concat(head_1, ..., head_h) Wᴼ. Introduced in Chapter 03.

    head_i = softmax((X_q W_iᵠ)(X_kv W_iᴷ)ᵀ / √d_head) (X_kv W_iⱽ), with d_head = d_model / h. All h
    heads are computed at once: one (C, C) projection per role, reshaped to (B, H, T, d_head).

    Parameters are ``q_proj``, ``k_proj``, ``v_proj`` (or one ``qkv_proj`` holding [W_q; W_k; W_v]
    when ``fused_qkv=True``, nn.MultiheadAttention's ``in_proj`` layout) and ``out_proj``.

    Key/value caching: :meth:`project_kv` returns the projected heads of a key/value sequence.
    A decoder can pass them back with ``kv=`` (cross-attention: project the encoder output once),
    or pass earlier steps' heads with ``past_key_value=`` and ``use_cache=True`` to get the grown
    cache back (self-attention: one new token per step).
    """

    def __init__(
        self, d_model: int, n_heads: int, *, dropout: float = 0.0, bias: bool = True, fused_qkv: bool = False
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MultiHeadAttention: {name} must be a positive int; got {value!r}")
        if d_model % n_heads != 0:
            raise ValueError(
                f"MultiHeadAttention: d_model must be divisible by n_heads; got d_model={d_model}, "
                f"n_heads={n_heads} (remainder {d_model % n_heads})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1); got {dropout}")
        self.d_model = d_model  # C: width of the residual stream
        self.n_heads = n_heads  # H: number of heads
        self.head_dim = d_model // n_heads  # d_head = C / H: width of one head's q, k, v
        self.dropout = dropout  # dropout on the attention weights (training only)
        self.fused_qkv = fused_qkv  # one (3C, C) matmul for self-attention instead of three
        if fused_qkv:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)  # rows: [W_q; W_k; W_v]
        else:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.k_proj = nn.Linear(d_model, d_model, bias=bias)
            self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # Wᴼ

    # ---- projections -----------------------------------------------------------------------
    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d_head)

    def _linear(self, x: Tensor, role: int) -> Tensor:
        """Project with W_q (role 0), W_k (1) or W_v (2), from the fused or the separate weights."""
        if not self.fused_qkv:
            return (self.q_proj, self.k_proj, self.v_proj)[role](x)  # (B, T, C)
        C = self.d_model
        weight = self.qkv_proj.weight[role * C : (role + 1) * C]  # (C, C)
        bias = None if self.qkv_proj.bias is None else self.qkv_proj.bias[role * C : (role + 1) * C]
        return F.linear(x, weight, bias)  # (B, T, C)

    def _check_input(self, name: str, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"MultiHeadAttention: {name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"MultiHeadAttention: {name} must have shape (B, T, d_model={self.d_model}); "
                f"got {tuple(x.shape)}"
            )

    def project_q(self, query: Tensor) -> Tensor:
        """Query heads: (B, Tq, C) -> (B, H, Tq, d_head)."""
        self._check_input("query", query)
        return self._split_heads(self._linear(query, 0))  # (B, H, Tq, d_head)

    def project_kv(self, key: Tensor, value: Tensor | None = None) -> KeyValue:
        """Key and value heads, each (B, H, Tk, d_head), from (B, Tk, C) inputs (value defaults to key).

        This is what a decoder caches: for cross-attention once per source, for self-attention
        one step at a time.
        """
        value = key if value is None else value
        self._check_input("key", key)
        self._check_input("value", value)
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(
                f"MultiHeadAttention: key and value need the same (B, Tk); got {tuple(key.shape[:2])} "
                f"and {tuple(value.shape[:2])}"
            )
        if self.fused_qkv and key is value:
            C = self.d_model
            kv = F.linear(key, self.qkv_proj.weight[C:], None if self.qkv_proj.bias is None
                          else self.qkv_proj.bias[C:])  # (B, Tk, 2C)
            k, v = kv.split(C, dim=-1)  # (B, Tk, C) each
        else:
            k, v = self._linear(key, 1), self._linear(value, 2)  # (B, Tk, C) each
        return self._split_heads(k), self._split_heads(v)  # (B, H, Tk, d_head) each

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        average_weights: bool = False,
        impl: str = "sdpa",
        kv: KeyValue | None = None,
        past_key_value: KeyValue | None = None,
        use_cache: bool = False,
    ):
        """Attend from ``query`` (B, Tq, C) to ``key``/``value`` (B, Tk, C); key=None is self-attention.

        Args:
            mask: bool (True = may attend) or float bias, broadcastable to (B, H, Tq, Tk).
            key_padding_mask: (B, Tk) bool, True = padding (ignored), as in nn.MultiheadAttention.
            is_causal: forbid attending to later positions (bottom-right aligned, see causal_mask).
            need_weights: also return the attention weights (uses the reference path).
            average_weights: average the returned weights over heads: (B, Tq, Tk).
            impl: "sdpa" (fused kernel) or "reference" (explicit softmax).
            kv: already projected (k, v) heads to use instead of projecting key/value.
            past_key_value: cached (k, v) heads of earlier positions, prepended to this call's.
            use_cache: also return the (k, v) heads of all positions seen so far.

        Returns:
            ``(out (B, Tq, C), weights (B, H, Tq, Tk) or None)``, plus ``(k, v)`` when ``use_cache``.
        """
        if kv is not None:
            if key is not None or value is not None:
                raise ValueError("MultiHeadAttention: pass either key/value or kv (projected heads), not both")
            k, v = kv  # (B, H, Tk, d_head) each
        else:
            if key is None and value is not None:
                raise ValueError("MultiHeadAttention: value given without key")
            k, v = self.project_kv(query if key is None else key, value if key is not None else None)
        q = self.project_q(query)  # (B, H, Tq, d_head)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=2)  # (B, H, Tpast + Tk, d_head)
            v = torch.cat([past_key_value[1], v], dim=2)  # (B, H, Tpast + Tk, d_head)
        if k.dim() != 4 or k.shape[1] != self.n_heads or k.shape[-1] != self.head_dim:
            raise ValueError(
                f"MultiHeadAttention: key heads must be (B, H={self.n_heads}, Tk, d_head={self.head_dim}); "
                f"got {tuple(k.shape)}"
            )
        B, _, Tq, _ = q.shape
        Tk = k.shape[2]
        if mask is not None:
            _check_mask(mask, (B, self.n_heads, Tq, Tk), "MultiHeadAttention")
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
                raise TypeError(
                    "MultiHeadAttention: key_padding_mask must be a bool tensor (True = padding); got "
                    f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}"
                )
            if tuple(key_padding_mask.shape) != (B, Tk):
                raise ValueError(
                    f"MultiHeadAttention: key_padding_mask must have shape (B, Tk) = {(B, Tk)}; "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk), True = may attend
            mask = _combine_masks(mask, keep, q.dtype) if mask is not None else keep

        dropout_p = self.dropout if self.training else 0.0
        result = scaled_dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p, impl=impl, return_weights=need_weights
        )
        out, weights = result if need_weights else (result, None)  # (B, H, Tq, d_head)
        out = out.transpose(1, 2).reshape(B, Tq, self.d_model)  # (B, Tq, C): Concat(head_1..head_h)
        out = self.out_proj(out)  # (B, Tq, C): ... Wᴼ
        if weights is not None and average_weights:
            weights = weights.mean(dim=1)  # (B, Tq, Tk)
        return (out, weights, (k, v)) if use_cache else (out, weights)

    @torch.no_grad()
    def load_torch_mha(self, torch_mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a same-sized ``nn.MultiheadAttention`` into this module (returns self)."""
        if not isinstance(torch_mha, nn.MultiheadAttention):
            raise TypeError(f"load_torch_mha expects nn.MultiheadAttention; got {type(torch_mha).__name__}")
        if (torch_mha.embed_dim, torch_mha.num_heads) != (self.d_model, self.n_heads):
            raise ValueError(
                f"load_torch_mha: expected embed_dim={self.d_model}, num_heads={self.n_heads}; got "
                f"embed_dim={torch_mha.embed_dim}, num_heads={torch_mha.num_heads}"
            )
        if torch_mha.in_proj_weight is None:
            raise ValueError("load_torch_mha: expected a packed in_proj_weight (kdim == vdim == embed_dim)")
        has_bias = torch_mha.in_proj_bias is not None
        if has_bias != (self.out_proj.bias is not None):
            raise ValueError(
                f"load_torch_mha: bias mismatch; expected bias={self.out_proj.bias is not None}, got bias={has_bias}"
            )
        if self.fused_qkv:
            self.qkv_proj.weight.copy_(torch_mha.in_proj_weight)
            if has_bias:
                self.qkv_proj.bias.copy_(torch_mha.in_proj_bias)
        else:
            for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                proj.weight.copy_(torch_mha.in_proj_weight.chunk(3)[i])
                if has_bias:
                    proj.bias.copy_(torch_mha.in_proj_bias.chunk(3)[i])
        self.out_proj.weight.copy_(torch_mha.out_proj.weight)
        if has_bias:
            self.out_proj.bias.copy_(torch_mha.out_proj.bias)
        return self
