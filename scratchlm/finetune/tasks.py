"""Ready-made Chapter 09 tasks: SMS spam, STS-B and UD English EWT POS tagging.

* :func:`sms_spam_task` — ``protocol="rasbt"``: Raschka's *Build a Large Language Model (From
  Scratch)* protocol (ch. 6): every spam message (747) plus as many ham messages drawn at random,
  shuffled, cut 70/10/20 (1,045 / 149 / 300). The same protocol, not the same rows: the seed
  (``split_seed=123``, the book's ``random_state``) drives our own generator, not pandas'.
  ``protocol="full"``: all 5,574 messages, a split stratified by label (same fractions), so each
  part keeps the 13.4 % spam rate.
* :func:`stsb_task` — the official train / dev / test files; scores 0–5. ``mode="cross"``: the
  pair in one input (regression on 0–5); ``mode="bi"``: each sentence on its own, targets
  score / 5 (the cosine targets of Sentence-BERT).
* :func:`ud_pos_task` — UPOS tags; trains on the *dev* file (minus a held-out tenth used as the
  validation split) and tests on the official *test* file, because the bundled copies lack the
  (large) train file. First sub-word labelled, −100 elsewhere (see :mod:`.data`).

Every builder takes ``limit`` (at most that many examples per split, drawn at random but kept
in file order) for quick runs. Introduced in Chapter 09.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from ..data.corpora import UPOS_TAGS, load_conllu, load_sms_spam, load_stsb, train_val_test_split
from .data import TaskData, pair_task, tagging_task, text_task

T = TypeVar("T")

SMS_LABELS = ("ham", "spam")
RASBT_SEED = 123  # the random_state of Raschka's spam-classification chapter
RASBT_FRACTIONS = (0.7, 0.1, 0.2)
STSB_MODES = ("cross", "bi")


def _limit(rows: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """At most ``limit`` rows, a seeded random choice kept in the original order."""
    if limit is None or len(rows) <= limit:
        return list(rows)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be None or a positive int; got {limit!r}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def rasbt_balanced_split(rows: Sequence[tuple[str, str]], *, seed: int = RASBT_SEED,
                         fractions: tuple[float, float, float] = RASBT_FRACTIONS):
    """Raschka's protocol: all spam + an equal random sample of ham, shuffled, cut by ``fractions``.

    Sizes: train = ⌊0.7 n⌋, val = ⌊0.1 n⌋, test = the rest (n = 2 × #spam), as his
    ``random_split`` cuts. Returns (train, val, test) lists of ``(label, text)``.
    """
    spam = [r for r in rows if r[0] == "spam"]
    ham = [r for r in rows if r[0] == "ham"]
    if not spam or len(ham) < len(spam):
        raise ValueError(f"the balanced protocol needs spam messages and at least as many ham; got {len(spam)} "
                         f"spam, {len(ham)} ham")
    rng = random.Random(seed)
    balanced = rng.sample(ham, len(spam)) + spam
    rng.shuffle(balanced)
    n = len(balanced)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    return balanced[:n_train], balanced[n_train:n_train + n_val], balanced[n_train + n_val:]


def sms_spam_task(tokenizer: Any, *, protocol: str = "rasbt", split_seed: int = RASBT_SEED, max_length: int = 128,
                  limit: int | None = None, warn: bool = True) -> TaskData:
    """SMS Spam Collection as a ham/spam classification task (see the module docstring for protocols)."""
    rows = load_sms_spam()
    if protocol == "rasbt":
        train, val, test = rasbt_balanced_split(rows, seed=split_seed)
    elif protocol == "full":
        train, val, test = train_val_test_split(rows, RASBT_FRACTIONS, seed=split_seed, stratify=lambda r: r[0])
    else:
        raise ValueError(f"protocol must be 'rasbt' or 'full'; got {protocol!r}")
    splits = {name: _limit(part, limit, split_seed + k) for k, (name, part)
              in enumerate((("train", train), ("val", val), ("test", test)))}
    return text_task(f"sms_spam ({protocol})", splits, tokenizer, label_names=SMS_LABELS, max_length=max_length,
                     warn=warn)


def stsb_task(tokenizer: Any, *, mode: str = "bi", max_length: int = 128, limit: int | None = None,
              seed: int = 0, warn: bool = True) -> TaskData:
    """STS Benchmark, official splits (train / dev → ``val`` / test): a cross-encoder or a bi-encoder task."""
    if mode not in STSB_MODES:
        raise ValueError(f"mode must be one of {STSB_MODES}; got {mode!r}")
    splits = {name: _limit(load_stsb(file), limit, seed + k) for k, (name, file)
              in enumerate((("train", "train"), ("val", "dev"), ("test", "test")))}
    if mode == "cross":
        return text_task("stsb (cross-encoder)", splits, tokenizer, label_names=None, max_length=max_length,
                         warn=warn)
    return pair_task("stsb (bi-encoder)", splits, tokenizer, max_length=max_length, target_scale=1 / 5, warn=warn)


def ud_pos_task(tokenizer: Any, *, val_fraction: float = 0.1, split_seed: int = 0, max_length: int = 512,
                limit: int | None = None) -> TaskData:
    """UD English EWT UPOS tagging: train on dev (a ``val_fraction`` held out as ``val``), test on test."""
    if not isinstance(val_fraction, float) or not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be a float in (0, 0.5); got {val_fraction!r}")
    dev = [(s.words, s.upos) for s in load_conllu("dev")]
    test = [(s.words, s.upos) for s in load_conllu("test")]
    train, val, _ = train_val_test_split(dev, (1.0 - val_fraction, val_fraction, 0.0), seed=split_seed)
    splits = {"train": _limit(train, limit, split_seed), "val": _limit(val, limit, split_seed + 1),
              "test": _limit(test, limit, split_seed + 2)}
    return tagging_task("ud_ewt upos", splits, tokenizer, tag_names=UPOS_TAGS, max_length=max_length)
