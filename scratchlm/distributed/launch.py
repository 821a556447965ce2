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
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


def default_device_type() -> str:
    """``cuda`` when CUDA GPUs are present, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_for(device_type: str) -> str:
    """The collective backend for a device type: nccl for ``cuda``, gloo for ``cpu``."""
    if device_type == "cuda":
        if not torch.distributed.is_nccl_available():
            raise RuntimeError("this PyTorch build has no nccl: CUDA training across processes needs it")
        return "nccl"
    if device_type == "cpu":
        return "gloo"
    raise ValueError(f"device_type must be 'cuda' or 'cpu'; got {device_type!r}")


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (torchrun sets it)") from None


def init_distributed(device_type: str | None = None, *, timeout_s: float = 300.0) -> DistEnv:
    """Join the process group ``torchrun`` prepared, or describe a single process when there is none.

    ``device_type`` ("cuda" or "cpu"; default :func:`default_device_type`) decides the backend:
    nccl with one GPU per process (``cuda:<LOCAL_RANK>``), or gloo on the CPU. Idempotent: if a
    default group already exists (a caller initialised it), it is reused and
    :func:`cleanup_distributed` leaves it alone. ``timeout_s`` bounds how long a collective waits
    for a missing rank before raising, so a crashed rank ends the run instead of hanging it.
    """
    dist = torch.distributed
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; install a build with it")
    device_type = device_type or default_device_type()
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device_type must be 'cuda', 'cpu' or None (automatic); got {device_type!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device_type 'cuda' was requested but CUDA is not available; use 'cpu' (gloo)")
    created = False
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # plain `python script.py`
            device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
            return DistEnv(0, 0, 1, device, None, False)
        backend = backend_for(device_type)
        if backend == "nccl":  # bind this process to its GPU before the group forms
            local = _env_int("LOCAL_RANK")
            if local >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s): "
                                 f"start at most one process per GPU (--nproc_per_node), or use the CPU (gloo)")
            torch.cuda.set_device(local)
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


def torchrun_command(nproc: int, args: Sequence[str], *, module: str | None = "scratchlm.distributed.train_gpt",
                     script: str | os.PathLike | None = None) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m module args...`` run by *this* interpreter.

    ``python -m torch.distributed.run`` is what the ``torchrun`` command calls; going through
    ``sys.executable`` guarantees the workers use the same environment as the caller (a notebook
    kernel may not have the venv's ``bin`` on its PATH). ``--standalone`` starts a private rendezvous
    on a free local port, so concurrent launches on one machine do not collide.
    """
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"nproc must be a positive int; got {nproc!r}")
    if (module is None) == (script is None):
        raise ValueError("give exactly one of module= and script=")
    target = ["-m", module] if module is not None else [str(script)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            *target, *map(str, args)]


def run_torchrun(nproc: int, args: Sequence[str], *, module: str | None = "scratchlm.distributed.train_gpt",
                 script: str | os.PathLike | None = None, threads_per_process: int = 1, timeout_s: float = 600,
                 cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Launch :func:`torchrun_command` and wait; return the finished process (its ``stdout`` as text).

    The workers import the same ``scratchlm`` as the caller (its directory goes first on
    ``PYTHONPATH``) and get ``OMP_NUM_THREADS=threads_per_process``: N processes with T threads each
    should not ask for more cores than the machine has. Raises ``RuntimeError`` with the end of the
    output when a worker fails or the launch runs past ``timeout_s`` (a hung collective).
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = str(threads_per_process)
    env.setdefault("PYTHONUNBUFFERED", "1")
    command = torchrun_command(nproc, args, module=module, script=script)
    # Its own session, so that a timeout or an interrupt can stop torchrun *and* its workers: killing
    # torchrun alone (what subprocess.run does on a timeout) would leave the workers running.
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException as exc:  # TimeoutExpired, KeyboardInterrupt (a notebook's stop button), ...
        _stop_group(proc)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise RuntimeError(f"torchrun ran past {timeout_s} s and was stopped: {' '.join(command)}") from None
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed with exit code {proc.returncode}: {' '.join(command)}\n"
                           f"{out[-2000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the launch's process group (torchrun forwards it to the workers), SIGKILL what is left."""
    import signal

    if not hasattr(os, "killpg"):  # Windows: no process groups to signal
        proc.kill()
        proc.communicate()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.communicate(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def launch_runs(nproc: int, runs: Mapping[str, Sequence[Any]], out: str | os.PathLike, *,
                common: Sequence[Any] = (), threads_per_process: int = 1,
                timeout_s: float = 600) -> dict[str, dict[str, Any]]:
    """Run every ``train_gpt`` configuration of ``runs`` (name → extra arguments) in one launch of
    ``nproc`` processes; return ``{name: results JSON}`` (weights: ``out/<name>.safetensors``).

    Runs execute in the given order, so a later one may resume from an earlier one's checkpoint.
    Raises ``RuntimeError`` (with the workers' output) when a run fails or the launch times out; the
    whole launch, workers included, is stopped then (:func:`~scratchlm.distributed.run_torchrun`).
    """
    if not runs:
        raise ValueError("runs is empty: give at least one name -> arguments")
    bad = [n for n in runs if not n or "/" in n or os.sep in n]
    if bad:
        raise ValueError(f"run names become file names; got {bad!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"common": [str(a) for a in common], "out": str(out),
            "runs": [[name, [str(a) for a in extra]] for name, extra in runs.items()]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=out, delete=False, encoding="utf-8") as f:
        json.dump(spec, f)
    try:
        run_torchrun(nproc, [f.name], module="scratchlm.distributed.run_many",
                     threads_per_process=threads_per_process, timeout_s=timeout_s, cwd=out)
    finally:
        Path(f.name).unlink(missing_ok=True)
    return {name: json.loads((out / f"{name}.json").read_text(encoding="utf-8")) for name in runs}
