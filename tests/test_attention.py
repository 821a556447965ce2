"""Tests for scratchlm.layers.attention (Chapter 03), each against an independent reference:
F.scaled_dot_product_attention, nn.MultiheadAttention with copied weights, brute-force loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.layers import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def _qkv(B=2, H=3, Tq=5, Tk=5, d=8, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, d, generator=g)
    k = torch.randn(B, H, Tk, d, generator=g)
    v = torch.randn(B, H, Tk, dv or d, generator=g)
    return q, k, v


def _brute_force(q, k, v, allowed):
    """Loop over every (batch, head, query): softmax over allowed keys only; no allowed key -> zeros."""
    B, H, Tq, d = q.shape
    out = torch.zeros(B, H, Tq, v.shape[-1], dtype=torch.float64)
    allowed = allowed.expand(B, H, Tq, k.shape[2])
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                keys = allowed[b, h, i].nonzero().flatten()
                if len(keys) == 0:
                    continue
                s = (k[b, h, keys].double() @ q[b, h, i].double()) / d**0.5
                out[b, h, i] = torch.softmax(s, 0) @ v[b, h, keys].double()
    return out.float()


# ---------------------------------------------------------------- masks
def test_causal_mask_square_is_tril_and_rectangular_is_bottom_right():
    torch.testing.assert_close(causal_mask(6), torch.ones(6, 6).tril().bool())
    m = causal_mask(2, 5)  # the last 2 of 5 positions
    brute = torch.tensor([[j <= i + 3 for j in range(5)] for i in range(2)])
    assert torch.equal(m, brute)


def test_padding_mask_shape_and_values():
    keep = torch.tensor([[1, 1, 0], [1, 0, 0]])
    m = padding_mask(keep)
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False], [True, False, False]]


# ---------------------------------------------------------------- reference vs SDPA
def _mask_cases():
    g = torch.Generator().manual_seed(1)
    B, H, Tq, Tk = 2, 3, 5, 7
    bool_mask = torch.rand(B, 1, Tq, Tk, generator=g) > 0.4
    bool_mask[..., 0] = True  # every row keeps a key: comparable with F.sdpa as is
    bias = torch.randn(1, H, Tq, Tk, generator=g)
    pad = padding_mask(torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]]))
    return {
        "none": (None, False, 5, 5),
        "cross-none": (None, False, 5, 7),
        "bool": (bool_mask, False, 5, 7),
        "float-bias": (bias, False, 5, 7),
        "causal": (None, True, 5, 5),
        "padding": (pad, False, 5, 7),
        "bool2d-causal": (torch.ones(5, 5, dtype=torch.bool).triu(), True, 5, 5),
        "bias-causal": (torch.randn(5, 5, generator=g), True, 5, 5),
    }


@pytest.mark.parametrize("case", list(_mask_cases()))
def test_reference_and_sdpa_paths_agree_with_torch_sdpa(case):
    mask, is_causal, Tq, Tk = _mask_cases()[case]
    q, k, v = _qkv(Tq=Tq, Tk=Tk, dv=6)
    ref = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, impl="reference")
    fast = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, impl="sdpa")
    if mask is not None and is_causal:  # torch's SDPA rejects mask + is_causal; build the mask by hand
        causal = causal_mask(Tq, Tk)
        torch_mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))
        if case == "bool2d-causal":  # only the diagonal survives triu & tril
            torch_mask = torch.eye(5, dtype=torch.bool)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=torch_mask)
    else:
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    torch.testing.assert_close(ref, expected, **TOL)
    torch.testing.assert_close(fast, expected, **TOL)


def test_rectangular_causal_matches_brute_force():
    q, k, v = _qkv(Tq=3, Tk=6)
    allowed = torch.tensor([[j <= i + 3 for j in range(6)] for i in range(3)])
    expected = _brute_force(q, k, v, allowed)
    for impl in ("reference", "sdpa"):
        out = scaled_dot_product_attention(q, k, v, is_causal=True, impl=impl)
        torch.testing.assert_close(out, expected, **TOL)


def test_return_weights_rows_sum_to_one_and_match_softmax():
    q, k, v = _qkv(Tq=4, Tk=6)
    out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    expected_w = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
    torch.testing.assert_close(w, expected_w, **TOL)
    torch.testing.assert_close(out, expected_w @ v, **TOL)


def test_gradients_agree_between_paths():
    q, k, v = _qkv(Tq=4, Tk=4)
    grads = []
    for impl in ("reference", "sdpa"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        scaled_dot_product_attention(qq, kk, vv, is_causal=True, impl=impl).pow(2).sum().backward()
        grads.append([qq.grad, kk.grad, vv.grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------- fully masked rows
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zeros_and_finite_gradients(impl, kind):
    q, k, v = _qkv(Tq=4, Tk=5)
    allowed = torch.rand(1, 1, 4, 5, generator=torch.Generator().manual_seed(3)) > 0.3
    allowed[..., 2, :] = False  # query 2 may attend to nothing
    allowed[..., [0, 1, 3], 0] = True
    mask = allowed if kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    qq = q.clone().requires_grad_()
    out = scaled_dot_product_attention(qq, k, v, mask=mask, impl=impl)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _brute_force(q, k, v, allowed), **TOL)
    assert out[:, :, 2].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(qq.grad).all()


def test_causal_with_more_queries_than_keys_has_dead_rows_not_nan():
    q, k, v = _qkv(Tq=5, Tk=3)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    assert torch.isfinite(out).all() and out[:, :, :2].abs().max() == 0 and w[:, :, :2].sum() == 0


# ---------------------------------------------------------------- multi-head vs nn.MultiheadAttention
def _pair(fused: bool, dropout=0.0, d_model=16, n_heads=4):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
    with torch.no_grad():  # non-zero biases so that a bias-copy bug cannot hide
        theirs.in_proj_bias.normal_()
        theirs.out_proj.bias.normal_()
    ours = MultiHeadAttention(d_model, n_heads, dropout=dropout, fused_qkv=fused).load_torch_mha(theirs)
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("setting", ["self", "self-causal-padding", "cross-padding"])
def test_multihead_matches_torch(fused, impl, setting):
    ours, theirs = _pair(fused)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 16, generator=g)
    memory = torch.randn(2, 9, 16, generator=g)
    src = memory if setting.startswith("cross") else x
    Tk = src.shape[1]
    kpm = torch.zeros(2, Tk, dtype=torch.bool)
    kpm[1, -3:] = True  # last 3 keys of item 1 are padding
    kwargs, torch_kwargs = {}, {}
    if "padding" in setting:
        kwargs["key_padding_mask"] = torch_kwargs["key_padding_mask"] = kpm
    if "causal" in setting:
        kwargs["is_causal"] = True
        torch_kwargs["attn_mask"] = ~causal_mask(6)  # torch: True = NOT allowed
    out, w = ours(x, None if src is x else src, None if src is x else src, need_weights=True, impl=impl, **kwargs)
    exp, exp_w = theirs(x, src, src, need_weights=True, average_attn_weights=False, **torch_kwargs)
    _, exp_avg = theirs(x, src, src, need_weights=True, average_attn_weights=True, **torch_kwargs)
    torch.testing.assert_close(out, exp, **TOL)
    torch.testing.assert_close(w, exp_w, **TOL)
    _, avg = ours(x, src, src, need_weights=True, average_weights=True, **kwargs)
    torch.testing.assert_close(avg, exp_avg, **TOL)
    out_fast, no_w = ours(x, src, src, impl=impl, **kwargs)
    assert no_w is None
    torch.testing.assert_close(out_fast, exp, **TOL)


def test_fused_and_separate_projections_agree():
    fused, _ = _pair(True)
    separate, _ = _pair(False)
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(fused(x)[0], separate(x)[0], **TOL)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_causality_future_tokens_never_change_earlier_outputs(impl):
    ours, _ = _pair(False)
    x = torch.randn(1, 8, 16)
    out = ours(x, is_causal=True, impl=impl)[0]
    for t in range(8):
        x2 = x.clone()
        x2[:, t] = torch.randn(16)
        out2 = ours(x2, is_causal=True, impl=impl)[0]
        torch.testing.assert_close(out2[:, :t], out[:, :t], atol=0, rtol=0)
        assert not torch.allclose(out2[:, t], out[:, t])  # the changed position itself does change


def test_kv_cache_incremental_equals_full_causal_pass():
    ours, _ = _pair(True)
    x = torch.randn(2, 6, 16)
    full = ours(x, is_causal=True)[0]
    cache, steps = KVCache(), []
    for t in range(6):
        out, _ = ours(x[:, t : t + 1], is_causal=True, cache=cache, layer_idx=0)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
    assert cache.layers[0][0].shape == (2, 4, 6, 4) and cache.seq_length() == 6
    with pytest.raises(ValueError, match="batch of 2 rows"):  # a cache from another batch size
        ours(x[:1, :1], is_causal=True, cache=cache)


def test_cross_attention_cache_projects_the_source_once():
    ours, _ = _pair(False)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    cache = KVCache()
    first, _ = ours(x, memory, cross=True, cache=cache, layer_idx=1)
    assert cache.cross[1][0].shape == (2, 4, 5, 4)
    calls = []
    handle = ours.k_proj.register_forward_hook(lambda *a: calls.append(1))
    again, _ = ours(x, torch.zeros_like(memory), cross=True, cache=cache, layer_idx=1)  # source ignored now
    handle.remove()
    assert calls == []
    torch.testing.assert_close(again, first, **TOL)


def test_cross_attention_with_precomputed_kv():
    ours, _ = _pair(False)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    kv = ours.project_kv(memory)
    torch.testing.assert_close(ours(x, kv=kv)[0], ours(x, memory, memory)[0], **TOL)


def test_dropout_off_in_eval_and_active_in_train():
    ours, _ = _pair(False, dropout=0.5)
    plain, _ = _pair(False, dropout=0.0)
    x = torch.randn(2, 6, 16)
    ours.eval()
    torch.testing.assert_close(ours(x)[0], plain(x)[0], **TOL)
    torch.testing.assert_close(ours(x)[0], ours(x)[0], atol=0, rtol=0)
    ours.train()
    torch.manual_seed(1)
    a = ours(x)[0]
    b = ours(x)[0]
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, plain(x)[0])


def test_functional_dropout_zeroes_some_weights():
    q, k, v = _qkv(Tq=16, Tk=16)
    v = torch.eye(16).expand(2, 3, 16, 16)  # out == dropped weights
    torch.manual_seed(0)
    out = scaled_dot_product_attention(q, k, v, dropout_p=0.5, impl="reference")
    frac_zero = (out == 0).float().mean().item()
    assert 0.3 < frac_zero < 0.7


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"divisible by n_heads; got d_model=10, n_heads=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(TypeError, match=r"bool \(True = may attend\) or a float .*got dtype torch.int64"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"broadcastable to \(B, H, Tq, Tk\) = \(2, 3, 5, 5\); got shape \(5, 4\)"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"same head dim d_k; got q 8 and k 6"):
        scaled_dot_product_attention(q, k[..., :6], v)
    with pytest.raises(ValueError, match=r"rank 4 \(B, H, T, d\); got shape \(3, 5, 8\)"):
        scaled_dot_product_attention(q[0], k, v)
    with pytest.raises(TypeError, match=r"floating-point tensor; got dtype torch.int64"):
        scaled_dot_product_attention(q.long(), k, v)
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'flash'"):
        scaled_dot_product_attention(q, k, v, impl="flash")
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"\(B, T, d_model=16\); got \(2, 5, 12\)"):
        mha(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match=r"\(B, T, d_model=16\); got \(5, 16\)"):
        mha(torch.randn(5, 16))
    with pytest.raises(TypeError, match=r"key_padding_mask must be a bool tensor.*got torch.int64"):
        mha(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Tk\) = \(2, 5\); got \(2, 4\)"):
        mha(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"bool or integer 1/0 mask; got dtype torch.float32"):
        padding_mask(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"padding_mask expects shape \(B, Tk\); got \(3,\)"):
        padding_mask(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Tq must be a positive int; got 0"):
        causal_mask(0)


# ---------------------------------------------------------------- benchmark command (memory only, no timing)
def test_benchmark_memory_is_quadratic_for_reference_and_smaller_for_sdpa():
    from scratchlm.bench.attention import benchmark_attention, format_table

    rows = benchmark_attention([128, 256], repeats=1, threads=1)
    ref = {r.T: r.peak_mib for r in rows if r.impl == "reference"}
    fast = {r.T: r.peak_mib for r in rows if r.impl == "sdpa"}
    assert 3.6 < ref[256] / ref[128] < 4.4  # O(T²): doubling T quadruples the reference path's peak
    assert all(fast[t] < ref[t] for t in ref)
    assert "ref peak MiB" in format_table(rows)
    with pytest.raises(ValueError, match=r"positive ints; got \[0\]"):
        benchmark_attention([0])


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_float_bias_with_key_padding_matches_torch(impl):
    ours, theirs = _pair(True)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 6, 16, generator=g)
    bias = torch.randn(6, 6, generator=g)  # additive float mask: same convention in both modules
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0, -2:] = True
    kpm_float = torch.zeros(2, 6).masked_fill(kpm, float("-inf"))  # torch wants both masks float here
    expected, _ = theirs(x, x, x, attn_mask=bias, key_padding_mask=kpm_float)
    torch.testing.assert_close(ours(x, mask=bias, key_padding_mask=kpm, impl=impl)[0], expected, **TOL)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("masking", ["none", "bool", "float", "dead row"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_and_reference_agree_on_nan_inputs(where, masking, is_causal):
    """A NaN query spoils its row, a NaN key/value its (batch, head); fully masked rows stay 0 — on both paths."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 4, 8).unbind(0)
    {"q": q, "k": k, "v": v}[where][0, 0, 1] = float("nan")
    mask = None
    if masking != "none":
        mask = torch.ones(4, 4, dtype=torch.bool)
        mask[:, 1] = False  # the NaN position is forbidden to every query
        if masking == "dead row":
            mask[2] = False
        if masking == "float":
            mask = torch.zeros(4, 4).masked_fill(~mask, float("-inf"))
    fast = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, impl="sdpa")
    ref = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, impl="reference")
    assert torch.equal(torch.isnan(fast), torch.isnan(ref))
    torch.testing.assert_close(fast.nan_to_num(7.0), ref.nan_to_num(7.0), **TOL)
    rows = torch.isnan(fast).any(-1)  # (B, H, Tq)
    assert not rows[1].any() and not rows[0, 1].any()  # other batch rows and heads are untouched
    expected = torch.tensor([False, True, False, False]) if where == "q" else torch.ones(4, dtype=torch.bool)
    if masking == "dead row":
        expected[2] = False  # a row that may attend to nothing is zero, never NaN
        assert (fast[0, 0, 2] == 0).all()
    assert torch.equal(rows[0, 0], expected)
