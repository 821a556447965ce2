"""Bytes per rank: ZeRO's arithmetic, and what a run actually holds (introduced in Chapter 14).

Training with Adam keeps, per parameter, the parameter itself, its gradient and two moments. With Ψ
parameters and N data-parallel ranks, the bytes each rank holds are (Rajbhandari et al., 2020):

    stage            parameters   gradients    optimizer state     total per rank
    DDP (none)       p·Ψ          g·Ψ          k·Ψ                 (p + g + k)·Ψ
    ZeRO-1           p·Ψ          g·Ψ          k·Ψ / N             (p + g)·Ψ + k·Ψ/N
    ZeRO-2           p·Ψ          g·Ψ / N      k·Ψ / N             p·Ψ + (g + k)·Ψ/N
    ZeRO-3 / FSDP    p·Ψ / N      g·Ψ / N      k·Ψ / N             (p + g + k)·Ψ/N

with bytes per parameter p, g, k:

* ``"mixed"`` (the paper's case, bf16/fp16 training): p = 2, g = 2, k = 12 (an fp32 master copy of
  the weights plus fp32 m and v), so 16Ψ per rank without sharding, 16Ψ/N with ZeRO-3;
* ``"fp32"`` (what this book trains with on CPUs): p = 4, g = 4, k = 8 (m and v), also 16Ψ in total;
* ``"fp64"`` (Chapter 14's equivalence runs, where rounding must not hide a difference): 8, 8, 16.

Activations, temporary buffers and FSDP's transiently gathered blocks come on top; this table is
the *steady state* that sharding divides. FSDP2 splits every tensor along dim 0 into N chunks as
``torch.chunk`` does (the last ranks get fewer rows when N does not divide it), so its exact
per-rank count is :func:`fsdp_shard_numel`, within a few rows of Ψ/N.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

# bytes per parameter (parameters, gradients, optimizer state) for Adam(W)
PRECISIONS: dict[str, tuple[int, int, int]] = {"fp32": (4, 4, 8), "mixed": (2, 2, 12), "fp64": (8, 8, 16)}
ZERO_STAGES = (0, 1, 2, 3)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` stored on this rank: a DTensor's local shard, a plain tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


@dataclass(frozen=True)
class MemoryBytes:
    """Bytes one rank holds for training state (steady state, no activations)."""

    parameters: int
    gradients: int
    optimizer: int  # per-element optimizer state (Adam's m and v): the part ZeRO shards
    optimizer_other: int = 0  # small per-tensor state (Adam's step counters), replicated

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.optimizer_other

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def measure_memory(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> MemoryBytes:
    """What this rank actually holds: local bytes of parameters, of their ``.grad`` and of the optimizer state.

    Shared (tied) parameters count once. Call it after ``optimizer.step()`` and before
    ``zero_grad()``, when all three exist. Optimizer state tensors with as many elements as their
    parameter's local shard count as ``optimizer``; the rest (scalars such as Adam's ``step``) as
    ``optimizer_other``.
    """
    params = list(dict.fromkeys(model.parameters()))  # unique, in order
    p_bytes = sum(local_tensor(p).nelement() * local_tensor(p).element_size() for p in params)
    g_bytes = sum(local_tensor(p.grad).nelement() * local_tensor(p.grad).element_size()
                  for p in params if p.grad is not None)
    o_bytes = other = 0
    if optimizer is not None:
        for p, state in optimizer.state.items():
            n = local_tensor(p).nelement()
            for value in state.values():
                if not isinstance(value, torch.Tensor):
                    continue
                local = local_tensor(value)
                size = local.nelement() * local.element_size()
                if local.nelement() == n and local.dim() > 0:
                    o_bytes += size
                else:
                    other += size
    return MemoryBytes(p_bytes, g_bytes, o_bytes, other)


def zero_memory(num_params: int, world_size: int, stage: int, precision: str = "fp32") -> MemoryBytes:
    """Bytes per rank by the ZeRO table of the module docstring (stage 0 = plain DDP)."""
    if not isinstance(num_params, int) or num_params < 0:
        raise ValueError(f"num_params must be a non-negative int; got {num_params!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int; got {world_size!r}")
    if stage not in ZERO_STAGES:
        raise ValueError(f"stage must be one of {ZERO_STAGES} (0 = DDP, 3 = FSDP); got {stage!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}; got {precision!r}")
    p, g, k = PRECISIONS[precision]
    n = world_size
    return MemoryBytes(
        parameters=p * num_params // (n if stage >= 3 else 1),
        gradients=g * num_params // (n if stage >= 2 else 1),
        optimizer=k * num_params // (n if stage >= 1 else 1),
    )


def fsdp_shard_numel(shape: Iterable[int], world_size: int, rank: int) -> int:
    """Elements of a tensor of ``shape`` that FSDP2 gives ``rank``: ``torch.chunk`` along dim 0.

    Chunks have ceil(d0 / N) rows; the last ranks get what is left (possibly nothing).
    """
    shape = list(shape)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}); got {rank}")
    if not shape:
        return 1 if rank == 0 else 0
    rows = shape[0]
    chunk = -(-rows // world_size)  # ceil
    mine = max(0, min(rows, (rank + 1) * chunk) - rank * chunk)
    rest = 1
    for d in shape[1:]:
        rest *= d
    return mine * rest


def fsdp_expected_memory(model: nn.Module, world_size: int, rank: int, bytes_per_param: tuple[int, int, int] = (4, 4, 8)
                         ) -> MemoryBytes:
    """The exact steady-state bytes FSDP2 leaves on ``rank`` for an *unwrapped* model (fp32 Adam by default)."""
    p, g, k = bytes_per_param
    numel = sum(fsdp_shard_numel(t.shape, world_size, rank) for t in dict.fromkeys(model.parameters()))
    return MemoryBytes(p * numel, g * numel, k * numel)
