"""scratchlm.models.probes: the order task and the position probe of Chapter 04."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.models import OrderProbe, order_task_batch, with_swapped_twins
from scratchlm.models.probes import A_ID, B_ID, POSITIONS

SIZES = dict(vocab=8, seq_len=8, d_model=16, n_heads=2, n_layers=1)


@pytest.fixture
def one_thread():
    """Tiny models: a second thread only waits (and on a busy machine, many times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_order_task_batch_has_one_a_one_b_and_true_labels():
    x, y = order_task_batch(500, 7, 10, torch.Generator().manual_seed(0))
    assert x.shape == (500, 7) and y.shape == (500,) and x.dtype == y.dtype == torch.long
    assert ((x == A_ID).sum(1) == 1).all() and ((x == B_ID).sum(1) == 1).all()
    assert x.max() < 10
    pos_a, pos_b = (x == A_ID).float().argmax(1), (x == B_ID).float().argmax(1)  # brute force
    assert torch.equal(y, (pos_a < pos_b).long())
    assert 0.4 < y.float().mean() < 0.6  # both labels equally likely
    again, _ = order_task_batch(500, 7, 10, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_swapped_twins_keep_the_token_set_and_flip_the_label():
    x, y = order_task_batch(50, 6, 9, torch.Generator().manual_seed(1))
    x2, y2 = with_swapped_twins(x, y)
    assert x2.shape == (100, 6) and torch.equal(x2[:50], x) and torch.equal(y2[50:], 1 - y)
    assert torch.equal(x2[:50].sort(1).values, x2[50:].sort(1).values)  # the same multiset of tokens
    assert torch.equal((x2[50:] == A_ID), (x == B_ID))


@pytest.mark.parametrize("positions", POSITIONS)
def test_probe_shapes_and_shorter_inputs(positions):
    torch.manual_seed(0)
    probe = OrderProbe(positions, **SIZES)
    x, _ = order_task_batch(5, 8, 8)
    assert probe(x).shape == (5, 2)
    assert probe(x[:, :6]).shape == (5, 2)  # T <= seq_len


def test_probe_without_positions_is_exactly_blind_to_order(one_thread):
    torch.manual_seed(0)
    probe = OrderProbe("none", **SIZES).eval()
    x, y = with_swapped_twins(*order_task_batch(64, 8, 8, torch.Generator().manual_seed(2)))
    with torch.no_grad():
        logits = probe(x)  # (128, 2)
    torch.testing.assert_close(logits[:64], logits[64:], atol=1e-5, rtol=1e-5)
    perm = torch.randperm(8)
    torch.testing.assert_close(probe(x[:, perm]), logits, atol=1e-5, rtol=1e-5)  # any shuffle


def _train(positions: str, seed: int, steps: int = 60) -> float:
    """Held-out twin-pair accuracy after a short AdamW run (about a second on one CPU thread)."""
    T, V = 6, 6
    torch.manual_seed(seed)
    probe = OrderProbe(positions, vocab=V, seq_len=T, d_model=16, n_heads=2, n_layers=1)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = order_task_batch(32, T, V, gen)
        loss = F.cross_entropy(probe(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = with_swapped_twins(*order_task_batch(256, T, V, torch.Generator().manual_seed(99)))
    with torch.no_grad():
        return (probe.eval()(x).argmax(-1) == y).float().mean().item()


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope"])
@pytest.mark.parametrize("seed", [0, 1])
def test_probe_learns_the_order_task_with_positions(one_thread, positions, seed):
    assert _train(positions, seed) > 0.9  # measured 0.95-1.0 for seeds 0-2


def test_probe_without_positions_stays_at_chance(one_thread):
    assert _train("none", seed=0) == 0.5  # twins get identical outputs: exactly one of each pair is right


@pytest.mark.parametrize("kwargs, message", [
    (dict(positions="alibi"), "positions must be one of"), (dict(vocab=2), "vocab must be an int >= 3"),
    (dict(seq_len=1), "seq_len must be an int >= 2"), (dict(d_model=15), "divisible by n_heads"),
    (dict(n_layers=0), "n_layers must be an int >= 1"), (dict(n_heads=2.0), "n_heads must be an int"),
])
def test_probe_bad_config(kwargs, message):
    args = dict(positions="none") | SIZES | kwargs
    with pytest.raises(ValueError, match=message):
        OrderProbe(**args)


def test_bad_inputs():
    probe = OrderProbe("none", **SIZES)
    with pytest.raises(ValueError, match=r"int64 tensor \(B, T\)"):
        probe(torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        probe(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="vocab must be"):
        order_task_batch(4, 8, 2)
    with pytest.raises(ValueError, match="seq_len must be"):
        order_task_batch(4, 1, 8)
    with pytest.raises(ValueError, match=r"x \(n, T\) and y \(n,\)"):
        with_swapped_twins(torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one A"):
        with_swapped_twins(torch.full((2, 4), 5), torch.zeros(2, dtype=torch.long))
