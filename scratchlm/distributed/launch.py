"""Start and stop a distributed run, build its device mesh, wrap the model (introduced in Chapter 14).

``torchrun`` starts one Python process per device and tells each who it is through environment
variables: ``RANK`` (0..N−1 over all nodes), ``LOCAL_RANK`` (index on this node, which picks the
GPU), ``WORLD_SIZE`` (N) and ``MASTER_ADDR``/``MASTER_PORT`` (where rank 0 waits for the others).
:func:`init_distributed` reads them and joins the process group with the backend that fits the
hardware: **nccl** on CUDA GPUs (GPU-to-GPU over NVLink / InfiniBand), **gloo** on CPUs. The same
script therefore runs on a laptop (gloo, 2 processes) and on a GPU cluster (nccl, 8 x 64 processes).
Started without ``torchrun`` (plain ``python``), it runs as a single process with no group at all.

:func:`wrap_model` turns a model into a data-parallel one:

* ``"ddp"``: :class:`~torch.nn.parallel.DistributedDataParallel`, every rank holds a full replica;
  backward all-reduces (averages) the gradients in buckets, overlapping with the rest of backward.
* ``"fsdp"``: FSDP2 ``fully_shard`` (ZeRO stage 3): every parameter is split into N shards along
  its first dimension (a ``DTensor``); before a block runs, its full weights are all-gathered, after
  backward its gradients are reduce-scattered, so each rank keeps 1/N of parameters, gradients and
  optimizer state. Each transformer block is its own unit (only one block's full weights exist at a
  time), then the root module takes the rest (embeddings, final norm, the tied output layer).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Strategy = Literal["single", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("single", "ddp", "fsdp")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Who this process is in the run, and where its tensors live."""

    rank: int  # global rank, 0..world_size-1
    local_rank: int  # rank on this node (picks the GPU)
    world_size: int  # number of processes in the run
    device: torch.device  # cuda:<local_rank> with nccl, cpu with gloo
    backend: str | None  # "nccl", "gloo", or None for a single process without a group
    created_group: bool  # True if init_distributed created the group (so cleanup must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def default_backend() -> str:
    """``nccl`` when CUDA GPUs are present (and nccl was built in), else ``gloo``."""
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        return "nccl"
    return "gloo"


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (torchrun sets it)") from None


def init_distributed(backend: str | None = None, *, timeout_s: float = 300.0) -> DistEnv:
    """Join the process group ``torchrun`` prepared, or describe a single process when there is none.

    Idempotent: if a default group already exists (a caller initialised it), it is reused and
    :func:`cleanup_distributed` leaves it alone. ``backend`` defaults to :func:`default_backend`.
    ``timeout_s`` bounds how long a collective waits for a missing rank before raising, so a crashed
    rank ends the run instead of hanging it forever.
    """
    dist = torch.distributed
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; install a build with it")
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None (automatic); got {backend!r}")
    created = False
    if not dist.is_initialized():
        missing = [name for name in ("RANK", "WORLD_SIZE") if name not in os.environ]
        if missing:  # plain `python script.py`: one process, nothing to join
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
            return DistEnv(0, 0, 1, device, None, False)
        backend = backend or default_backend()
        if backend == "nccl" and not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA GPUs; use 'gloo' on CPUs")
        if backend == "nccl":  # bind this process to its GPU before the group forms
            torch.cuda.set_device(_env_int("LOCAL_RANK"))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        created = True
    backend = dist.get_backend()
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else dist.get_rank()
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistEnv(dist.get_rank(), local_rank, dist.get_world_size(), device, backend, created)


def cleanup_distributed(env: DistEnv) -> None:
    """Leave the process group if :func:`init_distributed` created it (a barrier first, so no rank
    tears down while another still sends)."""
    dist = torch.distributed
    if env.created_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def make_mesh(env: DistEnv):
    """A 1-D :class:`~torch.distributed.device_mesh.DeviceMesh` over all ranks (FSDP2 shards over it).

    A 2-D mesh (e.g. ``(nodes, gpus_per_node)``) gives hybrid sharding, HSDP: shard inside a node,
    replicate across nodes. One dimension is all this chapter needs.
    """
    if not env.distributed:
        raise ValueError("make_mesh needs a distributed run (start the script with torchrun)")
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(env.device.type, (env.world_size,))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the elements of its outermost ``nn.ModuleList``s.

    For :class:`~scratchlm.models.GPT` these are ``transformer.h[0..L-1]``; they are FSDP's natural
    units (same size, run one after another, so one block's all-gather can overlap the previous one's
    compute).
    """
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList):
            for child in module:
                blocks.append(child)
                inside.update(id(m) for m in child.modules())
            inside.update(id(m) for m in module.modules())
    return blocks


def wrap_model(model: nn.Module, strategy: str, env: DistEnv, *,
               blocks: Iterable[nn.Module] | None = None) -> nn.Module:
    """``model`` prepared for ``strategy`` on ``env``: itself (single), DDP, or FSDP2-sharded.

    The model must already be on ``env.device`` and initialised identically on every rank (same
    seed): DDP broadcasts rank 0's weights anyway, FSDP2 keeps each rank's shard of its own copy.
    ``blocks`` (FSDP only) are the modules sharded as separate units, by default
    :func:`transformer_blocks`. DDP uses ``gradient_as_bucket_view=True``: the gradients live inside
    DDP's communication buckets instead of beside them, which saves one full copy of the gradients
    per rank.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap_model expects an nn.Module; got {type(model).__name__}")
    if strategy == "single":
        if env.world_size > 1:
            raise ValueError(f"strategy 'single' runs in one process; this run has world_size={env.world_size} "
                             f"(use 'ddp' or 'fsdp', or launch with --nproc_per_node 1)")
        return model
    if not env.distributed:
        raise ValueError(f"strategy {strategy!r} needs a process group: launch with torchrun "
                         f"(e.g. torchrun --standalone --nproc_per_node 2 ...)")
    if strategy == "ddp":
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
    from torch.distributed.fsdp import fully_shard

    mesh = make_mesh(env)
    units = list(blocks) if blocks is not None else transformer_blocks(model)
    for block in units:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root: every parameter not inside a block
    return model
