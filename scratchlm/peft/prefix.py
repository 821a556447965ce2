"""Prefix-tuning (Li & Liang, 2021). Introduced in Chapter 10.

Every attention layer l gets P trainable key and value vectors per head, put in front of the keys
and values computed from the tokens:

    head_i = softmax(q_i [P_k^{(l)}; K_i]ᵀ / √d) [P_v^{(l)}; V_i]        P_k^{(l)}, P_v^{(l)} ∈ R^{H × P × d}

The tokens never see the prefix as *inputs*: nothing is added to the embeddings; instead every layer
can attend to P extra "virtual tokens" whose keys and values are free parameters. That is the
difference from **prompt tuning** (:mod:`scratchlm.peft.prompt`), which only prepends P trainable
vectors to the *input* embeddings and lets the frozen layers compute their keys and values.

Reparameterisation. Optimising the L·2·P·C prefix numbers directly is unstable (Li & Liang, §4.3);
during training they are produced by an MLP from a smaller table:

    [P^{(1)}_k, P^{(1)}_v, ..., P^{(L)}_k, P^{(L)}_v] = W_2 tanh(W_1 E + b_1) + b_2,   E ∈ R^{P × C}

After training the MLP is thrown away and only its output is kept (:func:`bake_prefix`): the prefix
becomes L·2·P·C plain numbers. The layout (embedding → Linear → tanh → Linear to L·2·C, viewed as
(P, L, 2, H, d)) is that of Hugging Face ``peft``'s ``PrefixEncoder``, so weights copy across.

The attention side is one hook, ``MultiHeadAttention.prefix`` (see :mod:`scratchlm.layers.multihead`):
a callable ``prefix(B) -> (k_p, v_p)``. It is applied after the KV-cache logic, so a cache holds
only real tokens and cached generation equals uncached generation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PrefixEncoder(nn.Module):
    """E (P, C) → [MLP] → every layer's prefix keys and values, (L, 2, H, P, d). Chapter 10.

    ``hidden=None`` skips the reparameterisation: the table itself is (P, L·2·C), trained directly.
    """

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, num_virtual_tokens: int,
                 hidden: int | None = 512) -> None:
        super().__init__()
        for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("head_dim", head_dim),
                            ("num_virtual_tokens", num_virtual_tokens)) + ((("hidden", hidden),) if hidden else ()):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PrefixEncoder: {name} must be a positive int; got {value!r}")
        if hidden is not None and (not isinstance(hidden, int) or hidden <= 0):
            raise ValueError(f"PrefixEncoder: hidden must be None or a positive int; got {hidden!r}")
        self.n_layers, self.n_heads, self.head_dim = n_layers, n_heads, head_dim
        self.num_virtual_tokens, self.hidden = num_virtual_tokens, hidden
        C = n_heads * head_dim
        out = n_layers * 2 * C  # every layer's key and value vectors, one row per virtual token
        if hidden is None:
            self.embedding = nn.Embedding(num_virtual_tokens, out)  # the prefixes themselves
            self.transform = None
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, C)  # E
            self.transform = nn.Sequential(nn.Linear(C, hidden), nn.Tanh(), nn.Linear(hidden, out))
        self.register_buffer("tokens", torch.arange(num_virtual_tokens), persistent=False)  # (P,)

    def forward(self) -> Tensor:
        """All prefixes, (L, 2, H, P, d): index [l, 0] for layer l's keys, [l, 1] for its values."""
        x = self.embedding(self.tokens)  # (P, C) or (P, L·2·C)
        if self.transform is not None:
            x = self.transform(x)  # (P, L·2·C)
        P, L, H, d = self.num_virtual_tokens, self.n_layers, self.n_heads, self.head_dim
        return x.view(P, L, 2, H, d).permute(1, 2, 3, 0, 4)  # (L, 2, H, P, d)

    @staticmethod
    def num_params(n_layers: int, d_model: int, num_virtual_tokens: int, hidden: int | None) -> int:
        """Closed form: P·L·2·C without reparameterisation; P·C + (C+1)·h + (h+1)·L·2·C with it."""
        out = n_layers * 2 * d_model
        if hidden is None:
            return num_virtual_tokens * out
        return num_virtual_tokens * d_model + (d_model + 1) * hidden + (hidden + 1) * out


class LayerPrefix(nn.Module):
    """The object at ``MultiHeadAttention.prefix`` for one layer: ``prefix(B) -> (k_p, v_p)`` (B, H, P, d).

    While training it asks the shared :class:`PrefixEncoder` (held *without* registering it here, so
    its parameters belong to the model once, not once per layer); after :meth:`bake` it holds plain
    tensors ``key``/``value`` (H, P, d) as buffers.
    """

    def __init__(self, encoder: PrefixEncoder, layer_idx: int) -> None:
        super().__init__()
        self._encoder = [encoder]  # a list: not registered as a submodule (it is shared by every layer)
        self.layer_idx = layer_idx
        self.register_buffer("key", None)
        self.register_buffer("value", None)

    @property
    def baked(self) -> bool:
        return self.key is not None

    def forward(self, batch_size: int) -> tuple[Tensor, Tensor]:
        if self.key is not None:
            k, v = self.key, self.value  # (H, P, d) each
        else:
            kv = self._encoder[0]()[self.layer_idx]  # (2, H, P, d)
            k, v = kv[0], kv[1]  # (H, P, d) each
        return k.expand(batch_size, *k.shape), v.expand(batch_size, *v.shape)  # (B, H, P, d) each

    @torch.no_grad()
    def bake(self, prefixes: Tensor) -> None:
        """Keep this layer's slice of ``prefixes`` (L, 2, H, P, d) as plain tensors; forget the encoder."""
        self.key = prefixes[self.layer_idx, 0].detach().clone()  # (H, P, d)
        self.value = prefixes[self.layer_idx, 1].detach().clone()  # (H, P, d)
        self._encoder = []

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, {'baked' if self.baked else 'from the PrefixEncoder'}"
