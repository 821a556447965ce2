"""Building blocks of a Transformer: attention (Chapter 03), positions (Chapter 04), norms,
feed-forward and blocks (Chapter 05)."""

from .attention import (
    IMPLS,
    KeyValue,
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from .blocks import Decoder, DecoderLayer, Encoder, EncoderLayer
from .feedforward import ACTIVATIONS, FeedForward
from .norms import LayerNorm, RMSNorm
from .positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    RotaryMultiHeadAttention,
    SinusoidalPositionalEncoding,
    apply_rotary_emb,
    rotate_half,
    sinusoidal_table,
)

__all__ = [
    "ACTIVATIONS",
    "IMPLS",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "KeyValue",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "RotaryMultiHeadAttention",
    "SinusoidalPositionalEncoding",
    "apply_rotary_emb",
    "causal_mask",
    "padding_mask",
    "rotate_half",
    "scaled_dot_product_attention",
    "sinusoidal_table",
]
