"""Quantization from scratch (scratchlm.compress, Chapter 12).

From first principles: |w − ŵ| ≤ s/2, codes in range, min/max/zero behaviour, per-group = per-channel
when the group is the row, packed int4 round trips, exact byte counts, QuantizedLinear = F.linear with
the dequantized weight, DynamicInt8Linear = the float64 product of the dequantized operands.
Against libraries (with the same data):
* torchao ``Int8WeightOnlyConfig`` and ``Int8DynamicActivationInt8WeightConfig``: with
  ``full_range=True`` (their code range, s = max|w|/127.5, codes in [−128, 127]) our codes, scales
  and outputs are bitwise equal; with our default range (s = max|w|/127) the scales differ by the
  factor 127.5/127 exactly and codes by at most 1.
* ``torch.ao.quantization.quantize_dynamic`` (deprecated) equals, to float32 rounding, our emulation:
  per-tensor full-range int8 weights × per-tensor *asymmetric 7-bit* activations (fbgemm's
  reduce_range), which is why its error is about twice that of per-token int8.
* torchao int4: ``IntxWeightOnlyConfig(torch.int4, PerGroup)`` runs on CPU and is bitwise equal to
  our full-range int4 per-group result; ``Int4WeightOnlyConfig`` needs GPU kernels (skipped with
  the reason); the prototype CPU tinygemm int4 path (asymmetric, float zero point) is checked against
  the int4 error bound only.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from scratchlm.compress import (
    DynamicInt8Linear,
    QuantizeConfig,
    QuantizedLinear,
    bits_per_weight,
    code_range,
    dequantize,
    error_sweep,
    int8_matmul,
    output_error,
    pack_int4,
    quantize,
    quantize_model,
    size_bytes,
    unpack_int4,
    weight_error,
)
from scratchlm.compress.analysis import _per_element_scale

CONFIGS = [  # (scheme, granularity, group_size, full_range)
    ("symmetric", "tensor", None, False),
    ("symmetric", "channel", None, False),
    ("symmetric", "group", 16, False),
    ("symmetric", "channel", None, True),
    ("symmetric", "group", 8, True),
    ("asymmetric", "tensor", None, False),
    ("asymmetric", "channel", None, False),
    ("asymmetric", "group", 16, False),
]


def _weight(out=24, inp=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * torch.rand(out, 1, generator=g) * 0.2  # rows of different size
    w[3] += 0.3  # a skewed row: all positive-ish (asymmetric's case)
    return w


def _linear(inp=48, out=24, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(inp, out, bias=bias)


def _bound(x: torch.Tensor, qlin: QuantizedLinear) -> torch.Tensor:
    """Worst case |x Wᵀ − x Ŵᵀ|_j ≤ Σ_k |x_k| · s_jk / 2, shape (..., N)."""
    half_s = _per_element_scale(qlin.quantized_weight()) / 2  # (N, K)
    return x.abs() @ half_s.t()  # (..., N)


# ----------------------------------------------------------------------------- quantize / dequantize


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scheme,granularity,group_size,full_range", CONFIGS)
def test_error_at_most_half_a_step_and_codes_in_range(bits, scheme, granularity, group_size, full_range):
    w = _weight()
    qt = quantize(w, bits, scheme, granularity, group_size, full_range=full_range)
    lo, hi = code_range(bits, scheme, full_range)
    assert qt.codes.dtype == (torch.int8 if scheme == "symmetric" else torch.uint8)
    assert qt.codes.shape == w.shape
    assert int(qt.codes.min()) >= lo and int(qt.codes.max()) <= hi
    err = (w.double() - dequantize(qt, torch.float64)).abs()  # (N, K)
    half_s = _per_element_scale(qt).double() / 2  # (N, K)
    slack = 2**bits * torch.finfo(torch.float32).eps  # s is a float32: its rounding, times |q| ≤ 2^(b−1)
    assert bool((err <= half_s * (1 + slack)).all()), float((err / half_s).max())


def test_code_ranges():
    assert code_range(8) == (-127, 127)
    assert code_range(8, full_range=True) == (-128, 127)
    assert code_range(4) == (-7, 7)
    assert code_range(4, "asymmetric") == (0, 15)
    assert code_range(2, "asymmetric") == (0, 3)


def test_symmetric_scale_formula_and_max_is_exact():
    w = _weight()
    qt = quantize(w, 8, "symmetric", "channel")
    assert_close(qt.scale.flatten(), w.abs().amax(dim=1) / 127, rtol=0, atol=0)
    row_max_idx = w.abs().argmax(dim=1)  # (N,)
    codes_at_max = qt.codes.gather(1, row_max_idx[:, None]).flatten()
    assert bool((codes_at_max.abs() == 127).all())
    assert_close(dequantize(qt).gather(1, row_max_idx[:, None]), w.gather(1, row_max_idx[:, None]),
                 rtol=1e-6, atol=0)
    full = quantize(w, 8, "symmetric", "channel", full_range=True)
    assert_close(full.scale.flatten(), w.abs().amax(dim=1) / 127.5, rtol=0, atol=0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_asymmetric_uses_the_whole_range_and_keeps_zero_exact(bits):
    w = _weight()
    w[3] = w[3].abs() + 0.1  # an all-positive row: its range is extended to include 0
    w[:, 5] = 0.0  # exact zeros must stay exact zeros
    qt = quantize(w, bits, "asymmetric", "channel")
    qmax = 2**bits - 1
    lo = w.amin(dim=1).clamp(max=0)  # (N,)
    hi = w.amax(dim=1).clamp(min=0)  # (N,)
    assert_close(qt.scale.flatten(), (hi - lo) / qmax, rtol=1e-6, atol=0)
    assert torch.equal(qt.zero_point.flatten().long(), torch.round(-lo / qt.scale.flatten()).long())
    mixed = (w.amin(dim=1) < 0) & (w.amax(dim=1) > 0)  # rows whose min and max are the range ends
    codes = qt.codes.long()
    assert bool((codes.gather(1, w.argmin(dim=1, keepdim=True))[mixed] == 0).all())
    assert bool((codes.gather(1, w.argmax(dim=1, keepdim=True))[mixed] == qmax).all())
    assert bool((dequantize(qt)[:, 5] == 0).all())
    assert int(qt.zero_point.flatten()[3]) == 0  # non-negative row: min = 0 → z = 0
    assert int(codes[3].max()) == qmax
    positive = quantize(torch.tensor([[0.5, 1.0]]), bits, "asymmetric", "channel")  # min > 0: range is [0, 1]
    assert int(positive.zero_point) == 0 and positive.codes.tolist()[0][1] == qmax
    assert_close(positive.scale, torch.tensor([[1.0 / qmax]]), rtol=1e-7, atol=0)


def test_per_group_equals_per_channel_when_group_is_the_row():
    w = _weight()
    for scheme in ("symmetric", "asymmetric"):
        a = quantize(w, 4, scheme, "group", group_size=w.shape[1])
        b = quantize(w, 4, scheme, "channel")
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
        assert a.zero_point is None or torch.equal(a.zero_point, b.zero_point)
        assert torch.equal(dequantize(a), dequantize(b))


def test_group_scales_are_per_block():
    w = _weight()
    qt = quantize(w, 4, "symmetric", "group", 16)
    assert qt.scale.shape == (24, 3)
    blocks = w.reshape(24, 3, 16)
    assert_close(qt.scale, blocks.abs().amax(dim=-1) / 7, rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity,group_size", [("tensor", None), ("channel", None), ("group", 4)])
def test_all_zero_rows_and_groups(scheme, granularity, group_size):
    w = _weight(8, 16)
    w[2] = 0.0  # a zero row
    w[5, 4:8] = 0.0  # a zero group
    for t in (w, torch.zeros(4, 16)):
        qt = quantize(t, 4, scheme, granularity, group_size)
        assert bool(torch.isfinite(qt.scale).all()) and bool((qt.scale > 0).all())
        w_hat = dequantize(qt)
        assert bool((w_hat[t == 0] == 0).all())


def test_other_shapes_and_dtypes():
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)  # (B, T, C) activations: per token = per row
    qt = quantize(x, 8, "symmetric", "channel")
    assert qt.scale.shape == (2, 3, 1)
    assert (x.float() - dequantize(qt)).abs().max() <= qt.scale.max() / 2 + 1e-6
    v = torch.randn(10, dtype=torch.float64)
    assert quantize(v, 8, "symmetric", "tensor").scale.shape == (1,)


def test_bad_inputs_raise_clear_errors():
    w = _weight()
    for bits in (1, 9, 0, 4.0, True, "8"):
        with pytest.raises(ValueError, match="bits must be an int"):
            quantize(w, bits)
    with pytest.raises(ValueError, match="not a multiple of 20"):
        quantize(w, 4, granularity="group", group_size=20)
    with pytest.raises(ValueError, match="needs a positive int group_size"):
        quantize(w, 4, granularity="group")
    with pytest.raises(ValueError, match="only used with granularity='group'"):
        quantize(w, 4, granularity="channel", group_size=16)
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.ones(4, 4, dtype=torch.int32), 8)
    with pytest.raises(TypeError, match="floating-point torch.Tensor"):
        quantize([[1.0]], 8)
    with pytest.raises(ValueError, match="scheme must be one of"):
        quantize(w, 8, scheme="symetric")
    with pytest.raises(ValueError, match="granularity must be one of"):
        quantize(w, 8, granularity="row")
    with pytest.raises(ValueError, match="finite"):
        quantize(torch.tensor([[1.0, float("nan")]]), 8)
    with pytest.raises(ValueError, match="at least one dimension"):
        quantize(torch.tensor(1.0), 8)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        dequantize(w)


# ----------------------------------------------------------------------------- packed int4


@pytest.mark.parametrize("shape", [(3, 8), (3, 7), (1, 1), (2, 3, 5), (4,)])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_int4_round_trip(shape, signed):
    g = torch.Generator().manual_seed(1)
    lo, hi = (-8, 7) if signed else (0, 15)
    codes = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)
    packed = pack_int4(codes, signed=signed)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], (shape[-1] + 1) // 2)
    assert torch.equal(unpack_int4(packed, shape[-1], signed=signed), codes)


def test_pack_int4_byte_layout():
    assert pack_int4(torch.tensor([1, 2], dtype=torch.int8)).tolist() == [0x21]  # low nibble first
    assert pack_int4(torch.tensor([-1], dtype=torch.int8)).tolist() == [0x0F]  # odd: padded with 0
    assert pack_int4(torch.tensor([-8, 7], dtype=torch.int8)).tolist() == [0x78]
    assert pack_int4(torch.tensor([15, 0], dtype=torch.uint8), signed=False).tolist() == [0x0F]


def test_pack_int4_bad_inputs():
    with pytest.raises(ValueError, match=r"codes in \[-8, 7\]"):
        pack_int4(torch.tensor([8], dtype=torch.int8))
    with pytest.raises(ValueError, match=r"codes in \[0, 15\]"):
        pack_int4(torch.tensor([16], dtype=torch.uint8), signed=False)
    with pytest.raises(TypeError, match="int8 or uint8"):
        pack_int4(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="unpacked last dim"):
        unpack_int4(torch.zeros(2, 3, dtype=torch.uint8), 8)
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(torch.zeros(2, 3, dtype=torch.int8), 6)


# ----------------------------------------------------------------------------- QuantizedLinear


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("scheme,granularity,group_size,full_range", CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_quantized_linear_equals_f_linear_with_dequantized_weight(bits, scheme, granularity, group_size,
                                                                  full_range, bias):
    lin = _linear(bias=bias)
    q = QuantizedLinear.from_linear(lin, bits, scheme, granularity, group_size, full_range=full_range)
    assert q.packed == (bits <= 4)
    x = torch.randn(2, 5, 48)  # (B, T, K)
    with torch.no_grad():
        ref = F.linear(x, q.dequantized_weight(), lin.bias)  # (B, T, N)
        assert_close(q(x), ref, rtol=1e-6, atol=1e-6)
        assert bool(((q(x) - lin(x)).abs() <= _bound(x, q) * (1 + 1e-4) + 1e-6).all())
    expected = quantize(lin.weight.detach(), bits, scheme, granularity, group_size, full_range=full_range)
    assert torch.equal(q.dequantized_weight(), dequantize(expected))


def test_quantized_linear_state_dict_round_trip_and_repr():
    lin = _linear(inp=47)  # odd in_features: a padded nibble per row
    q = QuantizedLinear.from_linear(lin, 4, "asymmetric", "channel")
    other = QuantizedLinear.from_linear(_linear(inp=47, seed=1), 4, "asymmetric", "channel")
    other.load_state_dict(q.state_dict())
    x = torch.randn(3, 47)
    assert torch.equal(other(x), q(x))
    r = repr(q)
    assert "bits=4" in r and "packed int4" in r and "asymmetric" in r


def test_size_bytes_is_exact():
    lin = _linear(inp=48, out=24)
    assert size_bytes(lin) == 4 * (24 * 48 + 24)
    assert size_bytes(QuantizedLinear.from_linear(lin, 8)) == 24 * 48 + 4 * 24 + 4 * 24  # codes, scales, bias
    assert size_bytes(QuantizedLinear.from_linear(lin, 8, granularity="tensor")) == 24 * 48 + 4 + 4 * 24
    int4 = QuantizedLinear.from_linear(lin, 4, "symmetric", "group", 16)
    assert size_bytes(int4) == 24 * 48 // 2 + 4 * 24 * 3 + 4 * 24  # 0.5 byte/weight, 3 groups/row
    asym = QuantizedLinear.from_linear(lin, 4, "asymmetric", "group", 16)
    assert size_bytes(asym) == size_bytes(int4) + 24 * 3  # + one uint8 zero point per group
    odd = QuantizedLinear.from_linear(_linear(inp=7, out=5, bias=False), 4, "symmetric", "channel")
    assert size_bytes(odd) == 5 * 4 + 4 * 5  # ⌈7/2⌉ = 4 bytes per row
    assert size_bytes(DynamicInt8Linear.from_linear(lin)) == 24 * 48 + 4 * 24 + 4 * 24
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    assert size_bytes(tied) == 4 * 16  # a shared tensor counts once
    with pytest.raises(TypeError, match="nn.Module"):
        size_bytes(torch.zeros(3))


def test_bits_per_weight():
    assert bits_per_weight(4, "symmetric", "group", 128) == 4 + 32 / 128
    assert bits_per_weight(4, "asymmetric", "group", 64) == 4 + 40 / 64
    assert bits_per_weight(8, "symmetric", "channel", in_features=768) == 8 + 32 / 768
    assert bits_per_weight(3, "symmetric", "tensor") == 4.0


# ----------------------------------------------------------------------------- DynamicInt8Linear


@pytest.mark.parametrize("shape", [(1, 64, 32), (5, 17, 3), (33, 96, 40)])
def test_int8_matmul_is_exact_on_every_path(shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    ref = (a.double() @ b.double()).to(torch.int32)  # exact: |sums| < 2^53
    assert torch.equal(int8_matmul(a, b, "int32"), ref)
    assert torch.equal(int8_matmul(a, b, "auto"), ref)
    try:
        got = int8_matmul(a, b, "int_mm")
    except RuntimeError as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch._int_mm does not run here: {e}")
    assert torch.equal(got, ref)
    with pytest.raises(TypeError, match="two int8"):
        int8_matmul(a.float(), b)
    with pytest.raises(ValueError, match=r"\(M, K\) @ \(K, N\)"):
        int8_matmul(a, a)


@pytest.mark.parametrize("act_granularity", ["token", "tensor"])
@pytest.mark.parametrize("full_range", [False, True])
def test_dynamic_int8_equals_product_of_dequantized_operands(act_granularity, full_range):
    lin = _linear(inp=64, out=40)
    d = DynamicInt8Linear.from_linear(lin, act_granularity=act_granularity, full_range=full_range)
    x = torch.randn(3, 7, 64)
    x[0, 2] *= 20  # an outlier token
    qx = d.quantize_input(x)
    assert qx.scale.shape == ((21, 1) if act_granularity == "token" else (1, 1))
    ref = F.linear(dequantize(qx, torch.float64), d.dequantized_weight(torch.float64), lin.bias.double())  # (21, N)
    with torch.no_grad():
        y = d(x)
    assert y.shape == (3, 7, 40)
    assert_close(y.reshape(21, 40).double(), ref, rtol=1e-5, atol=1e-5)
    for impl in ("int32", "int_mm"):
        d.impl = impl
        with torch.no_grad():
            assert torch.equal(d(x), y)


def test_dynamic_int8_per_token_beats_per_tensor_with_an_outlier_token():
    lin = _linear(inp=64, out=40)
    x = torch.randn(16, 64)
    x[3] *= 50  # one token 50× larger coarsens every token's step under a per-tensor scale
    with torch.no_grad():
        y = lin(x)
        err_token = (DynamicInt8Linear.from_linear(lin, act_granularity="token")(x) - y).norm()
        err_tensor = (DynamicInt8Linear.from_linear(lin, act_granularity="tensor")(x) - y).norm()
    assert err_token < err_tensor


def test_dynamic_int8_bad_inputs():
    lin = _linear()
    d = DynamicInt8Linear.from_linear(lin)
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 48\)"):
        d(torch.randn(2, 47))
    with pytest.raises(ValueError, match="act_granularity"):
        DynamicInt8Linear.from_linear(lin, act_granularity="group")
    with pytest.raises(TypeError, match="nn.Linear"):
        DynamicInt8Linear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="2-d int8"):
        DynamicInt8Linear(torch.zeros(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match="3 per-channel scales"):
        DynamicInt8Linear(torch.zeros(3, 4, dtype=torch.int8), torch.ones(4))
    assert "per-token" in repr(d)


# ----------------------------------------------------------------------------- quantize_model


class _TinyLM(nn.Module):
    """Embedding → MLP → tied lm_head: every Linear is called as a module."""

    def __init__(self, vocab=20, d=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.proj = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, ids):
        h = self.wte(ids)  # (B, T, d)
        h = h + self.mlp(h)  # (B, T, d)
        return self.lm_head(self.proj(h))  # (B, T, V)


@pytest.mark.parametrize("config", [QuantizeConfig(), QuantizeConfig(bits=4, granularity="group", group_size=16),
                                    QuantizeConfig(method="dynamic_int8")])
def test_quantize_model_replaces_linears_and_reports_bytes(config):
    torch.manual_seed(0)
    model = _TinyLM()
    ids = torch.randint(0, 20, (2, 6))
    with torch.no_grad():
        ref = model(ids)
    before = size_bytes(model)
    report = quantize_model(model, config)
    assert report.replaced == ["mlp.0", "mlp.2", "proj"]
    assert report.skipped == {"lm_head": "weight tied to another parameter"}
    assert report.bytes_before == before == 4 * (20 * 32 + 32 * 128 + 128 + 128 * 32 + 32 + 32 * 32 + 32)
    expected_linear = sum(size_bytes(config.build(lin)) for lin in
                          (nn.Linear(32, 128), nn.Linear(128, 32), nn.Linear(32, 32)))
    assert report.bytes_after == 4 * 20 * 32 + expected_linear
    assert report.compression > 1 and "replaced 3" in str(report)
    with torch.no_grad():
        out = model(ids)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_quantize_model_filter_and_tied():
    model = _TinyLM()
    report = quantize_model(model, filter_fn=lambda name, _: name != "proj", skip_tied=False)
    assert report.replaced == ["mlp.0", "mlp.2", "lm_head"]
    assert report.skipped == {"proj": "filter_fn returned False"}
    assert isinstance(model.lm_head, QuantizedLinear) and isinstance(model.proj, nn.Linear)
    with pytest.raises(TypeError, match="QuantizeConfig"):
        quantize_model(_TinyLM(), {"bits": 8})
    with pytest.raises(TypeError, match="itself an nn.Linear"):
        quantize_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        QuantizeConfig(method="static")
    with pytest.raises(ValueError, match="dynamic_int8"):
        QuantizeConfig(method="dynamic_int8", bits=4)
    with pytest.raises(ValueError, match="group_size"):
        QuantizeConfig(granularity="group")


# ----------------------------------------------------------------------------- error analysis


def test_weight_error_sqnr_gains_about_6_db_per_bit():
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    e8, e4 = weight_error(w, 8), weight_error(w, 4)
    assert e8["max_abs_over_half_scale"] <= 1 + 1e-5 and e4["max_abs_over_half_scale"] <= 1 + 1e-5
    # noise power ∝ s² and s ∝ 1/(2^(b−1) − 1): 8 → 4 bits costs 20·log10(127/7) = 25.2 dB (≈ 6 dB per bit)
    assert e8["sqnr_db"] - e4["sqnr_db"] == pytest.approx(20 * math.log10(127 / 7), abs=0.5)
    assert e8["rel_fro"] < e4["rel_fro"]


def test_error_sweep_smaller_groups_and_more_bits_help():
    lin = _linear(inp=256, out=64)
    x = torch.randn(32, 256)
    rows = error_sweep(lin, x, bits=(8, 4), group_sizes=(None, 128, 32, 48))  # 48 does not divide 256
    assert [(r["bits"], r["group_size"]) for r in rows] == [(8, 0), (8, 128), (8, 32), (4, 0), (4, 128), (4, 32)]
    four = [r["weight_rel_fro"] for r in rows if r["bits"] == 4]
    assert four[0] > four[1] > four[2]
    assert rows[0]["output_rel_fro"] < rows[3]["output_rel_fro"]
    oe = output_error(lin, x, 4)
    assert oe["rel_fro"] == pytest.approx(rows[3]["output_rel_fro"])


# ----------------------------------------------------------------------------- against torchao / torch.ao


def _torchao():
    return pytest.importorskip("torchao.quantization", reason="torchao is not installed")


def _copy(lin: nn.Linear) -> nn.Sequential:
    m = nn.Sequential(nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None))
    m[0].load_state_dict(lin.state_dict())
    return m


@pytest.mark.parametrize("shape", [(64, 32), (256, 96)])
def test_int8_weight_only_matches_torchao(shape):
    tao = _torchao()
    lin = _linear(*shape)
    ref = _copy(lin)
    tao.quantize_(ref, tao.Int8WeightOnlyConfig(set_inductor_config=False))
    w = ref[0].weight
    x = torch.randn(4, 3, shape[0])
    # their convention (full range): scales, codes and outputs bitwise equal
    ours = QuantizedLinear.from_linear(lin, 8, full_range=True)
    qt = ours.quantized_weight()
    assert torch.equal(qt.scale, w.scale) and torch.equal(qt.codes, w.qdata)
    with torch.no_grad():
        assert torch.equal(ours(x), ref[0](x))
    # our default (s = max|w|/127): the scales differ by exactly 127.5/127, codes by at most 1
    default = QuantizedLinear.from_linear(lin, 8)
    assert_close(default.scale, w.scale * (127.5 / 127), rtol=1e-6, atol=0)
    assert int((default.quantized_weight().codes.int() - w.qdata.int()).abs().max()) <= 1
    with torch.no_grad():
        y, y_ours, y_ao = lin(x), default(x), ref[0](x)
    assert bool(((y_ours - y).abs() <= _bound(x, default) * (1 + 1e-4) + 1e-6).all())
    assert bool(((y_ao - y).abs() <= _bound(x, ours) * (1 + 1e-4) + 1e-6).all())


@pytest.mark.parametrize("act_granularity", ["token", "tensor"])
def test_dynamic_int8_matches_torchao(act_granularity):
    tao = _torchao()
    from torchao.quantization.granularity import PerRow, PerTensor

    lin = _linear(96, 40)
    ref = _copy(lin)
    act = PerRow() if act_granularity == "token" else PerTensor()
    tao.quantize_(ref, tao.Int8DynamicActivationInt8WeightConfig(granularity=[act, PerRow()],
                                                                  set_inductor_config=False))
    ours = DynamicInt8Linear.from_linear(lin, act_granularity=act_granularity, full_range=True)
    assert torch.equal(ours.qweight_t.t(), ref[0].weight.qdata)
    x = torch.randn(2, 9, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), ref[0](x))  # same codes, exact int32 sums, same rescale order


def test_quantize_dynamic_equals_its_first_principles_emulation():
    """torch.ao.quantization.quantize_dynamic (deprecated in favour of torchao) = per-tensor full-range
    int8 weights × per-tensor asymmetric uint8 activations, 7-bit on x86/fbgemm (reduce_range)."""
    lin = _linear(96, 40)
    x = torch.randn(2, 9, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warnings
        qd = torch.ao.quantization.quantize_dynamic(_copy(lin), {nn.Linear}, dtype=torch.qint8)
        qw = qd[0].weight()
        with torch.no_grad():
            y_qd = qd(x).reshape(18, 40)  # (M, N)
    act_bits = 7 if torch.backends.quantized.engine in ("x86", "fbgemm") else 8
    w_q = quantize(lin.weight.detach(), 8, "symmetric", "tensor", full_range=True)
    x_q = quantize(x.reshape(18, 96), act_bits, "asymmetric", "tensor")
    assert torch.equal(qw.int_repr(), w_q.codes)
    assert qw.q_scale() == pytest.approx(float(w_q.scale), rel=1e-7)
    emulated = F.linear(dequantize(x_q, torch.float64), dequantize(w_q, torch.float64), lin.bias.double())
    assert_close(y_qd.double(), emulated, rtol=1e-5, atol=1e-5)
    # per-token int8 (ours) is the more accurate of the two on the same data
    with torch.no_grad():
        y = lin(x).reshape(18, 40)
        ours = DynamicInt8Linear.from_linear(lin)(x).reshape(18, 40)
    assert (ours - y).norm() < (y_qd - y).norm()


def test_int4_per_group_matches_torchao_intx_weight_only():
    tao = _torchao()
    from torchao.quantization.granularity import PerGroup

    lin = _linear(256, 64)
    ref = _copy(lin)
    tao.quantize_(ref, tao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    w = ref[0].weight
    ours = QuantizedLinear.from_linear(lin, 4, "symmetric", "group", 32, full_range=True)
    qt = ours.quantized_weight()
    assert torch.equal(qt.codes, w.qdata) and torch.equal(qt.scale, w.scale)
    x = torch.randn(5, 256)
    with torch.no_grad():
        assert torch.equal(ours(x), ref[0](x))
    assert size_bytes(ours) < size_bytes(ref)  # ours packs two codes per byte; theirs keeps int8


def test_int4_weight_only_config_cpu_path():
    """Int4WeightOnlyConfig's packing formats, tried on CPU; skipped (with every reason) if none runs."""
    tao = _torchao()
    lin = _linear(256, 64)
    x = torch.randn(3, 256)
    reasons = []
    for fmt, dtype in (("plain", torch.float32), ("tile_packed_to_4d", torch.bfloat16), ("plain_int32", torch.float32)):
        ref = _copy(lin).to(dtype)
        try:
            tao.quantize_(ref, tao.Int4WeightOnlyConfig(group_size=32, int4_packing_format=fmt,
                                                        set_inductor_config=False))
            with torch.no_grad():
                y_ao = ref[0](x.to(dtype)).float()
        except (ImportError, NotImplementedError, AssertionError, RuntimeError, ValueError) as e:
            reasons.append(f"{fmt!r}: {type(e).__name__}: {e}")
            continue
        ours = QuantizedLinear.from_linear(lin, 4, "asymmetric", "group", 32)  # pragma: no cover
        bound = _bound(x, ours) * 1.1 + 0.02  # pragma: no cover - bf16 activations add their own error
        assert bool(((y_ao - lin(x)).abs() <= bound).all())  # pragma: no cover
        return  # pragma: no cover
    pytest.skip("torchao Int4WeightOnlyConfig has no CPU path here (GPU kernels only); " + "; ".join(reasons))


def test_int4_prototype_cpu_kernel_respects_the_int4_bound():
    """torchao's prototype CPU int4 (tinygemm: asymmetric, float zero point, no 0 in the range) is a
    different rounding scheme; both it and ours stay within Σ_k |x_k| s_k / 2 of the float output."""
    _torchao()
    try:
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import quantize_
    except ImportError as e:
        pytest.skip(f"torchao prototype int4 is not available: {e}")
    lin = _linear(256, 64)
    ref = _copy(lin)
    try:
        quantize_(ref, PrototypeInt4WeightOnlyConfig(group_size=32, set_inductor_config=False))
    except (RuntimeError, NotImplementedError, AssertionError) as e:
        pytest.skip(f"torchao prototype int4 does not run here: {e}")
    ours = QuantizedLinear.from_linear(lin, 4, "asymmetric", "group", 32)
    x = torch.randn(5, 256)
    with torch.no_grad():
        y, y_ours, y_ao = lin(x), ours(x), ref[0](x)
    bound = _bound(x, ours)  # our s ≥ tinygemm's s: ours spans min(w, 0)..max(w, 0)
    assert bool(((y_ours - y).abs() <= bound * (1 + 1e-4) + 1e-6).all())
    assert bool(((y_ao - y).abs() <= bound * (1 + 1e-3) + 1e-5).all())
