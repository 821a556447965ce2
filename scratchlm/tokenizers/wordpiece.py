"""BERT's WordPiece tokenizer: basic tokenisation + greedy longest-match-first (Chapter 02).

Two stages, as in BERT (Devlin et al., 2019):

1. *Basic tokenisation*: drop control characters, map every whitespace to a space, put spaces
   around CJK ideographs, lower-case and strip accents (NFD, then drop combining marks) for the
   uncased models, and split on whitespace and on every punctuation character.
2. *WordPiece*: each word is cut greedily into the longest vocabulary entries from left to right;
   a piece that does not start the word is looked up with a ``##`` prefix. A word that cannot be
   covered (or is longer than 100 characters) becomes ``[UNK]`` as a whole.

Reads a BERT ``vocab.txt`` (one token per line, id = line number), e.g. the one shipped with
all-MiniLM-L6-v2 (see :func:`scratchlm.data.corpora.minilm_files`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Tokenizer, check_ids, check_text

BERT_SPECIAL_TOKENS = {"[PAD]": "pad", "[UNK]": "unk", "[CLS]": "cls", "[SEP]": "sep", "[MASK]": "mask"}


def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
    if c in "\t\n\r":  # BERT counts these as whitespace, not control
        return False
    return unicodedata.category(c) in ("Cc", "Cf")


def _is_punctuation(c: str) -> bool:
    """BERT treats all non-letter/number ASCII ($, ^, `) as punctuation, plus Unicode category P*."""
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
    """CJK Unified Ideographs blocks (not Hiragana/Katakana/Hangul, which are space-separated)."""
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )  # fmt: skip


class BasicTokenizer:
    """Stage 1 of BERT tokenisation: clean, (lower-case, strip accents,) split on spaces and punctuation."""

    def __init__(self, lowercase: bool = True, strip_accents: bool | None = None, tokenize_chinese_chars: bool = True):
        self.lowercase = lowercase
        # BERT uncased strips accents unless told otherwise; cased models keep them.
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def clean(self, text: str) -> str:
        out = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or _is_control(c):
                continue
            if _is_whitespace(c):
                out.append(" ")
            elif self.tokenize_chinese_chars and _is_cjk(cp):
                out.append(f" {c} ")
            else:
                out.append(c)
        return "".join(out)

    def tokenize(self, text: str) -> list[str]:
        words: list[str] = []
        for word in self.clean(text).split():
            if self.lowercase:
                word = word.lower()
            if self.strip_accents:
                word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            current: list[str] = []
            for c in word:
                if _is_punctuation(c):
                    if current:
                        words.append("".join(current))
                        current = []
                    words.append(c)
                else:
                    current.append(c)
            if current:
                words.append("".join(current))
        return words


class WordPieceTokenizer(Tokenizer):
    """BERT-style WordPiece tokenizer over a fixed vocabulary (a list of tokens, id = position).

    ``encode(text)`` gives ``[CLS] tokens [SEP]`` by default; :meth:`encode_pair` gives
    ``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` 0 for the first segment and 1 for the second.
    Special tokens written literally in the text (``"[MASK]"``) are kept whole.
    """

    kind = "wordpiece"

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        max_input_chars_per_word: int = 100,
    ) -> None:
        if isinstance(vocab, str) or not isinstance(vocab, Sequence):
            raise TypeError(f"vocab must be a list of token strings; got {type(vocab).__name__}")
        self.vocab: dict[str, int] = {}
        for i, token in enumerate(vocab):
            if not isinstance(token, str):
                raise TypeError(f"vocab entry {i} must be a str; got {type(token).__name__}")
            self.vocab.setdefault(token, i)  # a duplicate line keeps its first id (as BERT's loader does)
        self.itos: list[str] = list(vocab)
        missing = [t for t in BERT_SPECIAL_TOKENS if t not in self.vocab]
        if missing:
            raise ValueError(f"a WordPiece vocabulary needs the special tokens {list(BERT_SPECIAL_TOKENS)}; missing {missing}")
        if max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be >= 1; got {max_input_chars_per_word}")
        self._specials = dict(BERT_SPECIAL_TOKENS)
        self.basic = BasicTokenizer(lowercase, strip_accents, tokenize_chinese_chars)
        self.max_input_chars_per_word = max_input_chars_per_word
        self._special_re = re.compile("|".join(re.escape(t) for t in BERT_SPECIAL_TOKENS))

    @classmethod
    def from_vocab_file(cls, path: str | Path, **kwargs: Any) -> WordPieceTokenizer:
        """Read a BERT ``vocab.txt``: one token per line, the line number is the id."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vocabulary file at {path}")
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline does not start another token
        return cls([line.rstrip("\r") for line in lines], **kwargs)

    # --- tokenising ---------------------------------------------------------------------------------
    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first split of one basic token into vocabulary pieces."""
        if len(word) > self.max_input_chars_per_word:
            return ["[UNK]"]
        pieces: list[str] = []
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]  # BERT maps the whole word, not just the tail, to [UNK]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece token strings (no [CLS]/[SEP] added)."""
        check_text(text)
        tokens: list[str] = []
        pos = 0
        for m in [*self._special_re.finditer(text), None]:
            end = m.start() if m is not None else len(text)
            for word in self.basic.tokenize(text[pos:end]):
                tokens.extend(self.wordpiece(word))
            if m is not None:
                tokens.append(m.group())
                pos = m.end()
        return tokens

    def encode(self, text: str, *, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """``[CLS] w1 ... wn [SEP]`` as ids (without the specials if ``add_special_tokens=False``).

        ``max_length`` truncates the word pieces so that the result, specials included, fits.
        """
        ids = [self.vocab[t] for t in self.tokenize(text)]
        extra = 2 if add_special_tokens else 0
        if max_length is not None:
            if not isinstance(max_length, int) or max_length < extra + 1:
                raise ValueError(f"max_length must be an int >= {extra + 1}; got {max_length!r}")
            ids = ids[: max_length - extra]
        return [self.cls_id, *ids, self.sep_id] if add_special_tokens else ids

    def encode_pair(self, text_a: str, text_b: str, *, max_length: int | None = None) -> dict[str, list[int]]:
        """``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` (0 for ``[CLS] a [SEP]``, 1 for ``b [SEP]``).

        With ``max_length``, the longer segment is cut first; if both must be cut, the budget
        ``m = max_length - 3`` is shared as ``m // 2`` for the shorter and the rest for the longer
        segment (Hugging Face's ``longest_first`` as implemented in ``tokenizers``; the legacy Python
        tokenizer breaks exact ties the other way).
        """
        a = self.encode(text_a, add_special_tokens=False)
        b = self.encode(text_b, add_special_tokens=False)
        if max_length is not None:
            if not isinstance(max_length, int) or max_length < 5:
                raise ValueError(f"max_length for a pair must be an int >= 5; got {max_length!r}")
            budget = max_length - 3  # room left after [CLS] a [SEP] b [SEP]
            if len(a) + len(b) > budget:
                short = min(len(a), len(b))
                keep_short = min(short, budget)
                keep_long = max(keep_short, budget - keep_short)
                if keep_short + keep_long > budget:  # both are long: split the budget
                    keep_short, keep_long = budget // 2, budget // 2 + budget % 2
                keep_a, keep_b = (keep_long, keep_short) if len(a) > len(b) else (keep_short, keep_long)
                a, b = a[:keep_a], b[:keep_b]
        input_ids = [self.cls_id, *a, self.sep_id, *b, self.sep_id]
        token_type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": [1] * len(input_ids)}

    def batch_encode(
        self,
        texts: Sequence[str],
        texts_b: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
    ):
        """Encode a batch (optionally of pairs), right-padded with [PAD] to the longest sequence.

        Returns a dict of LongTensors ``input_ids``, ``token_type_ids``, ``attention_mask`` (B, T).
        """
        import torch

        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of str; got {type(texts).__name__}")
        if texts_b is not None and len(texts_b) != len(texts):
            raise ValueError(f"texts ({len(texts)}) and texts_b ({len(texts_b)}) must have the same length")
        if texts_b is None:
            rows = []
            for t in texts:
                ids = self.encode(t, max_length=max_length)
                rows.append({"input_ids": ids, "token_type_ids": [0] * len(ids)})
        else:
            rows = [self.encode_pair(a, b, max_length=max_length) for a, b in zip(texts, texts_b, strict=True)]
        longest = max((len(r["input_ids"]) for r in rows), default=0)
        out = {k: torch.zeros(len(rows), longest, dtype=torch.long) for k in ("token_type_ids", "attention_mask")}
        out["input_ids"] = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(r["input_ids"])  # (T_i,)
            out["token_type_ids"][i, :n] = torch.tensor(r["token_type_ids"])  # (T_i,)
            out["attention_mask"][i, :n] = 1  # (T_i,)
        return out

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Ids -> text: pieces joined by spaces, ``##`` continuations glued to their word.

        Lossy by design: case, accents and the spacing around punctuation are not restored.
        """
        ids = check_ids(ids, self.vocab_size)
        special = self.special_ids
        tokens = [self.itos[i] for i in ids if not (skip_special_tokens and i in special)]
        return " ".join(tokens).replace(" ##", "").strip()

    # --- vocabulary ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_to_id(self, token: str) -> int:
        check_text(token, "token")
        if token not in self.vocab:
            raise KeyError(f"{token!r} is not in this WordPiece vocabulary")
        return self.vocab[token]

    def id_to_token(self, index: int) -> str:
        return self.itos[check_ids([index], self.vocab_size)[0]]

    def _to_json(self) -> dict[str, Any]:
        return {
            "vocab": self.itos,
            "lowercase": self.basic.lowercase,
            "strip_accents": self.basic.strip_accents,
            "tokenize_chinese_chars": self.basic.tokenize_chinese_chars,
            "max_input_chars_per_word": self.max_input_chars_per_word,
        }

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> WordPieceTokenizer:
        return cls(
            data["vocab"],
            lowercase=data["lowercase"],
            strip_accents=data["strip_accents"],
            tokenize_chinese_chars=data["tokenize_chinese_chars"],
            max_input_chars_per_word=data["max_input_chars_per_word"],
        )
