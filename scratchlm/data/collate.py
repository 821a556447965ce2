"""Padding and collating: variable-length examples into rectangular batches (introduced in Chapter 02).

One primitive, :func:`pad_sequences`, pads rows to a common width and returns the attention mask
(1 = real token, 0 = padding); every collator of the book is built on it:

* :func:`pad_collate` — a list of examples (id lists or dicts) → ``input_ids``, ``attention_mask``,
  ``labels`` (``-100`` at padding, so ``F.cross_entropy`` ignores it), the Hugging Face layout;
* :func:`left_pad` — prompts padded on the *left* for batched generation (Chapter 06);
* :func:`seq2seq_collate` — (source, target) pairs for an encoder-decoder (Chapter 08);
* the MLM collator (Chapter 07) pads with it too.

Labels stay *unshifted*: for a causal LM they equal ``input_ids`` and the model shifts them inside
(the model contract). Value checks (token ids inside the vocabulary) happen here, on the CPU, when
``vocab_size`` is given — never inside a model's ``forward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..constants import IGNORE_INDEX
from .lm import as_id_tensor

SIDES = ("right", "left")


def pad_sequences(rows: Sequence[Any], pad_value: int, *, side: str = "right",
                  width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad 1-D id rows to one (B, T) int64 tensor; return ``(padded, attention_mask)``.

    T is the longest row, or ``width`` (which must fit every row). ``side="left"`` puts the padding
    in front, so every row's last token sits in the last column (what generation needs).
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise ValueError(f"pad_sequences expects a non-empty list of id sequences; got {type(rows).__name__}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}; got {side!r}")
    tensors = [as_id_tensor(r, f"row {i}") for i, r in enumerate(rows)]
    longest = max(len(t) for t in tensors)
    if width is None:
        width = longest
    elif not isinstance(width, int) or isinstance(width, bool) or width < longest:
        raise ValueError(f"width must be an int >= the longest row ({longest} tokens); got {width!r}; truncate first")
    padded = torch.full((len(tensors), width), pad_value, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(tensors), width), dtype=torch.long)  # (B, T)
    for i, t in enumerate(tensors):
        cols = slice(0, len(t)) if side == "right" else slice(width - len(t), width)
        padded[i, cols] = t
        mask[i, cols] = 1
    return padded, mask


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """Raise a ValueError naming the offending values unless every id lies in [0, vocab_size)."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)].unique()[:5].tolist()
        raise ValueError(f"{name} must lie in [0, vocab_size={vocab_size}); got ids {bad} "
                         f"(range {int(ids.min())}..{int(ids.max())}) — a tokenizer/model vocabulary mismatch?")


def pad_collate(
    batch: Sequence[Any],
    pad_id: int,
    *,
    padding_side: str = "right",
    max_length: int | None = None,
    vocab_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of examples to one (B, T) batch, T = the longest example (or ``max_length``).

    Each example is one of

    * a sequence of ids (list or 1-D tensor): ``labels`` are the ids themselves (the Hugging Face
      convention: the causal-LM loss shifts them inside the model);
    * a dict with ``input_ids`` and optionally ``labels`` (a sequence, padded with -100, or a scalar
      class label, stacked) and other per-token fields such as ``token_type_ids`` (padded with 0).

    Returns ``input_ids`` (padded with ``pad_id``), ``attention_mask`` (1 = real token, 0 = pad) and
    ``labels`` (``-100`` at padding). With ``vocab_size`` every input id is checked to lie in range.
    Pre-shifted (x, y) language-model windows need no padding and are not accepted here: stack them
    (``torch.stack``) and train with :func:`scratchlm.training.causal_lm_loss`.
    """
    if isinstance(batch, (str, bytes, Mapping)) or not isinstance(batch, Sequence) or len(batch) == 0:
        raise ValueError(f"pad_collate expects a non-empty list of examples; got {type(batch).__name__}")
    if not isinstance(pad_id, int) or isinstance(pad_id, bool):
        raise TypeError(f"pad_id must be an int (e.g. tokenizer.pad_id); got {type(pad_id).__name__} {pad_id!r}")
    if padding_side not in SIDES:
        raise ValueError(f"padding_side must be one of {SIDES}; got {padding_side!r}")

    rows: list[dict[str, Any]] = []
    for k, example in enumerate(batch):
        if isinstance(example, Mapping):
            if "input_ids" not in example:
                raise ValueError(f"pad_collate: example {k} is a dict without 'input_ids' (keys: {sorted(example)})")
            row = dict(example)
        elif isinstance(example, tuple) and len(example) == 2 and not isinstance(example[0], int):
            raise ValueError(f"pad_collate: example {k} is an (x, y) pair of pre-shifted windows; labels here are "
                             "unshifted (the model shifts them): pass the ids alone, or stack equal-length windows")
        else:
            row = {"input_ids": example}
        try:
            row["input_ids"] = as_id_tensor(row["input_ids"], f"example {k} input_ids")
        except (TypeError, ValueError) as err:
            raise type(err)(f"pad_collate: {err}") from None
        row.setdefault("labels", row["input_ids"])
        rows.append(row)

    lengths = [len(r["input_ids"]) for r in rows]
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int; got {max_length!r}")
    if max_length is not None and max(lengths) > max_length:
        raise ValueError(f"an example has {max(lengths)} tokens, more than max_length={max_length}; truncate first")
    keys = list(dict.fromkeys(key for r in rows for key in r))
    for key in keys:
        if any(key not in r for r in rows):
            raise ValueError(f"pad_collate: field {key!r} is present in some examples but not all")

    out: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [r[key] for r in rows]
        if all(not isinstance(v, (list, tuple, torch.Tensor)) or (isinstance(v, torch.Tensor) and v.ndim == 0)
               for v in values):  # e.g. a class label per example
            out[key] = torch.as_tensor([v.item() if isinstance(v, torch.Tensor) else v for v in values])  # (B,)
            continue
        if key == "attention_mask":
            continue  # rebuilt below from the lengths
        for i, v in enumerate(values):
            if len(v) != lengths[i]:
                raise ValueError(f"pad_collate: example {i} has {lengths[i]} input_ids but {len(v)} {key}")
        fill = pad_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
        out[key], mask = pad_sequences(values, fill, side=padding_side, width=max_length)  # (B, T) each
    out["attention_mask"] = mask
    if vocab_size is not None:
        check_token_ids(out["input_ids"], vocab_size)
    return out


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch prompts of different lengths: (ids (B, T), attention_mask (B, T)), padding on the LEFT.

    Why left: generation appends at the right end, so every row's newest token must sit in the
    last column; the mask tells attention to ignore the padding and positions to skip it.
    Introduced in Chapter 06.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad needs at least one prompt and no empty prompt")
    return pad_sequences(sequences, pad_id, side="left")


def seq2seq_collate(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    decoder_start_id: int,
) -> dict[str, torch.Tensor]:
    """Pad ``(source, target)`` pairs into a teacher-forcing batch (Chapter 08).

    Returns ``input_ids`` / ``attention_mask`` (B, S), ``labels`` (B, T) with ``-100`` at padding,
    and ``decoder_input_ids`` (B, T) = labels shifted right with ``decoder_start_id`` in front.
    """
    if len(pairs) == 0:
        raise ValueError("seq2seq_collate got an empty batch")
    for i, (src, tgt) in enumerate(pairs):
        if len(src) == 0 or len(tgt) == 0:
            raise ValueError(f"pair {i} has an empty source or target")
    input_ids, attention_mask = pad_sequences([s for s, _ in pairs], pad_id)  # (B, S) each
    labels, _ = pad_sequences([t for _, t in pairs], IGNORE_INDEX)  # (B, T)
    decoder_input_ids, _ = pad_sequences([[decoder_start_id, *list(t)[:-1]] for _, t in pairs], pad_id)  # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "decoder_input_ids": decoder_input_ids}
