"""Building blocks of a Transformer: attention (Chapter 03), positions (Chapter 04), norms,
feed-forward and blocks (Chapter 05), the KV cache (Chapter 06)."""

from .attention import IMPLS, causal_mask, padding_mask, scaled_dot_product_attention
from .blocks import Decoder, DecoderLayer, Encoder, EncoderLayer, StackOutput
from .feedforward import ACTIVATIONS, FeedForward
from .kv_cache import KVCache, cache_for
from .multihead import KeyValue, MultiHeadAttention, RotaryMultiHeadAttention
from .norms import NORMS, LayerNorm, RMSNorm, make_norm
from .positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
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
    "KVCache",
    "KeyValue",
    "NORMS",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "RotaryMultiHeadAttention",
    "SinusoidalPositionalEncoding",
    "StackOutput",
    "apply_rotary_emb",
    "cache_for",
    "causal_mask",
    "make_norm",
    "padding_mask",
    "rotate_half",
    "scaled_dot_product_attention",
    "sinusoidal_table",
]
