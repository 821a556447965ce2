"""Tests for scratchlm.layers and scratchlm.models.transformer (Chapter 05).

References: nn.LayerNorm, a hand-built nn.Sequential FFN, nn.TransformerEncoderLayer /
nn.TransformerDecoderLayer / nn.TransformerEncoder / nn.TransformerDecoder / nn.Transformer with
copied weights, and sum(p.numel()) for the closed-form parameter count.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from scratchlm.decoding import generate
from scratchlm.layers import Decoder, DecoderLayer, Encoder, EncoderLayer, FeedForward, LayerNorm
from scratchlm.models.transformer import (
    EncoderDecoderConfig,
    EncoderDecoderTransformer,
    count_parameters_formula,
    parameter_breakdown,
)

D, H, F_, B, T, S = 32, 4, 64, 3, 7, 6  # d_model, heads, d_ff, batch, target length, source length
TOL = dict(atol=1e-5, rtol=1e-5)


def _padding(batch: int, length: int, lengths: list[int]) -> torch.Tensor:
    """(B, T) bool, True at padded positions (right padding to the given lengths)."""
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]


def _causal_blocked(length: int) -> torch.Tensor:
    """torch's bool convention (True = blocked, the opposite of ours): (T, T) strictly upper triangle."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)


# ----------------------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("shape", [(4, 8), (2, 5, 16), (2, 3, 5, 32), (5, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch_values_and_grads(shape, bias):
    torch.manual_seed(0)
    c = shape[-1]
    ours, ref = LayerNorm(c, eps=1e-5, bias=bias), nn.LayerNorm(c, eps=1e-5, bias=bias)
    with torch.no_grad():  # random affine parameters so γ and β are really exercised
        ref.weight.normal_()
        if bias:
            ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = (torch.randn(shape) * 3 + 1.5).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), ref(x_ref)
    assert_close(y, y_ref, **TOL)
    g = torch.randn(shape)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    assert_close(x.grad, x_ref.grad, **TOL)
    assert_close(ours.weight.grad, ref.weight.grad, **TOL)
    if bias:
        assert_close(ours.bias.grad, ref.bias.grad, **TOL)


def test_layernorm_uses_biased_variance_and_eps():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    mean, var = 3.0, ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 4  # biased: divide by 4
    expected = (x - mean) / (var + 0.5) ** 0.5
    assert_close(LayerNorm(4, eps=0.5)(x), expected)


# ----------------------------------------------------------------------------- FeedForward
@pytest.mark.parametrize("activation,module", [("relu", nn.ReLU()), ("gelu", nn.GELU()),
                                               ("gelu_tanh", nn.GELU(approximate="tanh"))])
def test_feedforward_matches_sequential(activation, module):
    torch.manual_seed(1)
    ffn = FeedForward(D, F_, dropout=0.0, activation=activation)
    ref = nn.Sequential(nn.Linear(D, F_), module, nn.Linear(F_, D))
    with torch.no_grad():
        ref[0].weight.copy_(ffn.linear1.weight)
        ref[0].bias.copy_(ffn.linear1.bias)
        ref[2].weight.copy_(ffn.linear2.weight)
        ref[2].bias.copy_(ffn.linear2.bias)
    x = torch.randn(B, T, D) * 2
    assert_close(ffn(x), ref(x), **TOL)


def test_feedforward_is_position_wise():
    torch.manual_seed(2)
    ffn = FeedForward(D, F_)
    x = torch.randn(B, T, D)
    y = ffn(x)
    x2 = x.clone()
    x2[:, 3] = torch.randn(B, D)  # change one position: the others must not move
    y2 = ffn(x2)
    keep = [t for t in range(T) if t != 3]
    assert_close(y[:, keep], y2[:, keep])
    assert not torch.allclose(y[:, 3], y2[:, 3])


# ----------------------------------------------------------------------------- encoder layer
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masking", ["padding", "causal", "causal+padding", "bool_mask"])
@pytest.mark.parametrize("training", [False, True])  # eval: torch's fused fast path; train: its Python path
def test_encoder_layer_matches_torch(norm_first, activation, masking, training):
    torch.manual_seed(3)
    ref = nn.TransformerEncoderLayer(D, H, F_, dropout=0.0, activation=activation, batch_first=True,
                                     norm_first=norm_first)
    ours = EncoderLayer(D, H, F_, dropout=0.0, activation=activation, norm_first=norm_first).load_torch(ref)
    ref.train(training)
    ours.train(training)
    x = torch.randn(B, T, D, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    kpm = _padding(B, T, [T, 5, 3])
    if masking == "padding":
        y, y_ref = ours(x, key_padding_mask=kpm), ref(x_ref, src_key_padding_mask=kpm)
    elif masking == "causal":
        y = ours(x, is_causal=True)
        y_ref = ref(x_ref, src_mask=_causal_blocked(T), is_causal=True)
    elif masking == "causal+padding":
        y = ours(x, key_padding_mask=kpm, is_causal=True)
        y_ref = ref(x_ref, src_mask=_causal_blocked(T), src_key_padding_mask=kpm, is_causal=True)
    else:  # an arbitrary bool mask: ours True = may attend, torch True = blocked
        allowed = torch.rand(T, T) > 0.4
        allowed.fill_diagonal_(True)  # no fully-masked rows (torch would give NaN)
        y, y_ref = ours(x, mask=allowed), ref(x_ref, src_mask=~allowed)
    assert_close(y, y_ref, **TOL)
    if training:
        g = torch.randn_like(y)
        (y * g).sum().backward()
        (y_ref * g).sum().backward()
        assert_close(x.grad, x_ref.grad, **TOL)
        assert_close(ours.ffn.linear1.weight.grad, ref.linear1.weight.grad, **TOL)
        assert_close(ours.norm1.weight.grad, ref.norm1.weight.grad, **TOL)


# ----------------------------------------------------------------------------- decoder layer
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("training", [False, True])
def test_decoder_layer_matches_torch(norm_first, activation, training):
    torch.manual_seed(4)
    ref = nn.TransformerDecoderLayer(D, H, F_, dropout=0.0, activation=activation, batch_first=True,
                                     norm_first=norm_first)
    ours = DecoderLayer(D, H, F_, dropout=0.0, activation=activation, norm_first=norm_first).load_torch(ref)
    ref.train(training)
    ours.train(training)
    x = torch.randn(B, T, D, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    memory = torch.randn(B, S, D)
    tgt_kpm, mem_kpm = _padding(B, T, [T, 6, 4]), _padding(B, S, [S, 2, 4])
    y = ours(x, memory, tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=mem_kpm, tgt_is_causal=True)
    y_ref = ref(x_ref, memory, tgt_mask=_causal_blocked(T), tgt_key_padding_mask=tgt_kpm,
                memory_key_padding_mask=mem_kpm, tgt_is_causal=True)
    assert_close(y, y_ref, **TOL)
    if training:
        (y ** 2).sum().backward()
        (y_ref ** 2).sum().backward()
        assert_close(x.grad, x_ref.grad, **TOL)
        assert_close(ours.cross_attn.q_proj.weight.grad, ref.multihead_attn.in_proj_weight.grad[:D], **TOL)


def test_decoder_layer_memory_mask_matches_torch():
    torch.manual_seed(5)
    ref = nn.TransformerDecoderLayer(D, H, F_, dropout=0.0, batch_first=True).eval()
    ours = DecoderLayer(D, H, F_).load_torch(ref).eval()
    x, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    allowed = torch.rand(T, S) > 0.5
    allowed[:, 0] = True  # every query keeps at least one key
    y = ours(x, memory, memory_mask=allowed, tgt_is_causal=False)
    assert_close(y, ref(x, memory, memory_mask=~allowed), **TOL)


# ----------------------------------------------------------------------------- stacks
@pytest.mark.parametrize("norm_first,final_norm", [(False, False), (False, True), (True, True)])
def test_encoder_stack_matches_torch(norm_first, final_norm):
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(D, H, F_, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref = nn.TransformerEncoder(layer, num_layers=3, norm=nn.LayerNorm(D) if final_norm else None,
                                enable_nested_tensor=False).eval()
    with torch.no_grad():  # make the clones different and the final norm non-trivial
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = Encoder(3, D, H, F_, norm_first=norm_first, final_norm=final_norm).load_torch(ref).eval()
    assert isinstance(ours.norm, LayerNorm) == final_norm
    x, kpm = torch.randn(B, T, D), _padding(B, T, [T, 4, 2])
    assert_close(ours(x, key_padding_mask=kpm), ref(x, src_key_padding_mask=kpm), **TOL)


def test_stack_final_norm_defaults_to_norm_first():
    assert isinstance(Encoder(2, D, H, F_, norm_first=True).norm, LayerNorm)
    assert isinstance(Encoder(2, D, H, F_, norm_first=False).norm, nn.Identity)
    assert isinstance(Decoder(2, D, H, F_, norm_first=True).norm, LayerNorm)
    assert isinstance(Decoder(2, D, H, F_, norm_first=False).norm, nn.Identity)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_stack_matches_torch(norm_first):
    torch.manual_seed(7)
    layer = nn.TransformerDecoderLayer(D, H, F_, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref = nn.TransformerDecoder(layer, num_layers=2, norm=nn.LayerNorm(D) if norm_first else None).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = Decoder(2, D, H, F_, norm_first=norm_first).load_torch(ref).eval()
    x, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    mem_kpm = _padding(B, S, [S, 3, 5])
    y = ours(x, memory, memory_key_padding_mask=mem_kpm)
    y_ref = ref(x, memory, tgt_mask=_causal_blocked(T), memory_key_padding_mask=mem_kpm, tgt_is_causal=True)
    assert_close(y, y_ref, **TOL)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_encoder_decoder_core_matches_nn_transformer():
    """Our pre-LN encoder + decoder (both with final LN) against nn.Transformer(norm_first=True)."""
    torch.manual_seed(8)
    ref = nn.Transformer(D, H, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=F_, dropout=0.0,
                         batch_first=True, norm_first=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    enc = Encoder(2, D, H, F_, norm_first=True).load_torch(ref.encoder).eval()
    dec = Decoder(2, D, H, F_, norm_first=True).load_torch(ref.decoder).eval()
    src, tgt = torch.randn(B, S, D), torch.randn(B, T, D)
    src_kpm = _padding(B, S, [S, 4, 2])
    ours = dec(tgt, enc(src, key_padding_mask=src_kpm), memory_key_padding_mask=src_kpm)
    theirs = ref(src, tgt, tgt_mask=_causal_blocked(T), src_key_padding_mask=src_kpm,
                 memory_key_padding_mask=src_kpm, tgt_is_causal=True)
    assert_close(ours, theirs, **TOL)


# ----------------------------------------------------------------------------- adapter slots
def test_adapter_slots_are_on_the_sublayer_outputs():
    torch.manual_seed(9)
    layer = EncoderLayer(D, H, F_, norm_first=True).eval()
    x = torch.randn(B, T, D)
    y = layer(x)

    class Zero(nn.Module):
        def forward(self, h):
            return torch.zeros_like(h)

    layer.self_attn_adapter, layer.ffn_adapter = Zero(), Zero()
    assert_close(layer(x), x)  # pre-LN with both sublayers silenced is the identity
    layer.self_attn_adapter, layer.ffn_adapter = nn.Identity(), nn.Identity()
    assert_close(layer(x), y)
    dec = DecoderLayer(D, H, F_, norm_first=True).eval()
    dec.self_attn_adapter, dec.cross_attn_adapter, dec.ffn_adapter = Zero(), Zero(), Zero()
    assert_close(dec(x, torch.randn(B, S, D)), x)


# ----------------------------------------------------------------------------- full model
def _small_cfg(**overrides) -> EncoderDecoderConfig:
    base = dict(src_vocab_size=13, tgt_vocab_size=11, d_model=D, n_heads=H, n_encoder_layers=2,
                n_decoder_layers=2, d_ff=F_, dropout=0.0, max_len=32)
    base.update(overrides)
    return EncoderDecoderConfig(**base)


@pytest.mark.parametrize("overrides", [
    {}, {"norm_first": True}, {"tie_output_projection": False}, {"bias": False},
    {"share_embeddings": True, "src_vocab_size": 11}, {"n_encoder_layers": 3, "n_decoder_layers": 1},
])
def test_parameter_formula_matches_numel(overrides):
    cfg = _small_cfg(**overrides)
    model = EncoderDecoderTransformer(cfg)
    assert count_parameters_formula(cfg) == sum(p.numel() for p in model.parameters())
    breakdown = parameter_breakdown(cfg)
    enc_self = sum(p.numel() for layer in model.encoder.layers for p in layer.self_attn.parameters())
    assert breakdown["encoder self-attention"] == enc_self
    cross = sum(p.numel() for layer in model.decoder.layers for p in layer.cross_attn.parameters())
    assert breakdown["decoder cross-attention"] == cross


def test_transformer_base_parameter_count():
    """Vaswani et al. report ≈65M parameters for Transformer-base (shared 37k vocab, tied)."""
    cfg = EncoderDecoderConfig(src_vocab_size=37000, tgt_vocab_size=37000, share_embeddings=True)
    assert 60e6 < count_parameters_formula(cfg) < 66e6


def test_output_projection_tying():
    tied = EncoderDecoderTransformer(_small_cfg())
    assert tied.lm_head.weight is tied.tgt_embed.weight
    untied = EncoderDecoderTransformer(_small_cfg(tie_output_projection=False))
    assert untied.lm_head.weight is not untied.tgt_embed.weight


def test_forward_shapes_and_decoder_causality():
    torch.manual_seed(10)
    model = EncoderDecoderTransformer(_small_cfg()).eval()
    src, tgt = torch.randint(0, 13, (B, S)), torch.randint(0, 11, (B, T))
    logits = model(src, decoder_input_ids=tgt).logits
    assert logits.shape == (B, T, 11)
    for t in range(T - 1):  # changing target token t+1.. never changes logits at positions <= t
        tgt2 = tgt.clone()
        tgt2[:, t + 1:] = torch.randint(0, 11, (B, T - t - 1))
        logits2 = model(src, decoder_input_ids=tgt2).logits
        assert_close(logits2[:, : t + 1], logits[:, : t + 1])
    tgt3 = tgt.clone()
    tgt3[:, 0] = (tgt[:, 0] + 1) % 11  # ... while changing an earlier token does change later ones
    assert not torch.allclose(model(src, decoder_input_ids=tgt3).logits[:, -1], logits[:, -1])


def test_labels_give_the_masked_mean_cross_entropy_and_build_the_decoder_input():
    torch.manual_seed(14)
    model = EncoderDecoderTransformer(_small_cfg(decoder_start_id=1)).eval()
    src, labels = torch.randint(0, 13, (B, S)), torch.randint(2, 11, (B, T))
    labels[1, 4:] = -100  # padding of a shorter target
    out = model(src, labels=labels)
    dec_in = torch.cat([torch.ones(B, 1, dtype=torch.long), labels[:, :-1].clamp(min=0)], dim=1)
    dec_in[1, 5:] = 1  # -100 shifted in becomes the start token (only padding follows)
    assert_close(model(src, decoder_input_ids=dec_in).logits[labels != -100], out.logits[labels != -100])
    ref = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert_close(out.loss, ref)


def test_source_padding_is_ignored():
    torch.manual_seed(11)
    model = EncoderDecoderTransformer(_small_cfg()).eval()
    src, tgt = torch.randint(0, 13, (B, S)), torch.randint(0, 11, (B, T))
    keep = (~_padding(B, S, [S, 3, 4])).long()  # (B, S) 1 = token
    logits = model(src, keep, decoder_input_ids=tgt).logits
    src2 = src.masked_fill(keep == 0, 12)  # rewrite only the padded source positions
    assert_close(model(src2, keep, decoder_input_ids=tgt).logits, logits)
    assert not torch.allclose(model(src2, decoder_input_ids=tgt).logits, model(src, decoder_input_ids=tgt).logits)


def test_greedy_generation_is_consistent_with_teacher_forcing_with_and_without_cache():
    torch.manual_seed(12)
    model = EncoderDecoderTransformer(_small_cfg(decoder_start_id=1)).eval()
    src = torch.randint(0, 13, (B, S))
    out = generate(model, src, 6, greedy=True)
    assert out.shape == (B, 6)
    assert torch.equal(out, generate(model, src, 6, greedy=True, use_cache=False))
    dec_in = torch.cat([torch.ones(B, 1, dtype=torch.long), out[:, :-1]], dim=1)
    logits = model(src, decoder_input_ids=dec_in).logits  # its own output fed back reproduces every choice
    assert torch.equal(logits.argmax(-1), out)


def test_generation_pads_after_eos():
    torch.manual_seed(13)
    model = EncoderDecoderTransformer(_small_cfg(decoder_start_id=1)).eval()
    src = torch.randint(0, 13, (4, S))
    free = generate(model, src, 5, greedy=True)
    eos = int(free[0, 1])  # a token row 0 emits at step 1: use it as EOS
    out = generate(model, src, 5, greedy=True, stop_tokens=[eos])
    assert out.shape == (4, 5)
    for row in range(4):
        hits = (free[row] == eos).nonzero()
        if len(hits):
            stop = int(hits[0])  # index of the first EOS in the row
            assert torch.equal(out[row, : stop + 1], free[row, : stop + 1])
            assert bool((out[row, stop + 1:] == 0).all())
        else:
            assert torch.equal(out[row], free[row])


# ----------------------------------------------------------------------------- bad input
def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="divisible"):
        EncoderLayer(30, 4, 64)
    with pytest.raises(ValueError, match="divisible"):
        DecoderLayer(30, 4, 64)
    with pytest.raises(ValueError, match="divisible"):
        _small_cfg(d_model=30)
    with pytest.raises(ValueError, match="activation"):
        FeedForward(D, F_, activation="swish")
    with pytest.raises(ValueError, match="activation"):
        EncoderLayer(D, H, F_, activation="tanh")
    with pytest.raises(ValueError, match="activation"):
        _small_cfg(activation="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        FeedForward(D, F_, dropout=1.5)
    with pytest.raises(ValueError, match="d_ff"):
        FeedForward(D, 0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(D, eps=0.0)
    with pytest.raises(ValueError, match="n_layers"):
        Encoder(0, D, H, F_)
    with pytest.raises(ValueError, match="share_embeddings"):
        _small_cfg(share_embeddings=True)
    with pytest.raises(ValueError, match="pad_id"):
        _small_cfg(pad_id=11)
    with pytest.raises(TypeError, match="EncoderDecoderConfig"):
        EncoderDecoderTransformer({"d_model": 32})


def test_bad_shapes_and_masks_raise():
    enc, dec = EncoderLayer(D, H, F_), DecoderLayer(D, H, F_)
    x, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    with pytest.raises(ValueError, match=r"\(B, T, 32\)"):
        enc(torch.randn(B, T, D + 1))
    with pytest.raises(ValueError, match=r"\(B, T, 32\)"):
        enc(torch.randn(T, D))
    with pytest.raises(TypeError, match="torch.Tensor"):
        enc([[0.0] * D])
    with pytest.raises(ValueError, match="key_padding_mask"):
        enc(x, key_padding_mask=torch.zeros(B, T + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        enc(x, key_padding_mask=torch.zeros(B, T))
    with pytest.raises(ValueError, match="broadcastable"):
        enc(x, mask=torch.ones(T + 2, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="memory_key_padding_mask"):
        dec(x, memory, memory_key_padding_mask=torch.zeros(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch size"):
        dec(x, memory[:1])
    with pytest.raises(ValueError, match="memory"):
        dec(x, torch.randn(B, S, D // 2))
    with pytest.raises(ValueError, match="last dimension of 32"):
        LayerNorm(D)(torch.randn(2, D + 1))


def test_bad_model_inputs_raise():
    model = EncoderDecoderTransformer(_small_cfg())
    src, tgt = torch.randint(0, 13, (B, S)), torch.randint(0, 11, (B, T))
    with pytest.raises(TypeError, match="int64"):
        model(src.float(), decoder_input_ids=tgt)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(src[0], decoder_input_ids=tgt)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randint(0, 13, (1, 40)), decoder_input_ids=tgt[:1])
    with pytest.raises(ValueError, match="attention_mask"):
        model(src, torch.ones(B, S - 1, dtype=torch.long), decoder_input_ids=tgt)
    with pytest.raises(ValueError, match="decoder_start_id"):
        model(src, labels=tgt)  # no start token configured: cannot build the decoder input
    with pytest.raises(ValueError, match=r"decoder_input_ids must lie in \[0, 11\)"):
        model.validate_inputs({"input_ids": src, "decoder_input_ids": tgt + 11})
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, src, -1)
    with pytest.raises(ValueError, match="decoder_start_id"):
        generate(model, src, 3)


def test_load_torch_rejects_mismatches():
    with pytest.raises(TypeError, match="TransformerEncoderLayer"):
        EncoderLayer(D, H, F_).load_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="norm_first"):
        EncoderLayer(D, H, F_).load_torch(nn.TransformerEncoderLayer(D, H, F_, batch_first=True, norm_first=True))
    with pytest.raises(ValueError, match="d_ff"):
        EncoderLayer(D, H, F_).load_torch(nn.TransformerEncoderLayer(D, H, 2 * F_, batch_first=True))
    ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, F_, batch_first=True), 3,
                                enable_nested_tensor=False)
    with pytest.raises(ValueError, match="layers"):
        Encoder(2, D, H, F_).load_torch(ref)
