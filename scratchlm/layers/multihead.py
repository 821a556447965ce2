"""Multi-head attention (introduced in Chapter 03; rotary positions Chapter 04, KV cache Chapter 06).

    MultiHead(X_q, X_kv) = Concat(head_1, ..., head_h) Wᴼ,  head_i = Attention(X_q W_iᵠ, X_kv W_iᴷ, X_kv W_iⱽ)

One module serves every model of the book: the Chapter 05 encoder and decoder layers, GPT (causal,
fused q/k/v, KV cache), BERT (padding mask), T5 (relative position bias as an additive mask, no
biases) and the rotary variant of Chapter 04.

Every projection is an ``nn.Linear`` that is *called* (``self.q_proj(x)``), never read through its
``.weight``: Chapter 10 wraps these layers with LoRA, Chapter 12 swaps them for quantized ones, and
both only work if the forward pass goes through the module. For the same reason the fused q/k/v
projection is one call of one (3C, C) layer, split afterwards.

Prefix hook (Chapter 10). ``self.prefix`` is ``None`` by default. Prefix-tuning (Li & Liang, 2021)
sets it to a module whose call ``prefix(B)`` returns trainable key and value heads ``(k_p, v_p)``,
each (B, H, P, d_head). They are put *in front of* the keys and values after the KV-cache logic,
so a cache holds only real tokens and the prefix is added again at every decoding step (cached and
uncached generation give the same tokens). Prefix positions are never padding and, with the causal
mask's bottom-right alignment, visible to every query; they carry no position (no rotary).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import IMPLS, _check_mask, _combine_masks, scaled_dot_product_attention
from .kv_cache import KVCache
from .norms import RMSNorm
from .positional import RotaryEmbedding, apply_rotary_emb

KeyValue = tuple[Tensor, Tensor]  # (k, v), each (B, H, T, head_dim): projected, split into heads


class MultiHeadAttention(nn.Module):
    """MultiHead(X_q, X_kv) = Concat(head_1, ..., head_h) Wᴼ. Introduced in Chapter 03.

    head_i = softmax((X_q W_iᵠ)(X_kv W_iᴷ)ᵀ · scale) (X_kv W_iⱽ), scale = 1/√d_head by default, with
    d_head = d_model / h. All h heads are computed at once: one (C, C) projection per role, reshaped
    to (B, H, T, d_head).

    Parameters are ``q_proj``, ``k_proj``, ``v_proj`` (or one ``qkv_proj`` holding [W_q; W_k; W_v]
    when ``fused_qkv=True``, nn.MultiheadAttention's ``in_proj`` layout) and ``out_proj``. Options
    used by later chapters: ``qk_norm`` (RMSNorm on each query and key head, Chapter 06's speed run),
    ``rotary`` (a :class:`~scratchlm.layers.positional.RotaryEmbedding`, Chapter 04), ``scale``.

    Head pruning (Chapter 12, :func:`scratchlm.compress.prune_heads`) removes heads after
    construction: ``n_heads`` shrinks, ``head_dim`` stays, and the projections' inner width
    ``inner_dim`` = H · d_head drops below ``d_model``; nothing in the forward pass assumes they are equal.

    Caching: pass a :class:`~scratchlm.layers.kv_cache.KVCache` and this layer's index; the new keys
    and values are appended to it and the queries attend to everything cached (self-attention), or,
    for cross-attention (``cross=True``), the projected source is stored on the first call and
    reused afterwards.
    """

    def __init__(self, d_model: int, n_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 fused_qkv: bool = False, qk_norm: bool = False, scale: float | None = None,
                 impl: str = "sdpa") -> None:
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
        if impl not in IMPLS:
            raise ValueError(f"MultiHeadAttention: impl must be one of {IMPLS}; got {impl!r}")
        self.d_model = d_model  # C: width of the residual stream
        self.n_heads = n_heads  # H: number of heads
        self.head_dim = d_model // n_heads  # d_head = C / H: width of one head's q, k, v
        self.inner_dim = n_heads * self.head_dim  # H · d_head: width of Concat(heads); < C after head pruning
        self.dropout = dropout  # dropout on the attention weights (training only)
        self.fused_qkv = fused_qkv  # one (3C, C) matmul for self-attention instead of three
        self.scale = scale  # multiplier of q·k; None: 1/√d_head
        self.impl = impl  # default attention path: "sdpa" (fused kernel) or "reference"
        if fused_qkv:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)  # rows: [W_q; W_k; W_v]
        else:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.k_proj = nn.Linear(d_model, d_model, bias=bias)
            self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # Wᴼ
        self.q_norm: nn.Module = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.rotary: nn.Module | None = None  # a RotaryEmbedding rotates q and k (Chapter 04)
        self.prefix: nn.Module | None = None  # prefix(B) -> (k_p, v_p) (B, H, P, d_head) each (Chapter 10)

    # ---- projections -----------------------------------------------------------------------
    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d_head)

    def _check_input(self, name: str, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"MultiHeadAttention: {name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"MultiHeadAttention: {name} must have shape (B, T, d_model={self.d_model}); "
                f"got {tuple(x.shape)}"
            )

    def _rotate(self, x: Tensor, positions: Tensor | None, offset: int) -> Tensor:
        if self.rotary is None:
            return x
        if positions is None:
            if offset + x.shape[2] > self.rotary.max_len:
                raise ValueError(f"sequence of length {x.shape[2]} at offset {offset} needs positions up to "
                                 f"{offset + x.shape[2] - 1}, but the rotary table was built with "
                                 f"max_len={self.rotary.max_len}")
            cos, sin = self.rotary.cos_cached, self.rotary.sin_cached  # (L, d)
            cos, sin = cos[offset : offset + x.shape[2]], sin[offset : offset + x.shape[2]]  # (T, d)
        else:  # (B, T) positions, e.g. counting only real tokens of a left-padded row
            cos, sin = self.rotary.cos_cached[positions][:, None], self.rotary.sin_cached[positions][:, None]
        return apply_rotary_emb(x, cos.to(x.dtype), sin.to(x.dtype))  # (B, H, T, d_head)

    def project_q(self, query: Tensor, positions: Tensor | None = None, offset: int = 0) -> Tensor:
        """Query heads: (B, Tq, C) -> (B, H, Tq, d_head) (normalised and rotated when configured)."""
        self._check_input("query", query)
        q = self.qkv_proj(query)[..., : self.inner_dim] if self.fused_qkv else self.q_proj(query)  # (B, Tq, I)
        return self._rotate(self.q_norm(self._split_heads(q)), positions, offset)  # (B, H, Tq, d_head)

    def project_kv(self, key: Tensor, value: Tensor | None = None, positions: Tensor | None = None,
                   offset: int = 0) -> KeyValue:
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
        inner = self.inner_dim  # I = H · d_head (= C unless heads were pruned)
        if not self.fused_qkv:
            k, v = self.k_proj(key), self.v_proj(value)  # (B, Tk, I) each
        elif key is value:
            k, v = self.qkv_proj(key)[..., inner:].split(inner, dim=-1)  # (B, Tk, I) each
        else:  # separate key and value inputs: the fused layer is called on each (correct, 2x the work)
            k, v = self.qkv_proj(key)[..., inner : 2 * inner], self.qkv_proj(value)[..., 2 * inner :]  # (B, Tk, I) each
        k = self._rotate(self.k_norm(self._split_heads(k)), positions, offset)  # (B, H, Tk, d_head)
        return k, self._split_heads(v)  # (B, H, Tk, d_head) each

    def _project_self(self, x: Tensor, positions: Tensor | None, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v heads for self-attention; with fused weights this is ONE call of ``qkv_proj``."""
        if not self.fused_qkv:
            return (self.project_q(x, positions, offset), *self.project_kv(x, None, positions, offset))
        self._check_input("query", x)
        q, k, v = self.qkv_proj(x).split(self.inner_dim, dim=-1)  # one (B, T, 3I) matmul -> 3 x (B, T, I)
        q = self._rotate(self.q_norm(self._split_heads(q)), positions, offset)  # (B, H, T, d_head)
        k = self._rotate(self.k_norm(self._split_heads(k)), positions, offset)  # (B, H, T, d_head)
        return q, k, self._split_heads(v)  # (B, H, T, d_head) each

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
        impl: str | None = None,
        kv: KeyValue | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        cross: bool = False,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (B, Tq, C) to ``key``/``value`` (B, Tk, C); key=None is self-attention.

        Args:
            mask: bool (True = may attend) or float bias, broadcastable to (B, H, Tq, Tk).
            key_padding_mask: (B, Tk) bool, True = padding (ignored), as in nn.MultiheadAttention.
            is_causal: forbid attending to later positions (bottom-right aligned, see causal_mask).
            need_weights: also return the attention weights (uses the reference path).
            average_weights: average the returned weights over heads: (B, Tq, Tk).
            impl: "sdpa" (fused kernel) or "reference" (explicit softmax); None: the module's default.
            kv: already projected (k, v) heads to use instead of projecting key/value.
            cache: a KVCache; self-attention appends this call's (k, v) to ``cache`` layer
                ``layer_idx`` and attends to all of it. With ``cross=True`` the projected key/value
                are stored on the first call and reused (the source does not change while decoding).
            positions: (B, Tq) positions of the new tokens for rotary embeddings (default: the
                cache length onwards).

        Returns:
            ``(out (B, Tq, C), weights (B, H, Tq, Tk) or None)``.
        """
        offset = 0
        kv_nan = None
        if kv is not None:
            if key is not None or value is not None:
                raise ValueError("MultiHeadAttention: pass either key/value or kv (projected heads), not both")
            q = self.project_q(query, positions)  # (B, H, Tq, d_head)
            k, v = kv  # (B, H, Tk, d_head) each
        elif cross:
            if cache is not None and layer_idx in cache.cross:
                k, v = cache.cross[layer_idx]  # (B, H, S, d_head): projected on the first step
            else:
                if key is None:
                    raise ValueError("MultiHeadAttention: cross=True needs the source as key")
                k, v = self.project_kv(key, value)  # (B, H, S, d_head) each
                if cache is not None:
                    cache.cross[layer_idx] = (k, v)
            q = self.project_q(query)  # (B, H, Tq, d_head)
        elif key is None:  # self-attention
            if value is not None:
                raise ValueError("MultiHeadAttention: value given without key")
            if cache is not None:
                cache.check_batch(query.shape[0])
                if positions is None:  # explicit positions need no offset (a static cache is never read back)
                    offset = cache.seq_length(layer_idx)
            q, k, v = self._project_self(query, positions, offset)  # (B, H, T, d_head) each
            if cache is not None:
                k, v = cache.update(layer_idx, k, v)  # (B, H, T_past + T, d_head) each
                kv_nan = cache.kv_nan(layer_idx) if hasattr(cache, "kv_nan") else None  # (B, H) static cache
        else:
            q = self.project_q(query, positions)  # (B, H, Tq, d_head)
            k, v = self.project_kv(key, value)  # (B, H, Tk, d_head) each
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
        if self.prefix is not None:  # prefix-tuning: P extra keys/values, visible to every query
            k, v, mask = self._prepend_prefix(k, v, mask, B)  # (B, H, P + Tk, d_head) each

        dropout_p = self.dropout if self.training else 0.0
        result = scaled_dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p, impl=impl or self.impl,
            return_weights=need_weights, scale=self.scale, kv_nan=kv_nan,
        )
        out, weights = result if need_weights else (result, None)  # (B, H, Tq, d_head)
        out = out.transpose(1, 2).reshape(B, Tq, self.inner_dim)  # (B, Tq, I): Concat(head_1..head_h)
        out = self.out_proj(out)  # (B, Tq, C): ... Wᴼ
        if weights is not None and average_weights:
            weights = weights.mean(dim=1)  # (B, Tq, Tk)
        return out, weights

    def _prepend_prefix(self, k: Tensor, v: Tensor, mask: Tensor | None, B: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Put the prefix heads before ``k``/``v`` and widen ``mask`` (its last axis is Tk) by P visible keys."""
        k_p, v_p = self.prefix(B)  # (B, H, P, d_head) each
        if k_p.shape[0] != B or k_p.shape[1] != self.n_heads or k_p.shape[3] != self.head_dim or k_p.shape != v_p.shape:
            raise ValueError(f"MultiHeadAttention: prefix must return two (B={B}, H={self.n_heads}, P, "
                             f"d_head={self.head_dim}) tensors; got {tuple(k_p.shape)} and {tuple(v_p.shape)}")
        P = k_p.shape[2]
        k = torch.cat([k_p.to(k.dtype), k], dim=2)  # (B, H, P + Tk, d_head)
        v = torch.cat([v_p.to(v.dtype), v], dim=2)  # (B, H, P + Tk, d_head)
        if mask is not None and mask.shape[-1] != 1:  # a per-key mask: the prefix columns may always be attended
            shape = (*mask.shape[:-1], P)
            cols = mask.new_ones(shape) if mask.dtype == torch.bool else mask.new_zeros(shape)  # (..., Tq, P): True / bias 0
            mask = torch.cat([cols, mask], dim=-1)  # (..., Tq, P + Tk)
        return k, v, mask

    def extra_repr(self) -> str:
        scale = "1/sqrt(d_head)" if self.scale is None else f"{self.scale:g}"
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, scale={scale}, impl={self.impl!r}"

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



class RotaryMultiHeadAttention(MultiHeadAttention):
    """Self-attention with RoPE: :class:`MultiHeadAttention` with queries and keys rotated.

    RoPE touches nothing but the attention scores: after the usual projections, the query and key
    heads are rotated to their positions; values, the output projection and the residual stream are
    unchanged. Keys are rotated *before* they are cached, so with a KV cache the new tokens start at
    position "cache length". Self-attention only. Introduced in Chapter 04.
    """

    def __init__(self, d_model: int, n_heads: int, max_len: int, *, base: float = 10000.0, **kwargs) -> None:
        super().__init__(d_model, n_heads, **kwargs)
        self.rotary = RotaryEmbedding(self.head_dim, max_len, base=base)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, **kwargs):
        if key is not None or value is not None or kwargs.get("kv") is not None or kwargs.get("cross"):
            raise ValueError(
                "RotaryMultiHeadAttention is self-attention only: pass query alone (no key/value/kv)"
            )
        return super().forward(query, **kwargs)
