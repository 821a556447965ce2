"""Tests for scratchlm.training.evaluation.evaluate_bert (Chapter 07), against scikit-learn and F.cross_entropy."""

import random

import pytest
import torch
import torch.nn.functional as F

from scratchlm.data.mlm import MLMCollator, build_nsp_pairs
from scratchlm.models.bert import BertConfig, BertForPreTraining
from scratchlm.training.evaluation import evaluate_bert

sklearn_metrics = pytest.importorskip("sklearn.metrics")

V, PAD, CLS, SEP, MASK = 40, 0, 1, 2, 3


@pytest.fixture(scope="module")
def setup():
    rng = random.Random(0)
    docs = [[[rng.randrange(5, V) for _ in range(rng.randrange(3, 9))] for _ in range(4)] for _ in range(6)]
    pairs = build_nsp_pairs(docs, rng=random.Random(1))
    collate = MLMCollator(vocab_size=V, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, max_len=24,
                          mlm_probability=0.3)

    def get_batch(split, index):
        g = torch.Generator().manual_seed(100 * (split == "val") + index)
        pick = torch.randint(len(pairs), (5,), generator=g).tolist()
        return collate([pairs[i] for i in pick], generator=g)

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48,
                                          max_positions=24, pad_id=PAD))
    return model, get_batch


def test_metrics_equal_the_pooled_references(setup):
    model, get_batch = setup
    model.train()
    result = evaluate_bert(model, get_batch, 3)
    assert model.training  # mode restored
    model.eval()
    logits, targets, nsp_pred, nsp_true = [], [], [], []
    with torch.no_grad():
        for i in range(3):
            b = get_batch("val", i)
            out = model(**b, logits_only_at_labels=False)
            sel = b["labels"] != -100
            logits.append(out.logits[sel])
            targets.append(b["labels"][sel])
            nsp_pred += out.nsp_logits.argmax(-1).tolist()
            nsp_true += b["next_sentence_label"].tolist()
    logits, targets = torch.cat(logits), torch.cat(targets)
    # Pooled over all masked tokens (not a mean of per-batch means).
    assert result.mlm_loss == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    assert result.mlm_acc == pytest.approx(sklearn_metrics.accuracy_score(targets, logits.argmax(-1)))
    assert result.nsp_acc == pytest.approx(sklearn_metrics.accuracy_score(nsp_true, nsp_pred))
    assert result.n_masked == len(targets) and result.n_pairs == len(nsp_true) == 15
    assert result.labels == targets.tolist()


def test_indices_may_be_an_iterable_and_bad_input_is_rejected(setup):
    model, get_batch = setup
    assert evaluate_bert(model, get_batch, [1, 2]).n_pairs == 10
    with pytest.raises(ValueError, match="at least one batch"):
        evaluate_bert(model, get_batch, 0)

    def no_nsp(split, index):
        b = get_batch(split, index)
        del b["next_sentence_label"]
        return b

    with pytest.raises(ValueError, match="next_sentence_label"):
        evaluate_bert(model, no_nsp, 1)
