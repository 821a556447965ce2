"""Decoding: greedy and sampled generation with a KV cache (Chapter 06), constrained decoding
(Chapter 08), text-to-text answers: decode many sources or score fixed answers (Chapter 08), text
answers to text prompts from a decoder-only model (Chapter 11), and fast generation with a static
cache and a compiled decode step (Chapter 13)."""

from .constrained import ItemSequenceConstraint
from .respond import respond
from .sampling import generate, left_pad, next_token_distribution, top_k_filter, top_p_filter
from .static import StaticGenerator, sample_rows
from .text_to_text import decode_batch, score_targets

__all__ = [
    "ItemSequenceConstraint",
    "StaticGenerator",
    "decode_batch",
    "generate",
    "left_pad",
    "next_token_distribution",
    "respond",
    "sample_rows",
    "score_targets",
    "top_k_filter",
    "top_p_filter",
]
