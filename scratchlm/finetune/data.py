"""Task data for fine-tuning, through 🤗 ``datasets`` (offline): generic builders and their checks.

A :class:`TaskData` holds one tokenised ``datasets.Dataset`` per split (built with ``.map`` from
local rows — the registry's files — and formatted with ``.set_format("torch")``), the label names,
the pad id and how many examples were truncated. Three kinds of task cover Chapter 09:

* ``classification`` / ``regression`` — one text (or a pair in one input, a *cross-encoder*:
  ``[CLS] a [SEP] b [SEP]`` with ``token_type_ids``) → ``input_ids``, ``token_type_ids``, ``labels``;
* ``pair`` — a pair embedded side by side (a *bi-encoder*) → ``input_ids_a``, ``input_ids_b``, ``labels``;
* ``tagging`` — one tag per word → ``input_ids`` with ``labels`` on the first sub-word of each word
  and −100 on the other sub-words and on ``[CLS]``/``[SEP]``.

Why only the first sub-word carries the tag: UD scores one tag per *word*, so one prediction per
word must come out. Labelling every piece would count long words several times in the loss and
leave a rule to invent for pieces that disagree; the first piece attends to the rest of its word,
so it can decide for the whole word (Devlin et al., 2019, §5.3, for NER).

Bad input is refused with a clear error, before any training: labels outside the label set (names
or ids), NaN/inf regression targets, tags outside the tag set, empty splits, and sequences longer
than ``max_length`` — sentence-level examples are *truncated* and counted (``task.truncated``
shows how many per split, and the builder warns), tagging examples raise, because a truncated
sentence loses words that would then silently drop out of the accuracy. :func:`check_task_fits`
checks the tokenizer and the task against the model: vocabulary size against embedding rows, the
pad id, and ``max_length`` against the position table. Introduced in Chapter 09.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..constants import IGNORE_INDEX

KINDS = ("classification", "regression", "pair", "tagging")


@dataclass
class TaskData:
    """A fine-tuning task: tokenised splits (``datasets.Dataset``, torch format) and what they mean."""

    name: str  # e.g. "sms_spam (rasbt)"
    kind: str  # one of KINDS
    splits: dict[str, Any]  # split name -> datasets.Dataset with input columns, labels, length
    label_names: tuple[str, ...] | None  # class or tag names (id = position); None for regression
    pad_id: int  # the tokenizer's [PAD] id
    max_length: int  # longest sequence, specials included
    truncated: dict[str, int] = field(default_factory=dict)  # split -> examples cut to max_length
    raw: dict[str, list[Any]] = field(default_factory=dict)  # split -> the rows the split was built from

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}")

    @property
    def num_labels(self) -> int:
        """Number of classes / tags (1 for regression and pairs)."""
        return len(self.label_names) if self.label_names else 1

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        return {name: len(ds) for name, ds in self.splits.items()}

    def __repr__(self) -> str:
        cut = {k: v for k, v in self.truncated.items() if v}
        return (f"TaskData({self.name!r}, kind={self.kind!r}, sizes={self.sizes()}, num_labels={self.num_labels}, "
                f"max_length={self.max_length}" + (f", truncated={cut}" if cut else "") + ")")


# ------------------------------------------------------------------------------------------ checks

def _check_splits(splits: Mapping[str, Sequence[Any]], what: str) -> None:
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError(f"{what}: splits must be a non-empty dict of split name -> rows; got {splits!r:.80}")
    for name, rows in splits.items():
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
            raise TypeError(f"{what}: split {name!r} must be a list of rows; got {type(rows).__name__}")
        if len(rows) == 0:
            raise ValueError(f"{what}: split {name!r} is empty (no examples to train on or to evaluate)")


def _check_max_length(max_length: object, least: int) -> int:
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < least:
        raise ValueError(f"max_length must be an int >= {least}; got {max_length!r}")
    return max_length


def _label_ids(labels: Sequence[Any], label_names: Sequence[str], where: str) -> list[int]:
    """Label names or ids → ids in [0, K); anything else raises naming the first offenders."""
    index = {name: i for i, name in enumerate(label_names)}
    out: list[int] = []
    bad: list[tuple[int, Any]] = []
    for i, y in enumerate(labels):
        if isinstance(y, str):
            if y in index:
                out.append(index[y])
                continue
        elif isinstance(y, int) and not isinstance(y, bool) and 0 <= y < len(label_names):
            out.append(y)
            continue
        bad.append((i, y))
    if bad:
        shown = ", ".join(f"row {i}: {y!r}" for i, y in bad[:5])
        raise ValueError(f"{where}: {len(bad)} label(s) outside the label set {list(label_names)} "
                         f"(names, or ids 0..{len(label_names) - 1}): {shown}")
    return out


def _targets(scores: Sequence[Any], where: str) -> list[float]:
    out: list[float] = []
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(float(s)):
            raise ValueError(f"{where}: regression target at row {i} must be a finite number; got {s!r}")
        out.append(float(s))
    return out


class _Tokenizer:
    """What the builders need from a tokenizer (WordPieceTokenizer has all of it)."""

    pad_id: int
    cls_id: int
    sep_id: int
    vocab_size: int

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...


def _check_tokenizer(tokenizer: Any) -> None:
    for attr in ("encode", "pad_id", "cls_id", "sep_id", "vocab_size"):
        if not hasattr(tokenizer, attr):
            raise TypeError(f"tokenizer must have .{attr} (a BERT-style tokenizer such as WordPieceTokenizer); "
                            f"got {type(tokenizer).__name__}")
    for attr in ("pad_id", "cls_id", "sep_id"):
        if not isinstance(getattr(tokenizer, attr), int):
            raise ValueError(f"tokenizer.{attr} must be an int id; got {getattr(tokenizer, attr)!r}")


def check_task_fits(task: TaskData, tokenizer: Any, model: Any) -> None:
    """Refuse a tokenizer / task that does not match the model it will be fed to.

    Checks: the tokenizer's vocabulary size equals the rows of the model's word embedding (an id
    past the table crashes; a smaller vocabulary means another tokenizer); ``task.pad_id`` is the
    tokenizer's and, when the model's config names one, the model's pad id; [CLS]/[SEP] ids lie in
    the table; ``task.max_length`` fits the model's position table. ``model`` may be a head (its
    ``.encoder`` is used) or the encoder itself.
    """
    encoder = getattr(model, "encoder", model)
    encoder = encoder if hasattr(encoder, "config") else model
    config = getattr(encoder, "config", None)
    if config is None:
        raise TypeError(f"check_task_fits needs a model with a .config (BertModel, GPT); got {type(model).__name__}")
    rows = getattr(config, "vocab_size", None)
    limits = encoder.input_limits() if hasattr(encoder, "input_limits") else {}
    positions = limits.get("max_length")
    if tokenizer.vocab_size != rows:
        raise ValueError(f"tokenizer/model mismatch: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"word embedding has {rows} rows; load the vocabulary that was saved with these weights")
    model_pad = getattr(config, "pad_id", None)
    if task.pad_id != tokenizer.pad_id or (model_pad is not None and model_pad != tokenizer.pad_id):
        raise ValueError(f"tokenizer/model mismatch: pad ids differ (task {task.pad_id}, tokenizer {tokenizer.pad_id}, "
                         f"model config {model_pad})")
    for name in ("cls_id", "sep_id"):
        if not 0 <= getattr(tokenizer, name) < rows:
            raise ValueError(f"tokenizer.{name}={getattr(tokenizer, name)} lies outside the model's {rows} embeddings")
    if positions is not None and task.max_length > positions:
        raise ValueError(f"task {task.name!r} allows sequences of {task.max_length} tokens but the model has only "
                         f"{positions} positions; rebuild the task with max_length <= {positions}")


# ---------------------------------------------------------------------------------------- building

def _to_dataset(columns: dict[str, list[Any]], encode: Callable[[dict[str, list]], dict[str, list]],
                format_columns: Sequence[str], fingerprint: str):
    """``datasets.Dataset.from_dict`` → ``.map(encode, batched)`` → ``.set_format("torch")``, offline, quiet."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # no stderr bars in a notebook build
    try:
        ds = datasets.Dataset.from_dict(columns)
        ds = ds.map(encode, batched=True, batch_size=512, keep_in_memory=True, load_from_cache_file=False,
                    new_fingerprint=fingerprint)  # a given fingerprint: no hashing of the tokenizer
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    ds.set_format("torch", columns=list(format_columns), output_all_columns=True)
    return ds


def _fingerprint(*parts: object) -> str:
    """A fingerprint for ``datasets`` (it only names the in-memory result; nothing is cached on disk)."""
    import hashlib

    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _encode_text(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], bool]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    cut = len(ids) > max_length - 2
    return [tokenizer.cls_id, *ids[: max_length - 2], tokenizer.sep_id], cut


def _encode_pair(tokenizer: Any, a: str, b: str, max_length: int) -> tuple[list[int], list[int], bool]:
    """``[CLS] a [SEP] b [SEP]``; when too long the longer side is cut first (``longest_first``)."""
    ia = tokenizer.encode(a, add_special_tokens=False)
    ib = tokenizer.encode(b, add_special_tokens=False)
    budget = max_length - 3
    cut = len(ia) + len(ib) > budget
    while len(ia) + len(ib) > budget:
        if len(ia) >= len(ib):
            ia.pop()
        else:
            ib.pop()
    ids = [tokenizer.cls_id, *ia, tokenizer.sep_id, *ib, tokenizer.sep_id]
    types = [0] * (len(ia) + 2) + [1] * (len(ib) + 1)
    return ids, types, cut


def _warn_truncated(name: str, truncated: dict[str, int], max_length: int) -> None:
    cut = {k: v for k, v in truncated.items() if v}
    if cut:
        warnings.warn(f"{name}: truncated to max_length={max_length} tokens: {cut} examples per split",
                      stacklevel=3)


def _text_encoder(tokenizer: Any, max_length: int, pair: bool, count: list[int]):
    """The ``map`` function of :func:`text_task`; ``count[0]`` counts truncated examples."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids, types = [], []
        for k, text in enumerate(batch["text"]):
            if pair:
                x, tt, cut = _encode_pair(tokenizer, text, batch["text_b"][k], max_length)
            else:
                x, cut = _encode_text(tokenizer, text, max_length)
                tt = [0] * len(x)
            count[0] += cut
            ids.append(x)
            types.append(tt)
        return {"input_ids": ids, "token_type_ids": types, "length": [len(x) for x in ids]}

    return encode


def _pair_encoder(tokenizer: Any, max_length: int, count: list[int]):
    """The ``map`` function of :func:`pair_task`: each side on its own; ``length`` = the longer side."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        a, b = [], []
        for ta, tb in zip(batch["text_a"], batch["text_b"], strict=True):
            xa, ca = _encode_text(tokenizer, ta, max_length)
            xb, cb = _encode_text(tokenizer, tb, max_length)
            count[0] += ca or cb
            a.append(xa)
            b.append(xb)
        return {"input_ids_a": a, "input_ids_b": b, "length": [max(len(x), len(y)) for x, y in zip(a, b, strict=True)]}

    return encode


def _tag_encoder(tokenizer: Any, max_length: int, where: str):
    """The ``map`` function of :func:`tagging_task`; a sentence over ``max_length`` raises."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids, labels = [], []
        for words, tags in zip(batch["words"], batch["tag_ids"], strict=True):
            x, y = align_first_subword(tokenizer, words, tags)
            if len(x) > max_length:
                raise ValueError(f"{where}: a sentence of {len(words)} words is {len(x)} tokens, more than "
                                 f"max_length={max_length}; raise max_length (up to the model's positions) or "
                                 f"split the sentence (tagging tasks are not truncated: words would go unscored)")
            ids.append(x)
            labels.append(y)
        return {"input_ids": ids, "labels": labels, "length": [len(x) for x in ids]}

    return encode


def text_task(name: str, splits: Mapping[str, Sequence[tuple[Any, ...]]], tokenizer: Any, *,
              label_names: Sequence[str] | None = None, max_length: int = 128, warn: bool = True) -> TaskData:
    """Classification (``label_names`` given) or regression (``None``) over texts or pairs in one input.

    Rows are ``(label, text)`` or ``(label, text_a, text_b)`` (a cross-encoder pair). Labels are
    names or ids in ``label_names``; regression targets must be finite numbers.
    """
    _check_splits(splits, name)
    _check_tokenizer(tokenizer)
    max_length = _check_max_length(max_length, 5)
    truncated: dict[str, int] = {}
    out = {}
    for split, rows in splits.items():
        widths = {len(r) for r in rows}
        if not widths <= {2, 3} or len(widths) != 1:
            raise ValueError(f"{name}/{split}: rows must all be (label, text) or all (label, text_a, text_b); "
                             f"got row widths {sorted(widths)}")
        where = f"{name}/{split}"
        labels = (_label_ids([r[0] for r in rows], label_names, where) if label_names is not None
                  else _targets([r[0] for r in rows], where))
        pair = widths == {3}
        cols = {"text": [r[1] for r in rows], "labels": labels}
        if pair:
            cols["text_b"] = [r[2] for r in rows]
        for i, t in enumerate(cols["text"] + cols.get("text_b", [])):
            if not isinstance(t, str):
                raise TypeError(f"{where}: texts must be str; got {type(t).__name__} at position {i}")
        count = [0]
        encode = _text_encoder(tokenizer, max_length, pair, count)
        out[split] = _to_dataset(cols, encode, ("input_ids", "token_type_ids", "labels", "length"),
                                 _fingerprint(name, split, max_length, len(rows)))
        truncated[split] = count[0]
    if warn:
        _warn_truncated(name, truncated, max_length)
    kind = "classification" if label_names is not None else "regression"
    return TaskData(name, kind, out, tuple(label_names) if label_names is not None else None, tokenizer.pad_id,
                    max_length, truncated, {k: list(v) for k, v in splits.items()})


def pair_task(name: str, splits: Mapping[str, Sequence[tuple[Any, str, str]]], tokenizer: Any, *,
              max_length: int = 128, target_scale: float = 1.0, warn: bool = True) -> TaskData:
    """Bi-encoder pairs ``(score, text_a, text_b)``: each side tokenised on its own; label = score · target_scale.

    (STS-B with a :class:`~scratchlm.heads.BiEncoder`: ``target_scale=1/5`` maps 0–5 to the cosine
    targets 0–1.) ``length`` is the longer side, which sets the padded width of both.
    """
    _check_splits(splits, name)
    _check_tokenizer(tokenizer)
    max_length = _check_max_length(max_length, 3)
    if not isinstance(target_scale, (int, float)) or not math.isfinite(target_scale) or target_scale <= 0:
        raise ValueError(f"target_scale must be a positive finite number; got {target_scale!r}")
    truncated: dict[str, int] = {}
    out = {}
    for split, rows in splits.items():
        if any(len(r) != 3 for r in rows):
            raise ValueError(f"{name}/{split}: rows must be (score, text_a, text_b)")
        labels = [s * target_scale for s in _targets([r[0] for r in rows], f"{name}/{split}")]
        count = [0]
        encode = _pair_encoder(tokenizer, max_length, count)
        cols = {"text_a": [r[1] for r in rows], "text_b": [r[2] for r in rows], "labels": labels}
        out[split] = _to_dataset(cols, encode, ("input_ids_a", "input_ids_b", "labels", "length"),
                                 _fingerprint(name, split, max_length, len(rows)))
        truncated[split] = count[0]
    if warn:
        _warn_truncated(name, truncated, max_length)
    return TaskData(name, "pair", out, None, tokenizer.pad_id, max_length, truncated,
                    {k: list(v) for k, v in splits.items()})


def align_first_subword(tokenizer: Any, words: Sequence[str], tag_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """``[CLS] pieces… [SEP]`` and labels: each word's tag on its first piece, −100 elsewhere.

    A word the tokenizer turns into nothing (a lone control character) becomes ``[UNK]``, so every
    word keeps exactly one labelled position.
    """
    unk = getattr(tokenizer, "unk_id", None)
    ids, labels = [tokenizer.cls_id], [IGNORE_INDEX]
    for word, tag in zip(words, tag_ids, strict=True):
        pieces = tokenizer.encode(word, add_special_tokens=False) or ([unk] if unk is not None else [tokenizer.sep_id])
        ids.extend(pieces)
        labels.extend([tag] + [IGNORE_INDEX] * (len(pieces) - 1))
    ids.append(tokenizer.sep_id)
    labels.append(IGNORE_INDEX)
    return ids, labels


def tagging_task(name: str, splits: Mapping[str, Sequence[tuple[Sequence[str], Sequence[str]]]], tokenizer: Any, *,
                 tag_names: Sequence[str], max_length: int = 512) -> TaskData:
    """Token classification over ``(words, tags)`` sentences: first sub-word labelled, −100 elsewhere.

    A sentence longer than ``max_length`` pieces raises (see the module docstring: truncating
    would drop words from the evaluation without a trace).
    """
    _check_splits(splits, name)
    _check_tokenizer(tokenizer)
    max_length = _check_max_length(max_length, 3)
    index = {t: i for i, t in enumerate(tag_names)}
    if len(index) != len(tag_names) or not tag_names:
        raise ValueError(f"tag_names must be non-empty and unique; got {list(tag_names)}")
    out = {}
    for split, rows in splits.items():
        words_col, tags_col = [], []
        for i, row in enumerate(rows):
            words, tags = row[0], row[1]
            if len(words) != len(tags) or not words:
                raise ValueError(f"{name}/{split} sentence {i}: needs as many tags as words (>= 1); "
                                 f"got {len(words)} words, {len(tags)} tags")
            unknown = sorted({t for t in tags if t not in index})
            if unknown:
                raise ValueError(f"{name}/{split} sentence {i}: tags {unknown} are not in the tag set {list(tag_names)}")
            words_col.append(list(words))
            tags_col.append([index[t] for t in tags])

        encode = _tag_encoder(tokenizer, max_length, f"{name}/{split}")
        out[split] = _to_dataset({"words": words_col, "tag_ids": tags_col}, encode,
                                 ("input_ids", "labels", "length"), _fingerprint(name, split, max_length, len(rows)))
    return TaskData(name, "tagging", out, tuple(tag_names), tokenizer.pad_id, max_length,
                    {k: 0 for k in splits}, {k: list(v) for k, v in splits.items()})
