"""Tests for scratchlm.decoding.constrained: the allowed-token masks equal brute-force enumeration of the grammar,
and constrained greedy decoding with a real (random) T5 picks the best allowed token at every step."""

import itertools

import pytest
import torch

from scratchlm.decoding import generate
from scratchlm.decoding.constrained import ItemSequenceConstraint
from scratchlm.models.t5 import T5, T5Config

EOS, V = 1, 67
# Multi-token items and an item that is a prefix of another ([5] / [5, 6], [10] / [10, 13]).
FIRST = [[5], [5, 6], [7, 8, 9]]
NEXT = [[10], [11, 12], [10, 13], [14]]


def _valid_sequences(n: int) -> list[list[int]]:
    """Every token sequence the grammar accepts for n items, EOS included (brute force)."""
    if n == 0:
        return [[EOS]]
    seqs = set()
    for first in FIRST:
        for rest in itertools.product(NEXT, repeat=n - 1):
            seqs.add(tuple(first + [t for item in rest for t in item] + [EOS]))
    return [list(s) for s in seqs]


def _brute_allowed(prefix: list[int], n: int) -> set[int]:
    return {s[len(prefix)] for s in _valid_sequences(n) if s[: len(prefix)] == prefix and len(s) > len(prefix)}


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_masks_equal_brute_force_enumeration(n):
    constraint = ItemSequenceConstraint(FIRST, NEXT, [n], eos_id=EOS, vocab_size=V)
    prefixes = {tuple(s[:k]) for s in _valid_sequences(n) for k in range(len(s))}
    assert len(prefixes) > n  # the enumeration is not trivially empty
    for prefix in prefixes:
        mask = constraint(torch.tensor([list(prefix)], dtype=torch.long).reshape(1, len(prefix)))
        assert set(mask[0].nonzero().flatten().tolist()) == _brute_allowed(list(prefix), n), prefix


def test_rows_are_independent_and_finished_rows_allow_everything():
    constraint = ItemSequenceConstraint(FIRST, NEXT, [1, 2], eos_id=EOS, vocab_size=V)
    generated = torch.tensor([[5, EOS, 0], [7, 8, 9]])  # row 0 finished (then padding); row 1 mid-way
    mask = constraint(generated)
    assert mask[0].all()
    assert set(mask[1].nonzero().flatten().tolist()) == {10, 11, 14}


def test_prefix_outside_the_grammar_raises():
    constraint = ItemSequenceConstraint(FIRST, NEXT, [2], eos_id=EOS, vocab_size=V)
    with pytest.raises(ValueError, match="outside the grammar"):
        constraint(torch.tensor([[5, EOS]]))  # EOS after one of two items
    with pytest.raises(ValueError, match="outside the grammar"):
        constraint(torch.tensor([[10]]))  # a next-item spelling first


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="at least one item"):
        ItemSequenceConstraint([], NEXT, [1], eos_id=EOS, vocab_size=V)
    with pytest.raises(ValueError, match=r"token ids in \[0, 67\)"):
        ItemSequenceConstraint([[70]], NEXT, [1], eos_id=EOS, vocab_size=V)
    with pytest.raises(ValueError, match="must not appear inside"):
        ItemSequenceConstraint([[EOS]], NEXT, [1], eos_id=EOS, vocab_size=V)
    with pytest.raises(ValueError, match="ambiguous"):  # 10 continues [5] and also starts a next item
        ItemSequenceConstraint([[5], [5, 10]], NEXT, [2], eos_id=EOS, vocab_size=V)
    with pytest.raises(ValueError, match="n_items"):
        ItemSequenceConstraint(FIRST, NEXT, [-1], eos_id=EOS, vocab_size=V)
    constraint = ItemSequenceConstraint(FIRST, NEXT, [1, 2], eos_id=EOS, vocab_size=V)
    with pytest.raises(ValueError, match="generated must be"):
        constraint(torch.zeros(3, 1, dtype=torch.long))


def _model_and_source():
    torch.manual_seed(0)
    model = T5(T5Config(vocab_size=V, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=48,
                        dropout=0.0, pad_id=0, eos_id=EOS)).eval()
    src = torch.randint(2, V, (4, 11), generator=torch.Generator().manual_seed(1))  # (B, S)
    return model, src


def test_constrained_greedy_writes_n_items_and_picks_the_best_allowed_token():
    model, src = _model_and_source()
    counts = [0, 1, 3, 4]
    constraint = ItemSequenceConstraint(FIRST, NEXT, counts, eos_id=EOS, vocab_size=V)
    out = generate(model, src, 20, greedy=True, allowed_tokens=constraint)  # (B, L)
    free = generate(model, src, 20, greedy=True)
    assert not torch.equal(out, free)  # the random model's free output breaks the grammar; the mask acted
    for b, n in enumerate(counts):
        row = out[b].tolist()
        seq = row[: row.index(EOS) + 1]
        assert seq in _valid_sequences(n)
        # Step by step, the chosen token is the argmax of the teacher-forced logits over the allowed set.
        dec_in = torch.tensor([[0] + seq[:-1]])
        with torch.no_grad():
            logits = model(src[b : b + 1], decoder_input_ids=dec_in).logits[0]  # (len, V)
        for t, tok in enumerate(seq):
            allowed = sorted(_brute_allowed(seq[:t], n))
            best = allowed[int(logits[t, allowed].argmax())]
            assert tok == best, (b, t)


def test_all_true_mask_changes_nothing_and_bad_masks_are_rejected():
    model, src = _model_and_source()
    free = generate(model, src, 8, greedy=True)
    everything = generate(model, src, 8, greedy=True,
                                       allowed_tokens=lambda g: torch.ones(g.shape[0], V, dtype=torch.bool))
    assert torch.equal(free, everything)
    with pytest.raises(ValueError, match="bool mask of shape"):
        generate(model, src, 3, greedy=True, allowed_tokens=lambda g: torch.ones(g.shape[0], V - 1))
