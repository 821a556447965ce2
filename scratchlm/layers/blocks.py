"""Transformer blocks: feed-forward, LayerNorm, encoder and decoder layers and stacks.

Introduced in Chapter 05. The layers follow Vaswani et al. (2017) and are drop-in equivalents of
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` (``batch_first=True``) in both
arrangements of residual connection and normalisation:

* post-LN (the original Transformer):  ``x = LN(x + Sublayer(x))``
* pre-LN  (GPT-2, Xiong et al. 2020):   ``x = x + Sublayer(LN(x))``

Masks. ``mask`` arguments follow the convention of ``F.scaled_dot_product_attention`` and of
:mod:`scratchlm.layers.attention`: a bool tensor where **True means "may attend"**, or a float additive bias.
(``nn.Transformer*`` layers use the opposite bool convention: True = blocked.) ``*_key_padding_mask``
arguments follow ``nn.MultiheadAttention``: (B, T) bool, **True marks padding** to be ignored.

Adapter insertion points (used in Chapter 10). Every sublayer output passes through an
``nn.Identity`` slot before it is added to the residual stream: ``self_attn_adapter``,
``cross_attn_adapter`` (decoder only) and ``ffn_adapter``. Chapter 10 replaces these slots with
bottleneck adapters (Houlsby et al., 2019) without touching the forward code.
"""


from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import _check_key_padding_mask, _check_positive_int, _check_sequence
from .attention import MultiHeadAttention
from .feedforward import FeedForward
from .norms import LayerNorm


class EncoderLayer(nn.Module):
    """One encoder block: self-attention and a feed-forward network, each wrapped in a residual.

    post-LN (``norm_first=False``)         pre-LN (``norm_first=True``)
        x = LN1(x + SelfAttn(x))               x = x + SelfAttn(LN1(x))
        x = LN2(x + FFN(x))                    x = x + FFN(LN2(x))

    Sublayer outputs go through dropout, then the adapter slot, then join the residual stream.
    Parameters mirror ``nn.TransformerEncoderLayer``. Introduced in Chapter 05.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 bias: bool = True) -> None:
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("n_heads", n_heads)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads; got d_model={d_model}, n_heads={n_heads}")
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, dropout, activation, bias=bias)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias)  # around self-attention
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias)  # around the FFN
        self.dropout1 = nn.Dropout(dropout)  # on the self-attention output
        self.dropout2 = nn.Dropout(dropout)  # on the FFN output
        self.self_attn_adapter: nn.Module = nn.Identity()  # Chapter 10 inserts an Adapter here
        self.ffn_adapter: nn.Module = nn.Identity()  # ... and here

    def forward(self, x: Tensor, *, mask: Tensor | None = None, key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        """x: (B, T, C); mask: bool (T, T) True = may attend, or float bias; key_padding_mask: (B, T)
        True = padding; is_causal: each position attends only to itself and the past. -> (B, T, C)."""
        _check_sequence("x", x, self.d_model)
        _check_key_padding_mask("key_padding_mask", key_padding_mask, x)
        if self.norm_first:  # pre-LN: the nanoGPT two-liner
            x = x + self._self_attention_block(self.norm1(x), mask, key_padding_mask, is_causal)  # (B, T, C)
            x = x + self._feed_forward_block(self.norm2(x))  # (B, T, C)
        else:  # post-LN: normalise after adding the residual
            x = self.norm1(x + self._self_attention_block(x, mask, key_padding_mask, is_causal))  # (B, T, C)
            x = self.norm2(x + self._feed_forward_block(x))  # (B, T, C)
        return x

    def _self_attention_block(self, x: Tensor, mask: Tensor | None, key_padding_mask: Tensor | None,
                              is_causal: bool) -> Tensor:
        out, _ = self.self_attn(x, mask=mask, key_padding_mask=key_padding_mask, is_causal=is_causal)
        return self.self_attn_adapter(self.dropout1(out))  # (B, T, C)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        return self.ffn_adapter(self.dropout2(self.ffn(x)))  # (B, T, C)

    @torch.no_grad()
    def load_torch(self, layer: nn.TransformerEncoderLayer) -> EncoderLayer:
        """Copy the weights of a same-sized ``nn.TransformerEncoderLayer`` (returns self)."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"load_torch expects nn.TransformerEncoderLayer; got {type(layer).__name__}")
        _load_common(self, layer, ("norm1", "norm2"))
        return self


class DecoderLayer(nn.Module):
    """One decoder block: masked self-attention, cross-attention to the encoder output, FFN.

    post-LN (``norm_first=False``)               pre-LN (``norm_first=True``)
        x = LN1(x + SelfAttn(x, causal))             x = x + SelfAttn(LN1(x), causal)
        x = LN2(x + CrossAttn(x, memory))            x = x + CrossAttn(LN2(x), memory)
        x = LN3(x + FFN(x))                          x = x + FFN(LN3(x))

    In cross-attention the queries come from the decoder and the keys/values from ``memory`` (the
    encoder output), so each target position can look at the whole source sentence.
    Parameters mirror ``nn.TransformerDecoderLayer``. Introduced in Chapter 05.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 bias: bool = True) -> None:
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("n_heads", n_heads)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads; got d_model={d_model}, n_heads={n_heads}")
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, dropout, activation, bias=bias)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias)  # around self-attention
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias)  # around cross-attention
        self.norm3 = LayerNorm(d_model, layer_norm_eps, bias=bias)  # around the FFN
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.self_attn_adapter: nn.Module = nn.Identity()  # Chapter 10 inserts Adapters in these slots
        self.cross_attn_adapter: nn.Module = nn.Identity()
        self.ffn_adapter: nn.Module = nn.Identity()

    def forward(self, x: Tensor, memory: Tensor, *, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool = True) -> Tensor:
        """x: (B, T, C) target stream; memory: (B, S, C) encoder output. tgt_mask (T, T) and
        memory_mask (T, S): bool True = may attend, or float bias; *_key_padding_mask: (B, T) / (B, S)
        True = padding. tgt_is_causal (default True) applies the causal mask. -> (B, T, C)."""
        _check_sequence("x", x, self.d_model)
        _check_sequence("memory", memory, self.d_model)
        if memory.shape[0] != x.shape[0]:
            raise ValueError(f"memory batch size {memory.shape[0]} differs from target batch size {x.shape[0]}")
        _check_key_padding_mask("tgt_key_padding_mask", tgt_key_padding_mask, x)
        _check_key_padding_mask("memory_key_padding_mask", memory_key_padding_mask, memory)
        if self.norm_first:
            x = x + self._self_attention_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._cross_attention_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask)
            x = x + self._feed_forward_block(self.norm3(x))  # (B, T, C)
        else:
            x = self.norm1(x + self._self_attention_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._cross_attention_block(x, memory, memory_mask, memory_key_padding_mask))
            x = self.norm3(x + self._feed_forward_block(x))  # (B, T, C)
        return x

    def _self_attention_block(self, x: Tensor, mask: Tensor | None, key_padding_mask: Tensor | None,
                              is_causal: bool) -> Tensor:
        out, _ = self.self_attn(x, mask=mask, key_padding_mask=key_padding_mask, is_causal=is_causal)
        return self.self_attn_adapter(self.dropout1(out))  # (B, T, C)

    def _cross_attention_block(self, x: Tensor, memory: Tensor, mask: Tensor | None,
                               key_padding_mask: Tensor | None) -> Tensor:
        out, _ = self.cross_attn(x, memory, memory, mask=mask, key_padding_mask=key_padding_mask)  # (B, T, C)
        return self.cross_attn_adapter(self.dropout2(out))  # (B, T, C)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        return self.ffn_adapter(self.dropout3(self.ffn(x)))  # (B, T, C)

    @torch.no_grad()
    def load_torch(self, layer: nn.TransformerDecoderLayer) -> DecoderLayer:
        """Copy the weights of a same-sized ``nn.TransformerDecoderLayer`` (returns self)."""
        if not isinstance(layer, nn.TransformerDecoderLayer):
            raise TypeError(f"load_torch expects nn.TransformerDecoderLayer; got {type(layer).__name__}")
        _load_common(self, layer, ("norm1", "norm2", "norm3"))
        self.cross_attn.load_torch_mha(layer.multihead_attn)
        return self


class Encoder(nn.Module):
    """A stack of ``n_layers`` encoder layers, plus a final LayerNorm for pre-LN.

    Pre-LN layers leave the residual stream un-normalised (its scale grows with depth), so a final
    LN is needed before the stream is read out (GPT-2's ``ln_f``); post-LN layers already end in a
    LN, so ``final_norm`` defaults to ``norm_first``. Introduced in Chapter 05.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, final_norm: bool | None = None,
                 layer_norm_eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        _check_positive_int("n_layers", n_layers)
        self.layers = nn.ModuleList([  # independent layers (not clones), each freshly initialised
            EncoderLayer(d_model, n_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, bias)
            for _ in range(n_layers)
        ])
        final_norm = norm_first if final_norm is None else final_norm
        self.norm: nn.Module = LayerNorm(d_model, layer_norm_eps, bias=bias) if final_norm else nn.Identity()

    def forward(self, x: Tensor, *, mask: Tensor | None = None, key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        """x: (B, T, C) -> (B, T, C); masks as in :class:`EncoderLayer`."""
        for layer in self.layers:
            x = layer(x, mask=mask, key_padding_mask=key_padding_mask, is_causal=is_causal)  # (B, T, C)
        return self.norm(x)  # (B, T, C)

    def load_torch(self, stack: nn.Module) -> Encoder:
        """Copy the weights of a ``nn.TransformerEncoder`` with the same depth and final norm (returns self)."""
        _load_torch_stack(self, stack, nn.TransformerEncoder)
        return self


class Decoder(nn.Module):
    """A stack of ``n_layers`` decoder layers, plus a final LayerNorm for pre-LN (see :class:`Encoder`).

    Introduced in Chapter 05.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, final_norm: bool | None = None,
                 layer_norm_eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        _check_positive_int("n_layers", n_layers)
        self.layers = nn.ModuleList([
            DecoderLayer(d_model, n_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, bias)
            for _ in range(n_layers)
        ])
        final_norm = norm_first if final_norm is None else final_norm
        self.norm: nn.Module = LayerNorm(d_model, layer_norm_eps, bias=bias) if final_norm else nn.Identity()

    def forward(self, x: Tensor, memory: Tensor, *, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool = True) -> Tensor:
        """x: (B, T, C), memory: (B, S, C) -> (B, T, C); masks as in :class:`DecoderLayer`."""
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal)
        return self.norm(x)  # (B, T, C)

    def load_torch(self, stack: nn.Module) -> Decoder:
        """Copy the weights of a ``nn.TransformerDecoder`` with the same depth and final norm (returns self)."""
        _load_torch_stack(self, stack, nn.TransformerDecoder)
        return self


@torch.no_grad()
def _load_torch_stack(ours: nn.Module, stack: nn.Module, expected: type) -> None:
    """Copy a ``nn.TransformerEncoder``/``Decoder`` into our stack: layer by layer, then the final norm."""
    if not isinstance(stack, expected):
        raise TypeError(f"load_torch expects nn.{expected.__name__}; got {type(stack).__name__}")
    ours_has_norm = not isinstance(ours.norm, nn.Identity)
    if len(stack.layers) != len(ours.layers) or (stack.norm is not None) != ours_has_norm:
        raise ValueError(f"load_torch: expected {len(ours.layers)} layers and final norm {ours_has_norm}; "
                         f"got {len(stack.layers)} layers and final norm {stack.norm is not None}")
    for our_layer, their_layer in zip(ours.layers, stack.layers, strict=True):
        our_layer.load_torch(their_layer)
    if stack.norm is not None:
        ours.norm.load_state_dict(stack.norm.state_dict())


@torch.no_grad()
def _load_common(ours: nn.Module, theirs: nn.Module, norms: tuple[str, ...]) -> None:
    """Copy self-attention, FFN and LayerNorm weights from an ``nn.Transformer*Layer``."""
    if theirs.self_attn.embed_dim != ours.d_model or theirs.linear1.out_features != ours.ffn.linear1.out_features:
        raise ValueError(f"load_torch: expected d_model={ours.d_model}, d_ff={ours.ffn.linear1.out_features}; got "
                         f"d_model={theirs.self_attn.embed_dim}, d_ff={theirs.linear1.out_features}")
    if theirs.norm_first != ours.norm_first:
        raise ValueError(f"load_torch: expected norm_first={ours.norm_first}; got {theirs.norm_first}")
    ours.self_attn.load_torch_mha(theirs.self_attn)
    ours.ffn.linear1.load_state_dict(theirs.linear1.state_dict())
    ours.ffn.linear2.load_state_dict(theirs.linear2.state_dict())
    for name in norms:
        getattr(ours, name).load_state_dict(getattr(theirs, name).state_dict())
