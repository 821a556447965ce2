"""Tests for scratchlm.models.base.sequence_mean_cross_entropy (Chapter 08's multi-task loss)."""

import math

import pytest
import torch

from scratchlm.models import sequence_mean_cross_entropy, token_cross_entropy


def _brute_force(logits, labels):
    rows = []
    for b in range(labels.shape[0]):
        terms = [-torch.log_softmax(logits[b, t].double(), -1)[labels[b, t]].item()
                 for t in range(labels.shape[1]) if labels[b, t] != -100]
        if terms:
            rows.append(sum(terms) / len(terms))
    return sum(rows) / len(rows)


def test_equals_the_mean_of_per_row_means():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 9, generator=g)
    labels = torch.randint(0, 9, (4, 6), generator=g)
    labels[0, 2:] = -100  # a short target (2 tokens) ...
    labels[2, :] = -100  # ... and a row without any: left out of the mean
    assert math.isclose(sequence_mean_cross_entropy(logits, labels).item(), _brute_force(logits, labels), rel_tol=1e-5)


def test_equals_the_token_mean_when_lengths_are_equal_and_differs_when_not():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 7, generator=g)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    torch.testing.assert_close(sequence_mean_cross_entropy(logits, labels), token_cross_entropy(logits, labels))
    labels[1, 1:] = -100  # one row now has a single labelled token: it weighs 1/3 here, 1/11 in the token mean
    assert not torch.isclose(sequence_mean_cross_entropy(logits, labels), token_cross_entropy(logits, labels))


def test_gradient_weight_of_a_row_is_one_over_the_number_of_rows():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (4, 6), generator=g)
    labels[3, 1:] = -100  # row 3: one labelled token
    sequence_mean_cross_entropy(logits, labels).backward()
    p = torch.softmax(logits[3, 0].detach(), -1)
    expected = (p - torch.nn.functional.one_hot(labels[3, 0], 5)) / 4  # d/dz of CE, weighted 1/B
    torch.testing.assert_close(logits.grad[3, 0], expected.float())


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        sequence_mean_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        sequence_mean_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
