"""Batches for fine-tuning: dynamic padding, length bucketing, and a pure ``get_batch``.

Why bucket: a batch is padded to its longest row, so a batch that mixes a 5-token message with a
200-token one spends most of its compute on padding. Attention and the feed-forward layers cost
the same for a [PAD] position as for a word, so the *padding share*

    padding share = 1 − Σ_b Σ_{i∈b} len_i / Σ_b |b| · max_{i∈b} len_i

is the fraction of the work that is thrown away. Length bucketing (the idea behind Hugging
Face's ``group_by_length`` and fairseq's batching) shuffles the examples, cuts the shuffled order
into *pools* of ``pool_batches`` batches, sorts each pool by length, cuts it into batches and
shuffles the order of the batches. Batches then hold similar lengths (little padding) while the
data order stays random from epoch to epoch (the pools differ, and so does the batch order).

:func:`make_task_get_batch` turns a :class:`~scratchlm.finetune.TaskData` into the pure
``get_batch(split, index)`` that :func:`scratchlm.training.train` wants: training batch ``index``
lies in epoch ``index // batches_per_epoch``, whose batches come from a generator seeded with
``(seed, epoch)``; evaluation splits are cut in length order, the same at every call.
Introduced in Chapter 09.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..constants import IGNORE_INDEX
from ..data.collate import pad_sequences

if TYPE_CHECKING:
    from .data import TaskData


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or len(lengths) == 0:
        raise ValueError(f"lengths must be a non-empty sequence of positive ints; got {type(lengths).__name__} "
                         f"of {len(lengths) if isinstance(lengths, Sequence) else '?'}")
    out = [int(n) for n in lengths]
    if min(out) < 1:
        raise ValueError(f"every length must be >= 1; got {min(out)}")
    return out


def _check_batch_size(batch_size: object) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")


def random_batches(lengths: Sequence[int], batch_size: int, *, seed: int) -> list[list[int]]:
    """Shuffled indices cut into batches of ``batch_size`` (the last may be smaller): no bucketing."""
    n = len(_check_lengths(lengths))
    _check_batch_size(batch_size)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def bucketed_batches(lengths: Sequence[int], batch_size: int, *, seed: int, pool_batches: int = 50) -> list[list[int]]:
    """Length-bucketed batches: shuffle, sort within pools of ``pool_batches`` batches, shuffle batches.

    Every index appears exactly once. ``pool_batches=1`` is no bucketing at all; a pool as large as
    the data sorts everything (least padding, least randomness: batch b always holds the same
    examples, only the order of batches changes).
    """
    lengths = _check_lengths(lengths)
    _check_batch_size(batch_size)
    if not isinstance(pool_batches, int) or isinstance(pool_batches, bool) or pool_batches < 1:
        raise ValueError(f"pool_batches must be a positive int; got {pool_batches!r}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])  # stable: ties keep shuffled order
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in length order cut into batches: the least padding, for evaluation (order restored by
    the caller from the indices)."""
    lengths = _check_lengths(lengths)
    _check_batch_size(batch_size)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Fraction of the padded (B, T) slots that are padding, over all ``batches`` (formula above)."""
    lengths = _check_lengths(lengths)
    real = sum(lengths[i] for b in batches for i in b)
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    if slots == 0:
        raise ValueError("padding_share needs at least one non-empty batch")
    return 1.0 - real / slots


# ----------------------------------------------------------------------------------------- collate

PAIR_SUFFIXES = ("_a", "_b")


def collate_rows(rows: Mapping[str, Sequence[Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Columns of a few examples (``datasets``' ``ds[list]`` layout: name → list) → padded tensors.

    ``input_ids`` / ``input_ids_a`` / ``input_ids_b`` are padded with ``pad_id`` and get their own
    ``attention_mask`` (1 = token); ``token_type_ids*`` are padded with 0; per-token ``labels`` (a
    list per example) with −100; per-example ``labels`` (a number) are stacked (int64 for ints,
    float32 for floats). Other columns (``length``, raw text) are left out.
    """
    if not any(f"input_ids{suffix}" in rows for suffix in ("", *PAIR_SUFFIXES)):
        raise ValueError(f"collate_rows found no input_ids column; got columns {sorted(rows)}")
    out: dict[str, torch.Tensor] = {}
    for suffix in ("", *PAIR_SUFFIXES):
        ids = rows.get(f"input_ids{suffix}")
        if ids is None:
            continue
        out[f"input_ids{suffix}"], out[f"attention_mask{suffix}"] = pad_sequences(list(ids), pad_id)  # (B, T)
        types = rows.get(f"token_type_ids{suffix}")
        if types is not None:
            out[f"token_type_ids{suffix}"], _ = pad_sequences(list(types), 0)  # (B, T)
    labels = rows.get("labels")
    if labels is not None:
        labels = list(labels)
        first = labels[0]
        if isinstance(first, torch.Tensor) and first.dim() == 0:
            labels = [v.item() for v in labels]
            first = labels[0]
        if isinstance(first, (list, tuple)) or isinstance(first, torch.Tensor):
            width = next(v for k, v in out.items() if k.startswith("input_ids")).shape[1]
            out["labels"], _ = pad_sequences(labels, IGNORE_INDEX, width=width)  # (B, T)
        elif isinstance(first, float):
            out["labels"] = torch.tensor(labels, dtype=torch.float32)  # (B,)
        else:
            out["labels"] = torch.tensor(labels, dtype=torch.long)  # (B,)
    return out


def _seed_for(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def make_task_get_batch(task: TaskData, batch_size: int, *, seed: int = 1337, bucket: bool = True,
                        pool_batches: int = 50, eval_batch_size: int | None = None,
                        device: torch.device | str = "cpu",
                        train_split: str = "train") -> Callable[[str, int], dict[str, torch.Tensor]]:
    """A pure ``get_batch(split, index)`` over a task's splits (for :func:`scratchlm.training.train`).

    ``"train"`` (or ``train_split``): batch ``index`` of an endless sequence of epochs, each a fresh
    (bucketed, or merely shuffled when ``bucket=False``) cut of the split seeded by
    ``(seed, epoch)``; the last batch of an epoch may be smaller. Any other split: its length-sorted
    batches, ``index`` taken modulo their number. ``get_batch.batches_per_epoch`` tells how many
    training steps one epoch is.
    """
    _check_batch_size(batch_size)
    eval_batch_size = eval_batch_size or batch_size
    _check_batch_size(eval_batch_size)
    if train_split not in task.splits:
        raise ValueError(f"task {task.name!r} has no split {train_split!r}; it has {sorted(task.splits)}")
    lengths = {name: list(ds["length"]) for name, ds in task.splits.items()}
    device = torch.device(device)
    make = bucketed_batches if bucket else None

    @functools.lru_cache(maxsize=2)
    def epoch_batches(epoch: int) -> list[list[int]]:
        if make is None:
            return random_batches(lengths[train_split], batch_size, seed=_seed_for(seed, epoch))
        return make(lengths[train_split], batch_size, seed=_seed_for(seed, epoch), pool_batches=pool_batches)

    eval_cuts = {name: sorted_batches(n, eval_batch_size) for name, n in lengths.items() if name != train_split}
    per_epoch = len(epoch_batches(0))

    def get_batch(split: str, index: int) -> dict[str, torch.Tensor]:
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative int; got {index!r}")
        if split == train_split:
            idx = epoch_batches(index // per_epoch)[index % per_epoch]
        elif split in eval_cuts:
            cuts = eval_cuts[split]
            idx = cuts[index % len(cuts)]
        else:
            raise ValueError(f"unknown split {split!r}; task {task.name!r} has {sorted(task.splits)}")
        batch = collate_rows(task.splits[split][idx], task.pad_id)
        return {k: v.to(device) for k, v in batch.items()} if device.type != "cpu" else batch

    get_batch.batches_per_epoch = per_epoch  # type: ignore[attr-defined]
    return get_batch
