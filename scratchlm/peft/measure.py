"""What a training step keeps in memory, counted exactly (Chapter 10).

PEFT's memory argument is about *state*: a full fine-tune keeps, next to the weights, one gradient
and two AdamW moments per parameter; a PEFT method only for its few trainable parameters. The other
big term is the activations autograd saves for the backward pass, which PEFT does not remove (the
gradient still has to flow back through the frozen layers to reach a LoRA matrix or a prefix).

Why not ``tracemalloc``: it traces only Python's own allocator, and PyTorch allocates tensor
storage with its own C++ allocator, invisible to it. Instead :func:`training_memory` counts bytes:

    weights      every parameter (shared tensors once)
    gradients    one per trainable parameter
    optimizer    AdamW: two moments per trainable parameter
    activations  every tensor saved for backward during one forward pass, found with
                 ``torch.autograd.graph.saved_tensors_hooks`` (storages counted once)

This is a deterministic count, the same on every machine, not a reading of the process's memory
(allocator caching and temporaries come on top).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def training_memory(model: nn.Module, loss_of: Callable[[nn.Module], Tensor]) -> dict[str, int]:
    """Bytes of weights, gradients, AdamW state and saved activations for one step of ``loss_of(model)``."""
    params = list(model.parameters())  # shared tensors once
    trainable = [p for p in params if p.requires_grad]
    seen: dict[tuple[int, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_of(model)  # scalar
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    weight_ptrs = {p.untyped_storage().data_ptr() for p in params}
    activations = sum(n for (ptr, _), n in seen.items() if ptr not in weight_ptrs)
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    return {"weights": nbytes(params), "gradients": nbytes(trainable), "optimizer": 2 * nbytes(trainable),
            "activations": activations,
            "total": nbytes(params) + 3 * nbytes(trainable) + activations}
