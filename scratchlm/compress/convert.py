"""Swap every ``nn.Linear`` of a model for a quantized one, and count the bytes (Chapter 12).

Models in scratchlm call every replaceable ``nn.Linear`` as a module, so replacing the module is all
it takes: the forward pass does not change. Introduced in Chapter 12.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .qlinear import DynamicInt8Linear, QuantizedLinear
from .quantize import GRANULARITIES, SCHEMES, _check_bits

METHODS = ("weight_only", "dynamic_int8")


@dataclass(frozen=True)
class QuantizeConfig:
    """What :func:`quantize_model` puts in place of each ``nn.Linear``.

    ``method="weight_only"`` → :class:`QuantizedLinear` with ``bits``, ``scheme``, ``granularity``
    and ``group_size``; ``method="dynamic_int8"`` → :class:`DynamicInt8Linear` (int8 per-channel
    weights, activations per ``act_granularity``; ``bits``/``scheme``/``granularity`` must be left
    at 8 / symmetric / channel). Introduced in Chapter 12.
    """

    method: str = "weight_only"
    bits: int = 8
    scheme: str = "symmetric"
    granularity: str = "channel"
    group_size: int | None = None
    act_granularity: str = "token"
    full_range: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        _check_bits(self.bits)
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}; got {self.scheme!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}; got {self.granularity!r}")
        if self.granularity == "group" and not (isinstance(self.group_size, int) and self.group_size > 0):
            raise ValueError(f"granularity='group' needs a positive int group_size; got {self.group_size!r}")
        if self.method == "dynamic_int8" and (self.bits, self.scheme, self.granularity) != (8, "symmetric", "channel"):
            raise ValueError("method='dynamic_int8' is int8 symmetric per-channel; got "
                             f"bits={self.bits}, scheme={self.scheme!r}, granularity={self.granularity!r}")
        if self.act_granularity not in ("token", "tensor"):
            raise ValueError(f"act_granularity must be 'token' or 'tensor'; got {self.act_granularity!r}")

    def build(self, linear: nn.Linear) -> nn.Module:
        """The quantized replacement for one ``nn.Linear``."""
        if self.method == "dynamic_int8":
            return DynamicInt8Linear.from_linear(linear, act_granularity=self.act_granularity,
                                                 full_range=self.full_range)
        return QuantizedLinear.from_linear(linear, self.bits, self.scheme, self.granularity, self.group_size,
                                           full_range=self.full_range)


@dataclass
class QuantizationReport:
    """What :func:`quantize_model` did: the Linear layers it replaced, the ones it left (and why),
    and the model's storage before and after (:func:`size_bytes`). Introduced in Chapter 12."""

    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name → reason
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def compression(self) -> float:
        """bytes_before / bytes_after (> 1 means smaller)."""
        return self.bytes_before / self.bytes_after if self.bytes_after else float("inf")

    def __str__(self) -> str:
        return (f"replaced {len(self.replaced)} Linear layer(s), skipped {len(self.skipped)}; "
                f"{self.bytes_before:,} → {self.bytes_after:,} bytes ({self.compression:.2f}× smaller)")


def size_bytes(module: nn.Module) -> int:
    """Bytes of real storage: Σ numel · element_size over parameters and buffers, each shared tensor
    once. int8 codes count 1 byte, packed int4 codes 0.5 byte (two per uint8), float32 scales and
    biases 4 bytes. A tensor subclass that wraps other tensors (torchao's quantized weights) is
    counted by its inner tensors (``__tensor_flatten__``), not by the float dtype it poses as.
    Introduced in Chapter 12.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"size_bytes expects an nn.Module; got {type(module).__name__}")
    seen: set[int] = set()
    total = 0
    tensors = [p for _, p in module.named_parameters(remove_duplicate=False)]
    tensors += [b for _, b in module.named_buffers(remove_duplicate=False)]
    for t in tensors:
        key = id(t)
        if key in seen:
            continue
        seen.add(key)
        total += _tensor_bytes(t)
    return total


def _tensor_bytes(t) -> int:
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    return t.numel() * t.element_size()


def _tied_linear_names(model: nn.Module) -> set[str]:
    """Names of Linear modules whose weight is also registered elsewhere (e.g. a tied lm_head)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    tied = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and len(owners.get(id(module.weight), [])) > 1:
            tied.add(name)
    return tied


def swap_modules(model: nn.Module, kind: type[nn.Module], is_tied: Callable[[str, nn.Module], bool],
                 build: Callable[[nn.Module], nn.Module], filter_fn: Callable[[str, nn.Module], bool] | None,
                 report: QuantizationReport) -> None:
    """Replace every ``kind`` submodule of ``model`` by ``build(module)``, recording in ``report`` what was
    replaced and why the others were skipped (tied weight, or ``filter_fn`` said no). The targets are
    collected first: replacing while ``named_modules`` walks the tree would visit the new modules.
    Shared by :func:`quantize_model` (Linear layers) and ``quantize_embeddings``. Chapter 12."""
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, kind):
            continue
        if is_tied(name, module):
            report.skipped[name] = "weight tied to another parameter"
        elif filter_fn is not None and not filter_fn(name, module):
            report.skipped[name] = "filter_fn returned False"
        else:
            targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, build(getattr(parent, child)))
        report.replaced.append(name)


def quantize_model(
    model: nn.Module,
    config: QuantizeConfig | None = None,
    filter_fn: Callable[[str, nn.Linear], bool] | None = None,
    *,
    skip_tied: bool = True,
) -> QuantizationReport:
    """Replace, in place, every ``nn.Linear`` of ``model`` that ``filter_fn(name, linear)`` accepts
    (default: all) by ``config.build(linear)``; return a :class:`QuantizationReport`.

    A Linear whose weight is tied to another parameter (GPT's ``lm_head`` shares the token
    embedding) is skipped unless ``skip_tied=False``: quantizing it would *add* a quantized copy
    while the float embedding stays, so the model would grow. Introduced in Chapter 12.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_model expects an nn.Module; got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("model is itself an nn.Linear: use QuantizedLinear.from_linear or DynamicInt8Linear.from_linear")
    config = QuantizeConfig() if config is None else config
    if not isinstance(config, QuantizeConfig):
        raise TypeError(f"config must be a QuantizeConfig; got {type(config).__name__}")
    report = QuantizationReport(bytes_before=size_bytes(model))
    tied = _tied_linear_names(model) if skip_tied else set()
    swap_modules(model, nn.Linear, lambda name, linear: name in tied, config.build, filter_fn, report)
    report.bytes_after = size_bytes(model)
    return report
