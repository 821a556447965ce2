"""Copy weights from PyTorch's own ``nn.Transformer*`` layers into ours (introduced in Chapter 05).

The tests and Chapter 05 check our blocks against ``nn.TransformerEncoderLayer`` & co. with the same
weights; these helpers are the weight copy. Parameter names already match except inside attention
(``in_proj_weight`` holds [W_q; W_k; W_v], see ``MultiHeadAttention.load_torch_mha``).
"""

from __future__ import annotations

import torch
from torch import nn


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


def load_encoder_layer(ours: nn.Module, layer: nn.Module) -> None:
    """Copy an ``nn.TransformerEncoderLayer`` into our ``EncoderLayer``."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise TypeError(f"load_torch expects nn.TransformerEncoderLayer; got {type(layer).__name__}")
    _load_common(ours, layer, ("norm1", "norm2"))


def load_decoder_layer(ours: nn.Module, layer: nn.Module) -> None:
    """Copy an ``nn.TransformerDecoderLayer`` into our ``DecoderLayer``."""
    if not isinstance(layer, nn.TransformerDecoderLayer):
        raise TypeError(f"load_torch expects nn.TransformerDecoderLayer; got {type(layer).__name__}")
    _load_common(ours, layer, ("norm1", "norm2", "norm3"))
    ours.cross_attn.load_torch_mha(layer.multihead_attn)


@torch.no_grad()
def load_stack(ours: nn.Module, stack: nn.Module, expected: type) -> None:
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
