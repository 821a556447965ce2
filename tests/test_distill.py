"""Distillation loss (scratchlm.compress.distill, Chapter 12): against a hand computation, against
``F.kl_div(..., log_target=True)`` and ``F.cross_entropy``, token-level masking, and the T² gradient
scaling of Hinton et al. (2015)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from scratchlm.compress import distillation_loss


def test_matches_a_hand_computation():
    s = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    t = [[2.0, 0.5, 0.0], [0.0, 1.0, 1.0]]
    y = [0, 2]
    T, alpha = 2.0, 0.7

    def softmax(z):
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    kl = sum(sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(tr), softmax(sr), strict=True))
             for sr, tr in zip(s, t, strict=True)) / 2
    ce = sum(-math.log(math.exp(sr[yi]) / sum(math.exp(v) for v in sr)) for sr, yi in zip(s, y, strict=True)) / 2
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = distillation_loss(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64),
                            torch.tensor(y), T=T, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_matches_kl_div_with_log_targets_and_cross_entropy(T):
    torch.manual_seed(0)
    s, t = torch.randn(6, 11), torch.randn(6, 11) * 2
    y = torch.randint(0, 11, (6,))
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True)
    assert_close(distillation_loss(s, t, y, T=T, alpha=1.0), T * T * kl)
    assert_close(distillation_loss(s, t, y, T=T, alpha=0.0), F.cross_entropy(s, y))
    assert_close(distillation_loss(s, t, y, T=T, alpha=0.25), 0.25 * T * T * kl + 0.75 * F.cross_entropy(s, y))
    assert_close(distillation_loss(s, t, None, T=T, alpha=1.0), T * T * kl)


def test_token_level_ignores_masked_positions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[0, 3:] = -100  # padding / prompt tokens
    y[1, 0] = -100
    keep = y != -100
    got = distillation_loss(s, t, y, T=3.0, alpha=0.4)
    expected = distillation_loss(s[keep], t[keep], y[keep], T=3.0, alpha=0.4)  # only the kept positions
    assert_close(got, expected)
    ce = F.cross_entropy(s.reshape(-1, 7), y.reshape(-1), ignore_index=-100)
    assert_close(distillation_loss(s, t, y, T=3.0, alpha=0.0), ce)


def test_t_squared_keeps_the_soft_gradient_scale_independent_of_t():
    """For large T and zero-mean logits, ∂(T²·KL)/∂z_s → (z_s − z_t)/(V·N) whatever T is."""
    torch.manual_seed(0)
    N, V = 4, 10
    zs, zt = torch.randn(N, V, dtype=torch.float64), torch.randn(N, V, dtype=torch.float64)
    zs, zt = zs - zs.mean(-1, keepdim=True), zt - zt.mean(-1, keepdim=True)
    limit = (zs - zt) / (V * N)
    grads = {}
    for T in (1.0, 50.0, 100.0):
        s = zs.clone().requires_grad_(True)
        distillation_loss(s, zt, None, T=T, alpha=1.0).backward()
        grads[T] = s.grad
    rel = {T: float((grads[T] - limit).norm() / limit.norm()) for T in grads}
    assert rel[100.0] < rel[50.0] < 0.05 and rel[1.0] > 0.2  # the distance to the limit shrinks like 1/T
    # without T² the soft gradient would shrink like 1/T²
    assert grads[100.0].norm() / (100.0**2) < 1e-3 * grads[1.0].norm()


def test_teacher_gets_no_gradient():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    distillation_loss(s, t, torch.tensor([0, 1, 2])).backward()
    assert s.grad is not None and t.grad is None


def test_bad_inputs():
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, torch.randn(3, 5), y)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, y, T=0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, t, y, alpha=1.5)
    with pytest.raises(ValueError, match="labels are needed"):
        distillation_loss(s, t, None, alpha=0.5)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        distillation_loss(s, t, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer tensor"):
        distillation_loss(s, t, y.float())
    with pytest.raises(TypeError, match="tensors"):
        distillation_loss(s.tolist(), t, y)
