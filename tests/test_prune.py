"""Pruning (scratchlm.compress.prune, Chapter 12).

Unstructured: our masks equal ``torch.nn.utils.prune.l1_unstructured`` / ``global_unstructured``
(L1Unstructured) on the same weights; masked forward, gradients and make_permanent behave as stated.
Structured: removing FFN neurons whose outgoing weights are zero leaves outputs bitwise unchanged
(integer-valued data, so no rounding can hide a difference), the parameter count drops by the
formula, and the Taylor score equals the brute-force loss change when the loss is linear in the
hidden activations (first-order Taylor is then exact).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as tprune
from torch.testing import assert_close

from scratchlm.compress import (
    global_magnitude_masks,
    magnitude_mask,
    magnitude_prune,
    make_permanent,
    neuron_importance_l2,
    neuron_importance_taylor,
    prune_linear_pair,
    select_neurons,
    sparsity_report,
)


def _mlp(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0, 0.123])
def test_layer_masks_equal_torch_l1_unstructured(sparsity):
    model, ref = _mlp(), _mlp()
    masks = magnitude_prune(model, sparsity, scope="layer")
    for name, m in ref.named_modules():
        if isinstance(m, nn.Linear):
            tprune.l1_unstructured(m, "weight", amount=sparsity)
            assert torch.equal(masks[name], m.weight_mask), name
            assert torch.equal(magnitude_mask(m.weight_orig, sparsity), m.weight_mask)


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8])
def test_global_masks_equal_torch_global_unstructured(sparsity):
    model, ref = _mlp(), _mlp()
    masks = magnitude_prune(model, sparsity, scope="global")
    params = [(m, "weight") for m in ref.modules() if isinstance(m, nn.Linear)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    for (m, _), ours in zip(params, masks.values(), strict=True):
        assert torch.equal(ours, m.weight_mask)
    total = sum(m.weight.numel() for m, _ in params)
    assert sum(int((mk == 0).sum()) for mk in masks.values()) == round(sparsity * total)
    per_layer = [float((mk == 0).float().mean()) for mk in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # global pruning does not prune every layer equally


def test_masked_forward_gradients_and_make_permanent():
    model = _mlp()
    dense = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    masks = magnitude_prune(model, 0.5)
    x = torch.randn(5, 16)
    ref = F.relu(F.linear(x, dense[0] * masks["0"], model[0].bias))
    ref = F.relu(F.linear(ref, dense[1] * masks["2"], model[2].bias))
    ref = F.linear(ref, dense[2] * masks["4"], model[4].bias)
    assert_close(model(x), ref)
    model(x).sum().backward()
    grad = model[0].parametrizations.weight.original.grad
    assert bool((grad[masks["0"] == 0] == 0).all())  # pruned weights get no gradient
    report = sparsity_report(model)
    assert [r["zeros"] for r in report.rows] == [round(0.5 * n) for n in (16 * 64, 64 * 8, 8 * 4)]
    assert make_permanent(model) == 3
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert isinstance(model[0].weight, nn.Parameter)
    assert torch.equal(model[0].weight.detach(), dense[0] * masks["0"])
    assert sparsity_report(model).total_sparsity == pytest.approx(report.total_sparsity)
    assert "total" in str(report)


def test_iterative_pruning_keeps_earlier_zeros():
    model = _mlp()
    first = magnitude_prune(model, 0.3)
    second = magnitude_prune(model, 0.6)
    for name in first:
        assert bool((second[name][first[name] == 0] == 0).all())
        assert int((second[name] == 0).sum()) == round(0.6 * second[name].numel())
    assert sum(parametrize.is_parametrized(m) for m in model.modules()) == 3  # mask replaced, not stacked


def test_filter_and_bad_inputs():
    model = _mlp()
    masks = magnitude_prune(model, 0.5, filter_fn=lambda name, _: name != "4")
    assert set(masks) == {"0", "2"} and not parametrize.is_parametrized(model[4])
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="sparsity must be a float"):
            magnitude_prune(_mlp(), bad)
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(_mlp(), 0.5, scope="row")
    with pytest.raises(ValueError, match="no nn.Linear"):
        magnitude_prune(nn.ReLU(), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        global_magnitude_masks([torch.ones(3, dtype=torch.int64)], 0.5)


# ----------------------------------------------------------------------------- structured


def _integer_ffn(d=8, hidden=32, out=8, dead=(1, 4, 5, 20, 31)):
    """An FFN with small-integer weights (exact float arithmetic) and zero outgoing columns at ``dead``."""
    g = torch.Generator().manual_seed(0)
    lin_in, lin_out = nn.Linear(d, hidden), nn.Linear(hidden, out)
    with torch.no_grad():
        for p in (*lin_in.parameters(), *lin_out.parameters()):
            p.copy_(torch.randint(-3, 4, p.shape, generator=g).float())
        lin_out.weight[:, list(dead)] = 0.0
    return lin_in, lin_out


def test_removing_neurons_with_zero_outgoing_weights_is_exact():
    dead = (1, 4, 5, 20, 31)
    lin_in, lin_out = _integer_ffn(dead=dead)
    scores = neuron_importance_l2(lin_in, lin_out)
    assert bool((scores[list(dead)] == 0).all()) and int((scores == 0).sum()) == len(dead)
    keep = select_neurons(scores, len(dead) / 32)
    assert sorted(set(range(32)) - set(keep.tolist())) == list(dead)
    pair = prune_linear_pair(lin_in, lin_out, keep)
    x = torch.randint(-4, 5, (6, 3, 8)).float()
    with torch.no_grad():
        y = lin_out(F.relu(lin_in(x)))
        y_pruned = pair.linear_out(F.relu(pair.linear_in(x)))
    assert torch.equal(y, y_pruned)
    n_before = sum(p.numel() for p in (*lin_in.parameters(), *lin_out.parameters()))
    n_after = sum(p.numel() for p in (*pair.linear_in.parameters(), *pair.linear_out.parameters()))
    assert n_before - n_after == len(dead) * (8 + 1 + 8)
    assert (pair.linear_in.out_features, pair.linear_out.in_features) == (27, 27)


def test_removing_zero_outgoing_neurons_float_data():
    torch.manual_seed(0)
    lin_in, lin_out = nn.Linear(16, 64, dtype=torch.float64), nn.Linear(64, 16, dtype=torch.float64)
    with torch.no_grad():
        lin_out.weight[:, ::3] = 0.0
    keep = torch.ones(64, dtype=torch.bool)
    keep[::3] = False
    pair = prune_linear_pair(lin_in, lin_out, keep)
    x = torch.randn(4, 16, dtype=torch.float64)
    with torch.no_grad():
        assert_close(pair.linear_out(F.gelu(pair.linear_in(x))), lin_out(F.gelu(lin_in(x))), rtol=1e-13, atol=1e-13)


def test_taylor_score_equals_brute_force_when_loss_is_linear_in_activations():
    torch.manual_seed(0)
    lin_in, lin_out = nn.Linear(8, 12), nn.Linear(12, 5)
    x = torch.randn(7, 3, 8)
    r = torch.randn(7, 3, 5)

    def loss_of(a_in, a_out):
        return (a_out(F.gelu(a_in(x))) * r).sum()  # linear in the hidden activations

    scores = neuron_importance_taylor(lin_out, lambda: loss_of(lin_in, lin_out))
    assert lin_in.weight.grad is None  # autograd.grad: no side effects on .grad
    with torch.no_grad():
        base = loss_of(lin_in, lin_out)
        brute = torch.stack([
            (loss_of(*prune_linear_pair(lin_in, lin_out, torch.tensor([k for k in range(12) if k != j]))[:2]) - base).abs()
            for j in range(12)
        ])
    assert_close(scores, brute, rtol=1e-4, atol=1e-4)


def test_structured_bad_inputs():
    lin_in, lin_out = nn.Linear(4, 8), nn.Linear(8, 2)
    with pytest.raises(ValueError, match="must equal"):
        neuron_importance_l2(lin_in, nn.Linear(7, 2))
    with pytest.raises(TypeError, match="two nn.Linear"):
        prune_linear_pair(lin_in, nn.ReLU(), torch.tensor([0]))
    with pytest.raises(ValueError, match="between 1 and 8"):
        prune_linear_pair(lin_in, lin_out, torch.tensor([9]))
    with pytest.raises(ValueError, match="shape \\(8,\\)"):
        prune_linear_pair(lin_in, lin_out, torch.ones(7, dtype=torch.bool))
    with pytest.raises(ValueError, match="remove all"):
        select_neurons(torch.ones(8), 1.0)
    with pytest.raises(ValueError, match="never called"):
        neuron_importance_taylor(lin_out, lambda: lin_in(torch.randn(2, 4)).sum())
