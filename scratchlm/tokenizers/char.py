"""A character-level tokenizer: one id per Unicode code point (introduced in Chapter 02).

The vocabulary is the special tokens (ids 0..S-1) followed by the sorted set of characters of a
training text, so ``CharTokenizer(text)`` without special tokens gives nanoGPT's 65-symbol Tiny
Shakespeare vocabulary. A character outside the vocabulary is an error by default (a ValueError that
names it and its position); pass ``unk_token="<unk>"`` to map it to that token instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import Tokenizer, check_ids, check_text, normalize_special_tokens


class CharTokenizer(Tokenizer):
    """Character-level tokenizer: ``encode(s) = [stoi[c] for c in s]``, ``decode = "".join(itos[i])``.

    ``text`` is the corpus whose characters form the vocabulary. Special tokens occurring literally in
    the input to :meth:`encode` are matched as whole tokens when ``allow_special=True``.
    """

    kind = "char"

    def __init__(
        self,
        text: str | None = None,
        *,
        chars: Sequence[str] | None = None,
        special_tokens: Sequence[str] | Mapping[str, str] | None = None,
        unk_token: str | None = None,
    ) -> None:
        if (text is None) == (chars is None):
            raise ValueError("CharTokenizer needs exactly one of `text` (a corpus) or `chars` (a vocabulary)")
        if text is not None:
            check_text(text)
            if not text:
                raise ValueError("CharTokenizer needs a non-empty text to build its vocabulary from")
            chars = sorted(set(text))
        else:
            if isinstance(chars, str) or not isinstance(chars, Sequence):
                raise TypeError(f"chars must be a list of single characters; got {type(chars).__name__}")
            for c in chars:
                if not isinstance(c, str) or len(c) != 1:
                    raise ValueError(f"chars must hold single characters; got {c!r}")
            if len(set(chars)) != len(chars):
                raise ValueError("chars holds a character twice")
        specials = normalize_special_tokens(special_tokens)
        if unk_token is not None:
            if unk_token not in specials:
                specials[unk_token] = "unk"
            if specials[unk_token] != "unk":
                raise ValueError(f"unk_token {unk_token!r} is already a special token with role {specials[unk_token]}")
        for token in specials:
            if len(token) == 1 and token in chars:
                raise ValueError(f"special token {token!r} is also an ordinary character of the text")
        self._specials = specials
        self._unk_token = unk_token
        self.itos: list[str] = [*specials, *chars]  # id -> token
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}  # token -> id
        # Longest special first, so "<pad>" is tried before a shorter special that is its prefix.
        self._specials_by_length = sorted(specials, key=len, reverse=True)

    @classmethod
    def from_text(cls, text: str, **kwargs: Any) -> CharTokenizer:
        """Same as ``CharTokenizer(text, ...)``."""
        return cls(text, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def chars(self) -> list[str]:
        """The ordinary (non-special) characters, in id order."""
        return self.itos[len(self._specials):]

    def token_to_id(self, token: str) -> int:
        check_text(token, "token")
        if token not in self.stoi:
            raise KeyError(f"{token!r} is not in the vocabulary of this CharTokenizer")
        return self.stoi[token]

    def id_to_token(self, index: int) -> str:
        return self.itos[check_ids([index], self.vocab_size)[0]]

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """One id per character (special tokens in the text become their single id)."""
        check_text(text)
        ids: list[int] = []
        i, n = 0, len(text)
        specials = self._specials_by_length if allow_special else []
        while i < n:
            for token in specials:
                if text.startswith(token, i):
                    ids.append(self.stoi[token])
                    i += len(token)
                    break
            else:
                c = text[i]
                index = self.stoi.get(c)
                if index is None or (c in self._specials):
                    if self._unk_token is None:
                        raise ValueError(
                            f"character {c!r} (U+{ord(c):04X}) at position {i} is not in the vocabulary; "
                            "build the tokenizer from a text that contains it or pass unk_token='<unk>'"
                        )
                    index = self.stoi[self._unk_token]
                ids.append(index)
                i += 1
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        ids = check_ids(ids, self.vocab_size)
        n_special = len(self._specials)
        return "".join(self.itos[i] for i in ids if not (skip_special_tokens and i < n_special))

    def _to_json(self) -> dict[str, Any]:
        return {
            "chars": self.chars,
            "special_tokens": [[t, r] for t, r in self._specials.items()],
            "unk_token": self._unk_token,
        }

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> CharTokenizer:
        specials = [t for t, _ in data["special_tokens"]]
        tok = cls(chars=data["chars"], special_tokens=specials, unk_token=data.get("unk_token"))
        tok._specials = {t: r for t, r in data["special_tokens"]}  # keep explicit roles exactly
        return tok
