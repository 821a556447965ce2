"""Decoding: greedy and sampled generation with a KV cache (Chapter 06) and constrained decoding
(Chapter 08); text answers to text prompts (Chapter 11)."""

from .constrained import ItemSequenceConstraint
from .respond import respond
from .sampling import generate, left_pad, next_token_distribution, top_k_filter, top_p_filter

__all__ = [
    "ItemSequenceConstraint",
    "generate",
    "left_pad",
    "next_token_distribution",
    "respond",
    "top_k_filter",
    "top_p_filter",
]
