"""Measuring what compression buys: bytes on disk and latency side by side (Chapter 12).

* :func:`saved_size` — save the model's state dict as safetensors and count the bytes of the file
  (codes, scales, zero points and float tensors as stored, shared tensors once, plus the header).
* :func:`latency_side_by_side` — time several callables in one run, round robin: after a few
  warm-up rounds, every round calls each candidate once in turn, so a slow moment of a busy machine
  hits all of them alike; the figure is the median over rounds.

Introduced in Chapter 12.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn


def saved_size(model: nn.Module, path: str | os.PathLike | None = None) -> int:
    """Bytes of ``model.state_dict()`` written with ``safetensors.torch.save_model`` (tied weights once).

    ``path``: where to write (kept); None writes to a temporary file that is removed. Tensor
    subclasses (torchao's quantized weights) and the packed weights of ``torch.ao`` dynamic modules
    cannot be saved this way: count those in memory with :func:`~scratchlm.compress.size_bytes`.
    Introduced in Chapter 12.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"saved_size expects an nn.Module; got {type(model).__name__}")
    bad = [n for n, t in model.state_dict().items() if type(t) not in (torch.Tensor, nn.Parameter)]
    if bad:
        raise TypeError(f"saved_size can only save plain tensors; {bad[:3]} are not (torchao or torch.ao "
                        "quantized modules: use size_bytes for their in-memory size)")
    if path is not None:
        save_model(model, str(path))
        return Path(path).stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "model.safetensors"
        save_model(model, str(file))
        return file.stat().st_size


def latency_side_by_side(candidates: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 10,
                         ) -> dict[str, float]:
    """Median wall time of one call of each candidate, in milliseconds, measured round robin.

    ``candidates``: name → a callable without arguments (e.g. ``lambda: model(**batch)``). Runs
    under ``torch.inference_mode``. Timings depend on the machine and its load: compare only
    figures from the same call. Introduced in Chapter 12.
    """
    if not candidates or not all(callable(f) for f in candidates.values()):
        raise TypeError("candidates must be a non-empty mapping of name → callable")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in candidates.values():
                fn()
        for _ in range(repeats):
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}
