"""Tests for scratchlm.runtime.torch_basics (Chapter 01), each against an independent reference."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.runtime.torch_basics import (
    ParameterCount,
    TinyBlock,
    TinyCharLM,
    compare_times,
    count_parameters,
    dtype_table,
    finite_difference_grad,
    gelu_tanh,
    parameter_table,
    time_fn,
)

# ----------------------------------------------------------------------------- finite differences


def test_finite_difference_matches_autograd_float64():
    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])

    def loss(weight):
        return F.cross_entropy(x @ weight, y)

    w_auto = w.clone().requires_grad_(True)
    loss(w_auto).backward()
    numeric = finite_difference_grad(loss, w.clone())
    torch.testing.assert_close(numeric, w_auto.grad, atol=1e-8, rtol=1e-6)


def test_finite_difference_matches_closed_form_and_restores_input():
    x = torch.tensor([[0.5, -1.0], [2.0, 3.0]], dtype=torch.float64)
    before = x.clone()
    grad = finite_difference_grad(lambda t: (t**3).sum(), x)
    torch.testing.assert_close(grad, 3 * before**2, atol=1e-6, rtol=1e-6)  # d/dx x³ = 3x²
    assert torch.equal(x, before)


def test_finite_difference_detects_a_wrong_gradient():
    # A hand-written gradient with a sign error must disagree with the numeric one.
    x = torch.randn(6, dtype=torch.float64)
    wrong = -torch.cos(x)  # d/dx sin(x) is +cos(x)
    numeric = finite_difference_grad(lambda t: t.sin().sum(), x)
    assert not torch.allclose(numeric, wrong, atol=1e-4)


def test_finite_difference_bad_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        finite_difference_grad(lambda t: t.sum(), [1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        finite_difference_grad(lambda t: t.sum(), torch.arange(3))
    with pytest.raises(ValueError, match="eps"):
        finite_difference_grad(lambda t: t.sum(), torch.ones(3), eps=0.0)
    with pytest.raises(ValueError, match="scalar"):
        finite_difference_grad(lambda t: t * 2, torch.ones(3))
    with pytest.raises(TypeError, match="callable"):
        finite_difference_grad("sum", torch.ones(3))


# ----------------------------------------------------------------------------- timing


def test_time_fn_runs_warmup_plus_repeats_and_returns_a_median():
    calls = []
    ms = time_fn(lambda a, b=0: calls.append((a, b)), 1, b=2, warmup=2, repeats=5)
    assert len(calls) == 7 and calls[0] == (1, 2)
    assert isinstance(ms, float) and ms >= 0.0


def test_time_fn_bad_input():
    with pytest.raises(TypeError, match="callable"):
        time_fn(42)
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_fn(lambda: None, warmup=-1)


def test_compare_times_interleaves_rounds():
    order = []
    fns = {"a": lambda x: order.append(("a", x)), "b": lambda x: order.append(("b", x))}
    result = compare_times(fns, 7, rounds=3, warmup=1, repeats=2)
    assert set(result) == {"a", "b"} and all(v >= 0.0 for v in result.values())
    names = [name for name, _ in order]
    # round 1: 1 warm-up + 2 timed each; rounds 2-3: 2 timed each, taking turns
    assert names == ["a"] * 3 + ["b"] * 3 + (["a"] * 2 + ["b"] * 2) * 2
    assert all(x == 7 for _, x in order)


def test_compare_times_bad_input():
    with pytest.raises(ValueError, match="non-empty dict"):
        compare_times({})
    with pytest.raises(TypeError, match=r"fns\['x'\] must be callable"):
        compare_times({"x": 3})
    with pytest.raises(ValueError, match="rounds"):
        compare_times({"x": lambda: None}, rounds=0)


# ----------------------------------------------------------------------------- parameters


def test_count_parameters_against_brute_force_and_freezing():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    expected_total = 3 * 4 + 4 + 4 * 2 + 2
    assert count_parameters(model) == ParameterCount(total=expected_total, trainable=expected_total)
    model[0].requires_grad_(False)
    counts = count_parameters(model)
    assert counts.trainable == 4 * 2 + 2 and counts.frozen == 3 * 4 + 4


def test_count_parameters_counts_shared_weights_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # weight tying
    model = nn.ModuleDict(dict(emb=emb, head=head))
    assert count_parameters(model).total == 40


def test_parameter_table_rows_and_groups():
    model = TinyCharLM(vocab_size=11, block_size=8, d_model=16, n_heads=2, n_layers=2)
    rows = parameter_table(model)
    assert [r["name"] for r in rows] == [n for n, _ in model.named_parameters()]
    assert sum(r["numel"] for r in rows) == count_parameters(model).total
    model.blocks[0].requires_grad_(False)
    model.blocks[1].qkv.requires_grad_(False)
    groups = {r["name"]: r for r in parameter_table(model, depth=2)}
    assert groups["blocks.0"]["trainable"] == "no"
    assert groups["blocks.1"]["trainable"] == "partly"
    assert groups["tok_emb.weight"]["numel"] == 11 * 16
    assert groups["tok_emb.weight"]["trainable"] == "yes" and "shape" not in groups["tok_emb.weight"]
    assert sum(r["numel"] for r in groups.values()) == count_parameters(model).total


def test_parameter_helpers_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters(torch.ones(3))
    with pytest.raises(ValueError, match="depth"):
        parameter_table(nn.Linear(2, 2), depth=0)


# ----------------------------------------------------------------------------- dtypes


def test_dtype_table_matches_ieee_facts():
    rows = {r["dtype"]: r for r in dtype_table()}
    assert rows["float32"]["eps"] == 2.0**-23 and rows["float32"]["bytes"] == 4
    assert rows["bfloat16"]["eps"] == 2.0**-7 and rows["bfloat16"]["bytes"] == 2
    assert rows["float16"]["max"] == 65504.0
    assert rows["bfloat16"]["max"] == pytest.approx(3.3895e38, rel=1e-4)
    # 1 + eps is representable, 1 + eps/4 rounds back to 1 (the definition of eps)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        eps = torch.finfo(dtype).eps
        one = torch.tensor(1.0, dtype=dtype)
        assert (one + eps) != one and (one + eps / 4) == one


def test_dtype_table_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        dtype_table([torch.int64])


# ----------------------------------------------------------------------------- specimens


def test_gelu_tanh_matches_builtin():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"))


def test_tiny_block_matches_transformer_encoder_layer():
    torch.manual_seed(0)
    C, H, T = 16, 4, 7
    block = TinyBlock(C, H).eval()
    ref = nn.TransformerEncoderLayer(
        C, H, dim_feedforward=4 * C, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    ).eval()
    with torch.no_grad():  # copy our weights into PyTorch's layer: a name map
        ref.self_attn.in_proj_weight.copy_(block.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(block.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(block.proj.weight)
        ref.self_attn.out_proj.bias.copy_(block.proj.bias)
        for ours, theirs in [(block.ln_1, ref.norm1), (block.ln_2, ref.norm2),
                             (block.fc, ref.linear1), (block.fc_out, ref.linear2)]:
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
    x = torch.randn(3, T, C)
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref(x, src_mask=mask, is_causal=True), atol=1e-5, rtol=1e-5)


def test_tiny_block_is_causal():
    torch.manual_seed(0)
    block = TinyBlock(8, 2).eval()
    x = torch.randn(1, 6, 8)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # change the future only
    with torch.no_grad():
        torch.testing.assert_close(block(x)[:, :4], block(x2)[:, :4])
        assert not torch.allclose(block(x)[:, 4:], block(x2)[:, 4:])


def test_tiny_char_lm_loss_and_shapes():
    torch.manual_seed(0)
    model = TinyCharLM(vocab_size=13, block_size=8, d_model=16, n_heads=2)
    idx = torch.randint(0, 13, (2, 8))
    targets = torch.randint(0, 13, (2, 8))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 8, 13)
    manual = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, manual)
    assert abs(loss.item() - math.log(13)) < 1.0  # an untrained model is near uniform


def test_tiny_models_bad_input():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        TinyBlock(10, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyCharLM(vocab_size=0, block_size=8, d_model=8, n_heads=2)
    model = TinyCharLM(vocab_size=5, block_size=4, d_model=8, n_heads=2)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\) long"):
        model(torch.zeros(1, 4))
