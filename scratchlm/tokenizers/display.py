"""Show how a tokenizer cuts a text: coloured token boxes in a notebook (introduced in Chapter 02)."""

from __future__ import annotations

import html

from .base import Tokenizer, check_text
from .bpe import ByteBPETokenizer

# Pastel backgrounds: neighbouring tokens always differ in colour.
PALETTE = ("#ffd6a5", "#caffbf", "#9bf6ff", "#bdb2ff", "#ffc6ff", "#fdffb6", "#a0c4ff", "#ffadad")
_VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def token_pieces(tokenizer: Tokenizer, text: str) -> list[tuple[int, str]]:
    """``(id, readable piece)`` per token. Byte-level tokens that cut a character show ``\\xNN``."""
    check_text(text)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a scratchlm Tokenizer; got {type(tokenizer).__name__}")
    ids = tokenizer.encode(text)
    if isinstance(tokenizer, ByteBPETokenizer):
        pieces = [tokenizer.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
    else:
        pieces = [tokenizer.id_to_token(i) for i in ids]
    return list(zip(ids, pieces, strict=True))


def tokens_html(tokenizer: Tokenizer, text: str, *, max_tokens: int = 500) -> str:
    """HTML with one coloured box per token (hover shows the id); whitespace drawn as · ↵ ⇥."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int; got {max_tokens!r}")
    pieces = token_pieces(tokenizer, text)
    spans = []
    for k, (i, piece) in enumerate(pieces[:max_tokens]):
        shown = "".join(_VISIBLE.get(c, c) for c in piece)
        spans.append(
            f'<span title="id {i}" style="background:{PALETTE[k % len(PALETTE)]};padding:1px 2px;'
            f'margin:1px;border-radius:3px;font-family:monospace;white-space:pre;color:#111">'
            f"{html.escape(shown)}</span>"
        )
    more = f" … (+{len(pieces) - max_tokens} tokens)" if len(pieces) > max_tokens else ""
    name = type(tokenizer).__name__
    header = f"<div style='font-size:90%;margin:4px 0'><b>{name}</b>: {len(text)} characters → {len(pieces)} tokens</div>"
    return f"{header}<div style='line-height:1.9'>{''.join(spans)}{more}</div>"


def show_tokens(tokenizer: Tokenizer, text: str, *, max_tokens: int = 500):
    """Display :func:`tokens_html` in a notebook."""
    from IPython.display import HTML

    return HTML(tokens_html(tokenizer, text, max_tokens=max_tokens))
