"""Normalisation layers: LayerNorm (Chapter 05) and RMSNorm (Chapter 08), each written out once.

Every block picks one with :func:`make_norm` (``norm="layernorm"`` or ``"rmsnorm"``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import _check_positive_int


def _check_norm_args(d_model: int, eps: float) -> tuple[int, float]:
    _check_positive_int("d_model", d_model)
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"eps must be a positive float; got {eps!r}")
    return d_model, float(eps)


class LayerNorm(nn.Module):
    """Layer normalisation over the last dimension, written out (Ba et al., 2016).

    y = (x − μ) / sqrt(σ² + ε) · γ + β, where μ and σ² are the mean and the *biased* variance
    (divide by C, not C − 1) of the C features of each position; γ (``weight``) starts at 1 and
    β (``bias``) at 0. Same parameter names as ``nn.LayerNorm`` so state dicts interchange.
    Introduced in Chapter 05.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.d_model, self.eps = _check_norm_args(d_model, eps)
        self.weight = nn.Parameter(torch.ones(d_model))  # γ, (C,)
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None  # β, (C,)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"LayerNorm expects a last dimension of {self.d_model}; got shape {tuple(x.shape)}")
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # (..., 1) biased: divide by C
        x_hat = (x - mean) * torch.rsqrt(var + self.eps)  # (..., C) zero mean, unit variance
        y = x_hat * self.weight  # (..., C)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, bias={self.bias is not None}"



class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + ε) · γ — LayerNorm without centring and without β (Zhang & Sennrich, 2019).

    T5's "T5LayerNorm". Cheaper than LayerNorm and, in practice, as good. Introduced in Chapter 08.
    """

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.d_model, self.eps = _check_norm_args(d_model, eps)
        self.weight = nn.Parameter(torch.ones(d_model))  # γ, (C,)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"RMSNorm expects a last dimension of {self.d_model}; got shape {tuple(x.shape)}")
        rms_inv = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)  # (..., 1)
        return (x.float() * rms_inv).to(x.dtype) * self.weight  # (..., C)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, d_model: int, eps: float, bias: bool = True) -> nn.Module:
    """``LayerNorm`` or ``RMSNorm`` by name: the one switch every block uses (RMSNorm has no bias)."""
    if kind == "layernorm":
        return LayerNorm(d_model, eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    raise ValueError(f"norm must be one of {NORMS}; got {kind!r}")
