"""Chapter 09 evaluation and the finetune() helper on tiny models: order of predictions, metrics, GPT path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.constants import IGNORE_INDEX
from scratchlm.data import UPOS_TAGS, minilm_files
from scratchlm.finetune import (
    SMS_LABELS,
    collate_rows,
    evaluate_task,
    finetune,
    gold,
    make_task_get_batch,
    predict,
    sms_spam_task,
    stsb_task,
    tag_bigrams,
    tagging_task,
    text_task,
    unseen_transition_share,
)
from scratchlm.heads import BiEncoder, SequenceClassifier, TokenClassifier
from scratchlm.models import GPT, BertConfig, BertModel, GPTConfig
from scratchlm.tokenizers import ByteBPETokenizer, WordPieceTokenizer


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer.from_vocab_file(minilm_files().vocab)


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=30522, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_positions=128,
                                dropout=0.0, attention_dropout=0.0))


def test_predict_restores_the_split_order(tok):
    task = sms_spam_task(tok, limit=30, warn=False)
    model = SequenceClassifier(tiny_bert(), 16, 2, pooling="mean", dropout=0.0).eval()
    got = predict(model, task, "test", batch_size=7)  # (N, 2) in split order
    ds = task.splits["test"]
    with torch.no_grad():
        one_by_one = np.stack([model(**{k: v for k, v in collate_rows(ds[[i]], task.pad_id).items()
                                        if k != "labels"}).logits[0].numpy() for i in range(len(ds))])
    np.testing.assert_allclose(got, one_by_one, rtol=1e-4, atol=1e-5)
    assert gold(task, "test").tolist() == [SMS_LABELS.index(lab) for lab, _ in task.raw["test"]]


def test_evaluate_classification_metrics_match_their_definitions(tok):
    task = sms_spam_task(tok, limit=30, warn=False)
    model = SequenceClassifier(tiny_bert(1), 16, 2, pooling="cls")
    out = evaluate_task(model, task, "test", return_predictions=True)
    y, p = out["gold"], out["predictions"]
    assert out["accuracy"] == pytest.approx(float((y == p).mean()))
    assert out["errors"] == int((y != p).sum())
    assert set(out) >= {"accuracy", "f1", "mcc"}
    assert model.training  # evaluate restores the mode


def test_tagging_evaluation_and_unseen_transitions(tok):
    sentences = [(["I", "like", "tokenization"], ["PRON", "VERB", "NOUN"]), (["Dogs", "bark"], ["NOUN", "VERB"])]
    task = tagging_task("pos", {"train": sentences, "test": sentences}, tok, tag_names=UPOS_TAGS)
    model = TokenClassifier(tiny_bert(2), 16, len(UPOS_TAGS), crf=True)
    out = evaluate_task(model, task, "test", return_predictions=True)
    assert [len(p) for p in out["predictions"]] == [3, 2]  # one tag per word, not per piece
    assert out["words"] == 5
    flat_p = [t for seq in out["predictions"] for t in seq]
    flat_y = [t for seq in out["gold"] for t in seq]
    assert out["accuracy"] == pytest.approx(np.mean(np.array(flat_p) == np.array(flat_y)))
    seen = tag_bigrams(out["gold"])
    assert seen == {(UPOS_TAGS.index("PRON"), UPOS_TAGS.index("VERB")), (UPOS_TAGS.index("VERB"), UPOS_TAGS.index("NOUN")),
                    (UPOS_TAGS.index("NOUN"), UPOS_TAGS.index("VERB"))}
    assert out["unseen_transitions"] == pytest.approx(unseen_transition_share(out["predictions"], seen))
    assert unseen_transition_share([[0, 1, 2], [5]], {(0, 1)}) == pytest.approx(0.5)
    assert unseen_transition_share([[3]], set()) == 0.0


def test_finetune_learns_a_tiny_task(tok):
    rows = [("spam", f"win cash prize {i} call now") for i in range(24)] + \
           [("ham", f"see you at dinner {i} ok") for i in range(24)]
    task = text_task("toy", {"train": rows, "test": rows[::3]}, tok, label_names=SMS_LABELS, max_length=16)
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_bert(3), 16, 2, pooling="mean")
    res = finetune(model, task, epochs=4, batch_size=8, learning_rate=3e-3, progress=False, seed=0)
    assert res.steps == 4 * 6 and res.examples_seen == 4 * 48
    assert res.history.train_loss[-1] < res.history.train_loss[0]
    assert res.metrics["test"]["accuracy"] == 1.0
    assert res.trainable_parameters == sum(p.numel() for p in model.parameters())
    probe = finetune(SequenceClassifier(tiny_bert(3), 16, 2), task, epochs=1, batch_size=8, strategy="linear_probe",
                     progress=False, eval_splits=())
    assert probe.trainable_parameters == 16 * 2 + 2
    with pytest.raises(ValueError, match="epochs"):
        finetune(model, task, epochs=0)


def test_bi_encoder_task_runs_through_the_head(tok):
    task = stsb_task(tok, mode="bi", limit=12, warn=False)
    model = BiEncoder(tiny_bert(4), pooling="mean")
    batch = make_task_get_batch(task, 4)("train", 0)
    model.validate_inputs(batch)  # targets in [0, 1]
    out = evaluate_task(model, task, "test")
    assert set(out) == {"pearson", "spearman", "mse"}


def test_gpt_classifier_with_byte_bpe_and_eos():
    bpe = ByteBPETokenizer().train("free prize call now. see you soon. " * 50, 280,
                                   special_tokens={"pad": "<|pad|>", "eos": "<|endoftext|>"})
    rows = {"train": [("spam", "free prize"), ("ham", "see you <|endoftext|> soon")]}
    task = text_task("gpt", rows, bpe, label_names=SMS_LABELS, max_length=32)
    first = task.splits["train"][0]["input_ids"].tolist()
    assert first == bpe.encode("free prize") + [bpe.eos_id]
    second = task.splits["train"][1]["input_ids"].tolist()
    assert second == bpe.encode("see you <|endoftext|> soon", allow_special=False) + [bpe.eos_id]  # text stays text
    gpt = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=32, n_layers=1, n_heads=2, d_model=16))
    model = SequenceClassifier(gpt, 16, 2, pooling="last")
    batch = make_task_get_batch(task, 2)("train", 0)
    assert "token_type_ids" not in batch  # a GPT takes no segment ids
    assert model(**batch).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="BERT-style tokenizer"):
        text_task("gpt", {"train": [(1.0, "a", "b")]}, bpe)  # a pair needs [CLS]/[SEP]
    assert IGNORE_INDEX == -100
