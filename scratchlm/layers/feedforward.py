"""The position-wise feed-forward sublayer and its activations (introduced in Chapter 05)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import _check_dropout, _check_positive_int

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,  # max(0, x), the original Transformer
    "gelu": F.gelu,  # x·Φ(x) (exact, erf), BERT and nn.Transformer*'s "gelu"
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
}


def _check_activation(activation: str) -> Callable[[Tensor], Tensor]:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
    return ACTIVATIONS[activation]



class FeedForward(nn.Module):
    """Position-wise feed-forward network, applied to every position independently.

    FFN(x) = act(x W1 + b1) W2 + b2, with act = ReLU (Vaswani et al., 2017: max(0, xW1 + b1)W2 + b2)
    or GELU. W1: (d_model, d_ff), W2: (d_ff, d_model); usually d_ff = 4·d_model.
    Dropout sits on the hidden activations, as in ``nn.TransformerEncoderLayer``.
    Introduced in Chapter 05.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu",
                 bias: bool = True) -> None:
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("d_ff", d_ff)
        _check_dropout(dropout)
        self.act = _check_activation(activation)
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)  # W1, b1: expand
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)  # W2, b2: project back
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(self.act(self.linear1(x)))  # (B, T, d_ff)
        return self.linear2(hidden)  # (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

