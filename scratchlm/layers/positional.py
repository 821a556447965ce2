"""Positional information for attention: sinusoidal, learned and rotary (introduced in Chapter 04).

Attention by itself is permutation-equivariant: shuffle the input tokens and the outputs are shuffled
the same way, so a model built only from attention cannot tell "dog bites man" from "man bites dog".
This module gives it the three standard ways to know where a token is:

* :func:`sinusoidal_table` / :class:`SinusoidalPositionalEncoding` — the fixed table of
  Vaswani et al. (2017), *added* to the token embeddings;
* :class:`LearnedPositionalEmbedding` — one trained vector per position (GPT-2, BERT), also added;
* :class:`RotaryEmbedding` — RoPE (Su et al., 2021): queries and keys are *rotated* by an angle
  proportional to their position, so that ``q_m · k_n`` depends only on the offset ``m - n``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "apply_rotary_emb",
    "rotate_half",
    "sinusoidal_table",
]


# ----------------------------------------------------------------------------- input checks
def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value}")
    return value


def _check_even(name: str, value: int, what: str) -> int:
    if value % 2 != 0:
        raise ValueError(f"{name} must be even for {what} (dimensions come in (sin, cos) pairs); got {value}")
    return value


def _check_offset(offset: object) -> int:
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise TypeError(f"offset must be an int; got {type(offset).__name__} {offset!r}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0; got {offset}")
    return offset


def _check_fits(seq_len: int, offset: int, max_len: int, owner: str) -> None:
    if offset + seq_len > max_len:
        raise ValueError(
            f"sequence of length {seq_len} at offset {offset} needs positions up to {offset + seq_len - 1}, "
            f"but {owner} was built with max_len={max_len} (positions 0..{max_len - 1})"
        )


def _check_activations(x: object, d_model: int, owner: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(
            f"{owner} expects activations of shape (B, T, C); got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[-1] != d_model:
        raise ValueError(
            f"{owner} was built for C = d_model = {d_model}; got input of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects floating-point activations; got dtype {x.dtype}")
    return x


# ----------------------------------------------------------------------------- sinusoidal
def sinusoidal_table(
    max_len: int,
    d_model: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""The fixed sinusoidal position table of "Attention Is All You Need" (Vaswani et al., 2017).

    .. math::
        PE_{(pos, 2i)} = \sin\big(pos / base^{2i/d}\big), \qquad
        PE_{(pos, 2i+1)} = \cos\big(pos / base^{2i/d}\big)

    Column pair ``(2i, 2i+1)`` is a point on a circle turning with angular frequency
    ``ω_i = base^{-2i/d}`` (wavelength ``2π / ω_i``, from ``2π`` up to ``2π · base``), so moving
    ``k`` positions is the same 2×2 rotation by ``k ω_i`` for every starting position: the
    "relative-offset" property. Computed in float64, returned in ``dtype``.

    Returns a tensor of shape ``(max_len, d_model)``. Introduced in Chapter 04.
    """
    _check_positive_int("max_len", max_len)
    _check_even("d_model", _check_positive_int("d_model", d_model), "sinusoidal encodings")
    if not isinstance(base, (int, float)) or isinstance(base, bool) or base <= 1:
        raise ValueError(f"base must be a number > 1; got {base!r}")
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d/2,) the even indices 2i
    inv_freq = torch.exp(-math.log(base) * two_i / d_model)  # (d/2,) ω_i = base^(-2i/d)
    angles = position * inv_freq  # (T, d/2) pos · ω_i
    table = torch.empty(max_len, d_model, dtype=torch.float64)  # (T, d)
    table[:, 0::2] = torch.sin(angles)  # even columns: sin
    table[:, 1::2] = torch.cos(angles)  # odd columns: cos
    return table.to(dtype=dtype, device=device)  # (T, d)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to token embeddings, then applies dropout.

    ``y = Dropout(x + PE[offset : offset + T])`` for ``x`` of shape (B, T, C). The table is a
    *non-persistent* buffer: it follows ``.to(device)`` but is not saved in the ``state_dict``
    (it is a formula, not a learned weight). ``offset`` lets a KV-cache decoder encode the
    position of new tokens. Introduced in Chapter 04.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0, *, base: float = 10000.0) -> None:
        super().__init__()
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        self.d_model = d_model
        self.max_len = max_len
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_table(max_len, d_model, base=base), persistent=False)  # (L, C)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_activations(x, self.d_model, type(self).__name__)
        _check_offset(offset)
        seq_len = x.shape[1]
        _check_fits(seq_len, offset, self.max_len, type(self).__name__)
        pe = self.pe[offset : offset + seq_len].to(x.dtype)  # (T, C)
        return self.dropout(x + pe)  # (B, T, C), PE broadcast over the batch

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


# ----------------------------------------------------------------------------- learned
class LearnedPositionalEmbedding(nn.Embedding):
    """One trained vector per position, as in GPT-2 (``wpe``) and BERT (``position_embeddings``).

    It *is* an ``nn.Embedding(max_len, d_model)`` (so its weight is called ``weight`` and Hugging
    Face checkpoints load by name), initialised ``N(0, init_std²)``; the default 0.02 is what Hugging Face's
    GPT-2/BERT and nanoGPT use for every embedding (OpenAI's original GPT-2 code draws positions with
    0.01 and tokens with 0.02). Small next to N(0, 1) token embeddings, so training decides how much
    position matters. Two ways to call it:

    * integer ``positions`` of any shape ``(...)`` → their vectors ``(..., C)`` (the nanoGPT style:
      ``tok_emb + wpe(pos)``);
    * float activations ``x`` of shape (B, T, C) → ``Dropout(x + E[offset : offset + T])``, the same
      interface as :class:`SinusoidalPositionalEncoding`, so the two are interchangeable.

    Unlike the sinusoidal table it cannot say anything about positions ``>= max_len``: those rows were
    never trained, and asking for them is an error. Introduced in Chapter 04.
    """

    def __init__(self, max_len: int, d_model: int, *, dropout: float = 0.0, init_std: float = 0.02) -> None:
        _check_positive_int("max_len", max_len)
        _check_positive_int("d_model", d_model)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        if not isinstance(init_std, (int, float)) or init_std <= 0:
            raise ValueError(f"init_std must be a positive number; got {init_std!r}")
        self.init_std = float(init_std)
        super().__init__(max_len, d_model)
        self.max_len = max_len
        self.d_model = d_model
        self.drop = nn.Dropout(dropout)

    def reset_parameters(self) -> None:  # called by nn.Embedding.__init__
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{name} expects integer positions or (B, T, C) activations; got {type(x).__name__}"
            )
        if not x.is_floating_point():  # integer positions -> their embeddings
            if x.dtype == torch.bool or x.is_complex():
                raise TypeError(f"{name} positions must be an integer tensor; got dtype {x.dtype}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.max_len):
                raise ValueError(
                    f"{name} positions must lie in 0..{self.max_len - 1} (max_len={self.max_len}); "
                    f"got values from {int(x.min())} to {int(x.max())}"
                )
            return super().forward(x)  # (..., C)
        _check_activations(x, self.d_model, name)
        _check_offset(offset)
        seq_len = x.shape[1]
        _check_fits(seq_len, offset, self.max_len, name)
        pe = self.weight[offset : offset + seq_len].to(x.dtype)  # (T, C)
        return self.drop(x + pe)  # (B, T, C)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}, init_std={self.init_std}"


# ----------------------------------------------------------------------------- rotary
def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension, split into two halves (GPT-NeoX/LLaMA layout).

    Pairs coordinate ``j`` with ``j + d/2``; multiplying by ``sin`` and adding ``x · cos`` rotates every
    such pair. Introduced in Chapter 04.
    """
    if x.shape[-1] % 2:
        raise ValueError(f"rotate_half needs an even last dimension (coordinates come in pairs); got shape "
                         f"{tuple(x.shape)}")
    x1, x2 = x.chunk(2, dim=-1)  # (..., d/2) each
    return torch.cat((-x2, x1), dim=-1)  # (..., d)


def apply_rotary_emb(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` with precomputed tables: ``x · cos + rotate_half(x) · sin``.

    ``cos``/``sin`` must broadcast against ``x`` (e.g. (T, d) or (B, 1, T, d) for x of shape
    (B, H, T, d)). This is the formula of Hugging Face's ``apply_rotary_pos_emb``. Introduced in
    Chapter 04.
    """
    if x.shape[-1] != cos.shape[-1] or x.shape[-1] != sin.shape[-1]:
        raise ValueError(f"apply_rotary_emb: x has head dim {x.shape[-1]} but the tables have "
                         f"{cos.shape[-1]} and {sin.shape[-1]}")
    return x * cos + rotate_half(x) * sin  # (B, H, T, d)


class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding, RoPE (Su et al., 2021), in the "rotate half" layout.

    For a query or key vector ``x`` at position ``m`` and frequencies ``θ_i = base^{-2i/d}``
    (``i = 0 .. d/2 - 1``), coordinate pair ``(x_i, x_{i + d/2})`` is rotated by the angle ``m θ_i``:

    .. math::
        \begin{pmatrix} x'_i \\ x'_{i+d/2} \end{pmatrix} =
        \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
        \begin{pmatrix} x_i \\ x_{i+d/2} \end{pmatrix}

    i.e. ``x' = x · cos + rotate_half(x) · sin``. Rotations preserve norms, and
    ``R_m q · R_n k = q · R_{n-m} k`` depends on positions only through the offset ``n - m``.

    **Layout.** The paper pairs *adjacent* coordinates ``(x_{2i}, x_{2i+1})``; GPT-NeoX, LLaMA and
    Hugging Face's ``apply_rotary_pos_emb`` pair ``x_i`` with ``x_{i+d/2}`` ("rotate half"). The two
    are the same map up to a fixed permutation of the head dimension; this class uses rotate half, so
    weights from LLaMA-style checkpoints work unchanged.

    ``apply_rotary(x, positions=None, offset=0)`` rotates ``x`` of shape (B, H, T, d). Positions are
    ``offset .. offset + T - 1`` unless ``positions`` ((T,) or (B, T) integers) is given; the offset is
    what a KV-cache decoder passes for the new token. The cos/sin tables are non-persistent buffers
    of shape (max_len, d). Introduced in Chapter 04.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        _check_even("head_dim", _check_positive_int("head_dim", head_dim), "rotary embeddings")
        _check_positive_int("max_len", max_len)
        if not isinstance(base, (int, float)) or isinstance(base, bool) or base <= 1:
            raise ValueError(f"base must be a number > 1; got {base!r}")
        self.head_dim = head_dim
        self.max_len = max_len
        self.base = float(base)
        two_i = torch.arange(0, head_dim, 2, dtype=torch.float64)  # (d/2,)
        inv_freq = self.base ** (-two_i / head_dim)  # (d/2,) θ_i
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, d/2) m θ_i
        angles = torch.cat((angles, angles), dim=-1)  # (L, d) both halves of a pair share an angle
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)  # (d/2,)
        self.register_buffer("cos_cached", angles.cos().float(), persistent=False)  # (L, d)
        self.register_buffer("sin_cached", angles.sin().float(), persistent=False)  # (L, d)

    def cos_sin(self, positions: Tensor | None = None, *, seq_len: int | None = None, offset: int = 0):
        """The ``(cos, sin)`` tables for ``positions`` ((T,) → (T, d); (B, T) → (B, 1, T, d)),
        or for ``offset .. offset + seq_len - 1`` when ``positions`` is None."""
        name = type(self).__name__
        if positions is None:
            if seq_len is None:
                raise ValueError("cos_sin needs either positions or seq_len")
            _check_offset(offset)
            _check_fits(seq_len, offset, self.max_len, name)
            return self.cos_cached[offset : offset + seq_len], self.sin_cached[offset : offset + seq_len]
        if (
            not isinstance(positions, Tensor)
            or positions.is_floating_point()
            or positions.dtype == torch.bool
        ):
            raise TypeError(f"{name} positions must be an integer tensor; got {positions!r:.60}")
        if positions.dim() not in (1, 2):
            raise ValueError(f"{name} positions must have shape (T,) or (B, T); got {tuple(positions.shape)}")
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.max_len):
            raise ValueError(
                f"{name} positions must lie in 0..{self.max_len - 1} (max_len={self.max_len}); "
                f"got values from {int(positions.min())} to {int(positions.max())}"
            )
        cos = self.cos_cached[positions]  # (T, d) or (B, T, d)
        sin = self.sin_cached[positions]  # (T, d) or (B, T, d)
        if positions.dim() == 2:  # one row of positions per sequence: broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, d)
        return cos, sin

    def apply_rotary(self, x: Tensor, positions: Tensor | None = None, offset: int = 0) -> Tensor:
        """Rotate queries or keys ``x`` (B, H, T, d) to their positions; returns the same shape."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}.apply_rotary expects a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name}.apply_rotary expects (B, H, T, d); got {x.dim()}-D shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"{name} was built for head_dim={self.head_dim}; got x of shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{name}.apply_rotary expects floating-point x; got dtype {x.dtype}")
        batch, _, seq_len, _ = x.shape
        if positions is not None and positions.dim() == 1 and positions.shape[0] != seq_len:
            raise ValueError(f"positions has {positions.shape[0]} entries for a sequence of length {seq_len}")
        if positions is not None and positions.dim() == 2 and tuple(positions.shape) != (batch, seq_len):
            raise ValueError(
                f"positions must have shape (B, T) = {(batch, seq_len)}; got {tuple(positions.shape)}"
            )
        if positions is not None and offset != 0:
            raise ValueError("give either positions or offset, not both")
        cos, sin = self.cos_sin(positions, seq_len=seq_len, offset=offset)  # (T, d) or (B, 1, T, d)
        return apply_rotary_emb(x, cos.to(x.dtype), sin.to(x.dtype))  # (B, H, T, d)

    def forward(self, q: Tensor, k: Tensor, positions: Tensor | None = None, offset: int = 0):
        """Rotate queries and keys together: returns ``(q_rot, k_rot)``, each (B, H, T, d)."""
        return self.apply_rotary(q, positions, offset), self.apply_rotary(k, positions, offset)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base:g}"
