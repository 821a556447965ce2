"""Tokenizers built from scratch (introduced in Chapter 02).

``from scratchlm.tokenizers import CharTokenizer, ByteBPETokenizer, WordPieceTokenizer``
"""

from .base import SPECIAL_ROLES, Tokenizer
from .bpe import GPT2_PATTERN, GPT4_PATTERN, ByteBPETokenizer, bytes_to_unicode
from .char import CharTokenizer
from .display import show_tokens, token_pieces, tokens_html
from .wordpiece import BasicTokenizer, WordPieceTokenizer

__all__ = [
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "SPECIAL_ROLES",
    "BasicTokenizer",
    "ByteBPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "WordPieceTokenizer",
    "bytes_to_unicode",
    "show_tokens",
    "token_pieces",
    "tokens_html",
]
