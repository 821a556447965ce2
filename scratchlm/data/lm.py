"""From token ids to training batches (introduced in Chapter 02).

* :class:`SlidingWindowDataset` cuts one long id stream into (x, y) windows, y shifted by one.
* :func:`random_lm_batch` samples nanoGPT-style random windows (reproducible with a Generator).
* :func:`~scratchlm.data.collate.pad_collate` (in :mod:`scratchlm.data.collate`) pads variable-length
  examples into a batch.
* :func:`hf_text_dataset` is the same idea as a 🤗 ``datasets`` pipeline over local text.

Language modelling needs, for every position t, the next token as target:
``x = ids[i : i+T]``, ``y = ids[i+1 : i+T+1]``, loss ``L = -1/T Σ_t log p(y_t | x_≤t)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def as_id_tensor(ids: Any, name: str = "ids") -> torch.Tensor:
    """A 1-D int64 tensor from a list of ints, a 1-D integer tensor or a 1-D integer NumPy array."""
    if isinstance(ids, torch.Tensor):
        tensor = ids
    elif hasattr(ids, "__array__") and not isinstance(ids, (list, tuple)):
        tensor = torch.as_tensor(ids)
    elif isinstance(ids, (list, tuple, range)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TypeError(f"{name} must hold ints only")
        tensor = torch.tensor(list(ids), dtype=torch.long)
    else:
        raise TypeError(f"{name} must be a list of ints or a 1-D integer tensor; got {type(ids).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype; got {tensor.dtype}")
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one stream of token ids); got shape {tuple(tensor.shape)}")
    return tensor.long()


def _check_positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return value


class SlidingWindowDataset(Dataset):
    """Windows of ``block_size`` tokens over one id stream: item k is ``(x, y)`` with

    ``x = ids[k*stride : k*stride + block_size]`` and ``y = ids[k*stride + 1 : k*stride + block_size + 1]``.

    ``stride`` defaults to ``block_size`` (non-overlapping windows); a smaller stride gives
    overlapping windows (more examples, each token seen in several contexts). Tokens after the last
    full window are not used.
    """

    def __init__(self, ids: Any, block_size: int, stride: int | None = None) -> None:
        self.ids = as_id_tensor(ids)  # (N,)
        self.block_size = _check_positive_int(block_size, "block_size")
        self.stride = block_size if stride is None else _check_positive_int(stride, "stride")
        if len(self.ids) < block_size + 1:
            raise ValueError(
                f"need at least block_size + 1 = {block_size + 1} tokens for one (x, y) window; got {len(self.ids)}"
            )

    def __len__(self) -> int:
        return (len(self.ids) - 1 - self.block_size) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"window {index} out of range for {n} windows")
        start = index * self.stride
        window = self.ids[start : start + self.block_size + 1]  # (T+1,)
        return window[:-1], window[1:]  # x (T,), y (T,)


def random_lm_batch(
    ids: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's ``get_batch``: ``batch_size`` windows starting at uniform random offsets.

    Returns ``(x, y)``, both (B, T) int64, y shifted by one. Pass a seeded ``torch.Generator`` (on the
    CPU) for a reproducible stream of batches independent of other random draws.
    """
    data = as_id_tensor(ids)  # (N,)
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(block_size, "block_size")
    if len(data) < block_size + 1:
        raise ValueError(f"need at least block_size + 1 = {block_size + 1} tokens; got {len(data)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size)  # (T,)
    x = data[starts[:, None] + offsets]  # (B, T)
    y = data[starts[:, None] + offsets + 1]  # (B, T)
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda":  # pinned memory lets the copy overlap with compute
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        x, y = x.to(device), y.to(device)
    return x, y


def hf_text_dataset(
    source: str | Path | Sequence[str],
    tokenizer: Any,
    *,
    block_size: int | None = None,
    batch_size: int = 1000,
    keep_linebreaks: bool = True,
    drop_empty: bool = False,
    cache_dir: str | Path | None = None,
):
    """A 🤗 ``datasets.Dataset`` of token ids built from local text, never touching the network.

    ``source`` is a path to a text file (read with the packaged ``"text"`` builder: one example per
    line, its line break kept when ``keep_linebreaks``, so the lines concatenate back to the file)
    or a list of strings; ``drop_empty`` removes blank examples. ``tokenizer`` is any scratchlm
    tokenizer (or a function ``str -> list[int]``); it runs in ``.map(batched=True)``. Without
    ``block_size`` each line stays
    one example (column ``input_ids`` plus its ``length``). With ``block_size`` the lines are
    concatenated and cut into ``block_size`` blocks (Hugging Face's ``group_texts``); each block has
    ``input_ids`` and ``labels`` (a copy: the model shifts them), and the remainder is dropped.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is first imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    encode: Callable[[str], list[int]]
    if callable(getattr(tokenizer, "encode", None)):
        encode = tokenizer.encode
    elif callable(tokenizer):
        encode = tokenizer
    else:
        raise TypeError(f"tokenizer must have .encode(text) or be a callable; got {type(tokenizer).__name__}")
    _check_positive_int(batch_size, "batch_size")
    if block_size is not None:
        _check_positive_int(block_size, "block_size")

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no text file at {path}")
        ds = datasets.load_dataset(
            "text", data_files=str(path), split="train", keep_in_memory=True, keep_linebreaks=keep_linebreaks,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    elif isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        ds = datasets.Dataset.from_dict({"text": list(source)})
    else:
        raise TypeError(f"source must be a path or a list of str; got {type(source).__name__}")

    if drop_empty:
        ds = ds.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True,
                       batch_size=batch_size, keep_in_memory=True, desc="drop empty lines")

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list]:
        ids = [encode(text) for text in batch["text"]]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    ds = ds.map(tokenize, batched=True, batch_size=batch_size, remove_columns=ds.column_names,
                keep_in_memory=True, desc="tokenize")
    if block_size is None:
        return ds

    def group_texts(batch: dict[str, list]) -> dict[str, list]:
        stream = [i for ids in batch["input_ids"] for i in ids]
        usable = len(stream) // block_size * block_size
        blocks = [stream[k : k + block_size] for k in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    return ds.map(group_texts, batched=True, batch_size=batch_size, remove_columns=ds.column_names,
                  keep_in_memory=True, desc=f"group into blocks of {block_size}")


def make_lm_get_batch(
    data: dict[str, torch.Tensor],
    *,
    batch_size: int,
    block_size: int,
    seed: int = 1337,
    device: torch.device | str = "cpu",
) -> Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """A pure ``get_batch(split, index)`` for causal LM: random windows of ``data[split]``.

    The window offsets come from a fresh ``torch.Generator`` seeded from (seed, split, index) via
    NumPy's SeedSequence (a hash that decorrelates neighbouring indices), so batch ``index`` is the
    same on every call, in every process — the property resume needs (see the module docstring).
    Returns (x, y), both (batch_size, block_size) int64, y = x shifted left by one token.
    """
    for split, ids in data.items():
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
            raise ValueError(f"data[{split!r}] must be a 1-D tensor of token ids; got "
                             f"{type(ids).__name__} {getattr(ids, 'shape', '')}")
        if ids.numel() <= block_size:
            raise ValueError(f"data[{split!r}] has {ids.numel()} tokens; need more than block_size={block_size}")
    split_codes = {name: i for i, name in enumerate(sorted(data))}

    def get_batch(split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in data:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(data)}")
        seq = np.random.SeedSequence([seed, split_codes[split], index])
        generator = torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0]))
        return random_lm_batch(data[split], batch_size, block_size, generator, device)

    return get_batch
