"""Tests for scratchlm.data.mlm (MLM 80/10/10, NSP pairs) and scratchlm.data.span_corruption (T5)."""

import random

import pytest
import torch

from scratchlm.data.mlm import MLMCollator, NSPExample, build_nsp_pairs, encode_pair, mask_tokens
from scratchlm.data.span_corruption import (
    SpanCorruptionCollator,
    corrupt_spans,
    random_spans_noise_mask,
    reconstruct_from_spans,
    seq2seq_collate,
)

PAD, CLS, SEP, MASK, V = 0, 1, 2, 3, 1000


def _batch(B=400, T=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=g)  # (B, T) ordinary tokens
    ids[:, 0] = CLS
    ids[:, T // 2] = SEP
    ids[:, -1] = SEP
    lengths = torch.randint(T // 2 + 1, T, (B,), generator=g)
    attn = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.where(attn.bool(), ids, torch.full_like(ids, PAD))
    return ids, attn


def test_mask_tokens_statistics_80_10_10():
    ids, attn = _batch()
    g = torch.Generator().manual_seed(1)
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=(PAD, CLS, SEP),
                                 attention_mask=attn, generator=g)
    special = (ids == CLS) | (ids == SEP) | (attn == 0)
    selected = labels != -100
    # 15 % of the non-special tokens are selected (about 20k samples: tolerance ~4 sigma).
    rate = selected.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01, rate
    # Special tokens and padding are never selected, never changed.
    assert not (selected & special).any()
    assert torch.equal(masked[special], ids[special])
    # Labels carry the original token exactly where selected.
    assert torch.equal(labels[selected], ids[selected])
    # Unselected positions are untouched.
    assert torch.equal(masked[~selected], ids[~selected])
    n = selected.sum().item()
    frac_mask = (masked[selected] == MASK).sum().item() / n
    frac_same = (masked[selected] == ids[selected]).sum().item() / n
    frac_random = 1 - frac_mask - frac_same
    assert abs(frac_mask - 0.8) < 0.02, frac_mask
    # A random replacement equals the original with probability ~1/V, so "same" is ~10 %.
    assert abs(frac_same - 0.1) < 0.015, frac_same
    assert abs(frac_random - 0.1) < 0.015, frac_random
    # Random replacements never produce special tokens.
    replaced = selected & (masked != MASK) & (masked != ids)
    assert not torch.isin(masked[replaced], torch.tensor([PAD, CLS, SEP, MASK])).any()


def test_mask_tokens_is_seeded_and_respects_probability_zero():
    ids, attn = _batch(B=8)
    a = mask_tokens(ids, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, mlm_probability=0.0)
    assert torch.equal(masked, ids) and (labels == -100).all()


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(mlm_probability=1.5), ValueError),
        (dict(mask_fraction=0.95, random_fraction=0.1), ValueError),
        (dict(mask_id=V), ValueError),
        (dict(vocab_size=1), ValueError),
    ],
)
def test_mask_tokens_rejects_bad_arguments(kwargs, err):
    ids, _ = _batch(B=2)
    args = dict(mask_id=MASK, vocab_size=V) | kwargs
    with pytest.raises(err):
        mask_tokens(ids, **args)


def test_mask_tokens_rejects_bad_tensors():
    with pytest.raises(TypeError, match="int64"):
        mask_tokens(torch.zeros(2, 3), mask_id=MASK, vocab_size=V)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        mask_tokens(torch.zeros(3, dtype=torch.long), mask_id=MASK, vocab_size=V)


def test_encode_pair_layout_and_truncation():
    ids, types = encode_pair([10, 11, 12], [20, 21], cls_id=CLS, sep_id=SEP, max_len=16)
    assert ids == [CLS, 10, 11, 12, SEP, 20, 21, SEP]
    assert types == [0, 0, 0, 0, 0, 1, 1, 1]
    ids, types = encode_pair(list(range(100, 110)), [20, 21], cls_id=CLS, sep_id=SEP, max_len=8)
    assert len(ids) == 8 and ids[:4] == [CLS, 100, 101, 102] and ids[-3:] == [20, 21, SEP]
    with pytest.raises(ValueError, match="max_len"):
        encode_pair([1], [2], cls_id=CLS, sep_id=SEP, max_len=3)


def test_build_nsp_pairs_half_random_and_true_successors():
    docs = [[[d * 1000 + s] for s in range(20)] for d in range(30)]  # sentence id encodes (doc, index)
    pairs = build_nsp_pairs(docs, rng=random.Random(0))
    assert len(pairs) == 30 * 19
    frac_random = sum(p.is_random_next for p in pairs) / len(pairs)
    assert abs(frac_random - 0.5) < 0.06, frac_random
    for p in pairs:
        da, sa = divmod(p.a[0], 1000)
        db, sb = divmod(p.b[0], 1000)
        if p.is_random_next:
            assert db != da
        else:
            assert (db, sb) == (da, sa + 1)
    with pytest.raises(ValueError, match="at least 2"):
        build_nsp_pairs([[[1], [2]]], rng=random.Random(0))
    with pytest.raises(TypeError, match="random.Random"):
        build_nsp_pairs(docs, rng=0)


def test_mlm_collator_pads_and_labels_nsp():
    col = MLMCollator(vocab_size=V, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, max_len=12)
    batch = [NSPExample([10, 11], [12], 0), NSPExample([10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20, 21], 1)]
    out = col(batch, generator=torch.Generator().manual_seed(0))
    assert out["input_ids"].shape == (2, 12)
    assert out["attention_mask"][0].tolist() == [1] * 6 + [0] * 6
    assert out["token_type_ids"][0].tolist()[:6] == [0, 0, 0, 0, 1, 1]
    assert out["next_sentence_label"].tolist() == [0, 1]
    assert (out["labels"][out["attention_mask"] == 0] == -100).all()
    with pytest.raises(ValueError, match="mask_id"):
        MLMCollator(vocab_size=V, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=V)
    with pytest.raises(TypeError, match="NSPExample"):
        col(["not ids"])


def test_noise_mask_density_and_span_length():
    g = torch.Generator().manual_seed(0)
    masks = [random_spans_noise_mask(200, 0.15, 3.0, g) for _ in range(300)]
    for m in masks:
        assert m.sum().item() == 30 and not m[0]
    spans = []
    for m in masks:
        starts = (m[1:] & ~m[:-1]).sum().item()
        spans.append(starts)
    mean_span = 30 / (sum(spans) / len(spans))
    assert abs(mean_span - 3.0) < 0.05, mean_span
    stacked = torch.stack(masks).float()  # noise is spread over positions, not only at the end
    assert stacked[:, 1:100].mean() > 0.1 and stacked[:, 100:].mean() > 0.1
    with pytest.raises(ValueError, match="length"):
        random_spans_noise_mask(1)
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_noise_mask(10, 1.5)


def test_span_corruption_reconstructs_exactly():
    g = torch.Generator().manual_seed(1)
    sentinels = list(range(999, 899, -1))
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 80)
        ids = [rng.randint(4, 800) for _ in range(n)]
        mask = random_spans_noise_mask(n, 0.15, 3.0, g)
        inputs, targets = corrupt_spans(ids, mask, sentinels)
        assert reconstruct_from_spans(inputs, targets, sentinels) == ids
        n_spans = sum(t in sentinels for t in inputs)
        assert targets[-1] == sentinels[n_spans]
        assert len(inputs) + len(targets) == n + 2 * n_spans + 1


def test_paper_example():
    words = "Thank you for inviting me to your party last week .".split()
    ids = list(range(len(words)))
    mask = [w in {"for", "inviting", "last"} for w in words]
    X, Y, Z = 100, 101, 102
    inputs, targets = corrupt_spans(ids, mask, [X, Y, Z])
    assert inputs == [0, 1, X, 4, 5, 6, 7, Y, 9, 10]
    assert targets == [X, 2, 3, Y, 8, Z]


def test_span_collator_and_seq2seq_collate():
    col = SpanCorruptionCollator(sentinel_ids=tuple(range(999, 979, -1)), pad_id=0, eos_id=1)
    out = col([list(range(10, 50)), list(range(10, 30))], generator=torch.Generator().manual_seed(0))
    labels, dec = out["labels"], out["decoder_input_ids"]
    assert dec[:, 0].tolist() == [0, 0]
    valid = labels[:, 1:] != -100  # decoder position t+1 sees label t
    assert torch.equal(dec[:, 1:][valid], labels[:, :-1][valid])  # shifted right by one
    assert (out["input_ids"][out["attention_mask"] == 0] == 0).all()
    with pytest.raises(ValueError, match="empty"):
        seq2seq_collate([([1], [])], pad_id=0, decoder_start_id=0)
    with pytest.raises(ValueError, match="sentinel"):
        SpanCorruptionCollator(sentinel_ids=(5,), pad_id=0, eos_id=1)
