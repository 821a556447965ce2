"""Constrained decoding: let each greedy step choose only among the tokens a tiny grammar allows.

Introduced in Chapter 08. A text-to-text tagger must write exactly one tag per input word, but free
greedy decoding can drop a tag, add one or loop, and every later tag is then misaligned. Restricting
the decoder — "only tag tokens, exactly ``n`` tags, then ``</s>``" — keeps the model's choice of
*which* tag while making the length right by construction (Hugging Face calls the same hook
``prefix_allowed_tokens_fn``).

The grammar here: a sequence of exactly ``n`` *items*, each item one of a fixed set of token
sequences (a tag may be several BPE tokens), then ``eos_id``. The first item and the later ones may be
spelled differently (byte-level BPE writes ``"noun"`` at the start and ``" noun"`` after a space).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_END = -1  # trie key marking "an item may end here"


def _trie(items: Sequence[Sequence[int]], name: str, vocab_size: int) -> dict:
    if not items:
        raise ValueError(f"{name} must hold at least one item (a non-empty list of token ids); got none")
    root: dict = {}
    for item in items:
        ids = list(item)
        if not ids or not all(isinstance(t, int) and 0 <= t < vocab_size for t in ids):
            raise ValueError(f"every item of {name} must be a non-empty list of token ids in "
                             f"[0, {vocab_size}); got {ids!r}")
        node = root
        for t in ids:
            node = node.setdefault(t, {})
        node[_END] = {}
    return root


def _children(node: dict) -> set[int]:
    return {t for t in node if t != _END}


def _inner_tokens(node: dict) -> set[int]:
    """Tokens that continue an item that could already have ended (the ambiguous ones)."""
    found: set[int] = set()
    for t, child in node.items():
        if t == _END:
            continue
        if _END in child:
            found |= _children(child)
        found |= _inner_tokens(child)
    return found


class ItemSequenceConstraint:
    """Allowed next tokens for "exactly ``n_items[b]`` items, then EOS", row by row.

    Call it with the tokens generated so far, ``(B, t)`` without the start token; it returns a
    ``(B, vocab_size)`` bool mask of the tokens each row may write next (all True for a row that has
    written EOS, so padding after it is allowed). A prefix the grammar cannot produce raises.

    The parse is greedy: a token that continues the current item is read as a continuation. So a
    token must never both continue an item that could end and start the next item — the
    constructor checks that and raises on such an ambiguous item set.
    """

    def __init__(self, first_items: Sequence[Sequence[int]], next_items: Sequence[Sequence[int]],
                 n_items: Sequence[int], *, eos_id: int, vocab_size: int) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int; got {vocab_size!r}")
        if not isinstance(eos_id, int) or not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id must be a token id in [0, {vocab_size}); got {eos_id!r}")
        self.first = _trie(first_items, "first_items", vocab_size)
        self.next = _trie(next_items, "next_items", vocab_size)
        counts = list(n_items)
        if not counts or not all(isinstance(n, int) and n >= 0 for n in counts):
            raise ValueError(f"n_items must be a non-empty list of ints >= 0 (items per row); got {counts!r}")
        if any(eos_id in item for item in [*first_items, *next_items]):
            raise ValueError(f"eos_id={eos_id} must not appear inside an item")
        for name, trie in (("first_items", self.first), ("next_items", self.next)):
            clash = _inner_tokens(trie) & (_children(self.next) | {eos_id})
            if clash:
                raise ValueError(f"ambiguous items: token(s) {sorted(clash)} both continue an item of {name} "
                                 f"that may already be complete and start the next item (or end)")
        self.n_items = counts
        self.eos_id = eos_id
        self.vocab_size = vocab_size

    def _allowed_row(self, tokens: list[int], n: int) -> set[int] | None:
        """Allowed next tokens after ``tokens`` for a row of ``n`` items; None once EOS is written."""
        done, node = 0, None  # items completed; position inside the current item (None: between items)
        for pos, t in enumerate(tokens):
            allowed = self._allowed_at(done, node, n)
            if t not in allowed:
                raise ValueError(f"prefix {tokens[:pos + 1]} is outside the grammar (token {t} at position "
                                 f"{pos}; allowed {sorted(allowed)[:10]})")
            if t == self.eos_id:  # only allowed once all n items are complete
                return None
            if node is not None and t in node:
                node = node[t]
            else:  # t starts a new item: close the current one, if any
                if node is not None:
                    done += 1
                node = (self.first if done == 0 else self.next)[t]
        return self._allowed_at(done, node, n)

    def _allowed_at(self, done: int, node: dict | None, n: int) -> set[int]:
        if node is None:  # between items
            return {self.eos_id} if done == n else _children(self.first if done == 0 else self.next)
        allowed = _children(node)
        if _END in node:  # the current item may end here
            allowed |= {self.eos_id} if done + 1 == n else _children(self.next)
        return allowed

    def __call__(self, generated: Tensor) -> Tensor:
        if generated.dim() != 2 or generated.shape[0] != len(self.n_items):
            raise ValueError(f"generated must be (B={len(self.n_items)}, t) token ids; got shape "
                             f"{tuple(generated.shape)}")
        mask = torch.zeros(generated.shape[0], self.vocab_size, dtype=torch.bool)  # (B, V)
        for b, (row, n) in enumerate(zip(generated.tolist(), self.n_items, strict=True)):
            allowed = self._allowed_row(row, n)
            if allowed is None:
                mask[b] = True
            else:
                mask[b, sorted(allowed)] = True
        return mask.to(generated.device)
