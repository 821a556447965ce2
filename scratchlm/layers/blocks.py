"""Transformer blocks: encoder and decoder layers and their stacks (introduced in Chapter 05).

The layers follow Vaswani et al. (2017) and are drop-in equivalents of ``nn.TransformerEncoderLayer``
/ ``nn.TransformerDecoderLayer`` (``batch_first=True``) in both arrangements of residual connection
and normalisation:

* post-LN (the original Transformer, BERT):  ``x = LN(x + Sublayer(x))``
* pre-LN  (GPT-2, T5, Xiong et al. 2020):     ``x = x + Sublayer(LN(x))``

The same two classes build every model of the book: BERT is a stack of post-LN ``EncoderLayer``\\ s,
GPT a stack of pre-LN causal ones (``fused_qkv``, KV cache), T5 pre-LN layers with ``norm="rmsnorm"``
and no biases. Options: ``norm`` (LayerNorm / RMSNorm), ``activation`` (ReLU, GELU, ReLU², SwiGLU),
``qk_norm``, ``fused_qkv``, ``attn_impl``.

Masks. ``mask`` arguments follow ``F.scaled_dot_product_attention``: a bool tensor where **True means
"may attend"**, or a float additive bias (T5's position bias travels this way). ``nn.Transformer*``
layers use the opposite bool convention (True = blocked). ``*_key_padding_mask`` arguments follow
``nn.MultiheadAttention``: (B, T) bool, **True marks padding** to be ignored.

Hook points (Chapter 10). Every sublayer output passes through an ``nn.Identity`` slot before it is
added to the residual stream: ``self_attn_adapter``, ``cross_attn_adapter`` (decoder only) and
``ffn_adapter``. Chapter 10 puts bottleneck adapters (Houlsby et al., 2019) there without touching
the forward code.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ._checks import _check_key_padding_mask, _check_positive_int, _check_sequence
from .feedforward import FeedForward
from .from_torch import load_decoder_layer, load_encoder_layer, load_stack
from .kv_cache import KVCache
from .multihead import MultiHeadAttention
from .norms import make_norm


class StackOutput(NamedTuple):
    """What a stack returns when asked for its internals (``output_attentions`` / ``output_hidden_states``)."""

    last_hidden_state: Tensor  # (B, T, C) after the final norm
    hidden_states: tuple[Tensor, ...] | None  # the stack input, then every layer's output, each (B, T, C)
    attentions: tuple[Tensor, ...] | None  # every layer's self-attention weights (B, H, T, T_k)
    cross_attentions: tuple[Tensor, ...] | None = None  # decoder stacks: weights over the source


def _check_heads(d_model: int, n_heads: int) -> None:
    _check_positive_int("d_model", d_model)
    _check_positive_int("n_heads", n_heads)
    if d_model % n_heads != 0:
        raise ValueError(f"d_model must be divisible by n_heads; got d_model={d_model}, n_heads={n_heads}")


class EncoderLayer(nn.Module):
    """One block: self-attention and a feed-forward network, each wrapped in a residual.

    post-LN (``norm_first=False``)         pre-LN (``norm_first=True``)
        x = LN1(x + SelfAttn(x))               x = x + SelfAttn(LN1(x))
        x = LN2(x + FFN(x))                    x = x + FFN(LN2(x))

    Sublayer outputs go through dropout, then the adapter slot, then join the residual stream. With
    ``is_causal=True`` it is a decoder-only (GPT) block. Parameters mirror
    ``nn.TransformerEncoderLayer``. Introduced in Chapter 05.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 bias: bool = True, *, norm: str = "layernorm", fused_qkv: bool = False, qk_norm: bool = False,
                 attention_dropout: float | None = None, ffn_hidden_dropout: bool = True,
                 attn_impl: str = "sdpa") -> None:
        super().__init__()
        _check_heads(d_model, n_heads)
        self.d_model, self.norm_first = d_model, norm_first
        attn_drop = dropout if attention_dropout is None else attention_dropout
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=attn_drop, bias=bias, fused_qkv=fused_qkv,
                                            qk_norm=qk_norm, impl=attn_impl)
        self.ffn = FeedForward(d_model, d_ff, dropout, activation, bias=bias, hidden_dropout=ffn_hidden_dropout)
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, bias)  # around self-attention
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, bias)  # around the FFN
        self.dropout1 = nn.Dropout(dropout)  # on the self-attention output
        self.dropout2 = nn.Dropout(dropout)  # on the FFN output
        self.self_attn_adapter: nn.Module = nn.Identity()  # hook point: Chapter 10 inserts an Adapter here
        self.ffn_adapter: nn.Module = nn.Identity()  # ... and here

    def forward(self, x: Tensor, *, mask: Tensor | None = None, key_padding_mask: Tensor | None = None,
                is_causal: bool = False, cache: KVCache | None = None, layer_idx: int = 0,
                positions: Tensor | None = None, need_weights: bool = False):
        """x: (B, T, C); mask: bool (T, T) True = may attend, or float bias; key_padding_mask: (B, T_k)
        True = padding; is_causal: each position attends only to itself and the past; cache/layer_idx:
        a KV cache to extend. Returns (B, T, C), or (out, weights (B, H, T, T_k)) with ``need_weights``."""
        _check_sequence("x", x, self.d_model)
        attn = dict(mask=mask, key_padding_mask=key_padding_mask, is_causal=is_causal, cache=cache,
                    layer_idx=layer_idx, positions=positions, need_weights=need_weights)
        if self.norm_first:  # pre-LN: the nanoGPT two-liner
            a, weights = self._self_attention_block(self.norm1(x), **attn)
            x = x + a  # (B, T, C)
            x = x + self._feed_forward_block(self.norm2(x))  # (B, T, C)
        else:  # post-LN: normalise after adding the residual
            a, weights = self._self_attention_block(x, **attn)
            x = self.norm1(x + a)  # (B, T, C)
            x = self.norm2(x + self._feed_forward_block(x))  # (B, T, C)
        return (x, weights) if need_weights else x

    def _self_attention_block(self, x: Tensor, **kwargs) -> tuple[Tensor, Tensor | None]:
        out, weights = self.self_attn(x, **kwargs)  # (B, T, C)
        return self.self_attn_adapter(self.dropout1(out)), weights  # (B, T, C)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        return self.ffn_adapter(self.dropout2(self.ffn(x)))  # (B, T, C)

    def load_torch(self, layer: nn.TransformerEncoderLayer) -> EncoderLayer:
        """Copy the weights of a same-sized ``nn.TransformerEncoderLayer`` (returns self)."""
        load_encoder_layer(self, layer)
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
                 bias: bool = True, *, norm: str = "layernorm", qk_norm: bool = False,
                 attention_dropout: float | None = None, ffn_hidden_dropout: bool = True,
                 attn_impl: str = "sdpa") -> None:
        super().__init__()
        _check_heads(d_model, n_heads)
        self.d_model, self.norm_first = d_model, norm_first
        attn = dict(dropout=dropout if attention_dropout is None else attention_dropout, bias=bias,
                    qk_norm=qk_norm, impl=attn_impl)
        self.self_attn = MultiHeadAttention(d_model, n_heads, **attn)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, **attn)
        self.ffn = FeedForward(d_model, d_ff, dropout, activation, bias=bias, hidden_dropout=ffn_hidden_dropout)
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, bias)  # around self-attention
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, bias)  # around cross-attention
        self.norm3 = make_norm(norm, d_model, layer_norm_eps, bias)  # around the FFN
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.self_attn_adapter: nn.Module = nn.Identity()  # hook points for Chapter 10's adapters
        self.cross_attn_adapter: nn.Module = nn.Identity()
        self.ffn_adapter: nn.Module = nn.Identity()

    def forward(self, x: Tensor, memory: Tensor, *, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool = True,
                cache: KVCache | None = None, layer_idx: int = 0, need_weights: bool = False):
        """x: (B, T, C) target stream; memory: (B, S, C) encoder output. tgt_mask (T, T) and
        memory_mask (T, S): bool True = may attend, or float bias; *_key_padding_mask: (B, T) / (B, S)
        True = padding. tgt_is_causal (default True) applies the causal mask. With a ``cache`` the
        self-attention keys grow step by step and the projected memory is computed once. Returns
        (B, T, C), or (out, (self weights, cross weights)) with ``need_weights``."""
        _check_sequence("x", x, self.d_model)
        _check_sequence("memory", memory, self.d_model)
        if memory.shape[0] != x.shape[0]:
            raise ValueError(f"memory batch size {memory.shape[0]} differs from target batch size {x.shape[0]}")
        _check_key_padding_mask("memory_key_padding_mask", memory_key_padding_mask, memory)
        self_kw = dict(mask=tgt_mask, key_padding_mask=tgt_key_padding_mask, is_causal=tgt_is_causal,
                       cache=cache, layer_idx=layer_idx, need_weights=need_weights)
        cross_kw = dict(mask=memory_mask, key_padding_mask=memory_key_padding_mask, cache=cache,
                        layer_idx=layer_idx, need_weights=need_weights)
        if self.norm_first:
            a, w_self = self._self_attention_block(self.norm1(x), **self_kw)
            x = x + a  # (B, T, C)
            c, w_cross = self._cross_attention_block(self.norm2(x), memory, **cross_kw)
            x = x + c  # (B, T, C)
            x = x + self._feed_forward_block(self.norm3(x))  # (B, T, C)
        else:
            a, w_self = self._self_attention_block(x, **self_kw)
            x = self.norm1(x + a)  # (B, T, C)
            c, w_cross = self._cross_attention_block(x, memory, **cross_kw)
            x = self.norm2(x + c)  # (B, T, C)
            x = self.norm3(x + self._feed_forward_block(x))  # (B, T, C)
        return (x, (w_self, w_cross)) if need_weights else x

    def _self_attention_block(self, x: Tensor, **kwargs) -> tuple[Tensor, Tensor | None]:
        out, weights = self.self_attn(x, **kwargs)  # (B, T, C)
        return self.self_attn_adapter(self.dropout1(out)), weights  # (B, T, C)

    def _cross_attention_block(self, x: Tensor, memory: Tensor, **kwargs) -> tuple[Tensor, Tensor | None]:
        out, weights = self.cross_attn(x, memory, cross=True, **kwargs)  # (B, T, C)
        return self.cross_attn_adapter(self.dropout2(out)), weights  # (B, T, C)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        return self.ffn_adapter(self.dropout3(self.ffn(x)))  # (B, T, C)

    def load_torch(self, layer: nn.TransformerDecoderLayer) -> DecoderLayer:
        """Copy the weights of a same-sized ``nn.TransformerDecoderLayer`` (returns self)."""
        load_decoder_layer(self, layer)
        return self


def _final_norm(norm_first: bool, final_norm: bool | None, norm: str, d_model: int, eps: float,
                bias: bool) -> nn.Module:
    final_norm = norm_first if final_norm is None else final_norm
    return make_norm(norm, d_model, eps, bias) if final_norm else nn.Identity()


class Encoder(nn.Module):
    """A stack of ``n_layers`` :class:`EncoderLayer`\\ s, plus a final norm for pre-LN.

    Pre-LN layers leave the residual stream un-normalised (its scale grows with depth), so a final
    norm is needed before the stream is read out (GPT-2's ``ln_f``); post-LN layers already end in a
    norm, so ``final_norm`` defaults to ``norm_first``. Extra keyword options go to every layer.
    Introduced in Chapter 05.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, final_norm: bool | None = None,
                 layer_norm_eps: float = 1e-5, bias: bool = True, **layer_options) -> None:
        super().__init__()
        _check_positive_int("n_layers", n_layers)
        self.layers = nn.ModuleList([  # independent layers (not clones), each freshly initialised
            EncoderLayer(d_model, n_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, bias,
                         **layer_options)
            for _ in range(n_layers)
        ])
        self.norm = _final_norm(norm_first, final_norm, layer_options.get("norm", "layernorm"), d_model,
                                layer_norm_eps, bias)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, key_padding_mask: Tensor | None = None,
                is_causal: bool = False, cache: KVCache | None = None, positions: Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False):
        """x: (B, T, C) -> (B, T, C); masks as in :class:`EncoderLayer`. With ``output_attentions`` or
        ``output_hidden_states`` a :class:`StackOutput` is returned instead."""
        hidden = [x] if output_hidden_states else None
        weights = [] if output_attentions else None
        for i, layer in enumerate(self.layers):
            out = layer(x, mask=mask, key_padding_mask=key_padding_mask, is_causal=is_causal, cache=cache,
                        layer_idx=i, positions=positions, need_weights=output_attentions)
            x = out[0] if output_attentions else out  # (B, T, C)
            if output_attentions:
                weights.append(out[1])  # (B, H, T, T_k)
            if output_hidden_states:
                hidden.append(x)
        x = self.norm(x)  # (B, T, C)
        if not (output_attentions or output_hidden_states):
            return x
        return StackOutput(x, None if hidden is None else tuple(hidden), None if weights is None else tuple(weights))

    def load_torch(self, stack: nn.Module) -> Encoder:
        """Copy the weights of a ``nn.TransformerEncoder`` with the same depth and final norm (returns self)."""
        load_stack(self, stack, nn.TransformerEncoder)
        return self


class Decoder(nn.Module):
    """A stack of ``n_layers`` :class:`DecoderLayer`\\ s, plus a final norm for pre-LN (see :class:`Encoder`).

    Introduced in Chapter 05.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, final_norm: bool | None = None,
                 layer_norm_eps: float = 1e-5, bias: bool = True, **layer_options) -> None:
        super().__init__()
        _check_positive_int("n_layers", n_layers)
        self.layers = nn.ModuleList([
            DecoderLayer(d_model, n_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, bias,
                         **layer_options)
            for _ in range(n_layers)
        ])
        self.norm = _final_norm(norm_first, final_norm, layer_options.get("norm", "layernorm"), d_model,
                                layer_norm_eps, bias)

    def forward(self, x: Tensor, memory: Tensor, *, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool = True,
                cache: KVCache | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False):
        """x: (B, T, C), memory: (B, S, C) -> (B, T, C); masks as in :class:`DecoderLayer`; a
        :class:`StackOutput` with ``output_attentions`` / ``output_hidden_states``."""
        hidden = [x] if output_hidden_states else None
        self_w, cross_w = ([], []) if output_attentions else (None, None)
        for i, layer in enumerate(self.layers):
            out = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                        tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                        tgt_is_causal=tgt_is_causal, cache=cache, layer_idx=i, need_weights=output_attentions)
            x = out[0] if output_attentions else out  # (B, T, C)
            if output_attentions:
                self_w.append(out[1][0])  # (B, H, T, T_k)
                cross_w.append(out[1][1])  # (B, H, T, S)
            if output_hidden_states:
                hidden.append(x)
        x = self.norm(x)  # (B, T, C)
        if not (output_attentions or output_hidden_states):
            return x
        return StackOutput(x, None if hidden is None else tuple(hidden),
                           None if self_w is None else tuple(self_w), None if cross_w is None else tuple(cross_w))

    def load_torch(self, stack: nn.Module) -> Decoder:
        """Copy the weights of a ``nn.TransformerDecoder`` with the same depth and final norm (returns self)."""
        load_stack(self, stack, nn.TransformerDecoder)
        return self
