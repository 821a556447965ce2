"""Bottleneck adapters (Houlsby et al., 2019). Introduced in Chapter 10.

    Adapter(h) = h + W_up φ(W_down h + b_down) + b_up,     W_down ∈ R^{m × C},  W_up ∈ R^{C × m},  m ≪ C

A small two-layer network with a residual connection, inserted after a sublayer's output (the
attention output and the feed-forward output, before they are added to the residual stream).
Houlsby et al. train only the adapters, the layer norms and the task head: 2·(2·C·m + m + C)
adapter parameters per layer.

Initialisation: W_up = 0 and b_up = 0, so the adapter is *exactly* the identity at step 0 and the
adapted model starts from the pretrained one (Houlsby et al. use a near-zero initialisation for the
same reason). W_down keeps ``nn.Linear``'s default initialisation so that gradients reach W_up.

The blocks of :mod:`scratchlm.layers.blocks` have ``nn.Identity`` slots at exactly these places —
``self_attn_adapter``, ``cross_attn_adapter`` and ``ffn_adapter`` — so inserting an adapter is an
assignment, and every model of the book (GPT, BERT, T5, the Chapter 05 Transformer) gets it.
"""

from __future__ import annotations

from torch import Tensor, nn

ADAPTER_SITES = ("self_attn", "cross_attn", "ffn")  # the hook points <site>_adapter of the blocks
ADAPTER_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Adapter(nn.Module):
    """h + W_up φ(W_down h): a residual bottleneck of width m, the identity at initialisation. Chapter 10."""

    def __init__(self, d_model: int, bottleneck: int, activation: str = "gelu") -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("bottleneck", bottleneck)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Adapter: {name} must be a positive int; got {value!r}")
        if activation not in ADAPTER_ACTIVATIONS:
            raise ValueError(f"Adapter: activation must be one of {sorted(ADAPTER_ACTIVATIONS)}; got {activation!r}")
        self.d_model, self.bottleneck = d_model, bottleneck
        self.down = nn.Linear(d_model, bottleneck)  # W_down (m, C), b_down (m,)
        self.act = ADAPTER_ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, d_model)  # W_up (C, m), b_up (C,)
        nn.init.zeros_(self.up.weight)  # W_up = 0 and b_up = 0: Adapter(h) = h at step 0
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.act(self.down(h)))  # (B, T, C)

    @staticmethod
    def num_params(d_model: int, bottleneck: int) -> int:
        """Closed form: 2·C·m + m + C."""
        return 2 * d_model * bottleneck + bottleneck + d_model

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, bottleneck={self.bottleneck}"
