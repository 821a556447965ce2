"""A probe for position information: a tiny bidirectional transformer classifier and the task it is
trained on (introduced in Chapter 04).

**The order task.** Each sequence of ``seq_len`` token ids holds exactly one ``A`` (id 0), one ``B``
(id 1) and random filler ids ``2 .. vocab-1``; the label is 1 when ``A`` comes before ``B``. Swapping
``A`` and ``B`` flips the label but keeps the *set* of tokens, so a model that cannot see positions
must give both twins the same output: on a held-out set made of twin pairs its accuracy is exactly
1/2 (for the model below, mean-pooled bidirectional attention with no position information, this is
an identity, not a statistic).

**The probe.** Embedding, optional positions, ``n_layers`` × (pre-LN attention + GELU MLP, with
residuals), LayerNorm, mean over positions, linear classifier. Only ``positions`` differs:

* ``"none"`` — nothing: permutation-invariant, at chance;
* ``"sinusoidal"`` — :class:`~scratchlm.layers.SinusoidalPositionalEncoding` added to the embeddings;
* ``"learned"`` — :class:`~scratchlm.layers.LearnedPositionalEmbedding` added, initialised at the
  scale of the N(0, 1) token embeddings (``learned_init_std=1.0``), so both start on equal footing;
* ``"rope"`` — :class:`~scratchlm.layers.RotaryMultiHeadAttention`: queries and keys rotated by position.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import (
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryMultiHeadAttention,
    SinusoidalPositionalEncoding,
)

A_ID, B_ID = 0, 1
POSITIONS = ("none", "sinusoidal", "learned", "rope")

__all__ = ["A_ID", "B_ID", "POSITIONS", "OrderProbe", "order_task_batch", "with_swapped_twins"]


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")


def order_task_batch(n: int, seq_len: int, vocab: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random sequences (n, seq_len) with exactly one A and one B; labels (n,) = [A before B].

    Filler ids are drawn uniformly from ``2 .. vocab-1``; the position of A is uniform and B's is uniform
    among the other positions, so both labels are equally likely.
    """
    _positive_int("n", n)
    _positive_int("seq_len", seq_len, 2)
    _positive_int("vocab", vocab, 3)
    x = torch.randint(2, vocab, (n, seq_len), generator=generator)  # (n, T) filler
    pos_a = torch.randint(0, seq_len, (n,), generator=generator)  # (n,)
    pos_b = (pos_a + torch.randint(1, seq_len, (n,), generator=generator)) % seq_len  # (n,), never pos_a
    rows = torch.arange(n)  # (n,)
    x[rows, pos_a], x[rows, pos_b] = A_ID, B_ID
    return x, (pos_a < pos_b).long()  # (n, T), (n,)


def with_swapped_twins(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append each sequence's A<->B-swapped twin (same set of tokens, opposite label): (2n, T), (2n,)."""
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (n, T) and y (n,); got {tuple(x.shape)} and {tuple(y.shape)}")
    if not bool(((x == A_ID).sum(1) == 1).all() and ((x == B_ID).sum(1) == 1).all()):
        raise ValueError("every sequence must hold exactly one A (id 0) and one B (id 1)")
    twin = x.clone()  # (n, T)
    twin[x == A_ID], twin[x == B_ID] = B_ID, A_ID
    return torch.cat([x, twin]), torch.cat([y, 1 - y])  # (2n, T), (2n,)


class OrderProbe(nn.Module):
    """Tiny bidirectional transformer classifier whose only difference is how it sees positions.

    ``forward(ids (B, T)) -> logits (B, 2)``, ``T <= seq_len``. ``positions`` is one of :data:`POSITIONS`.
    """

    def __init__(self, positions: str, vocab: int, seq_len: int, d_model: int, n_heads: int, n_layers: int,
                 *, learned_init_std: float = 1.0) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(map(repr, POSITIONS))}; got {positions!r}")
        for name, value, minimum in (("vocab", vocab, 3), ("seq_len", seq_len, 2), ("d_model", d_model, 1),
                                     ("n_heads", n_heads, 1), ("n_layers", n_layers, 1)):
            _positive_int(name, value, minimum)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.positions, self.seq_len = positions, seq_len
        self.embed = nn.Embedding(vocab, d_model)  # N(0, 1) init
        if positions == "sinusoidal":
            self.add_positions: nn.Module = SinusoidalPositionalEncoding(d_model, seq_len)
        elif positions == "learned":  # at the scale of the token vectors it is added to
            self.add_positions = LearnedPositionalEmbedding(seq_len, d_model, init_std=learned_init_std)
        else:
            self.add_positions = nn.Identity()
        self.blocks = nn.ModuleList()
        for _ in range(n_layers):
            attn = (RotaryMultiHeadAttention(d_model, n_heads, max_len=seq_len) if positions == "rope"
                    else MultiHeadAttention(d_model, n_heads))
            mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
            self.blocks.append(nn.ModuleDict(dict(ln1=nn.LayerNorm(d_model), attn=attn,
                                                  ln2=nn.LayerNorm(d_model), mlp=mlp)))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"ids must be an int64 tensor (B, T); got {ids.dtype} {tuple(ids.shape)}")
        h = self.add_positions(self.embed(ids))  # (B, T, C)
        for block in self.blocks:
            h = h + block["attn"](block["ln1"](h))[0]  # (B, T, C)
            h = h + block["mlp"](block["ln2"](h))  # (B, T, C)
        return self.head(self.ln_f(h.mean(dim=1)))  # (B, 2): mean over positions, then classify
