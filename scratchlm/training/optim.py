"""Optimizer and learning-rate schedule for the training loop (introduced in Chapter 06).

* :func:`lr_at`: linear warm-up, then cosine decay (nanoGPT's schedule, ``schedule="cosine"``) or
  a constant rate followed by a short linear cool-down (warmup-stable-decay, ``schedule="wsd"``).
* :func:`adamw_with_decay_groups`: AdamW where matrices decay and biases / norm gains don't.
* :func:`build_optimizer`: ``TrainConfig.optimizer`` picks AdamW (the model's own
  ``configure_optimizers`` when it has one) or Muon + AdamW (:func:`scratchlm.training.build_muon_adamw`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.torch_version import TorchVersion

if TYPE_CHECKING:
    from .loop import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for (0-based) ``step``: linear warm-up, then ``cfg.schedule``'s decay to ``min_lr``.

    Warm-up (both schedules), with W = warmup_steps:
        lr(s) = lr_max (s + 1) / (W + 1)                                          for s < W
    ``schedule="cosine"`` (nanoGPT's), with D = lr_decay_steps (default max_steps):
        lr(s) = lr_min + ½ (1 + cos(π (s − W) / (D − W))) (lr_max − lr_min)        for W ≤ s ≤ D
    ``schedule="wsd"`` (warmup-stable-decay, "trapezoidal"), cool-down from S = max(W, D − K),
    K = round(cooldown_fraction · D):
        lr(s) = lr_max                                                            for W ≤ s < S
        lr(s) = lr_max − (lr_max − lr_min) (s − S) / (D − S)                      for S ≤ s ≤ D
    and lr(s) = lr_min for s > D.

    Why WSD: the loss falls steeply while the rate decays, whatever the run's length. The cosine
    spends its whole length decaying, so where a run ends must be fixed in advance; WSD holds the
    peak rate (fast progress) and decays only at the end, and a longer run reuses the stable phase.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    decay_steps = cfg.lr_decay_steps if cfg.lr_decay_steps is not None else cfg.max_steps
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_steps + 1)
    if step > decay_steps or decay_steps <= cfg.warmup_steps:
        return cfg.min_lr
    if cfg.schedule == "wsd":
        start = max(cfg.warmup_steps, decay_steps - round(cfg.cooldown_fraction * decay_steps))
        if step < start:
            return cfg.learning_rate
        left = (decay_steps - step) / (decay_steps - start)  # 1 -> 0 over the cool-down
        return cfg.min_lr + (cfg.learning_rate - cfg.min_lr) * left  # exactly min_lr at D
    ratio = (step - cfg.warmup_steps) / (decay_steps - cfg.warmup_steps)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


# First PyTorch release with a fused AdamW kernel per device type. ".dev0" makes every build of that
# release count (nightlies "2.5.0.dev20240801", source builds "2.5.0a0+git...").
_FUSED_ADAMW_SINCE = {"cuda": "2.0.0.dev0", "cpu": "2.4.0.dev0", "mps": "2.5.0.dev0"}


def fused_adamw_available(device: torch.device | str) -> bool:
    """Whether this PyTorch has a fused AdamW kernel for ``device`` (CUDA; CPU since 2.4; MPS since 2.5).

    Versions are compared as versions (``TorchVersion``), not as strings: as strings
    ``"2.13.0" >= "2.5"`` is False, which once kept fused AdamW off on every Apple GPU.
    """
    device = torch.device(device)
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    since = _FUSED_ADAMW_SINCE.get(device.type)
    return since is not None and TorchVersion(torch.__version__) >= since


def adamw_with_decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with two parameter groups: matrices (weights of Linear/Embedding) decay, the rest don't.

    Why: weight decay pulls parameters towards 0. For a weight matrix that is a useful prior; for a
    bias or a LayerNorm gain it only fights the value the layer needs (a gain of 0 kills the
    signal). nanoGPT's rule is the simple one used here: ``dim >= 2`` decays, ``dim < 2`` does not.
    """
    params = [(n, p) for n, p in named_parameters if p.requires_grad]
    if not params:
        raise ValueError("adamw_with_decay_groups got no trainable parameters")
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    device = params[0][1].device
    if fused is None:
        fused = fused_adamw_available(device)
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, **kwargs)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, with every group's ``lr`` at ``cfg.learning_rate``.

    ``"adamw"``: the model's own ``configure_optimizers`` when it has one, else
    :func:`adamw_with_decay_groups`. ``"muon"``: :func:`scratchlm.training.build_muon_adamw` (Muon
    for the hidden matrices at ``muon_lr``, AdamW for embeddings, head, biases and gains at
    ``learning_rate``); each group's ``lr_scale`` makes the one schedule the loop writes into
    ``group["lr"]`` drive Muon at ``muon_lr / learning_rate`` times the AdamW rate. ``fused`` does
    not apply to it.
    """
    if cfg.optimizer == "muon":
        from .muon import build_muon_adamw

        return build_muon_adamw(model, muon_lr=cfg.muon_lr, adamw_lr=cfg.learning_rate,
                                weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                momentum=cfg.muon_momentum, base_lr=cfg.learning_rate)
    kwargs = dict(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=cfg.fused)
    if hasattr(model, "configure_optimizers"):
        return model.configure_optimizers(**kwargs)
    return adamw_with_decay_groups(model.named_parameters(), **kwargs)
