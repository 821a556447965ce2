"""Tests for scratchlm.data.lm (Chapter 02): windows, random batches, padding collate, HF datasets."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from scratchlm.constants import IGNORE_INDEX
from scratchlm.data import SlidingWindowDataset, hf_text_dataset, pad_collate, pad_sequences, random_lm_batch
from scratchlm.data.corpora import load_shakespeare
from scratchlm.tokenizers import CharTokenizer


@pytest.mark.parametrize(("n", "block", "stride"), [(100, 8, None), (100, 8, 3), (9, 8, None), (50, 7, 1), (64, 16, 20)])
def test_sliding_windows_match_brute_force(n, block, stride):
    ids = list(range(1000, 1000 + n))
    ds = SlidingWindowDataset(ids, block, stride)
    step = stride or block
    expected = [
        (ids[s : s + block], ids[s + 1 : s + block + 1]) for s in range(0, n, step) if s + block + 1 <= n
    ]
    assert len(ds) == len(expected)
    for k, (x, y) in enumerate(expected):
        got_x, got_y = ds[k]
        assert got_x.dtype == torch.long and got_x.tolist() == x and got_y.tolist() == y
    assert ds[-1][0].tolist() == expected[-1][0]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_sliding_window_accepts_tensors_and_numpy():
    a = SlidingWindowDataset(torch.arange(20), 4)
    b = SlidingWindowDataset(np.arange(20, dtype=np.int32), 4)
    assert len(a) == len(b) == 4
    assert torch.equal(a[2][1], b[2][1])


def test_sliding_window_bad_input():
    with pytest.raises(ValueError, match="block_size \\+ 1 = 9"):
        SlidingWindowDataset(list(range(8)), 8)
    with pytest.raises(TypeError, match="block_size must be an int"):
        SlidingWindowDataset(list(range(20)), 4.0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        SlidingWindowDataset(list(range(20)), 4, stride=0)
    with pytest.raises(TypeError, match="integer dtype"):
        SlidingWindowDataset(torch.rand(20), 4)
    with pytest.raises(ValueError, match="1-D"):
        SlidingWindowDataset(torch.zeros(2, 20, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="ints only"):
        SlidingWindowDataset([1, 2, "3", 4, 5, 6], 2)


def test_random_lm_batch_is_reproducible_and_shifted():
    data = torch.arange(500) * 7 % 101  # a stream where every window is identifiable by its start
    x1, y1 = random_lm_batch(data, 6, 16, torch.Generator().manual_seed(3))
    x2, y2 = random_lm_batch(data, 6, 16, torch.Generator().manual_seed(3))
    x3, _ = random_lm_batch(data, 6, 16, torch.Generator().manual_seed(4))
    assert x1.shape == y1.shape == (6, 16) and x1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    # Same draw as nanoGPT's get_batch with the same generator state.
    g = torch.Generator().manual_seed(3)
    ix = torch.randint(len(data) - 16, (6,), generator=g)
    assert torch.equal(x1, torch.stack([data[i : i + 16] for i in ix]))
    assert torch.equal(y1, torch.stack([data[i + 1 : i + 17] for i in ix]))


def test_random_lm_batch_bad_input():
    with pytest.raises(ValueError, match="block_size \\+ 1"):
        random_lm_batch(torch.arange(10), 2, 10)
    with pytest.raises(TypeError, match="Generator"):
        random_lm_batch(torch.arange(100), 2, 10, generator=3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        random_lm_batch(torch.arange(100), 0, 10)


def test_pad_collate_matches_pad_sequence_and_masks_the_loss():
    seqs = [torch.tensor([5, 6, 7, 8]), torch.tensor([9]), torch.tensor([1, 2])]
    batch = pad_collate(seqs, pad_id=0)
    assert torch.equal(batch["input_ids"], pad_sequence(seqs, batch_first=True, padding_value=0))
    assert torch.equal(batch["labels"], pad_sequence(seqs, batch_first=True, padding_value=IGNORE_INDEX))
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    # The loss over the padded batch equals the loss over the real tokens only.
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 10)  # (B, T, V)
    padded_loss = F.cross_entropy(logits.view(-1, 10), batch["labels"].view(-1))
    keep = batch["attention_mask"].view(-1).bool()
    real_loss = F.cross_entropy(logits.view(-1, 10)[keep], batch["input_ids"].view(-1)[keep])
    torch.testing.assert_close(padded_loss, real_loss)


def test_pad_collate_left_padding_pairs_and_dicts():
    left = pad_collate([[1, 2, 3], [4]], pad_id=0, padding_side="left", max_length=4)
    assert left["input_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 4]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="pre-shifted"):  # labels are unshifted under the model contract
        pad_collate([(torch.tensor([1, 2]), torch.tensor([2, 3])), ([7], [8])], pad_id=0)
    dicts = pad_collate(
        [{"input_ids": [1, 2, 3], "token_type_ids": [0, 0, 1], "labels": 1}, {"input_ids": [4], "token_type_ids": [0], "labels": 0}],
        pad_id=9,
    )
    assert dicts["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert dicts["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert dicts["labels"].tolist() == [1, 0]


def test_pad_collate_bad_input():
    with pytest.raises(ValueError, match="non-empty list"):
        pad_collate([], 0)
    with pytest.raises(TypeError, match="pad_id must be an int"):
        pad_collate([[1]], None)
    with pytest.raises(ValueError, match="padding_side"):
        pad_collate([[1]], 0, padding_side="middle")
    with pytest.raises(ValueError, match="more than max_length=2"):
        pad_collate([[1, 2, 3]], 0, max_length=2)
    with pytest.raises(ValueError, match="without 'input_ids'"):
        pad_collate([{"ids": [1]}], 0)
    with pytest.raises(ValueError, match="1 labels"):
        pad_collate([{"input_ids": [1, 2], "labels": [3]}], 0)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=5\)"):
        pad_collate([[1, 7]], 0, vocab_size=5)


def test_pad_sequences_is_the_one_padding_primitive():
    rows = [[1, 2, 3], [4], [5, 6]]
    right, mask = pad_sequences(rows, 0)
    assert torch.equal(right, pad_sequence([torch.tensor(r) for r in rows], batch_first=True))
    assert torch.equal(mask, (right != 0).long())
    left, lmask = pad_sequences(rows, 9, side="left", width=4)
    assert left.tolist() == [[9, 1, 2, 3], [9, 9, 9, 4], [9, 9, 5, 6]]
    assert torch.equal(lmask, (left != 9).long())
    with pytest.raises(ValueError, match="width"):
        pad_sequences(rows, 0, width=2)
    with pytest.raises(ValueError, match="present in some examples"):
        pad_collate([{"input_ids": [1], "token_type_ids": [0]}, {"input_ids": [2]}], 0)
    with pytest.raises(TypeError, match="integer dtype"):
        pad_collate([torch.tensor([0.5, 1.0])], 0)


def test_dataloader_over_windows():
    text = load_shakespeare()[:5000]
    tok = CharTokenizer(text, special_tokens=["<pad>"])
    ds = SlidingWindowDataset(tok.encode(text), 32, stride=16)
    loader = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    x, y = next(iter(loader))  # equal-length windows: the default collate stacks them
    assert x.shape == y.shape == (8, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert sum(len(b[0]) for b in loader) == len(ds)
    ids = [tok.encode(line) for line in text.splitlines() if line]  # variable-length lines need padding
    padded = next(iter(DataLoader(ids, batch_size=8, collate_fn=functools.partial(pad_collate, pad_id=tok.pad_id))))
    assert padded["input_ids"].shape[0] == 8 and not bool(padded["attention_mask"].all())


def test_hf_text_dataset_from_file_and_list(tmp_path):
    text = load_shakespeare()[:3000]
    path = tmp_path / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    tok = CharTokenizer(text)
    lines = hf_text_dataset(path, tok)
    assert sum(lines["length"]) == len(text)  # line breaks kept: the lines add up to the file
    assert [i for row in lines["input_ids"] for i in row] == tok.encode(text)
    blocks = hf_text_dataset(path, tok, block_size=64)
    assert len(blocks) == len(text) // 64
    assert blocks[3]["input_ids"] == tok.encode(text[192:256]) == blocks[3]["labels"]
    from_list = hf_text_dataset(["to be", "", "or not"], tok.encode, drop_empty=True)
    assert from_list["input_ids"] == [tok.encode("to be"), tok.encode("or not")]


def test_hf_text_dataset_bad_input(tmp_path):
    tok = CharTokenizer("abc")
    with pytest.raises(FileNotFoundError, match="no text file"):
        hf_text_dataset(tmp_path / "missing.txt", tok)
    with pytest.raises(TypeError, match="tokenizer must have"):
        hf_text_dataset(["abc"], 42)
    with pytest.raises(TypeError, match="source must be"):
        hf_text_dataset([1, 2], tok)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        hf_text_dataset(["abc"], tok, block_size=0)
