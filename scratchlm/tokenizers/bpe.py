"""Byte-level byte-pair encoding (BPE), trained from scratch (introduced in Chapter 02).

GPT-2's tokenizer in ~250 lines. Text is UTF-8 encoded, so the 256 byte values are the base
vocabulary and *any* string can be encoded (no unknown token is ever needed). Training repeats

    (a, b) = argmax_{pairs} count(a, b);   new id = 256 + k;   replace every adjacent "a b" by it

until the vocabulary has ``vocab_size`` entries (256 bytes + merges + special tokens). As in GPT-2,
a regex first splits the text into chunks (words with their leading space, numbers, punctuation,
whitespace) and merges never cross a chunk boundary, so training counts *unique* chunks with their
frequency instead of walking the whole corpus for each merge; pair counts are updated incrementally
only for the chunks that contain the merged pair, and a heap finds the next most frequent pair.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .base import Tokenizer, check_ids, check_text, normalize_special_tokens

try:  # the `regex` module knows Unicode classes (\p{L}); it ships with transformers.
    import regex as _regex

    HAVE_REGEX = True
except ImportError:  # pragma: no cover - exercised only without the optional dependency
    _regex = None
    HAVE_REGEX = False

# GPT-2's pre-tokenisation pattern (Radford et al., 2019; openai/gpt-2 encoder.py).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's (cl100k_base): case-insensitive contractions, numbers in groups of at most three digits.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)
# A stand-in with the standard `re` module: [^\W\d_] is "a letter", \d "a digit"; every character is
# whitespace, \w or [^\s\w], so the alternatives together always cover the whole text.
SIMPLE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "simple": SIMPLE_PATTERN}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the rest (control bytes, space, ...) are shifted to
    U+0100 and up, so that a space shows as ``Ġ`` and a newline as ``Ċ`` in token strings.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``."""
    out: list[int] = []
    i, n = 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pair_counts(ids: Sequence[int]) -> Counter:
    return Counter(zip(ids, ids[1:], strict=False))


class ByteBPETokenizer(Tokenizer):
    """Byte-level BPE tokenizer (GPT-2 style). Train with :meth:`train`, then ``encode``/``decode``.

    ``pattern`` is the pre-tokenisation regex: ``"gpt2"`` (default), ``"gpt4"``, ``"simple"`` (needs
    only the standard ``re`` module), a custom pattern string, or ``None`` for no splitting. Without
    the ``regex`` package, ``"gpt2"`` and ``"gpt4"`` fall back to ``"simple"``.

    Ids: 0..255 are the bytes, 256..256+M-1 the merges in the order they were learned, then the
    special tokens. ``decode(encode(s)) == s`` for every string ``s``.
    """

    kind = "byte_bpe"

    def __init__(self, pattern: str | None = "gpt2") -> None:
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str or None; got {type(pattern).__name__}")
        self.pattern_name = pattern
        self._compiled = self._compile(pattern)
        self.merges: list[tuple[int, int]] = []  # merges[k] = (a, b) became id 256 + k
        self.ranks: dict[tuple[int, int], int] = {}  # (a, b) -> new id (lower = learned earlier)
        self.vocab: dict[int, bytes] = {b: bytes([b]) for b in range(256)}  # id -> the bytes it spells
        self._specials: dict[str, str | None] = {}
        self._special_to_id: dict[str, int] = {}
        self._special_re = None
        self._cache: dict[str, list[int]] = {}
        self._bytes_to_id: dict[bytes, int] | None = None  # built lazily by token_to_id
        # Filled by train(): tokens needed for the training text after each merge (for plots).
        self.train_token_counts: list[int] = []
        self.train_bytes: int = 0

    @staticmethod
    def _compile(pattern: str | None):
        if pattern is None:
            return None
        source = PATTERNS.get(pattern, pattern)
        if HAVE_REGEX:
            return _regex.compile(source)
        if pattern in ("gpt2", "gpt4"):
            source = SIMPLE_PATTERN
        try:
            return re.compile(source)
        except re.error as err:
            raise ValueError(f"invalid pre-tokenisation pattern {pattern!r}: {err}") from err

    # --- splitting ----------------------------------------------------------------------------------
    def _split_special(self, text: str, allow_special: bool) -> Iterator[tuple[str, bool]]:
        """Yield (piece, is_special) so that special tokens are never merged with their neighbours."""
        if not allow_special or self._special_re is None:
            yield text, False
            return
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                yield text[pos:m.start()], False
            yield m.group(), True
            pos = m.end()
        if pos < len(text):
            yield text[pos:], False

    def pretokenize(self, text: str) -> list[str]:
        """The chunks merges are confined to (GPT-2's regex split); their concatenation is ``text``."""
        check_text(text)
        if self._compiled is None:
            return [text] if text else []
        return self._compiled.findall(text)

    # --- training -----------------------------------------------------------------------------------
    def train(
        self,
        text: str,
        vocab_size: int,
        *,
        special_tokens: Sequence[str] | Mapping[str, str] | None = None,
        min_frequency: int = 2,
        verbose: bool = False,
    ) -> ByteBPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``; returns ``self``.

        Ties between equally frequent pairs go to the smaller (a, b), so training is deterministic.
        Training stops early when no pair occurs at least ``min_frequency`` times.
        """
        check_text(text)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TypeError(f"vocab_size must be an int; got {type(vocab_size).__name__}")
        specials = normalize_special_tokens(special_tokens)
        if vocab_size < 256 + len(specials):
            raise ValueError(
                f"vocab_size must be at least 256 (bytes) + {len(specials)} (special tokens); got {vocab_size}"
            )
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be a positive int; got {min_frequency!r}")
        self._set_specials(specials, first_id=None)
        n_merges = vocab_size - 256 - len(specials)

        # 1. Count unique chunks (special tokens are cut out first, so no merge spans them).
        chunk_freq: Counter = Counter()
        for piece, is_special in self._split_special(text, allow_special=True):
            if not is_special:
                chunk_freq.update(self.pretokenize(piece))
        words: list[list[int]] = [list(chunk.encode("utf-8")) for chunk in chunk_freq]
        freqs: list[int] = list(chunk_freq.values())

        # 2. Pair counts over unique chunks, and which chunks hold each pair.
        pair_count: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for w, (ids, f) in enumerate(zip(words, freqs, strict=True)):
            for pair in zip(ids, ids[1:], strict=False):
                pair_count[pair] += f
                where[pair].add(w)
        heap = [(-c, pair) for pair, c in pair_count.items()]
        heapq.heapify(heap)

        self.merges, self.ranks = [], {}
        self.vocab = {b: bytes([b]) for b in range(256)}
        self.train_bytes = sum(len(ids) * f for ids, f in zip(words, freqs, strict=True))
        total_tokens = self.train_bytes
        self.train_token_counts = [total_tokens]
        iterator: Any = range(n_merges)
        if verbose:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="BPE merges")
        for k in iterator:
            # 3. Most frequent pair: pop stale heap entries (their count changed since they were pushed).
            best = None
            while heap:
                neg, pair = heapq.heappop(heap)
                if pair_count.get(pair, 0) == -neg:
                    best = pair
                    break
            if best is None or pair_count[best] < min_frequency:
                break
            new_id = 256 + k
            self.merges.append(best)
            self.ranks[best] = new_id
            self.vocab[new_id] = self.vocab[best[0]] + self.vocab[best[1]]
            # 4. Rewrite only the chunks holding the pair; update pair counts by difference.
            changed: set[tuple[int, int]] = set()
            for w in where.pop(best):
                old = words[w]
                new = _merge(old, best, new_id)
                if len(new) == len(old):
                    continue  # stale index entry: this chunk no longer holds the pair
                f = freqs[w]
                total_tokens -= (len(old) - len(new)) * f
                before, after = _pair_counts(old), _pair_counts(new)
                for pair, c in before.items():
                    delta = after.get(pair, 0) - c
                    if delta:
                        pair_count[pair] += delta * f
                        changed.add(pair)
                for pair, c in after.items():
                    if pair not in before:
                        pair_count[pair] += c * f
                        where[pair].add(w)
                        changed.add(pair)
                words[w] = new
            pair_count.pop(best, None)
            for pair in changed:
                c = pair_count.get(pair, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, pair))
                else:
                    pair_count.pop(pair, None)
            self.train_token_counts.append(total_tokens)

        # Special tokens go after the merges, as GPT-2's <|endoftext|> (50256) does.
        self._set_specials(specials, first_id=256 + len(self.merges))
        self._cache, self._bytes_to_id = {}, None
        return self

    def _set_specials(self, specials: dict[str, str | None], first_id: int | None) -> None:
        self._specials = dict(specials)
        self._special_to_id = {} if first_id is None else {t: first_id + i for i, t in enumerate(specials)}
        if specials:
            alternatives = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
            self._special_re = re.compile(alternatives)
        else:
            self._special_re = None
        self._id_to_special = {i: t for t, i in self._special_to_id.items()}

    # --- encoding / decoding ------------------------------------------------------------------------
    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply merges to one chunk in the order they were learned (lowest rank first)."""
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:], strict=False), key=lambda p: self.ranks.get(p, 1 << 62))
            if pair not in self.ranks:
                break
            ids = _merge(ids, pair, self.ranks[pair])
        if len(self._cache) > 200_000:  # keep memory bounded on huge, diverse inputs
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Text -> ids. With ``allow_special=False`` special-token strings are encoded as plain text."""
        check_text(text)
        ids: list[int] = []
        for piece, is_special in self._split_special(text, allow_special):
            if is_special:
                ids.append(self._special_to_id[piece])
            else:
                for chunk in self.pretokenize(piece):
                    ids.extend(self._encode_chunk(chunk))
        return ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Ids -> the raw bytes they spell (special tokens as their UTF-8 text)."""
        ids = check_ids(ids, self.vocab_size)
        return b"".join(
            self.vocab[i] if i in self.vocab else self._id_to_special[i].encode("utf-8") for i in ids
        )

    def decode(self, ids: Sequence[int], *, errors: str = "replace") -> str:
        """Ids -> text. A cut through a multi-byte character decodes as U+FFFD (``errors="replace"``)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # --- vocabulary ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self._special_to_id)

    def token_bytes(self, index: int) -> bytes:
        """The bytes a token id stands for."""
        return self.decode_bytes([index])

    def id_to_token(self, index: int) -> str:
        """GPT-2-style printable token string (a leading space shows as ``Ġ``, newline as ``Ċ``)."""
        index = check_ids([index], self.vocab_size)[0]
        if index in self._id_to_special:
            return self._id_to_special[index]
        return "".join(_BYTE_TO_CHAR[b] for b in self.vocab[index])

    def token_to_id(self, token: str) -> int:
        """Inverse of :meth:`id_to_token`."""
        check_text(token, "token")
        if token in self._special_to_id:
            return self._special_to_id[token]
        if self._bytes_to_id is None:
            self._bytes_to_id = {b: i for i, b in self.vocab.items()}
        try:
            raw = bytes(_CHAR_TO_BYTE[c] for c in token)
        except KeyError:
            raise KeyError(f"{token!r} is not a token of this ByteBPETokenizer") from None
        if raw not in self._bytes_to_id:
            raise KeyError(f"{token!r} is not a token of this ByteBPETokenizer")
        return self._bytes_to_id[raw]

    def with_merges(self, n_merges: int) -> ByteBPETokenizer:
        """A copy that keeps only the first ``n_merges`` merges (for vocabulary-size experiments).

        Special tokens are kept and renumbered to follow the shorter merge list.
        """
        if not isinstance(n_merges, int) or not 0 <= n_merges <= len(self.merges):
            raise ValueError(f"n_merges must be an int in [0, {len(self.merges)}]; got {n_merges!r}")
        data = self._to_json()
        data["merges"] = data["merges"][:n_merges]
        return type(self)._from_json(data)

    # --- persistence --------------------------------------------------------------------------------
    def _to_json(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern_name,
            "merges": [[a, b] for a, b in self.merges],
            "special_tokens": [[t, r] for t, r in self._specials.items()],
            # Redundant but handy for humans: the printable form of every merged token.
            "merged_tokens": [self.id_to_token(256 + k) for k in range(len(self.merges))],
        }

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> ByteBPETokenizer:
        tok = cls(pattern=data["pattern"])
        for k, (a, b) in enumerate(data["merges"]):
            new_id = 256 + k
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {k} ({a}, {b}) refers to an id not yet defined")
            tok.merges.append((a, b))
            tok.ranks[(a, b)] = new_id
            tok.vocab[new_id] = tok.vocab[a] + tok.vocab[b]
        tok._set_specials({t: r for t, r in data["special_tokens"]}, first_id=256 + len(tok.merges))
        return tok
