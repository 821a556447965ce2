"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP): save with N ranks, load with M.

Why not one file written by rank 0 (Chapter 06's :func:`~scratchlm.training.save_checkpoint`)?
Under FSDP no rank holds the whole model: gathering it on one rank needs that rank to have memory
for all of it, and the write is serial. DCP lets **every rank write its own shard** in parallel
(``__<rank>_0.distcp`` files) plus one ``.metadata`` file that records, for every tensor, its global
shape and which piece of it each file holds. Loading asks the *current* model for the pieces *it*
needs (its own shard layout, or full tensors for a single process) and reads exactly those byte
ranges: the checkpoint is re-sharded on the fly, so a run saved with 2 ranks resumes with 1 or 8.

Parameter and optimizer-state names come from
:func:`torch.distributed.checkpoint.state_dict.get_state_dict`, which strips wrapper prefixes
(DDP's ``module.``) and keys optimizer state by parameter name rather than by position, so single,
DDP and FSDP runs share one format.

A checkpoint is the directory ``<dir>/step_<8 digits>``, written as ``.step_<…>.tmp`` and renamed by
rank 0 after every rank has finished: a crash mid-write never leaves a directory that looks
complete. Beside DCP's files, ``scratchlm.json`` holds the step, the world size that wrote it, and
the caller's metadata (the training script stores its loss history and a fingerprint of the run).
Everything must be on a file system every rank can reach (on a cluster: a shared one, or a
``checkpoint_id`` for object storage with a matching DCP storage writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

FORMAT = "scratchlm-dcp-v1"
META_FILE = "scratchlm.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """Silence DCP's warning that it "assumes" a single process: without a group, that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def checkpoint_dir_for(directory: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` lives inside ``directory``."""
    return Path(directory) / f"step_{step:08d}"


def save_sharded_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                            *, step: int, metadata: dict[str, Any] | None = None) -> Path:
    """Every rank writes its shard of model and optimizer state; returns the checkpoint directory.

    Must be called by all ranks (it synchronises them). ``metadata`` must be JSON-serialisable.
    """
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int; got {step!r}")
    doc = {"format": FORMAT, "step": step, "world_size": _world()[1], "metadata": metadata or {}}
    try:
        text = json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {exc}") from None
    rank, _ = _world()
    final = checkpoint_dir_for(directory, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash: never mix two writes
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)  # local shards, names without prefixes
    with _single_process_ok():
        save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    _barrier()  # every shard is on disk
    if rank == 0:
        (tmp / META_FILE).write_text(text, encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _barrier()  # nobody reads `final` before it exists
    return final


def read_sharded_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document of a checkpoint directory (``step``, ``world_size``, ``metadata``)."""
    path = Path(path)
    meta = path / META_FILE
    if not path.is_dir():
        raise CheckpointError(path, "no such checkpoint directory")
    if not (path / ".metadata").is_file() or not meta.is_file():
        raise CheckpointError(path, f"not a complete sharded checkpoint (needs DCP's .metadata and {META_FILE})")
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(meta, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("step"), int):
        raise CheckpointError(meta, f"expected a {FORMAT} document with an int 'step'")
    return doc


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step in ``directory``, or None (temp dirs ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if _STEP_DIR.match(p.name) and (p / META_FILE).is_file())
    return found[-1] if found else None


def load_sharded_checkpoint(path: str | os.PathLike, model: nn.Module,
                            optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load model (and optimizer) state in place, re-sharding to this run's layout; return the JSON doc.

    Must be called by all ranks. The model (and optimizer) must be set up exactly as for training
    (wrapped, optimizer built): their current state dict is the template whose shards are filled.
    """
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    doc = read_sharded_checkpoint_metadata(path)
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:  # the shapes and shards this run needs: DCP fills them from whatever layout was saved
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
    try:
        with _single_process_ok():
            load(state, checkpoint_id=str(path))
    except Exception as exc:  # DCP raises CheckpointException wrapping each rank's error
        raise CheckpointError(path, f"could not load into this model/optimizer: {exc}") from exc
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return doc
