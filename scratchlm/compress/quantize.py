"""Quantization from scratch: integer codes, scales, zero points, and packed int4 storage (Chapter 12).

A float tensor w becomes b-bit integer codes q plus one float scale s (and, for the asymmetric
scheme, an integer zero point z) per *block* of elements; the block is the whole tensor
(``granularity="tensor"``), one row (``"channel"``: per output channel of an (out, in) weight, per
token of an (M, K) activation) or ``group_size`` consecutive elements of a row (``"group"``).

symmetric:  s = max|w| / (2^(b−1) − 1)         q = clamp(round(w / s), −(2^(b−1) − 1), 2^(b−1) − 1)
            ŵ = s · q
asymmetric: s = (max − min) / (2^b − 1)         z = round(−min / s)
            q = clamp(round(w / s) + z, 0, 2^b − 1)                 ŵ = s · (q − z)

Rounding is to nearest (``torch.round``, ties to even), so |w − ŵ| ≤ s/2 for every element inside
the clamp range, and the ranges above are chosen so that every element is inside it. w/s is computed
as w · (1/s), one reciprocal per block, as fbgemm (``torch.quantize_per_tensor``) and torchao do: it
can differ from a true division in the last bit, which changes a code only at an exact .5 tie.
Introduced in Chapter 12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel", "group")
MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes and the parameters that map them back to floats: ŵ = s · (q − z).

    ``codes`` has the shape of the original tensor: int8 for the symmetric scheme (signed codes),
    uint8 for the asymmetric one (codes in [0, 2^b − 1]). ``scale`` (float32) and ``zero_point``
    (uint8, asymmetric only) have one entry per block: shape (1,)*ndim for ``"tensor"``,
    (*lead, 1) for ``"channel"`` and (*lead, in / group_size) for ``"group"``.
    Introduced in Chapter 12.
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor | None
    bits: int
    scheme: str
    granularity: str
    group_size: int | None
    full_range: bool = False

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def qrange(self) -> tuple[int, int]:
        """The smallest and largest code (see :func:`code_range`)."""
        return code_range(self.bits, self.scheme, self.full_range)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """ŵ = s · (q − z); see :func:`dequantize`."""
        return dequantize(self, dtype)


def code_range(bits: int, scheme: str = "symmetric", full_range: bool = False) -> tuple[int, int]:
    """(q_min, q_max): ±(2^(b−1) − 1) symmetric, [−2^(b−1), 2^(b−1) − 1] with ``full_range``,
    [0, 2^b − 1] asymmetric. Introduced in Chapter 12."""
    _check_bits(bits)
    if scheme == "asymmetric":
        return 0, 2**bits - 1
    half = 2 ** (bits - 1)
    return (-half if full_range else -(half - 1)), half - 1


def quantize(
    w: Tensor,
    bits: int = 8,
    scheme: str = "symmetric",
    granularity: str = "channel",
    group_size: int | None = None,
    *,
    full_range: bool = False,
) -> QuantizedTensor:
    """Quantize a float tensor to ``bits``-bit integer codes with one scale (and zero point) per block.

    symmetric:  s = max|w| / (2^(b−1) − 1),  q = clamp(round(w/s), −(2^(b−1) − 1), 2^(b−1) − 1).
      Zero maps to code 0, the range is symmetric (−q is a code whenever q is: one code, −2^(b−1),
      is left unused), and the largest |w| of each block maps exactly to ±(2^(b−1) − 1).
      ``full_range=True`` is the convention of torchao and the ``torch.ao`` observers instead:
      s = max|w| / ((2^b − 1)/2) = max|w|/127.5 for int8, codes in [−2^(b−1), 2^(b−1) − 1]; it uses
      all 2^b codes, the largest |w| lands on a tie (±127.5 → ±128 → clamped to 127 for a positive
      max), so its error is s/2 rather than 0. Both keep |w − ŵ| ≤ s/2.
    asymmetric: s = (max − min) / (2^b − 1), z = round(−min/s), q = clamp(round(w/s) + z, 0, 2^b − 1),
      with min := min(min w, 0) and max := max(max w, 0) so that 0.0 is exactly representable
      (padding and ReLU zeros stay zero) and z fits in b bits, as in PyTorch and torchao. The block's
      min lands on code 0 and its max on code 2^b − 1: the whole range is used even when the
      weights are not centred, which is why asymmetric wins for skewed blocks.

    A block of zeros gets s = 1 (and z = 0): its codes are 0 and nothing is divided by zero.
    ``granularity``: "tensor" (one s), "channel" (one s per row: along the last dim) or "group"
    (one s per ``group_size`` consecutive elements of a row; ``group_size`` must divide the row).
    Introduced in Chapter 12.
    """
    _check_args(w, bits, scheme, granularity, group_size)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w must be finite to quantize (found inf or nan)")
    return _quantize(w, bits, scheme, granularity, group_size, full_range)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """ŵ = s · (q − z) (z = 0 for the symmetric scheme), broadcast over each block.

    Introduced in Chapter 12.
    """
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize expects a QuantizedTensor (from quantize()); got {type(qt).__name__}")
    q = _blocks(qt.codes.to(torch.float32), qt)  # (*lead, G, g)
    if qt.zero_point is not None:
        q = q.sub_(_blocks_param(qt.zero_point.to(torch.float32)))  # (*lead, G, g) q − z
    w_hat = q.mul_(_blocks_param(qt.scale))  # (*lead, G, g) s · (q − z)
    return w_hat.reshape(qt.shape).to(dtype)  # (*lead, n)


# ----------------------------------------------------------------------------- packed int4


def pack_int4(codes: Tensor, signed: bool = True) -> Tensor:
    """Store two 4-bit codes per byte along the last dim: byte j = low nibble of element 2j
    + (low nibble of element 2j+1) << 4.

    ``signed=True``: int8 codes in [−8, 7] (stored as 4-bit two's complement); ``signed=False``:
    codes in [0, 15] (int8 or uint8). An odd last dim is padded with one zero nibble, so an (R, n)
    tensor becomes (R, ⌈n/2⌉) uint8: half a byte per code. Introduced in Chapter 12.
    """
    if not isinstance(codes, Tensor) or codes.dtype not in (torch.int8, torch.uint8):
        got = codes.dtype if isinstance(codes, Tensor) else type(codes).__name__
        raise TypeError(f"pack_int4 expects an int8 or uint8 tensor of codes; got {got}")
    if codes.dim() == 0:
        raise ValueError("pack_int4 expects at least one dimension; got a 0-d tensor")
    lo, hi = (-8, 7) if signed else (0, 15)
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"pack_int4(signed={signed}) expects codes in [{lo}, {hi}]; "
                         f"got [{int(codes.min())}, {int(codes.max())}]")
    if signed and codes.dtype != torch.int8:
        raise TypeError("pack_int4(signed=True) expects int8 codes")
    nib = codes.to(torch.int16) & 0xF  # (..., n) two's complement nibbles
    if nib.shape[-1] % 2:
        nib = torch.nn.functional.pad(nib, (0, 1))  # (..., n + 1)
    pairs = nib.reshape(*nib.shape[:-1], -1, 2)  # (..., ⌈n/2⌉, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)  # (..., ⌈n/2⌉)


def unpack_int4(packed: Tensor, n: int, signed: bool = True) -> Tensor:
    """Inverse of :func:`pack_int4`: (..., ⌈n/2⌉) uint8 → (..., n) int8 codes (sign-extended if
    ``signed``). ``n`` is the original last dim (it drops the padding nibble of an odd n).
    Introduced in Chapter 12.
    """
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, Tensor) else type(packed).__name__
        raise TypeError(f"unpack_int4 expects a uint8 tensor from pack_int4; got {got}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or (n + 1) // 2 != packed.shape[-1]:
        raise ValueError(f"n must be the unpacked last dim, with ⌈n/2⌉ = {packed.shape[-1]}; got {n!r}")
    nib = torch.stack((packed & 0xF, packed >> 4), dim=-1)  # (..., ⌈n/2⌉, 2) uint8 in [0, 15]
    nib = nib.reshape(*packed.shape[:-1], -1)[..., :n].view(torch.int8)  # (..., n)
    if signed:
        nib = (nib ^ 8) - 8  # (..., n) 4-bit two's complement: 8..15 → −8..−1, 0..7 unchanged
    return nib  # (..., n) int8


# ----------------------------------------------------------------------------- internals


def _quantize(w: Tensor, bits: int, scheme: str, granularity: str, group_size: int | None,
              full_range: bool) -> QuantizedTensor:
    """:func:`quantize` without the argument and finiteness checks (used on activations in forward)."""
    lead, n = tuple(w.shape[:-1]), w.shape[-1]
    g = _block_len(granularity, n, group_size, w.numel())
    blocks = w.detach().to(torch.float32).reshape(-1, g)  # (N_blocks, g)
    q_min, q_max = code_range(bits, scheme, full_range)
    if scheme == "symmetric":
        amax = torch.linalg.vector_norm(blocks, float("inf"), dim=1)  # (N_blocks,) max |w|, one pass
        denom = (q_max - q_min) / 2 if full_range else q_max  # 127.5 or 127 for int8
        scale = amax / denom  # (N_blocks,)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # (N_blocks,) zero block → s = 1
        codes = (blocks * (1.0 / scale)[:, None]).round_().clamp_(q_min, q_max)  # (N_blocks, g), in place
        codes, zero = codes.to(torch.int8), None
    else:
        lo = blocks.amin(dim=1).clamp(max=0.0)  # (N_blocks,) min(min w, 0)
        hi = blocks.amax(dim=1).clamp(min=0.0)  # (N_blocks,) max(max w, 0)
        scale = (hi - lo) / q_max  # (N_blocks,)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # (N_blocks,)
        zero = torch.clamp(torch.round(-lo / scale), q_min, q_max)  # (N_blocks,)
        codes = torch.clamp(torch.round(blocks * (1.0 / scale)[:, None]) + zero[:, None], q_min, q_max)  # (N_blocks, g)
        codes, zero = codes.to(torch.uint8), zero.to(torch.uint8)
    param_shape = _param_shape(granularity, lead, n, g, w.dim())
    return QuantizedTensor(
        codes=codes.reshape(w.shape),  # (*lead, n)
        scale=scale.reshape(param_shape),  # one per block
        zero_point=None if zero is None else zero.reshape(param_shape),
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        group_size=group_size if granularity == "group" else None,
        full_range=full_range and scheme == "symmetric",
    )


def _block_len(granularity: str, n: int, group_size: int | None, numel: int) -> int:
    if granularity == "tensor":
        return numel
    return n if granularity == "channel" else int(group_size)  # type: ignore[arg-type]


def _param_shape(granularity: str, lead: tuple[int, ...], n: int, g: int, ndim: int) -> tuple[int, ...]:
    if granularity == "tensor":
        return (1,) * ndim
    return (*lead, n // g)


def _blocks(x: Tensor, qt: QuantizedTensor) -> Tensor:
    """View (*lead, n) as (*lead, G, g): G blocks of g elements along the last dim."""
    if qt.granularity == "tensor":
        return x.reshape(*x.shape[:-1], 1, x.shape[-1])  # (*lead, 1, n): broadcasts against (1,...,1)
    g = x.shape[-1] if qt.granularity == "channel" else qt.group_size
    return x.reshape(*x.shape[:-1], -1, g)  # (*lead, G, g)


def _blocks_param(p: Tensor) -> Tensor:
    """A per-block parameter of shape (..., G) as (..., G, 1), to broadcast against :func:`_blocks`."""
    return p.unsqueeze(-1)  # (*lead, G, 1)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in {{{MIN_BITS}, ..., {MAX_BITS}}}; got {bits!r}")


def _check_args(w: Tensor, bits: int, scheme: str, granularity: str, group_size: int | None) -> None:
    if not isinstance(w, Tensor):
        raise TypeError(f"w must be a floating-point torch.Tensor; got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor (float32/16, bfloat16, float64); got {w.dtype}")
    if w.dim() == 0 or w.numel() == 0:
        raise ValueError(f"w must have at least one dimension and one element; got shape {tuple(w.shape)}")
    _check_bits(bits)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}; got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}; got {granularity!r}")
    if granularity == "group":
        n = w.shape[-1]
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
            raise ValueError(f"granularity='group' needs a positive int group_size; got {group_size!r}")
        if n % group_size:
            raise ValueError(f"group_size must divide the last dim: {n} is not a multiple of {group_size}")
    elif group_size is not None:
        raise ValueError(f"group_size is only used with granularity='group'; got group_size={group_size!r} "
                         f"with granularity={granularity!r}")
