"""The data-parallel training step, written out (introduced in Chapter 14).

One optimizer step with gradient accumulation over A micro-batches, on every rank:

    for a < A:   loss_a = loss(model, this rank's rows of global micro-batch s·A + a)
                 backward(loss_a / A)          gradient sync OFF for a < A−1, ON for the last one
    g ← mean over ranks of Σ_a ∇loss_a / A     (DDP: all-reduce; FSDP2: reduce-scatter, 1/N per rank)
    clip ‖g‖₂ ≤ grad_clip;   AdamW step (each rank updates what it holds: all of it, or its shard)

It is the step :func:`scratchlm.training.train` takes (same schedule :func:`lr_at`, same
:func:`grad_sync_context`, same AdamW groups), kept as a short explicit loop here for two reasons:
the chapter shows every line that matters for distribution, and checkpoints are
:mod:`torch.distributed.checkpoint` directories (each rank writes its shard; a run with another
number of ranks can load them), which ``train()``'s single-file safetensors checkpoints are not.
Eval and the logged loss are averaged over ranks, so they are the single-process figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..training.config import TrainConfig
from ..training.distributed import all_ranks_ok, grad_sync_context, unwrap_model
from ..training.loop import autocast_context
from ..training.optim import lr_at
from .data import all_reduce_mean


@dataclass
class StepRecord:
    """What one optimizer step did (loss and norm are the same on every rank)."""

    step: int  # 1-based count of optimizer steps done
    loss: float  # mean micro-batch loss over all ranks = the single-process loss of the global batch
    lr: float  # learning rate of this step
    grad_norm: float  # global gradient norm before clipping
    time_s: float  # this rank's wall time for the step (forward, backward, communication, update)


def _as_local(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a replicated DTensor (FSDP2's gradient norm) becomes its full value."""
    full = getattr(value, "full_tensor", None)
    return full() if callable(full) else value


def _log_dtype(param: torch.Tensor) -> torch.dtype:
    """float64 for float64 models (their losses are compared at 1e-9), float32 otherwise."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def grad_norm_and_clip(params: list[nn.Parameter], grad_clip: float) -> torch.Tensor:
    """‖g‖₂ over all gradients (all shards, under FSDP2), clipping to ``grad_clip`` when > 0."""
    max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure, never scale
    return _as_local(torch.nn.utils.clip_grad_norm_(params, max_norm)).detach()  # ()


def train_distributed(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    get_batch: Callable[[str, int], Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    cfg: TrainConfig,
    *,
    start_step: int = 0,
    stop_step: int | None = None,
    after_update: Callable[[int], None] | None = None,
) -> list[StepRecord]:
    """Optimizer steps ``start_step+1 .. stop_step`` (default ``cfg.max_steps``) on this rank's data.

    ``get_batch`` gives this rank's rows (:func:`~scratchlm.distributed.make_sharded_get_batch`),
    ``model`` is wrapped by :func:`~scratchlm.distributed.wrap_model`, ``cfg`` supplies the schedule,
    accumulation, clipping and autocast. ``after_update(step)`` runs after ``optimizer.step()`` and
    before the gradients are freed (the moment parameters, gradients and optimizer state all exist:
    where the chapter measures memory). A non-finite loss or norm on any rank stops every rank.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train_distributed expects a TrainConfig; got {type(cfg).__name__}")
    stop = cfg.max_steps if stop_step is None else stop_step
    if not 0 <= start_step <= stop <= cfg.max_steps:
        raise ValueError(f"need 0 <= start_step <= stop_step <= max_steps; got {start_step}, {stop}, {cfg.max_steps}")
    core = unwrap_model(model)
    params = [p for p in core.parameters() if p.requires_grad]
    device = next(iter(params)).device
    dtype = _log_dtype(params[0])
    A = cfg.grad_accum_steps
    records: list[StepRecord] = []
    model.train()
    for step in range(start_step, stop):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device, dtype=dtype)  # ()
        for micro in range(A):
            batch = get_batch("train", step * A + micro)  # this rank's rows of the global micro-batch
            with grad_sync_context(model, sync=micro == A - 1):  # communicate on the last one only
                with autocast_context(device, cfg.autocast):
                    loss = loss_fn(model, batch)  # ()
                (loss / A).backward()
            loss_sum += loss.detach().to(dtype)
        norm = grad_norm_and_clip(params, cfg.grad_clip)  # () the same on every rank
        if not bool(all_ranks_ok(torch.isfinite(loss_sum) & torch.isfinite(norm))):
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"non-finite loss or gradient norm at step {step + 1} on some rank; "
                                     f"the update was not applied")
        optimizer.step()
        if after_update is not None:
            after_update(step + 1)
        optimizer.zero_grad(set_to_none=True)
        mean_loss = all_reduce_mean(loss_sum / A)  # () average over ranks: the global batch's loss
        records.append(StepRecord(step + 1, float(mean_loss), lr, float(norm), time.perf_counter() - t0))
    return records


@torch.no_grad()
def evaluate_distributed(model: nn.Module, get_batch: Callable[[str, int], Any],
                         loss_fn: Callable[[nn.Module, Any], torch.Tensor], split: str, indices: Iterable[int],
                         *, autocast: str = "auto") -> float:
    """Mean loss over ``indices`` of ``split``, each rank on its rows, averaged over ranks.

    Every rank must call it (under FSDP2 the forward pass all-gathers weights from every rank).
    """
    was_training = model.training
    first = next(unwrap_model(model).parameters())
    device, dtype = first.device, _log_dtype(first)
    model.eval()
    try:
        losses = []
        for i in indices:
            with autocast_context(device, autocast):
                losses.append(loss_fn(model, get_batch(split, i)).to(dtype))  # ()
    finally:
        model.train(was_training)
    if not losses:
        raise ValueError("evaluate_distributed got no indices")
    return float(all_reduce_mean(torch.stack(losses).mean()))  # (n,) -> ()
