"""Data-parallel training under ``torchrun``: DDP and FSDP2, sharded checkpoints, memory and scaling
arithmetic (introduced in Chapter 14).

* :mod:`~scratchlm.distributed.launch`: join the process group (gloo on CPUs, nccl on GPUs), build
  the device mesh, wrap a model for ``"single"``, ``"ddp"`` or ``"fsdp"``;
* :mod:`~scratchlm.distributed.data`: each rank's rows of the global batch, averages over ranks;
* :mod:`~scratchlm.distributed.loop`: the data-parallel step with accumulation (no sync on micro-steps);
* :mod:`~scratchlm.distributed.checkpoint`: sharded checkpoints (DCP), saved by N ranks, loaded by M;
* :mod:`~scratchlm.distributed.memory`: ZeRO's bytes per rank, and the bytes a run really holds;
* :mod:`~scratchlm.distributed.scaling`: ring all-reduce time and a compute/communication step model;
* :mod:`~scratchlm.distributed.train_gpt`: the one training script (``python -m`` or ``torchrun -m``);
* :mod:`~scratchlm.distributed.run_many`: several of its runs in one launch (start-up paid once).
"""

from .checkpoint import (
    checkpoint_dir_for,
    latest_checkpoint,
    load_sharded_checkpoint,
    read_sharded_checkpoint_metadata,
    save_sharded_checkpoint,
)
from .data import all_reduce_mean, make_sharded_get_batch, shard_batch
from .launch import (
    STRATEGIES,
    DistEnv,
    backend_for,
    cleanup_distributed,
    default_device_type,
    init_distributed,
    launch_runs,
    make_mesh,
    run_torchrun,
    torchrun_command,
    transformer_blocks,
    wrap_model,
)
from .loop import StepRecord, evaluate_distributed, grad_norm_and_clip, train_distributed
from .memory import (
    PRECISIONS,
    MemoryBytes,
    fsdp_expected_memory,
    fsdp_shard_numel,
    local_tensor,
    measure_memory,
    zero_memory,
)
from .scaling import (
    bus_bandwidth,
    comm_seconds,
    ring_allreduce_seconds,
    speedup,
    step_seconds,
    training_flops,
)

__all__ = [
    "PRECISIONS",
    "STRATEGIES",
    "DistEnv",
    "MemoryBytes",
    "StepRecord",
    "all_reduce_mean",
    "backend_for",
    "bus_bandwidth",
    "checkpoint_dir_for",
    "cleanup_distributed",
    "comm_seconds",
    "default_device_type",
    "evaluate_distributed",
    "fsdp_expected_memory",
    "fsdp_shard_numel",
    "grad_norm_and_clip",
    "init_distributed",
    "latest_checkpoint",
    "launch_runs",
    "load_sharded_checkpoint",
    "local_tensor",
    "make_mesh",
    "make_sharded_get_batch",
    "measure_memory",
    "read_sharded_checkpoint_metadata",
    "ring_allreduce_seconds",
    "run_torchrun",
    "save_sharded_checkpoint",
    "shard_batch",
    "speedup",
    "step_seconds",
    "torchrun_command",
    "train_distributed",
    "training_flops",
    "transformer_blocks",
    "wrap_model",
    "zero_memory",
]
