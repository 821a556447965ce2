"""Quantized drop-in replacements for ``nn.Linear`` (Chapter 12).

* :class:`QuantizedLinear` — weight-only: int8 or packed int4 weights + scales, activations stay
  float. Saves memory (and memory bandwidth, which is what bounds batch-1 decoding); the matmul
  itself is still a float matmul.
* :class:`DynamicInt8Linear` — int8 weights *and* int8 activations, quantized on the fly for every
  call (per token or per tensor), an integer matmul with int32 accumulation, then one rescale:
  y = s_x · s_w · (q_x q_wᵀ) + b. This is what makes compute cheaper, not only storage.

Both are called like the ``nn.Linear`` they replace: (..., in_features) → (..., out_features).
Introduced in Chapter 12.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantize import QuantizedTensor, _quantize, dequantize, pack_int4, quantize, unpack_int4

_INT_MM_OK: dict[str, bool] = {}  # device type → does torch._int_mm run there (probed once)
INT32_SAFE_K = (2**31 - 1) // (128 * 128)  # longest dot product of int8 codes that cannot overflow int32


def _int_mm_usable(a: Tensor, b: Tensor) -> bool:
    """Whether ``torch._int_mm`` can take these operands: probed once per device type; on CUDA it also
    needs M > 16 and K, N multiples of 8 (its documented constraints)."""
    if a.device.type == "cuda" and not (a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0):
        return False
    if a.device.type not in _INT_MM_OK:
        try:
            probe = torch.zeros(17, 8, dtype=torch.int8, device=a.device)  # (17, 8): valid shapes everywhere
            torch._int_mm(probe, probe[:8])  # (17, 8) @ (8, 8)
            _INT_MM_OK[a.device.type] = True
        except (RuntimeError, NotImplementedError):
            _INT_MM_OK[a.device.type] = False
    return _INT_MM_OK[a.device.type]


def int8_matmul(a: Tensor, b: Tensor, impl: str = "auto") -> Tensor:
    """Exact integer product of int8 matrices: (M, K) @ (K, N) → (M, N) int32.

    Each term is at most 128·128 = 2^14 in magnitude, so the int32 accumulator cannot overflow
    while K ≤ (2^31 − 1)/2^14 ≈ 131,000. ``impl="int_mm"`` uses ``torch._int_mm`` (an int8 GEMM with
    int32 accumulation: VNNI/AMX instructions on recent x86 CPUs, tensor cores on GPUs);
    ``"int32"`` is the readable fallback (widen to int32 and multiply on CPU; on GPUs, which have no
    int32 matmul, multiply in float64, exact because every partial sum is an integer below 2^53);
    ``"auto"`` uses ``torch._int_mm`` where it runs and the fallback elsewhere.
    All paths give the same integers. Introduced in Chapter 12.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.dtype != torch.int8 or b.dtype != torch.int8:
        got = tuple(getattr(t, "dtype", type(t).__name__) for t in (a, b))
        raise TypeError(f"int8_matmul expects two int8 tensors; got {got}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_matmul expects (M, K) @ (K, N); got {tuple(a.shape)} @ {tuple(b.shape)}")
    if a.shape[1] > INT32_SAFE_K:
        raise ValueError(f"K = {a.shape[1]} could overflow the int32 accumulator (limit {INT32_SAFE_K})")
    if impl not in ("auto", "int_mm", "int32"):
        raise ValueError(f"impl must be 'auto', 'int_mm' or 'int32'; got {impl!r}")
    if impl == "int_mm" or (impl == "auto" and _int_mm_usable(a, b)):
        return torch._int_mm(a, b)  # (M, N) int32
    if a.device.type == "cpu":
        return a.to(torch.int32) @ b.to(torch.int32)  # (M, N) int32, exact
    return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)  # (M, N) exact: integers < 2^53


def _check_linear(linear: nn.Module) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected an nn.Linear; got {type(linear).__name__}")
    if not linear.weight.is_floating_point():
        raise TypeError(f"expected a floating-point nn.Linear weight; got {linear.weight.dtype}")


def _bias_buffer(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.detach().to(torch.float32).clone()  # (N,)


class QuantizedLinear(nn.Module):
    """Weight-only quantized linear layer: y = x Ŵᵀ + b with Ŵ = s · (Q − z).

    Storage: int8 codes (1 byte per weight) for b > 4 bits, packed int4 (two codes per byte:
    0.5 byte per weight) for b ≤ 4, float32 scales, uint8 zero points (asymmetric only) and a
    float32 bias. Forward: for symmetric per-channel or per-tensor weights the scale factors out of
    the sum exactly, y_j = s_j · Σ_k x_k Q_jk + b_j, so the layer does one float matmul with the codes
    and scales the output (no dequantized weight is built); otherwise it dequantizes Ŵ on the fly and
    calls ``F.linear``. Either way the result equals ``F.linear(x, Ŵ, b)`` up to float rounding.
    Introduced in Chapter 12.
    """

    def __init__(self, qt: QuantizedTensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(qt, QuantizedTensor):
            raise TypeError(f"QuantizedLinear expects a QuantizedTensor; got {type(qt).__name__}")
        if qt.codes.dim() != 2:
            raise ValueError(f"QuantizedLinear expects a 2-d (out, in) weight; got shape {tuple(qt.shape)}")
        self.out_features, self.in_features = qt.shape
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},); got {tuple(bias.shape)}")
        self.bits, self.scheme, self.granularity = qt.bits, qt.scheme, qt.granularity
        self.group_size, self.full_range = qt.group_size, qt.full_range
        self.packed = qt.bits <= 4
        signed = qt.scheme == "symmetric"
        codes = pack_int4(qt.codes, signed=signed) if self.packed else qt.codes  # (N, ⌈K/2⌉) or (N, K)
        self.register_buffer("qweight", codes.clone())
        self.register_buffer("scale", qt.scale.to(torch.float32).clone())
        self.register_buffer("zero_point", None if qt.zero_point is None else qt.zero_point.clone())
        self.register_buffer("bias", _bias_buffer(bias))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, scheme: str = "symmetric",
                    granularity: str = "channel", group_size: int | None = None, *,
                    full_range: bool = False) -> QuantizedLinear:
        """Quantize ``linear.weight`` with :func:`~scratchlm.compress.quantize` and keep its bias."""
        _check_linear(linear)
        qt = quantize(linear.weight.detach(), bits, scheme, granularity, group_size, full_range=full_range)
        return cls(qt, linear.bias)

    def quantized_weight(self) -> QuantizedTensor:
        """The stored weight as a :class:`QuantizedTensor` (codes unpacked)."""
        signed = self.scheme == "symmetric"
        codes = unpack_int4(self.qweight, self.in_features, signed) if self.packed else self.qweight  # (N, K)
        if self.packed and not signed:
            codes = codes.to(torch.uint8)  # (N, K)
        return QuantizedTensor(codes, self.scale, self.zero_point, self.bits, self.scheme,
                               self.granularity, self.group_size, self.full_range)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Ŵ = s · (Q − z), shape (out_features, in_features)."""
        return dequantize(self.quantized_weight(), dtype)  # (N, K)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)  # (N,)
        if self.scheme == "symmetric" and self.granularity != "group":
            qt = self.quantized_weight()
            y = F.linear(x, qt.codes.to(x.dtype))  # (..., N) Σ_k x_k Q_jk
            y = y * self.scale.reshape(-1).to(x.dtype)  # (..., N) · s_j (one s broadcasts for "tensor")
            return y if bias is None else y + bias  # (..., N)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)  # (..., N)

    def extra_repr(self) -> str:
        storage = "packed int4" if self.packed else "int8"
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"scheme={self.scheme!r}, granularity={self.granularity!r}{group}, storage={storage!r}, "
                f"bias={self.bias is not None}")


class DynamicInt8Linear(nn.Module):
    """Dynamic int8 linear layer: int8 weights, activations quantized to int8 at run time.

    Weights: symmetric per-output-channel int8, Q_w with scales s_w (N,), fixed. Activations: for
    every call, symmetric int8 with one scale per token (``act_granularity="token"``: each row of the
    flattened (M, K) input) or one for the whole input (``"tensor"``), Q_x with scales s_x. Then
    y_mj = s_x,m · s_w,j · Σ_k Q_x,mk Q_w,jk + b_j: the sum is an exact int8 × int8 → int32 matmul
    (:func:`int8_matmul`), and the two scales are applied to the int32 result. Per-token scales
    follow outlier tokens; a per-tensor scale lets one large activation coarsen every token.
    ``full_range=True`` uses the torchao / ``torch.ao`` code range for weights and activations
    (s = max|·|/127.5, codes in [−128, 127]); per-token activations then give torchao's
    ``Int8DynamicActivationInt8WeightConfig`` bit for bit. PyTorch's older
    ``torch.ao.quantization.quantize_dynamic`` (deprecated, to be removed in favour of torchao) does
    the same job with per-tensor weights and per-tensor asymmetric activations, 7-bit on x86
    (fbgemm's ``reduce_range``). Introduced in Chapter 12.
    """

    def __init__(self, weight_codes: Tensor, weight_scale: Tensor, bias: Tensor | None = None, *,
                 act_granularity: str = "token", full_range: bool = False, impl: str = "auto") -> None:
        super().__init__()
        if not isinstance(weight_codes, Tensor) or weight_codes.dtype != torch.int8 or weight_codes.dim() != 2:
            got = getattr(weight_codes, "dtype", type(weight_codes).__name__)
            raise TypeError(f"weight_codes must be a 2-d int8 (out, in) tensor; got {got}")
        self.out_features, self.in_features = weight_codes.shape
        if tuple(weight_scale.reshape(-1).shape) != (self.out_features,):
            raise ValueError(f"weight_scale must hold {self.out_features} per-channel scales; "
                             f"got shape {tuple(weight_scale.shape)}")
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},); got {tuple(bias.shape)}")
        if act_granularity not in ("token", "tensor"):
            raise ValueError(f"act_granularity must be 'token' or 'tensor'; got {act_granularity!r}")
        if impl not in ("auto", "int_mm", "int32"):
            raise ValueError(f"impl must be 'auto', 'int_mm' or 'int32'; got {impl!r}")
        self.act_granularity, self.full_range, self.impl = act_granularity, full_range, impl
        self.register_buffer("qweight_t", weight_codes.t().contiguous().clone())  # (K, N): GEMM-ready
        self.register_buffer("scale", weight_scale.reshape(-1).to(torch.float32).clone())  # (N,)
        self.register_buffer("bias", _bias_buffer(bias))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, act_granularity: str = "token", full_range: bool = False,
                    impl: str = "auto") -> DynamicInt8Linear:
        """Quantize ``linear.weight`` per output channel (symmetric int8) and keep its bias."""
        _check_linear(linear)
        qt = quantize(linear.weight.detach(), 8, "symmetric", "channel", full_range=full_range)
        return cls(qt.codes, qt.scale, linear.bias, act_granularity=act_granularity,
                   full_range=full_range, impl=impl)

    def quantize_input(self, x: Tensor) -> QuantizedTensor:
        """The activation codes and scales this layer uses for ``x`` (flattened to (M, K))."""
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        granularity = "channel" if self.act_granularity == "token" else "tensor"
        return _quantize(x2, 8, "symmetric", granularity, None, self.full_range)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Ŵ = s_w · Q_w, shape (out_features, in_features)."""
        return (self.qweight_t.t().to(torch.float32) * self.scale[:, None]).to(dtype)  # (N, K)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (..., {self.in_features}); got {tuple(x.shape)}")
        qx = self.quantize_input(x)  # codes (M, K) int8, scale (M, 1) or (1, 1)
        acc = int8_matmul(qx.codes, self.qweight_t, self.impl)  # (M, N) int32, exact
        y = acc.to(torch.float32).mul_(qx.scale)  # (M, N) · s_x (in place: one (M, N) buffer in all)
        y = y.mul_(self.scale)  # (M, N) · s_w
        if self.bias is not None:
            y = y.add_(self.bias)  # (M, N)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., N)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weights=int8 per-channel, "
                f"activations=int8 per-{self.act_granularity}, full_range={self.full_range}, "
                f"bias={self.bias is not None}")
