"""How much does quantization cost? Weight and output error vs bits and group size (Chapter 12).

These functions return numbers (dicts, lists of dicts); the chapter plots them.
Introduced in Chapter 12.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantize import QuantizedTensor, _blocks, _blocks_param, quantize


def bits_per_weight(bits: int, scheme: str = "symmetric", granularity: str = "channel",
                    group_size: int | None = None, in_features: int | None = None) -> float:
    """Storage per weight including the block parameters: b + 32/g (+ 8/g for a uint8 zero point),
    where g is the block length (``group_size``, ``in_features`` per channel). Codes of b ≤ 4 bits
    are stored packed in 4 bits and codes of 5–8 bits in 8 bits, as :class:`QuantizedLinear` does.
    Per-tensor blocks make the overhead negligible (reported as 0). Introduced in Chapter 12.
    """
    stored = 4 if bits <= 4 else 8
    if granularity == "tensor":
        return float(stored)
    g = group_size if granularity == "group" else in_features
    if not g:
        raise ValueError("bits_per_weight needs group_size (group) or in_features (channel)")
    return stored + (32 + (8 if scheme == "asymmetric" else 0)) / g


def weight_error(w: Tensor, bits: int, scheme: str = "symmetric", granularity: str = "channel",
                 group_size: int | None = None, *, full_range: bool = False) -> dict[str, float]:
    """Error of ŵ = dequantize(quantize(w)) against w.

    Returns ``mse`` = mean (w − ŵ)², ``max_abs`` = max |w − ŵ|, ``rel_fro`` = ‖w − ŵ‖_F / ‖w‖_F,
    ``sqnr_db`` = 10·log10(Σw² / Σ(w − ŵ)²) (signal-to-quantization-noise ratio; each extra bit adds
    about 6 dB for uniform quantization) and ``max_abs_over_half_scale`` = max |w − ŵ| / (s/2) over
    the blocks (≤ 1 by construction). Introduced in Chapter 12.
    """
    qt = quantize(w, bits, scheme, granularity, group_size, full_range=full_range)
    w32 = w.detach().to(torch.float32)  # (*lead, n)
    err = w32 - qt.dequantize()  # (*lead, n)
    half_s = _per_element_scale(qt) / 2  # (*lead, n)
    signal, noise = float((w32**2).sum()), float((err**2).sum())
    return {
        "bits": bits,
        "mse": float((err**2).mean()),
        "max_abs": float(err.abs().max()),
        "rel_fro": math.sqrt(noise / signal) if signal else 0.0,
        "sqnr_db": 10 * math.log10(signal / noise) if noise else float("inf"),
        "max_abs_over_half_scale": float((err.abs() / half_s).max()),
    }


def output_error(linear: nn.Linear, x: Tensor, bits: int, scheme: str = "symmetric",
                 granularity: str = "channel", group_size: int | None = None) -> dict[str, float]:
    """Error of a weight-only quantized layer's output on real inputs ``x``: y = x Wᵀ + b vs
    ŷ = x Ŵᵀ + b. Returns ``mse`` and ``rel_fro`` = ‖y − ŷ‖_F / ‖y‖_F. The output error is what the
    next layer sees: it averages weight errors over in_features, so it can be smaller than the worst
    weight error suggests, and it grows with the size of the inputs. Introduced in Chapter 12.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"output_error expects an nn.Linear; got {type(linear).__name__}")
    with torch.no_grad():
        w_hat = quantize(linear.weight, bits, scheme, granularity, group_size).dequantize()  # (N, K)
        x32 = x.to(torch.float32)  # (..., K)
        bias = None if linear.bias is None else linear.bias.to(torch.float32)  # (N,)
        y = F.linear(x32, linear.weight.to(torch.float32), bias)  # (..., N)
        y_hat = F.linear(x32, w_hat, bias)  # (..., N)
    err = y - y_hat  # (..., N)
    norm = float(y.norm())
    return {"bits": bits, "mse": float((err**2).mean()), "rel_fro": float(err.norm()) / norm if norm else 0.0}


def error_sweep(linear: nn.Linear, x: Tensor, bits: Sequence[int] = (8, 6, 4, 3, 2),
                group_sizes: Sequence[int | None] = (None, 128, 64, 32),
                scheme: str = "symmetric") -> list[dict[str, float]]:
    """Weight and output error for every (bits, group size) pair: ``group_size=None`` means one
    scale per output channel. Group sizes that do not divide in_features are left out. One row per
    pair with bits, group_size (0 = per channel), bits_per_weight, weight_rel_fro, weight_sqnr_db and
    output_rel_fro. Introduced in Chapter 12.
    """
    rows = []
    k = linear.in_features
    for b in bits:
        for g in group_sizes:
            if g is not None and k % g:
                continue
            gran = "channel" if g is None else "group"
            we = weight_error(linear.weight, b, scheme, gran, g)
            oe = output_error(linear, x, b, scheme, gran, g)
            rows.append({
                "bits": b,
                "group_size": 0 if g is None else g,
                "bits_per_weight": bits_per_weight(b, scheme, gran, g, k),
                "weight_rel_fro": we["rel_fro"],
                "weight_sqnr_db": we["sqnr_db"],
                "output_rel_fro": oe["rel_fro"],
            })
    return rows


def _per_element_scale(qt: QuantizedTensor) -> Tensor:
    """The scale that applies to each element, broadcast to the tensor's shape."""
    ones = torch.ones(qt.shape)  # (*lead, n)
    return (_blocks(ones, qt) * _blocks_param(qt.scale)).reshape(qt.shape)  # (*lead, n)
