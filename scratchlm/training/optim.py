"""Optimizer and learning-rate schedule for the training loop (introduced in Chapter 06).

* :func:`lr_at`: linear warm-up, then cosine decay (nanoGPT's schedule, ``schedule="cosine"``) or
  a constant rate followed by a short linear cool-down (warmup-stable-decay, ``schedule="wsd"``).
* :func:`adamw_with_decay_groups`: AdamW where matrices decay and biases / norm gains don't.
* :func:`adamw_from_param_groups` → :class:`ScaledAdamW`: AdamW over caller-given groups with an
  ``lr_scale`` each (layer-wise learning-rate decay, Chapter 09).
* :func:`build_optimizer`: ``TrainConfig.optimizer`` picks AdamW (over given groups, else the model's
  own ``configure_optimizers``, else the above) or Muon + AdamW (:func:`scratchlm.training.build_muon_adamw`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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


class ScaledAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose groups may carry ``lr_scale``: a step uses ``group["lr"] × lr_scale``.

    The book's loop writes one scheduled lr into every group; the scale per group (layer-wise
    learning-rate decay, Chapter 09) is applied here, for the duration of the step only, so
    ``group["lr"]`` always shows the schedule — the same convention as
    :class:`~scratchlm.training.muon.MuonAdamW`. The update itself is PyTorch's (fused when asked).
    """

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - see the class docstring
        scheduled = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, scheduled, strict=True):
                group["lr"] = lr


def adamw_from_param_groups(
    param_groups: Sequence[Mapping[str, Any]],
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    fused: bool | None = None,
) -> ScaledAdamW:
    """AdamW over caller-given groups, each ``{"params": [...], "lr_scale": s, "name": ...}``.

    Each group is split by the decay rule of :func:`adamw_with_decay_groups` (matrices decay,
    biases and gains don't) and keeps its ``lr_scale`` (default 1) and ``name``; every group steps
    at lr(step) · lr_scale (:class:`ScaledAdamW`; layer-wise learning-rate decay, Chapter 09).
    Parameters that do not require grad *now* are kept (gradual unfreezing switches them on
    later); AdamW skips a parameter while its gradient is None. A parameter in two groups raises.
    """
    if isinstance(param_groups, Mapping) or not isinstance(param_groups, Sequence) or not param_groups:
        raise ValueError("param_groups must be a non-empty list of {'params': [...], 'lr_scale': float} dicts")
    seen: set[int] = set()
    groups: list[dict[str, Any]] = []
    for i, g in enumerate(param_groups):
        if not isinstance(g, Mapping) or "params" not in g:
            raise ValueError(f"param_groups[{i}] must be a dict with 'params'; got {type(g).__name__}")
        scale = g.get("lr_scale", 1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0.0 <= scale < math.inf:
            raise ValueError(f"param_groups[{i}]['lr_scale'] must be a finite number >= 0; got {scale!r}")
        params = list(g["params"])
        for p in params:
            if not isinstance(p, nn.Parameter):
                raise TypeError(f"param_groups[{i}] holds a {type(p).__name__}, not an nn.Parameter")
            if id(p) in seen:
                raise ValueError(f"a parameter appears in two param_groups (the second is group {i}, "
                                 f"{g.get('name', '')!r}); each parameter may be in one group only")
            seen.add(id(p))
        name = g.get("name", f"group {i}")
        for suffix, members, wd in (("", [p for p in params if p.dim() >= 2], weight_decay),
                                    (" (no decay)", [p for p in params if p.dim() < 2], 0.0)):
            if members:
                groups.append({"params": members, "weight_decay": wd, "lr_scale": float(scale),
                               "name": name + suffix})
    if not groups:
        raise ValueError("param_groups hold no parameters")
    if fused is None:
        fused = fused_adamw_available(groups[0]["params"][0].device)
    kwargs = {"fused": True} if fused else {}
    return ScaledAdamW(groups, lr=learning_rate, betas=betas, eps=eps, **kwargs)


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    param_groups: Sequence[Mapping[str, Any]] | None = None) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, with every group's ``lr`` at ``cfg.learning_rate``.

    ``"adamw"``: over ``param_groups`` when given (:func:`adamw_from_param_groups`), else the model's
    own ``configure_optimizers`` when it has one, else :func:`adamw_with_decay_groups`. ``"muon"``:
    :func:`scratchlm.training.build_muon_adamw` (Muon for the hidden matrices at ``muon_lr``, AdamW
    for embeddings, head, biases and gains at ``learning_rate``); each group's ``lr_scale`` makes the
    one schedule the loop writes into ``group["lr"]`` drive Muon at ``muon_lr / learning_rate`` times
    the AdamW rate. ``fused`` does not apply to it, and it does not take ``param_groups``.
    """
    if cfg.optimizer == "muon":
        if param_groups is not None:
            raise ValueError("optimizer='muon' splits the model's parameters itself; param_groups apply to "
                             "optimizer='adamw' only")
        from .muon import build_muon_adamw

        return build_muon_adamw(model, muon_lr=cfg.muon_lr, adamw_lr=cfg.learning_rate,
                                weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                momentum=cfg.muon_momentum, base_lr=cfg.learning_rate)
    kwargs = dict(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=cfg.fused)
    if param_groups is not None:
        return adamw_from_param_groups(param_groups, **kwargs)
    if hasattr(model, "configure_optimizers"):
        return model.configure_optimizers(**kwargs)
    return adamw_with_decay_groups(model.named_parameters(), **kwargs)
