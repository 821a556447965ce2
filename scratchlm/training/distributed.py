"""The training loop's hooks for distributed runs (used under ``torchrun`` in Chapter 14).

The loop stays a single-process loop; three small hooks make the same code correct when every rank
runs it on a model wrapped for data parallelism:

* :func:`grad_sync_context`: with gradient accumulation, the gradients of micro-batches 1..A-1 need
  no all-reduce, only the sum after the last one. DDP offers ``model.no_sync()`` for that, FSDP2
  (``fully_shard``) ``model.set_requires_gradient_sync(False)``. Without it every micro-batch pays a
  full all-reduce of the gradients: A times the communication for the same result.
* :func:`get_rank` / :func:`is_main_process`: only rank 0 shows a progress bar and writes
  checkpoints (the parameters are identical on every rank after each step, so one copy suffices;
  every rank reads it on resume, which assumes a file system all ranks share).
* :func:`unwrap_model`: the module inside DDP / ``torch.compile`` wrappers, whose parameter names
  have no ``module.`` / ``_orig_mod.`` prefix, so a checkpoint written under DDP loads into a plain
  model and back, and ``model.config`` / ``model.validate_inputs`` are found.

Not covered here: FSDP2 shards parameters as DTensors, which :func:`save_checkpoint` does not
gather; Chapter 14 saves those runs with ``torch.distributed.checkpoint``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def get_rank() -> int:
    """This process's rank in the default process group; 0 when not running distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def is_main_process() -> bool:
    """True on rank 0 (and in every non-distributed run): the process that logs and saves."""
    return get_rank() == 0


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel and ``torch.compile`` wrappers (any nesting)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's wrapper
        else:
            return model


@contextlib.contextmanager
def _fsdp2_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def grad_sync_context(model: nn.Module, *, sync: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch's forward and backward: gradient all-reduce on or off.

    ``sync=False`` (micro-batches before the last of an optimizer step) enters ``model.no_sync()``
    (DDP) or switches FSDP2's gradient sync off for the block; a model with neither (a plain module:
    nothing to sync) gets a no-op context, as does ``sync=True``.
    """
    if sync:
        return contextlib.nullcontext()
    if callable(getattr(model, "no_sync", None)):
        return model.no_sync()
    if callable(getattr(model, "set_requires_gradient_sync", None)):
        return _fsdp2_no_sync(model)
    return contextlib.nullcontext()


def all_ranks_ok(ok: torch.Tensor) -> torch.Tensor:
    """``ok`` (a bool scalar tensor) AND-ed over every rank, so that all ranks take the same decision.

    Used by the non-finite check: a loss that is NaN on one rank only must stop (or skip on) every
    rank, or the ranks' parameters drift apart. Outside a distributed run it returns ``ok`` itself.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    flag = ok.to(torch.int32)  # () ; all_reduce has no bool MIN on every backend
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.bool()
