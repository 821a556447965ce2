"""Training checkpoints in safetensors: save, load, resume (introduced in Chapter 06).

A checkpoint is ONE ``.safetensors`` file holding

* the model's tensors under ``model.<name>`` (tied weights stored once, their aliases listed),
* the optimizer's per-parameter state under ``optim.<param index>.<key>`` (AdamW: ``step``,
  ``exp_avg``, ``exp_avg_sq``),
* the random-number-generator states (``rng.torch``, ``rng.cuda.<i>``, ``rng.python``,
  ``rng.numpy``) so that dropout masks after a resume are the ones an uninterrupted run draws,

plus a JSON document in the safetensors header (``__metadata__["scratchlm"]``) with the step, the
loss history, the training config and the tied-weight aliases.

Why safetensors and never ``torch.save``/``pickle``: unpickling runs arbitrary code, so loading a
checkpoint somebody sent you would be a security hole; safetensors is a flat tensor table plus a
JSON header that cannot execute anything. Why a temp file and ``os.replace``: a crash while writing
must leave the previous checkpoint intact, never a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

FORMAT = "scratchlm-checkpoint-v1"
META_KEY = "scratchlm"


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


def rng_state_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG the training loop can touch, as tensors plus JSON-able extras."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, py_state, gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(py_state, dtype=torch.int64)  # 625 ints < 2**32
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_keys.astype(np.int64))  # 624 uint32 words
    extras = {
        "python": [version, gauss],
        "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    return tensors, extras


def restore_rng_states(tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state_tensors`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, gauss = extras["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng.python"].tolist()), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = extras["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((np_name, keys, np_pos, np_has_gauss, np_gauss))


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write model (+ optimizer, RNG states, ``metadata``) to ``path`` atomically. Returns the path."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"save_checkpoint expects an nn.Module; got {type(model).__name__}")
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
        "format": FORMAT,
        "step": int(step),
        "aliases": aliases,
        "rng": rng_extras,
        "has_optimizer": optimizer is not None,
        **(metadata or {}),
    }
    blob = save(tensors, metadata={META_KEY: json.dumps(doc)})
    path.parent.mkdir(parents=True, exist_ok=True)
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
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document from a checkpoint's header (no tensors are read)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if META_KEY not in meta:
        raise ValueError(f"{str(path)!r} is a safetensors file but not a scratchlm checkpoint "
                         f"(no {META_KEY!r} entry in its metadata)")
    doc = json.loads(meta[META_KEY])
    if doc.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r}: expected checkpoint format {FORMAT!r}; got {doc.get('format')!r}")
    return doc


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Returns the metadata document (``step``, ``history``, ``config``...). Loading is strict: a
    missing or unexpected parameter name raises.
    """
    doc = read_checkpoint_metadata(path)
    tensors = load_file(str(path))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    for alias, target in doc["aliases"].items():
        state[alias] = state[target]
    model.load_state_dict(state, strict=True)
    if optimizer is not None:
        if not doc["has_optimizer"]:
            raise ValueError(f"checkpoint {str(path)!r} holds no optimizer state")
        opt_state = optimizer.state_dict()  # current param_groups (hyper-parameters from the config)
        restored: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                restored.setdefault(int(index), {})[name] = value
        n_params = sum(len(g["params"]) for g in opt_state["param_groups"])
        if restored and max(restored) >= n_params:
            raise ValueError(f"checkpoint has optimizer state for {max(restored) + 1} parameters; "
                             f"the optimizer has {n_params}")
        opt_state["state"] = restored
        optimizer.load_state_dict(opt_state)
    if restore_rng:
        restore_rng_states({k: v for k, v in tensors.items() if k.startswith("rng.")}, doc["rng"])
    return doc
