"""Each rank's share of the global batch, and averages over ranks (introduced in Chapter 14).

Data parallelism is exact only if the N ranks together see the batch one process would have seen.
The book's ``get_batch(split, index)`` is a pure function of the index (Chapter 06), so every rank
can compute the same global batch ``index`` and keep its own contiguous block of rows:

    rows of rank r = [r·B/N, (r+1)·B/N)       for a global batch of B rows, N ranks (N divides B).

Why that gives the single-process gradient: the loss is a mean over rows, so with equal shards
mean(batch) = (1/N) Σ_r mean(shard_r), and DDP / FSDP average the ranks' gradients, which is that
same (1/N) Σ_r. The batch is built whole and then sliced, which costs each rank the index draws for
B rows: negligible for random windows. A large corpus instead gives each rank its own files or
``DistributedSampler`` indices, so that no rank reads what it will not use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def shard_batch(batch: Any, rank: int, world_size: int, device: torch.device | str | None = None) -> Any:
    """Rows ``[rank·B/N, (rank+1)·B/N)`` of every tensor in ``batch`` (a tensor, tuple, list or dict).

    Every tensor must have the same number of rows B along dim 0, divisible by ``world_size``
    (unequal shards would weight the ranks' rows unequally in the average). ``device`` moves the
    shard (not the whole batch) to the rank's device.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int; got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}); got {rank!r}")
    rows: set[int] = set()

    def collect(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            if item.dim() == 0:
                raise ValueError("shard_batch cannot split a 0-d tensor; every batch tensor needs a row dimension")
            rows.add(item.shape[0])
        elif isinstance(item, Mapping):
            for value in item.values():
                collect(value)
        elif isinstance(item, (tuple, list)):
            for value in item:
                collect(value)

    collect(batch)
    if not rows:
        raise TypeError(f"shard_batch found no tensor in the batch (a {type(batch).__name__})")
    if len(rows) > 1:
        raise ValueError(f"every tensor in the batch must have the same number of rows; got {sorted(rows)}")
    (total,) = rows
    if total % world_size:
        raise ValueError(f"the global batch has {total} rows, not divisible by world_size={world_size}: "
                         f"choose a batch size that is a multiple of the number of processes")
    per = total // world_size
    lo, hi = rank * per, (rank + 1) * per

    def cut(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            shard = item[lo:hi]  # (B/N, ...)
            return shard.to(device) if device is not None else shard
        if isinstance(item, Mapping):
            return {key: cut(value) for key, value in item.items()}
        if isinstance(item, (tuple, list)):
            return type(item)(cut(value) for value in item)
        return item

    return cut(batch)


def make_sharded_get_batch(get_batch: Callable[[str, int], Any], rank: int, world_size: int,
                           device: torch.device | str | None = None) -> Callable[[str, int], Any]:
    """``get_batch`` restricted to this rank's rows: ``shard_batch(get_batch(split, i), rank, N)``.

    Still a pure function of ``(split, index)``, so a resumed run (with any number of ranks) asks for
    the batches of the remaining steps and gets exactly its rows of them.
    """
    if not callable(get_batch):
        raise TypeError(f"get_batch must be callable; got {type(get_batch).__name__}")
    shard_batch(get_batch("train", 0), rank, world_size)  # fail now, not at step 1, if B % N != 0

    def sharded(split: str, index: int) -> Any:
        return shard_batch(get_batch(split, index), rank, world_size, device)

    return sharded


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all ranks (``value`` itself when not distributed); a new tensor."""
    dist = torch.distributed
    out = value.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)  # gloo has no AVG: sum, then divide
        out /= dist.get_world_size()
    return out
