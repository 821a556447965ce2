"""Chapter 09 task data: builders through 🤗 datasets, bucketing, the pure get_batch, and bad input."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from scratchlm.constants import IGNORE_INDEX
from scratchlm.data import UPOS_TAGS, load_sms_spam, minilm_files
from scratchlm.finetune import (
    SMS_LABELS,
    align_first_subword,
    bucketed_batches,
    check_task_fits,
    collate_rows,
    make_task_get_batch,
    padding_share,
    pair_task,
    random_batches,
    rasbt_balanced_split,
    sms_spam_task,
    sorted_batches,
    stsb_task,
    tagging_task,
    text_task,
    ud_pos_task,
)
from scratchlm.models import BertConfig, BertModel, GPT, GPTConfig
from scratchlm.tokenizers import WordPieceTokenizer


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer.from_vocab_file(minilm_files().vocab)


@pytest.fixture(scope="module")
def tiny_bert():
    return BertModel(BertConfig(vocab_size=30522, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_positions=64))


# ------------------------------------------------------------------------------------ batching

def test_bucketed_batches_cover_every_index_once_and_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(1, 200) for _ in range(1000)]
    for make in (lambda: random_batches(lengths, 16, seed=3), lambda: bucketed_batches(lengths, 16, seed=3)):
        batches = make()
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(1000))
        assert all(1 <= len(b) <= 16 for b in batches)
    plain, bucketed = random_batches(lengths, 16, seed=3), bucketed_batches(lengths, 16, seed=3)
    assert padding_share(bucketed, lengths) < 0.1 < 0.3 < padding_share(plain, lengths)
    # a fresh seed gives another order; the same seed the same batches (pure)
    assert bucketed_batches(lengths, 16, seed=3) == bucketed
    assert bucketed_batches(lengths, 16, seed=4) != bucketed
    # one pool per batch = no sorting at all: the same padding as random batches of that order
    assert padding_share(bucketed_batches(lengths, 16, seed=3, pool_batches=1), lengths) > 0.3


def test_padding_share_by_hand():
    # batches [0, 1] -> max 4, slots 8, real 5; [2] -> slots 2, real 2: share = 1 - 7/10
    assert padding_share([[0, 1], [2]], [1, 4, 2]) == pytest.approx(0.3)
    assert padding_share(sorted_batches([3, 3, 1, 1], 2), [3, 3, 1, 1]) == 0.0


@pytest.mark.parametrize("bad", [[], [0, 3], "abc"])
def test_batching_rejects_bad_lengths(bad):
    with pytest.raises(ValueError, match="length"):
        bucketed_batches(bad, 4, seed=0)


def test_batching_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        random_batches([1, 2], 0, seed=0)
    with pytest.raises(ValueError, match="pool_batches"):
        bucketed_batches([1, 2], 1, seed=0, pool_batches=0)


def test_collate_rows_pads_each_column_family():
    rows = {"input_ids": [[1, 2, 3], [4]], "token_type_ids": [[0, 0, 1], [0]], "labels": [[5, IGNORE_INDEX, 6], [7]]}
    out = collate_rows(rows, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[5, IGNORE_INDEX, 6], [7, IGNORE_INDEX, IGNORE_INDEX]]
    pair = collate_rows({"input_ids_a": [[1], [2, 3]], "input_ids_b": [[4, 5, 6], [7]], "labels": [0.5, 1.0]}, 0)
    assert pair["input_ids_a"].shape == (2, 2) and pair["input_ids_b"].shape == (2, 3)
    assert pair["labels"].dtype == torch.float32
    assert collate_rows({"input_ids": [[1]], "labels": [1]}, 0)["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="no input_ids"):
        collate_rows({"labels": [1]}, 0)


# ------------------------------------------------------------------------------------ builders

def test_rasbt_split_sizes_balance_and_determinism():
    rows = load_sms_spam()
    train, val, test = rasbt_balanced_split(rows)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)  # ⌊0.7·1494⌋, ⌊0.1·1494⌋, rest
    everything = train + val + test
    assert sum(r[0] == "spam" for r in everything) == 747 == sum(r[0] == "ham" for r in everything)
    assert rasbt_balanced_split(rows) == (train, val, test)
    assert rasbt_balanced_split(rows, seed=1) != (train, val, test)


def test_sms_task_full_protocol_is_stratified(tok):
    task = sms_spam_task(tok, protocol="full", warn=False)
    sizes = task.sizes()
    assert sum(sizes.values()) == 5574
    for split in ("train", "val", "test"):
        rate = float(task.splits[split][:]["labels"].float().mean())
        assert rate == pytest.approx(747 / 5574, abs=0.005)
    with pytest.raises(ValueError, match="protocol"):
        sms_spam_task(tok, protocol="nope")


def test_text_task_tokenises_like_the_tokenizer_and_counts_truncation(tok):
    rows = {"train": [("spam", "WIN a FREE prize now!!!"), ("ham", "ok see you at 5")], "test": [(0, "hi")]}
    with pytest.warns(UserWarning, match="truncated"):
        task = text_task("t", rows, tok, label_names=SMS_LABELS, max_length=8)
    assert task.truncated == {"train": 1, "test": 0}  # 10 tokens cut to 8; 7 kept
    ids = task.splits["train"][0]["input_ids"].tolist()
    assert ids == tok.encode("WIN a FREE prize now!!!", max_length=8)
    assert task.splits["train"][:]["labels"].tolist() == [1, 0]
    assert task.splits["test"][:]["labels"].tolist() == [0]
    # a cross-encoder pair: [CLS] a [SEP] b [SEP] with token types, as the tokenizer's encode_pair
    pairs = text_task("p", {"train": [(2.5, "a man eats", "a person is eating food")]}, tok, max_length=64)
    ref = tok.encode_pair("a man eats", "a person is eating food")
    assert pairs.splits["train"][0]["input_ids"].tolist() == ref["input_ids"]
    assert pairs.splits["train"][0]["token_type_ids"].tolist() == ref["token_type_ids"]
    assert pairs.kind == "regression" and pairs.num_labels == 1


def test_stsb_tasks_official_splits(tok):
    bi = stsb_task(tok, mode="bi", limit=50, warn=False)
    cross = stsb_task(tok, mode="cross", limit=50, warn=False)
    assert bi.sizes() == cross.sizes() == {"train": 50, "val": 50, "test": 50}
    labels = bi.splits["train"][:]["labels"]
    assert float(labels.min()) >= 0.0 and float(labels.max()) <= 1.0  # score / 5
    assert torch.allclose(cross.splits["train"][:]["labels"] / 5, labels)
    with pytest.raises(ValueError, match="mode"):
        stsb_task(tok, mode="tri")


def test_first_subword_alignment(tok):
    words = ["Tokenization", "prices", "!"]
    ids, labels = align_first_subword(tok, words, [0, 7, 12])
    pieces = [tok.encode(w, add_special_tokens=False) for w in words]
    assert len(pieces[0]) > 1  # the point of the test: a word of several pieces
    assert ids == [tok.cls_id, *pieces[0], *pieces[1], *pieces[2], tok.sep_id]
    expected = [IGNORE_INDEX, 0] + [IGNORE_INDEX] * (len(pieces[0]) - 1) + [7] + [IGNORE_INDEX] * (len(pieces[1]) - 1)
    assert labels == expected + [12, IGNORE_INDEX]
    # a word the tokenizer turns into nothing keeps one labelled position ([UNK])
    ids, labels = align_first_subword(tok, ["\x00"], [3])
    assert ids == [tok.cls_id, tok.unk_id, tok.sep_id] and labels == [IGNORE_INDEX, 3, IGNORE_INDEX]


def test_ud_pos_task_trains_on_dev_and_tests_on_test(tok):
    task = ud_pos_task(tok, limit=40)
    assert task.label_names == UPOS_TAGS and task.kind == "tagging"
    row = task.splits["test"][0]
    labelled = int((row["labels"] != IGNORE_INDEX).sum())
    assert labelled == len(task.raw["test"][0][0])  # one label per word
    full = ud_pos_task(tok)
    assert full.sizes() == {"train": 1801, "val": 200, "test": 2077}


# ------------------------------------------------------------------------------------ bad input

def test_labels_outside_the_label_set(tok):
    with pytest.raises(ValueError, match=r"outside the label set.*'spammy'"):
        text_task("t", {"train": [("spammy", "x")]}, tok, label_names=SMS_LABELS)
    with pytest.raises(ValueError, match=r"outside the label set.*row 1: 2"):
        text_task("t", {"train": [(0, "x"), (2, "y")]}, tok, label_names=SMS_LABELS)
    with pytest.raises(ValueError, match="outside the label set"):
        text_task("t", {"train": [(True, "x")]}, tok, label_names=SMS_LABELS)  # a bool is not an id


@pytest.mark.parametrize("target", [math.nan, math.inf, "3.0", None])
def test_regression_targets_must_be_finite_numbers(tok, target):
    with pytest.raises(ValueError, match="finite number"):
        text_task("t", {"train": [(target, "a", "b")]}, tok)
    with pytest.raises(ValueError, match="finite number"):
        pair_task("p", {"train": [(target, "a", "b")]}, tok)


def test_tags_outside_the_tag_set(tok):
    with pytest.raises(ValueError, match=r"tags \['VERBZ'\] are not in the tag set"):
        tagging_task("pos", {"train": [(["I", "run"], ["PRON", "VERBZ"])]}, tok, tag_names=UPOS_TAGS)
    with pytest.raises(ValueError, match="as many tags as words"):
        tagging_task("pos", {"train": [(["I", "run"], ["PRON"])]}, tok, tag_names=UPOS_TAGS)


def test_empty_datasets_and_splits(tok):
    with pytest.raises(ValueError, match="split 'test' is empty"):
        text_task("t", {"train": [("ham", "x")], "test": []}, tok, label_names=SMS_LABELS)
    with pytest.raises(ValueError, match="non-empty dict"):
        text_task("t", {}, tok, label_names=SMS_LABELS)
    with pytest.raises(ValueError, match="is empty"):
        tagging_task("pos", {"train": []}, tok, tag_names=UPOS_TAGS)


def test_too_long_tagging_sentence_raises_and_text_truncates(tok):
    words = ["word"] * 20
    with pytest.raises(ValueError, match="more than max_length=10"):
        tagging_task("pos", {"train": [(words, ["NOUN"] * 20)]}, tok, tag_names=UPOS_TAGS, max_length=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing cut: no warning
        text_task("t", {"train": [("ham", "short")]}, tok, label_names=SMS_LABELS, max_length=10)
    task = text_task("t", {"train": [("ham", " ".join(words))]}, tok, label_names=SMS_LABELS, max_length=10,
                     warn=False)
    assert task.truncated["train"] == 1 and len(task.splits["train"][0]["input_ids"]) == 10


def test_tokenizer_that_does_not_match_the_weights(tok, tiny_bert):
    task = text_task("t", {"train": [("ham", "hello")]}, tok, label_names=SMS_LABELS, max_length=32)
    check_task_fits(task, tok, tiny_bert)  # fits: no error
    small = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello"])
    with pytest.raises(ValueError, match="6 tokens but the model's word embedding has 30522 rows"):
        check_task_fits(task, small, tiny_bert)
    long_task = text_task("t", {"train": [("ham", "hello")]}, tok, label_names=SMS_LABELS, max_length=128)
    with pytest.raises(ValueError, match="only 64 positions"):
        check_task_fits(long_task, tok, tiny_bert)
    odd_pad = BertModel(BertConfig(vocab_size=30522, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_positions=64,
                                   pad_id=5))
    with pytest.raises(ValueError, match="pad ids differ"):
        check_task_fits(task, tok, odd_pad)
    gpt = GPT(GPTConfig(vocab_size=65, block_size=32, n_layers=1, n_heads=2, d_model=16))
    with pytest.raises(ValueError, match="word embedding has 65 rows"):
        check_task_fits(task, tok, gpt)


def test_builders_reject_wrong_tokenizer_and_rows(tok):
    with pytest.raises(TypeError, match="tokenizer must have"):
        text_task("t", {"train": [("ham", "x")]}, object(), label_names=SMS_LABELS)
    with pytest.raises(ValueError, match="row widths"):
        text_task("t", {"train": [("ham", "x"), ("ham", "x", "y")]}, tok, label_names=SMS_LABELS)
    with pytest.raises(TypeError, match="texts must be str"):
        text_task("t", {"train": [("ham", 3)]}, tok, label_names=SMS_LABELS)
    with pytest.raises(ValueError, match="max_length"):
        text_task("t", {"train": [("ham", "x")]}, tok, label_names=SMS_LABELS, max_length=2)


# ------------------------------------------------------------------------------------ get_batch

def test_get_batch_is_pure_and_walks_epochs(tok):
    task = sms_spam_task(tok, limit=40, warn=False)  # 40 train examples, batches of 16: 3 per epoch
    gb = make_task_get_batch(task, 16, seed=7)
    assert gb.batches_per_epoch == 3
    again = make_task_get_batch(task, 16, seed=7)
    for i in range(7):
        a, b = gb("train", i), again("train", i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # one epoch = every training example exactly once
    seen = sorted(tuple(r.tolist()) for i in range(3) for r in gb("train", i)["input_ids"])
    every = sorted(tuple(collate_rows(task.splits["train"][[k]], task.pad_id)["input_ids"][0].tolist())
                   for k in range(40))
    assert [tuple(x for x in s if x != 0) for s in seen] == [tuple(x for x in s if x != 0) for s in every]
    # the next epoch is another order
    assert not torch.equal(gb("train", 0)["input_ids"], gb("train", 3)["input_ids"]) or \
        not torch.equal(gb("train", 1)["input_ids"], gb("train", 4)["input_ids"])
    assert torch.equal(gb("val", 0)["input_ids"], gb("val", 0)["input_ids"])
    with pytest.raises(ValueError, match="unknown split"):
        gb("dev", 0)
    with pytest.raises(ValueError, match="no split"):
        make_task_get_batch(task, 4, train_split="dev")
