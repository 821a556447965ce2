"""Training checkpoints in safetensors: save, load, resume (introduced in Chapter 06).

A checkpoint is ONE ``.safetensors`` file holding

* the model's tensors under ``model.<name>`` (tied weights stored once, their aliases listed),
* the optimizer's per-parameter state under ``optim.<param index>.<key>`` (AdamW: ``step``,
  ``exp_avg``, ``exp_avg_sq``),
* the random-number-generator states (``rng.torch``, ``rng.cuda.<i>``, ``rng.python``,
  ``rng.numpy``; see :mod:`scratchlm.training.rng`) so that dropout masks after a resume are the
  ones an uninterrupted run draws,

plus a JSON document in the safetensors header (``__metadata__["scratchlm"]``) with the format tag,
the step, the tied-weight aliases, the optimizer's class and group sizes, a sha256 checksum of every
tensor, and the caller's metadata (the loop adds the loss history, the training config and the
fingerprint that :func:`scratchlm.training.preflight.training_fingerprint` compares on resume).

Why safetensors and never ``torch.save``/``pickle``: unpickling runs arbitrary code, so loading a
checkpoint somebody sent you would be a security hole; safetensors is a flat tensor table plus a
JSON header that cannot execute anything. Why a temp file, fsync and ``os.replace``: a crash while
writing must leave the previous checkpoint intact, never a half-written file under the final name.
Why a checksum: safetensors checks that the file's layout is consistent, not that the bytes are the
ones written; a flipped bit on a disk or a bad copy would otherwise load as silently wrong weights.

Every way a file can be wrong raises :class:`scratchlm.errors.CheckpointError` naming the path and
the problem, and :func:`load_checkpoint` checks everything before it changes the model, the
optimizer or the RNGs: a refused checkpoint leaves them as they were.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..errors import CheckpointError
from .rng import check_rng_states, restore_rng_states, rng_state_tensors

__all__ = ["FORMAT", "META_KEY", "RESERVED_KEYS", "load_checkpoint", "read_checkpoint_metadata",
           "restore_rng_states", "rng_state_tensors", "save_checkpoint", "tensor_checksum"]

FORMAT = "scratchlm-checkpoint-v2"  # v2: checksum and optimizer description are required fields
META_KEY = "scratchlm"
# Written by save_checkpoint itself; user metadata may not overwrite them (type of each value).
_REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {"format": str, "step": int, "aliases": dict, "rng": dict,
                                     "has_optimizer": bool, "optimizer": (dict, type(None)), "checksum": str}
RESERVED_KEYS = frozenset(_REQUIRED_FIELDS)


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` over every tensor's name, dtype, shape and bytes, in name order.

    Names, dtypes and shapes are hashed too, so a renamed or reshaped tensor with the same bytes
    does not pass. The bytes are the little-endian layout safetensors writes.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # (numel * itemsize,)
    return "sha256:" + digest.hexdigest()


def _dedup_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store tensors that share memory (tied embeddings) once; return (tensors, alias -> stored name)."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = tensor.detach().contiguous().cpu()
    return stored, aliases


def _optimizer_description(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a saved optimizer state must fit: the class and the number of parameters per group."""
    return {"class": type(optimizer).__name__,
            "group_sizes": [len(group["params"]) for group in optimizer.param_groups]}


def _check_user_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"checkpoint metadata must be a dict with str keys; got {metadata!r:.200}")
    clash = sorted(RESERVED_KEYS & set(metadata))
    if clash:
        raise ValueError(f"checkpoint metadata may not set the reserved keys {clash}: save_checkpoint writes "
                         f"{sorted(RESERVED_KEYS)} itself; rename yours")
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"checkpoint metadata[{key!r}] must be JSON-serialisable (numbers, strings, bools, "
                            f"None, lists, str-keyed dicts); got {type(value).__name__}: {exc}") from None
    return metadata


def remove_orphaned_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete ``<name>.*.tmp`` files beside ``path`` left by a save that was killed mid-write.

    Assumes one writer per checkpoint path (in a distributed run only rank 0 saves): a concurrent
    save's temp file would look orphaned too.
    """
    path = Path(path)
    removed = []
    for stale in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open directories, and needs no call."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write model (+ optimizer, RNG states, ``metadata``) to ``path`` atomically. Returns the path.

    ``metadata`` must be JSON-serialisable and may not use the keys in :data:`RESERVED_KEYS`; both
    are checked before anything is written. Orphaned temp files of earlier, interrupted saves to the
    same path are removed.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"save_checkpoint expects an nn.Module; got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"save_checkpoint expects a torch.optim.Optimizer or None; got {type(optimizer).__name__}")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"save_checkpoint step must be an int >= 0; got {step!r}")
    user = _check_user_metadata(metadata)
    path = Path(path)
    model_tensors, aliases = _dedup_state_dict(model.state_dict())
    tensors = {f"model.{k}": v for k, v in model_tensors.items()}
    if optimizer is not None:
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):  # e.g. a float "step" in old optimizers
                    value = torch.tensor(value)
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
    rng_tensors, rng_extras = rng_state_tensors()
    tensors.update(rng_tensors)
    doc = {
        **user,
        "format": FORMAT,
        "step": step,
        "aliases": aliases,
        "rng": rng_extras,
        "has_optimizer": optimizer is not None,
        "optimizer": _optimizer_description(optimizer) if optimizer is not None else None,
        "checksum": tensor_checksum(tensors),
    }
    blob = save(tensors, metadata={META_KEY: json.dumps(doc)})
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temp_files(path)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _read_header(path: Path) -> dict[str, str]:
    if not path.exists():
        raise CheckpointError(path, "file does not exist")
    if not path.is_file():
        raise CheckpointError(path, "is not a regular file (a directory?); expected a .safetensors checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file (truncated, corrupted, or another format "
                                    f"such as a pickle): {exc}") from exc


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document from a checkpoint's header, with its required fields checked.

    Reads no tensors, so it is fast and does NOT verify the checksum (:func:`load_checkpoint` does).
    """
    path = Path(path)
    meta = _read_header(path)
    if META_KEY not in meta:
        raise CheckpointError(path, f"a safetensors file but not a scratchlm checkpoint (no {META_KEY!r} entry "
                                    f"in its metadata)")
    try:
        doc = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"malformed JSON in the {META_KEY!r} metadata: {exc}") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(path, f"the {META_KEY!r} metadata must be a JSON object; got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise CheckpointError(path, f"wrong checkpoint format tag: expected {FORMAT!r}, got {doc.get('format')!r}")
    missing = sorted(set(_REQUIRED_FIELDS) - set(doc))
    if missing:
        raise CheckpointError(path, f"metadata fields missing: {missing}")
    for name, kind in _REQUIRED_FIELDS.items():
        value = doc[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(path, f"metadata field {name!r} has the wrong type: {type(value).__name__} "
                                        f"({value!r:.80})")
    if doc["step"] < 0:
        raise CheckpointError(path, f"metadata field 'step' must be >= 0; got {doc['step']}")
    return doc


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _model_state(path: Path, doc: dict[str, Any], tensors: dict[str, torch.Tensor],
                 model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to load, after checking that names and shapes fit ``model`` exactly."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    for alias, target in doc["aliases"].items():
        if target not in state:
            raise CheckpointError(path, f"tied-weight alias {alias!r} points at {target!r}, which the file lacks")
        state[alias] = state[target]
    expected = model.state_dict()
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    wrong = [f"{n} (checkpoint {tuple(state[n].shape)}, model {tuple(t.shape)})"
             for n, t in expected.items() if n in state and state[n].shape != t.shape]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch: {_listing(wrong)}")
    if problems:
        raise CheckpointError(path, f"tensors do not fit {type(model).__name__}: " + "; ".join(problems))
    return state


def _optimizer_state(path: Path, doc: dict[str, Any], tensors: dict[str, torch.Tensor],
                     optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state dict to load, after checking that it fits ``optimizer``."""
    if not doc["has_optimizer"] or doc["optimizer"] is None:
        raise CheckpointError(path, "holds no optimizer state, but an optimizer was passed to load it into")
    saved, now = doc["optimizer"], _optimizer_description(optimizer)
    if saved != now:
        raise CheckpointError(path, f"optimizer mismatch: checkpoint {saved.get('class')} with parameter groups of "
                                    f"sizes {saved.get('group_sizes')}, now {now['class']} with {now['group_sizes']}")
    opt_state = optimizer.state_dict()  # current param_groups (hyper-parameters come from the config)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, index, name = (key.split(".", 2) + ["", ""])[:3]
        if not index.isdigit() or not name:
            raise CheckpointError(path, f"malformed optimizer tensor name {key!r} (expected optim.<index>.<key>)")
        if int(index) >= len(params):
            raise CheckpointError(path, f"optimizer state for parameter {index}, but the optimizer has "
                                        f"{len(params)} parameters")
        param = params[int(index)]
        if value.dim() > 0 and value.shape != param.shape:
            raise CheckpointError(path, f"optimizer state {key!r} has shape {tuple(value.shape)}; its parameter "
                                        f"has shape {tuple(param.shape)}")
        restored.setdefault(int(index), {})[name] = value
    opt_state["state"] = restored
    return opt_state


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Returns the metadata document (``step``, ``history``, ``config``...). Loading is strict: the
    checksum must match, and names and shapes must fit the model (and the optimizer) exactly.
    Everything is checked first, so a refused checkpoint changes nothing.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"load_checkpoint expects an nn.Module; got {type(model).__name__}")
    path = Path(path)
    doc = read_checkpoint_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(path, f"tensors could not be read: {exc}") from exc
    computed = tensor_checksum(tensors)
    if computed != doc["checksum"]:
        raise CheckpointError(path, f"checksum mismatch: the tensors are not the bytes that were saved (corrupted "
                                    f"or edited file); stored {doc['checksum']}, computed {computed}")
    state = _model_state(path, doc, tensors, model)
    opt_state = _optimizer_state(path, doc, tensors, optimizer) if optimizer is not None else None
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    if restore_rng and (problem := check_rng_states(rng, doc["rng"])):
        raise CheckpointError(path, problem)
    try:
        model.load_state_dict(state, strict=True)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
    except (RuntimeError, ValueError, KeyError) as exc:  # e.g. a dtype the parameter cannot take
        raise CheckpointError(path, f"could not be loaded into {type(model).__name__}: {exc}") from exc
    if restore_rng:
        restore_rng_states(rng, doc["rng"])
    return doc
