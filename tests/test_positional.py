"""Tests for scratchlm.layers.positional (Chapter 04), each against an independent reference:
a plain-Python closed form, explicit rotation matrices built from the formula, complex numbers,
and Hugging Face's LLaMA rotary implementation where transformers is installed."""

from __future__ import annotations

import cmath
import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.layers import (
    KVCache,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    RotaryMultiHeadAttention,
    SinusoidalPositionalEncoding,
    apply_rotary_emb,
    rotate_half,
    sinusoidal_table,
)


# ----------------------------------------------------------------------------- sinusoidal
@pytest.mark.parametrize("max_len,d_model,base", [(50, 16, 10000.0), (7, 6, 10000.0), (20, 8, 100.0)])
def test_sinusoidal_table_matches_closed_form_double_loop(max_len, d_model, base):
    expected = torch.empty(max_len, d_model, dtype=torch.float64)
    for pos in range(max_len):
        for i in range(d_model // 2):
            angle = pos / base ** (2 * i / d_model)
            expected[pos, 2 * i] = math.sin(angle)
            expected[pos, 2 * i + 1] = math.cos(angle)
    table = sinusoidal_table(max_len, d_model, base=base, dtype=torch.float64)
    assert table.shape == (max_len, d_model)
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(sinusoidal_table(max_len, d_model, base=base), expected.float())


def _offset_map(k: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """M_k built from the formula: block-diagonal 2x2 rotations by k * w_i, acting on (sin, cos) pairs."""
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(d_model // 2):
        phi = k / base ** (2 * i / d_model)
        # sin(a + phi) = sin a cos phi + cos a sin phi ; cos(a + phi) = cos a cos phi - sin a sin phi
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = math.cos(phi), math.sin(phi)
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -math.sin(phi), math.cos(phi)
    return m


@pytest.mark.parametrize("k", [1, 3, 17, 40])
def test_sinusoidal_relative_offset_is_a_fixed_linear_map(k):
    d_model, max_len = 32, 100
    pe = sinusoidal_table(max_len, d_model, dtype=torch.float64)  # (L, d)
    m_k = _offset_map(k, d_model)
    shifted = pe[: max_len - k] @ m_k.T  # row p -> M_k PE(p)
    torch.testing.assert_close(shifted, pe[k:], rtol=0, atol=1e-10)
    # the map really depends on k: M_k does not also map p -> p + k + 1
    assert (shifted[:-1] - pe[k + 1 :]).abs().max() > 1e-3
    # and it is orthogonal (a rotation), so ||PE(p)|| is the same for every p
    torch.testing.assert_close(m_k @ m_k.T, torch.eye(d_model, dtype=torch.float64))


def test_sinusoidal_module_adds_table_and_is_not_saved():
    torch.manual_seed(0)
    module = SinusoidalPositionalEncoding(d_model=12, max_len=30)
    x = torch.randn(3, 9, 12)
    table = sinusoidal_table(30, 12)
    torch.testing.assert_close(module(x), x + table[:9])
    torch.testing.assert_close(module(x, offset=5), x + table[5:14])
    assert module.state_dict() == {}  # non-persistent buffer
    assert "pe" in dict(module.named_buffers())
    assert list(module.parameters()) == []


def test_sinusoidal_dropout_in_train_only():
    torch.manual_seed(0)
    module = SinusoidalPositionalEncoding(8, 16, dropout=0.5)
    x = torch.randn(4, 16, 8)
    module.train()
    y = module(x)
    assert (y == 0).float().mean() > 0.2  # about half the entries dropped
    module.eval()
    torch.testing.assert_close(module(x), x + sinusoidal_table(16, 8))


def test_sinusoidal_follows_dtype_and_gradients():
    module = SinusoidalPositionalEncoding(8, 16)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    y = module(x)
    assert y.dtype == torch.float64
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


# ----------------------------------------------------------------------------- learned
def test_learned_embedding_shapes_init_and_gradients():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(64, 16)
    assert isinstance(emb, torch.nn.Embedding) and list(emb.state_dict()) == ["weight"]
    assert emb.weight.shape == (64, 16)
    assert 0.015 < emb.weight.std().item() < 0.025  # N(0, 0.02^2) like GPT-2
    positions = torch.arange(10)
    torch.testing.assert_close(emb(positions), emb.weight[:10])
    x = torch.randn(2, 10, 16)
    y = emb(x, offset=3)
    torch.testing.assert_close(y, x + emb.weight[3:13])
    y.pow(2).sum().backward()
    grad = emb.weight.grad
    assert grad is not None
    assert grad[3:13].abs().sum() > 0  # used rows get gradient
    assert grad[:3].abs().sum() == 0 and grad[13:].abs().sum() == 0  # unused rows do not
    torch.testing.assert_close(grad[3:13], (2 * y).sum(0))


def test_learned_embedding_matches_nn_embedding_lookup():
    emb = LearnedPositionalEmbedding(20, 4)
    ref = torch.nn.Embedding(20, 4)
    ref.load_state_dict(emb.state_dict())
    positions = torch.tensor([[0, 5, 19], [3, 3, 1]])
    torch.testing.assert_close(emb(positions), ref(positions))


# ----------------------------------------------------------------------------- rotary
def test_rotate_half_layout():
    x = torch.arange(6.0)
    torch.testing.assert_close(rotate_half(x), torch.tensor([-3.0, -4.0, -5.0, 0.0, 1.0, 2.0]))


def test_rope_matches_complex_number_formulation():
    """Pair (x_i, x_{i+d/2}) as the complex number x_i + i x_{i+d/2}, multiply by e^{i m θ_i}."""
    torch.manual_seed(0)
    head_dim, base = 8, 10000.0
    rope = RotaryEmbedding(head_dim, max_len=32, base=base)
    x = torch.randn(1, 2, 6, head_dim, dtype=torch.float64)
    out = rope.apply_rotary(x.float(), offset=4).double()
    half = head_dim // 2
    expected = torch.empty_like(x)
    for h in range(2):
        for t in range(6):
            m = t + 4
            for i in range(half):
                theta = base ** (-2 * i / head_dim)
                z = complex(x[0, h, t, i].item(), x[0, h, t, i + half].item()) * cmath.exp(1j * m * theta)
                expected[0, h, t, i], expected[0, h, t, i + half] = z.real, z.imag
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_rope_equals_paper_layout_up_to_a_permutation():
    """RoFormer rotates adjacent pairs (x_2i, x_2i+1) with torch.view_as_complex; rotate-half is the
    same map after moving coordinate 2i to i and 2i+1 to i + d/2."""
    torch.manual_seed(1)
    d, T = 16, 12
    rope = RotaryEmbedding(d, max_len=T)
    x = torch.randn(2, 3, T, d)
    theta = 10000.0 ** (-torch.arange(0, d, 2).double() / d)  # (d/2,)
    rot = torch.polar(
        torch.ones(T, d // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), theta)
    )
    paper = torch.view_as_real(torch.view_as_complex(x.double().reshape(2, 3, T, d // 2, 2)) * rot).flatten(
        -2
    )
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))  # adjacent -> halves
    torch.testing.assert_close(
        rope.apply_rotary(x[..., perm]), paper[..., perm].float(), rtol=1e-5, atol=1e-5
    )


def test_rope_dot_product_depends_only_on_offset():
    torch.manual_seed(2)
    d = 32
    rope = RotaryEmbedding(d, max_len=64)
    q = torch.randn(d, dtype=torch.float64)
    k = torch.randn(d, dtype=torch.float64)

    def rotated_dot(m: int, n: int) -> float:
        qm = rope.apply_rotary(q.float().view(1, 1, 1, d), offset=m)
        kn = rope.apply_rotary(k.float().view(1, 1, 1, d), offset=n)
        return (qm * kn).sum().item()

    for m, n, s in [(3, 7, 10), (10, 2, 25), (0, 0, 40), (5, 30, 20)]:
        assert rotated_dot(m, n) == pytest.approx(rotated_dot(m + s, n + s), rel=1e-4, abs=1e-4)
    # ...and it does depend on the offset
    assert abs(rotated_dot(0, 1) - rotated_dot(0, 9)) > 1e-2


def test_rope_preserves_norms_and_position_zero_is_identity():
    torch.manual_seed(3)
    rope = RotaryEmbedding(16, max_len=50)
    x = torch.randn(2, 4, 50, 16)
    y = rope.apply_rotary(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    assert (y[:, :, 1:] - x[:, :, 1:]).abs().max() > 0.1


def test_rope_offset_and_positions_agree_with_full_sequence():
    """KV-cache decoding: rotating token t alone with offset=t equals slicing the full rotation."""
    torch.manual_seed(4)
    rope = RotaryEmbedding(8, max_len=20)
    x = torch.randn(2, 3, 10, 8)
    full = rope.apply_rotary(x)
    for t in range(10):
        torch.testing.assert_close(rope.apply_rotary(x[:, :, t : t + 1], offset=t), full[:, :, t : t + 1])
    torch.testing.assert_close(rope.apply_rotary(x[:, :, 4:], offset=4), full[:, :, 4:])
    torch.testing.assert_close(rope.apply_rotary(x, positions=torch.arange(10)), full)
    # per-sequence positions (B, T): the second sequence is left-padded by 2
    pos = torch.stack([torch.arange(10), torch.arange(10).sub(2).clamp(min=0)])
    out = rope.apply_rotary(x, positions=pos)
    torch.testing.assert_close(out[0], full[0])
    torch.testing.assert_close(out[1, :, 2:], rope.apply_rotary(x[1:, :, 2:])[0])
    q_rot, k_rot = rope(x, x.flip(-1), offset=2)
    torch.testing.assert_close(q_rot, rope.apply_rotary(x, offset=2))
    torch.testing.assert_close(k_rot, rope.apply_rotary(x.flip(-1), offset=2))


def test_rope_keeps_dtype_and_follows_module_to():
    rope = RotaryEmbedding(8, max_len=16).to(torch.float64)
    assert rope.cos_cached.dtype == torch.float64 and rope.state_dict() == {}
    x = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    assert rope.apply_rotary(x).dtype == torch.bfloat16


def test_rope_matches_huggingface_llama():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(5)
    n_heads, head_dim, T = 4, 16, 24
    config = transformers.LlamaConfig(
        hidden_size=n_heads * head_dim, num_attention_heads=n_heads, max_position_embeddings=64
    )
    hf_rope = LlamaRotaryEmbedding(config)
    ours = RotaryEmbedding(head_dim, max_len=64, base=10000.0)
    q = torch.randn(2, n_heads, T, head_dim)
    k = torch.randn(2, n_heads, T, head_dim)
    position_ids = torch.stack([torch.arange(T), torch.arange(T) + 7])  # (B, T)
    cos, sin = hf_rope(q, position_ids)  # (B, T, d), built by Hugging Face
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    q_ours, k_ours = ours(q, k, positions=position_ids)
    torch.testing.assert_close(q_ours, q_hf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_ours, k_hf, rtol=1e-5, atol=1e-5)
    # the low-level function with Hugging Face's own tables is the same formula
    torch.testing.assert_close(apply_rotary_emb(q, cos.unsqueeze(1), sin.unsqueeze(1)), q_hf)


# ----------------------------------------------------------------------------- rotary attention
def _manual_rotary_attention(mha: RotaryMultiHeadAttention, x: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """Independent path: project with the raw weights, rotate with the complex-free formula, F.sdpa."""
    B, T, C = x.shape
    H, d = mha.n_heads, mha.head_dim
    heads = [
        F.linear(x, p.weight, p.bias).view(B, T, H, d).transpose(1, 2)
        for p in (mha.q_proj, mha.k_proj, mha.v_proj)
    ]
    q, k, v = heads
    angles = torch.outer(
        torch.arange(T).double(), 10000.0 ** (-torch.arange(0, d, 2).double() / d)
    )  # (T, d/2)
    cos, sin = angles.cos().float(), angles.sin().float()

    def rot(t):
        t1, t2 = t[..., : d // 2], t[..., d // 2 :]
        return torch.cat((t1 * cos - t2 * sin, t1 * sin + t2 * cos), dim=-1)

    out = F.scaled_dot_product_attention(rot(q), rot(k), v, is_causal=is_causal)  # (B, H, T, d)
    return mha.out_proj(out.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("is_causal", [False, True])
def test_rotary_attention_matches_manual_computation(is_causal):
    torch.manual_seed(6)
    mha = RotaryMultiHeadAttention(32, 4, max_len=16)
    x = torch.randn(2, 10, 32)
    out, _ = mha(x, is_causal=is_causal)
    torch.testing.assert_close(out, _manual_rotary_attention(mha, x, is_causal), rtol=1e-5, atol=1e-5)
    out_ref, weights = mha(x, is_causal=is_causal, impl="reference", need_weights=True)
    torch.testing.assert_close(out_ref, out, rtol=1e-5, atol=1e-5)
    assert weights.shape == (2, 4, 10, 10)


def test_rotary_attention_kv_cache_decoding_matches_full_pass():
    torch.manual_seed(7)
    mha = RotaryMultiHeadAttention(16, 2, max_len=12)
    x = torch.randn(1, 8, 16)
    full, _ = mha(x, is_causal=True)
    cache = KVCache()
    out, _ = mha(x[:, :5], is_causal=True, cache=cache)  # prompt of 5 tokens
    steps = [out]
    for t in range(5, 8):  # then one token at a time, at positions 5, 6, 7
        out, _ = mha(x[:, t : t + 1], cache=cache)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_rotary_attention_breaks_permutation_equivariance_and_rejects_cross_attention():
    torch.manual_seed(8)
    mha = RotaryMultiHeadAttention(16, 2, max_len=12)
    x = torch.randn(1, 6, 16)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out, _ = mha(x)
    out_perm, _ = mha(x[:, perm])
    assert (out_perm - out[:, perm]).abs().max() > 1e-3  # position now matters
    with pytest.raises(ValueError, match="self-attention only"):
        mha(x, x)
    with pytest.raises(ValueError, match="max_len=12"):
        mha(torch.randn(1, 13, 16))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "factory,exc,match",
    [
        (lambda: sinusoidal_table(10, 7), ValueError, "d_model must be even"),
        (lambda: sinusoidal_table(0, 8), ValueError, "max_len must be a positive int"),
        (lambda: sinusoidal_table(10, 8.0), TypeError, "d_model must be an int"),
        (lambda: sinusoidal_table(10, 8, base=1.0), ValueError, "base must be"),
        (lambda: SinusoidalPositionalEncoding(9, 10), ValueError, "d_model must be even"),
        (lambda: SinusoidalPositionalEncoding(8, 10, dropout=1.5), ValueError, "dropout"),
        (lambda: LearnedPositionalEmbedding(0, 8), ValueError, "max_len must be a positive int"),
        (lambda: LearnedPositionalEmbedding(10, 8, init_std=-1.0), ValueError, "init_std"),
        (lambda: RotaryEmbedding(7, 10), ValueError, "head_dim must be even"),
        (lambda: RotaryEmbedding(8, -1), ValueError, "max_len must be a positive int"),
        (lambda: RotaryEmbedding("8", 10), TypeError, "head_dim must be an int"),
    ],
)
def test_constructors_reject_bad_configs(factory, exc, match):
    with pytest.raises(exc, match=match):
        factory()


def test_sequence_longer_than_table_names_length_and_limit():
    x = torch.zeros(1, 12, 8)
    for module in (SinusoidalPositionalEncoding(8, 10), LearnedPositionalEmbedding(10, 8)):
        with pytest.raises(ValueError, match=r"length 12 .*max_len=10"):
            module(x)
        with pytest.raises(ValueError, match=r"length 8 at offset 5 .*max_len=10"):
            module(x[:, :8], offset=5)
    rope = RotaryEmbedding(8, 10)
    with pytest.raises(ValueError, match=r"length 12 .*max_len=10"):
        rope.apply_rotary(torch.zeros(1, 2, 12, 8))
    with pytest.raises(ValueError, match=r"0\.\.9 .*got values from 0 to 10"):
        rope.apply_rotary(torch.zeros(1, 2, 11, 8)[:, :, :11], positions=torch.arange(11))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        LearnedPositionalEmbedding(10, 8)(torch.tensor([3, 10]))


def test_forward_rejects_wrong_rank_width_and_dtype():
    sin_pe = SinusoidalPositionalEncoding(8, 10)
    learned = LearnedPositionalEmbedding(10, 8)
    rope = RotaryEmbedding(8, 10)
    for module in (sin_pe, learned):
        with pytest.raises(ValueError, match=r"\(B, T, C\); got 2-D"):
            module(torch.zeros(4, 8))
        with pytest.raises(ValueError, match="d_model = 8"):
            module(torch.zeros(1, 4, 6))
        with pytest.raises(ValueError, match="offset must be >= 0"):
            module(torch.zeros(1, 4, 8), offset=-1)
        with pytest.raises(TypeError, match="expects"):
            module([[0.0] * 8])
    with pytest.raises(TypeError, match="floating-point"):
        sin_pe(torch.zeros(1, 4, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        learned(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, H, T, d\); got 3-D"):
        rope.apply_rotary(torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match="head_dim=8"):
        rope.apply_rotary(torch.zeros(1, 1, 4, 6))
    with pytest.raises(TypeError, match="floating-point"):
        rope.apply_rotary(torch.zeros(1, 1, 4, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        rope.apply_rotary(torch.zeros(1, 1, 4, 8), positions=torch.arange(4.0))
    with pytest.raises(ValueError, match="4 entries for a sequence of length 5"):
        rope.apply_rotary(torch.zeros(1, 1, 5, 8), positions=torch.arange(4))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        rope.apply_rotary(torch.zeros(2, 1, 5, 8), positions=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="either positions or offset"):
        rope.apply_rotary(torch.zeros(1, 1, 4, 8), positions=torch.arange(4), offset=1)


def test_rotary_helpers_reject_odd_head_dimensions():
    with pytest.raises(ValueError, match="even"):
        rotate_half(torch.randn(2, 5))
    with pytest.raises(ValueError, match="head dim 6"):
        apply_rotary_emb(torch.randn(1, 1, 3, 6), torch.ones(3, 8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="even"):
        RotaryMultiHeadAttention(15, 3, max_len=8)  # head dim 5
