"""Decoding: greedy and sampled generation with a KV cache (Chapter 06) and constrained decoding
(Chapter 08), and text-to-text answers: decode many sources or score fixed answers (Chapter 08)."""

from .constrained import ItemSequenceConstraint
from .sampling import generate, left_pad, next_token_distribution, top_k_filter, top_p_filter
from .text_to_text import decode_batch, score_targets

__all__ = [
    "ItemSequenceConstraint",
    "decode_batch",
    "generate",
    "left_pad",
    "next_token_distribution",
    "score_targets",
    "top_k_filter",
    "top_p_filter",
]
