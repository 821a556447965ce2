"""Structured pruning of attention heads and block FFNs (scratchlm.compress.heads, Chapter 12).

References: a brute-force multi-head attention written head by head from the *original* weights
(Σ over the kept heads of softmax(q_h k_hᵀ/√d) v_h Wᴼ_hᵀ + bᴼ), an explicit per-head gate ξ_h whose
gradient autograd computes (Michel et al.'s head mask), brute-force loss changes, and masking (zero
Wᴼ columns / W2 columns) in an unpruned copy.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from scratchlm.compress import (
    attention_layers,
    count_heads,
    ffn_importance_taylor,
    ffn_layers,
    head_importance_l2,
    head_importance_taylor,
    magnitude_prune,
    neuron_importance_taylor,
    prune_ffn,
    prune_heads,
    prune_model_heads,
    quantize_model,
    select_heads,
)
from scratchlm.decoding import generate
from scratchlm.layers import FeedForward, MultiHeadAttention
from scratchlm.models import GPT, T5, BertConfig, BertModel, GPTConfig, T5Config


def _brute_force_mha(attn: MultiHeadAttention, x: torch.Tensor, heads, *, causal=False, padding=None):
    """Σ_{h in heads} softmax(q_h k_hᵀ/√d + mask) v_h Wᴼ[:, h]ᵀ + bᴼ, one head at a time, from attn's weights."""
    C, d = attn.d_model, attn.head_dim
    if attn.fused_qkv:
        wq, wk, wv = attn.qkv_proj.weight.split(attn.inner_dim)
        bq, bk, bv = attn.qkv_proj.bias.split(attn.inner_dim)
    else:
        wq, wk, wv = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
        bq, bk, bv = attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias
    T = x.shape[1]
    out = attn.out_proj.bias.expand(x.shape[0], T, C).clone()
    for h in heads:
        sl = slice(h * d, (h + 1) * d)
        q, k, v = x @ wq[sl].T + bq[sl], x @ wk[sl].T + bk[sl], x @ wv[sl].T + bv[sl]  # (B, T, d)
        scores = q @ k.transpose(1, 2) / math.sqrt(d)  # (B, T, T)
        if causal:
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        if padding is not None:
            scores = scores.masked_fill(padding[:, None, :], float("-inf"))
        out = out + torch.softmax(scores, dim=-1) @ v @ attn.out_proj.weight[:, sl].T  # (B, T, C)
    return out


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("drop", [[1], [0, 3], [2, 4, 5]])
def test_pruned_attention_equals_brute_force_over_kept_heads(fused, drop):
    torch.manual_seed(0)
    attn = MultiHeadAttention(48, 6, fused_qkv=fused).double().eval()
    original = copy.deepcopy(attn)
    x = torch.randn(3, 7, 48, dtype=torch.float64)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True
    keep = prune_heads(attn, drop)
    kept = [h for h in range(6) if h not in drop]
    assert keep.tolist() == kept
    assert (attn.n_heads, attn.head_dim, attn.inner_dim, attn.d_model) == (len(kept), 8, 8 * len(kept), 48)
    with torch.no_grad():
        for causal, pad in ((False, padding), (True, None)):
            y, _ = attn(x, key_padding_mask=pad, is_causal=causal)
            assert_close(y, _brute_force_mha(original, x, kept, causal=causal, padding=pad), rtol=1e-12, atol=1e-12)
        # the reference attention path and the returned weights agree too
        y_ref, w = attn(x, need_weights=True, impl="reference")
        assert w.shape == (3, len(kept), 7, 7)
        assert_close(y_ref, _brute_force_mha(original, x, kept), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_removing_heads_with_zero_out_columns_is_exact(fused):
    """Every intermediate is exact here (uniform attention over 8 keys, integer weights and inputs), so
    any difference would be a real one, not rounding."""
    g = torch.Generator().manual_seed(0)
    attn = MultiHeadAttention(16, 4, fused_qkv=fused).eval()
    dead = [1, 2]
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randint(-3, 4, p.shape, generator=g).float())
        if fused:
            attn.qkv_proj.weight[:16] = 0.0  # W_q = 0, b_q = 0: every score equal → softmax = 1/8 exactly
            attn.qkv_proj.bias[:16] = 0.0
        else:
            attn.q_proj.weight.zero_()
            attn.q_proj.bias.zero_()
        for h in dead:
            attn.out_proj.weight[:, h * 4:(h + 1) * 4] = 0.0
    scores = head_importance_l2(attn)
    assert scores[dead].eq(0).all() and scores.gt(0).sum() == 2
    x = torch.randint(-4, 5, (2, 8, 16), generator=g).float()
    with torch.no_grad():
        before, _ = attn(x)
        prune_heads(attn, dead)
        after, _ = attn(x)
    assert torch.equal(before, after)


def _bert(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=40, max_positions=32, dropout=0.0,
               attention_dropout=0.0) | kw
    return BertModel(BertConfig(**cfg)).eval()


def _gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**(dict(vocab_size=50, block_size=24, n_layers=2, n_heads=4, d_model=32) | kw))).eval()


def _zero_out_columns(model, plan):
    """The unpruned reference: the same heads switched off by zeroing their Wᴼ columns."""
    ref = copy.deepcopy(model)
    for attn, heads in zip(attention_layers(ref).values(), plan, strict=True):
        with torch.no_grad():
            for h in heads:
                attn.out_proj.weight[:, h * attn.head_dim:(h + 1) * attn.head_dim] = 0.0
    return ref


@pytest.mark.parametrize("make", [_bert, _gpt, lambda: _gpt(positions="rope", qk_norm=True, bias=False)])
def test_prune_model_heads_inside_bert_and_gpt(make):
    model = make()
    names = list(attention_layers(model))
    assert len(names) == 2 and all(n.endswith("self_attn") for n in names)
    plan = [[0, 2], [3]]
    ref = _zero_out_columns(model, plan)
    n_before = sum(p.numel() for p in model.parameters())
    kept = prune_model_heads(model, plan)
    assert [k.tolist() for k in kept.values()] == [[1, 3], [0, 1, 2]]
    assert count_heads(model) == [2, 3]
    C, d = 32, 8
    has_bias = model.transformer.h[0].self_attn.out_proj.bias is not None if isinstance(model, GPT) else True
    per_head = 3 * d * (C + has_bias) + C * d
    assert n_before - sum(p.numel() for p in model.parameters()) == 3 * per_head
    ids = torch.randint(0, 50, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[2, 7:] = 0
    with torch.no_grad():
        if isinstance(model, GPT):
            assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
            greedy = generate(model, ids[:, :4], 6, greedy=True, use_cache=True)
            assert torch.equal(greedy, generate(model, ids[:, :4], 6, greedy=True, use_cache=False))
        else:
            out, out_ref = model(input_ids=ids, attention_mask=mask), ref(input_ids=ids, attention_mask=mask)
            assert_close(out.last_hidden_state, out_ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    model.train()  # the pruned model still trains
    loss = model(input_ids=ids).last_hidden_state.square().mean() if isinstance(model, BertModel) \
        else model(input_ids=ids, labels=ids).loss
    loss.backward()
    for attn in attention_layers(model).values():
        assert all(p.grad is not None and p.grad.shape == p.shape for p in attn.parameters())


def _gated(attns):
    """Explicit head gates ξ (requires grad) multiplied into each head's output, as in Michel et al."""
    gates = [torch.ones(a.n_heads, requires_grad=True) for a in attns]
    hooks = []
    for a, g in zip(attns, gates, strict=True):
        def pre(_m, args, a=a, g=g):
            o = args[0]  # (B, T, I)
            return (o.reshape(*o.shape[:-1], a.n_heads, a.head_dim) * g[:, None]).reshape(o.shape),
        hooks.append(a.out_proj.register_forward_pre_hook(pre))
    return gates, hooks


@pytest.mark.parametrize("make", [_bert, _gpt])
def test_taylor_head_score_equals_the_gradient_of_an_explicit_head_gate(make):
    model = make()
    attns = list(attention_layers(model).values())
    ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))

    def loss_fn():
        out = model(input_ids=ids, labels=ids) if isinstance(model, GPT) else model(input_ids=ids)
        return out.loss if out.loss is not None else out.pooler_output.square().sum()

    scores = head_importance_taylor(attns, loss_fn)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: no side effects
    gates, hooks = _gated(attns)
    try:
        grads = torch.autograd.grad(loss_fn(), gates)
    finally:
        for h in hooks:
            h.remove()
    for s, g in zip(scores, grads, strict=True):
        assert s.shape == (4,)
        assert_close(s, g.abs(), rtol=1e-4, atol=1e-7)


def test_taylor_head_score_equals_brute_force_when_loss_is_linear_in_head_outputs():
    torch.manual_seed(0)
    attn = MultiHeadAttention(24, 3).double()
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    r = torch.randn(2, 5, 24, dtype=torch.float64)

    def loss_of(a):
        return (a(x)[0] * r).sum()  # linear in the heads' outputs (the input of Wᴼ)

    scores = head_importance_taylor([attn], lambda: loss_of(attn))[0]
    with torch.no_grad():
        base = loss_of(attn)
        brute = []
        for h in range(3):
            pruned = copy.deepcopy(attn)
            prune_heads(pruned, [h])
            brute.append((loss_of(pruned) - base).abs())
    assert_close(scores.double(), torch.stack(brute), rtol=1e-5, atol=1e-8)


def test_select_heads_global_layer_and_limits():
    scores = [torch.tensor([4.0, 1.0, 3.0, 2.0]), torch.tensor([0.5, 0.6, 0.7, 8.0])]
    assert select_heads(scores, 0.25, normalize=False) == [[], [0, 1]]
    assert select_heads(scores, 0.25, scope="layer", normalize=False) == [[1], [0]]
    assert select_heads(scores, 0.5, normalize=False) == [[1], [0, 1, 2]]
    # at most H - min_heads per layer: layer 1 keeps one head, the rest comes from layer 0
    assert select_heads(scores, 0.75, normalize=False) == [[1, 2, 3], [0, 1, 2]]
    assert select_heads(scores, 0.75, normalize=False, min_heads=2) == [[1, 3], [0, 1]]
    # normalised per layer (÷ L2 norm), layer 1's small heads are small relative to its 8.0
    norm = select_heads(scores, 0.25, normalize=True)
    assert norm == [[], [0, 1]]
    assert select_heads(scores, 0.0) == [[], []]


def test_prune_ffn_equals_zeroing_w2_columns_and_handles_the_gate():
    model = _bert()
    ffns = ffn_layers(model)
    assert list(ffns) == ["encoder.layers.0.ffn", "encoder.layers.1.ffn"]
    ref = copy.deepcopy(model)
    drop = [0, 5, 17, 39]
    keep = torch.tensor([j for j in range(40) if j not in drop])
    for ffn in ffn_layers(ref).values():
        with torch.no_grad():
            ffn.linear2.weight[:, drop] = 0.0
    for ffn in ffns.values():
        assert prune_ffn(ffn, keep).tolist() == keep.tolist()
        assert (ffn.linear1.out_features, ffn.linear2.in_features) == (36, 36)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert_close(model(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    swiglu = FeedForward(8, 12, activation="swiglu").double()
    ref_glu = copy.deepcopy(swiglu)
    with torch.no_grad():
        ref_glu.linear2.weight[:, [2, 7]] = 0.0
    prune_ffn(swiglu, torch.tensor([j for j in range(12) if j not in (2, 7)]))
    assert swiglu.gate.out_features == 10
    x = torch.randn(3, 8, dtype=torch.float64)
    assert_close(swiglu(x), ref_glu(x), rtol=1e-12, atol=1e-12)


def test_pruning_keeps_frozen_parameters_frozen():
    model = _bert()
    for p in model.parameters():
        p.requires_grad_(False)
    prune_model_heads(model, [[0], [1]])
    for ffn in ffn_layers(model).values():
        prune_ffn(ffn, torch.arange(20))
    assert not any(p.requires_grad for p in model.parameters())


def test_head_pruning_bad_inputs():
    attn = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="all 4 heads"):
        prune_heads(attn, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        prune_heads(attn, [4])
    with pytest.raises(TypeError, match="ints"):
        prune_heads(attn, [1.0])
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        prune_heads(nn.MultiheadAttention(16, 4), [0])
    assert prune_heads(attn, []).tolist() == [0, 1, 2, 3]  # nothing to remove: unchanged
    with pytest.raises(ValueError, match="one list per attention layer"):
        prune_model_heads(_bert(), [[0]])
    with pytest.raises(ValueError, match="unknown attention layer"):
        prune_model_heads(_bert(), {"encoder.layers.9.self_attn": [0]})
    with pytest.raises(ValueError, match="min_heads"):
        select_heads([torch.ones(4)], 0.5, min_heads=0)
    with pytest.raises(ValueError, match="scope"):
        select_heads([torch.ones(4)], 0.5, scope="model")
    with pytest.raises(ValueError, match="1-d tensors"):
        select_heads([torch.ones(2, 2)], 0.5)
    quantized = _bert()
    quantize_model(quantized)
    with pytest.raises(TypeError, match="plain nn.Linear"):
        prune_model_heads(quantized, [[0], [0]])
    masked = _bert()
    magnitude_prune(masked, 0.5)
    with pytest.raises(TypeError, match="make_permanent"):
        prune_model_heads(masked, [[0], [0]])
    with pytest.raises(ValueError, match="T5"):
        attention_layers(T5(T5Config(vocab_size=20, d_model=16, n_heads=2, d_ff=8, n_encoder_layers=1,
                                     n_decoder_layers=1)))
    with pytest.raises(ValueError, match="never called"):
        head_importance_taylor([attn], lambda: torch.ones((), requires_grad=True) * 2)
    with pytest.raises(TypeError, match="FeedForward"):
        prune_ffn(nn.Linear(2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="scalar"):
        x = torch.randn(1, 2, 16)
        head_importance_taylor([attn], lambda: attn(x)[0])


def test_ffn_importance_taylor_equals_the_per_layer_score():
    model = _bert()
    ffns = list(ffn_layers(model).values())
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(2))

    def loss_fn():
        return model(input_ids=ids).pooler_output.square().sum()

    together = ffn_importance_taylor(ffns, loss_fn)
    for ffn, score in zip(ffns, together, strict=True):
        assert_close(score, neuron_importance_taylor(ffn.linear2, loss_fn), rtol=1e-5, atol=1e-8)
    with pytest.raises(TypeError, match="FeedForward"):
        ffn_importance_taylor([nn.Linear(2, 2)], loss_fn)
    with pytest.raises(ValueError, match="never called"):
        ffn_importance_taylor([FeedForward(4, 8)], loss_fn)
