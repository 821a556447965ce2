"""Hugging Face–format model directories: ``config.json`` + ``model.safetensors`` (introduced in Chapter 06).

Every model of the book has ``Model.from_pretrained(directory)`` and ``model.save_pretrained(directory)``
(see :class:`~scratchlm.models.base.PreTrainedModel`); this module holds what they share:

* reading a directory, where every way a file can be wrong (missing, truncated, not safetensors,
  malformed JSON, missing fields, unexpected or missing tensors, wrong shapes) raises one error type,
  :class:`~scratchlm.errors.CheckpointError`, naming the path and the problem;
* writing a directory atomically: both files are written to temporary names in the target
  directory, flushed, then renamed, so an interrupted save never leaves a half-written file under
  the final name.

Only safetensors are read — never a pickled ``pytorch_model.bin``: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ..errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_config(directory: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, Any]:
    """The ``config.json`` of a model directory as a dict; CheckpointError if absent, malformed or incomplete."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(directory, "is not a directory (expected a model directory with "
                                         f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    if not path.is_file():
        raise CheckpointError(path, f"{CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"malformed JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(path, f"expected a JSON object; got {type(config).__name__}")
    missing = [name for name in required if name not in config]
    if missing:
        raise CheckpointError(path, f"missing fields {missing}")
    return config


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors``; CheckpointError if absent, truncated or not safetensors."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(path, f"{WEIGHTS_FILE} is missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(path, f"not a readable safetensors file (truncated or another format?): {err}") from None


def check_tensors(path: str | os.PathLike, loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError unless ``loaded`` has exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise CheckpointError(path, f"tensors do not fit the model: missing {missing[:4]}"
                                    f"{' …' if len(missing) > 4 else ''} ({len(missing)}), unexpected "
                                    f"{unexpected[:4]}{' …' if len(unexpected) > 4 else ''} ({len(unexpected)})")
    for name, tensor in loaded.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(path, f"tensor {name!r} has shape {tuple(tensor.shape)}; the model expects "
                                        f"{tuple(expected[name].shape)}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pretrained(directory: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed), atomically.

    Tensors that share memory (tied weights) must be passed once; they are made contiguous and moved
    to the CPU. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                             metadata={"format": "pt"})
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # fails here, before any write, if not JSON
    _atomic_write(directory / WEIGHTS_FILE, blob)
    _atomic_write(directory / CONFIG_FILE, text.encode("utf-8"))
    return directory
