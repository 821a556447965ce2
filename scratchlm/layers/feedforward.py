"""The position-wise feed-forward sublayer and its activations (introduced in Chapter 05).

    FFN(x)    = act(x W1 + b1) W2 + b2                                  (Vaswani et al., 2017)
    SwiGLU(x) = (SiLU(x W_g) ⊙ (x W1)) W2                               (Shazeer, 2020)

``act`` is ReLU (the original Transformer, T5), GELU (BERT; GPT-2 uses its tanh approximation) or
ReLU² (So et al., 2021; Chapter 06's speed run). The gated variant has a third matrix W_g.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import _check_dropout, _check_positive_int

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,  # max(0, x), the original Transformer
    "gelu": F.gelu,  # x·Φ(x) (exact, erf), BERT and nn.Transformer*'s "gelu"
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "relu2": lambda x: F.relu(x).square(),  # max(0, x)², Primer's "squared ReLU"
    "swiglu": F.silu,  # x·σ(x), used gated: SiLU(x W_g) ⊙ (x W1)
}
GATED = ("swiglu",)  # activations that multiply a gate branch into the hidden units


def _check_activation(activation: str) -> Callable[[Tensor], Tensor]:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
    return ACTIVATIONS[activation]


class FeedForward(nn.Module):
    """Position-wise feed-forward network, applied to every position independently.

    FFN(x) = act(x W1 + b1) W2 + b2 (Vaswani et al., 2017: max(0, xW1 + b1)W2 + b2), or the gated
    (SiLU(x W_g) ⊙ x W1) W2 for ``activation="swiglu"``. W1: (d_model, d_ff), W2: (d_ff, d_model);
    usually d_ff = 4·d_model. Dropout sits on the hidden activations when ``hidden_dropout`` (as in
    ``nn.TransformerEncoderLayer``; GPT-2 and BERT have none there). Introduced in Chapter 05.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu",
                 bias: bool = True, hidden_dropout: bool = True) -> None:
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("d_ff", d_ff)
        _check_dropout(dropout)
        self.act = _check_activation(activation)
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)  # W1, b1: expand
        self.gate: nn.Module | None = nn.Linear(d_model, d_ff, bias=bias) if activation in GATED else None  # W_g
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)  # W2, b2: project back
        self.dropout = nn.Dropout(dropout if hidden_dropout else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            hidden = self.act(self.gate(x)) * self.linear1(x)  # (B, T, d_ff)
        else:
            hidden = self.act(self.linear1(x))  # (B, T, d_ff)
        return self.linear2(self.dropout(hidden))  # (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
