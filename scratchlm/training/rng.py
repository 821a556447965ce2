"""Random-number-generator states as tensors, so checkpoints can carry them (introduced in Chapter 06).

Why: dropout masks and any sampling after a resume must be the ones an uninterrupted run draws, or
"resume reproduces the run bitwise" cannot hold. Every RNG the loop can touch is saved: PyTorch's CPU
generator, each initialised CUDA device, Python's ``random`` and NumPy's legacy global generator.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

REQUIRED_RNG_TENSORS = ("rng.torch", "rng.python", "rng.numpy")


def rng_state_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG the training loop can touch, as tensors plus JSON-able extras."""
    tensors = {"rng.torch": torch.get_rng_state()}  # (5056,) uint8
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, py_state, gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(py_state, dtype=torch.int64)  # (625,) ints < 2**32
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_keys.astype(np.int64))  # (624,) uint32 words
    extras = {
        "python": [version, gauss],
        "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    return tensors, extras


def check_rng_states(tensors: dict[str, torch.Tensor], extras: Any) -> str | None:
    """What is wrong with saved RNG states (a sentence), or None when they can be restored."""
    missing = [name for name in REQUIRED_RNG_TENSORS if name not in tensors]
    if missing:
        return f"RNG state tensors missing: {missing}"
    if tensors["rng.torch"].dtype != torch.uint8 or tensors["rng.torch"].dim() != 1:
        return f"rng.torch must be a 1-D uint8 tensor; got {tensors['rng.torch'].dtype} {tuple(tensors['rng.torch'].shape)}"
    if tuple(tensors["rng.python"].shape) != (625,) or tuple(tensors["rng.numpy"].shape) != (624,):
        return (f"RNG state shapes: expected rng.python (625,) and rng.numpy (624,); got "
                f"{tuple(tensors['rng.python'].shape)} and {tuple(tensors['rng.numpy'].shape)}")
    if not (isinstance(extras, dict) and isinstance(extras.get("python"), list) and len(extras["python"]) == 2
            and isinstance(extras.get("numpy"), list) and len(extras["numpy"]) == 4):
        return f"metadata field 'rng' must be {{'python': [version, gauss], 'numpy': [name, pos, has_gauss, gauss]}}; got {extras!r}"
    return None


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
