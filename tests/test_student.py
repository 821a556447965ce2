"""Quantized embeddings, students (keep_layers, trim_vocabulary), the distillation loss_fn and the
measuring helpers (Chapter 12).

References: ``F.embedding`` on the dequantized table; the teacher's own layers run by hand; the
unpruned model on texts whose tokens are all kept; the safetensors file read back.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.testing import assert_close

from scratchlm.compress import (
    QuantizedEmbedding,
    TrimmedVocabulary,
    dequantize,
    distillation_loss,
    keep_layers,
    latency_side_by_side,
    make_distillation_loss_fn,
    quantize,
    quantize_embeddings,
    quantize_model,
    saved_size,
    size_bytes,
    trim_vocabulary,
)
from scratchlm.heads import SequenceClassifier
from scratchlm.models import GPT, BertConfig, BertModel, GPTConfig


def _bert(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=60, d_model=32, n_layers=4, n_heads=4, d_ff=48, max_positions=32, dropout=0.0,
               attention_dropout=0.0) | kw
    return BertModel(BertConfig(**cfg)).eval()


@pytest.mark.parametrize("bits,scheme,granularity,group_size", [
    (8, "symmetric", "channel", None), (4, "symmetric", "group", 8), (4, "asymmetric", "channel", None),
    (8, "asymmetric", "group", 16), (3, "symmetric", "channel", None)])
def test_quantized_embedding_equals_lookup_in_the_dequantized_table(bits, scheme, granularity, group_size):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 32, padding_idx=0)
    q = QuantizedEmbedding.from_embedding(emb, bits, scheme, granularity, group_size)
    table = dequantize(quantize(emb.weight.detach(), bits, scheme, granularity, group_size))  # (V, C)
    ids = torch.randint(0, 50, (3, 7))
    assert torch.equal(q(ids), F.embedding(ids, table))
    assert torch.equal(q.weight, table)
    assert q.qweight.dtype == (torch.uint8 if bits <= 4 else (torch.int8 if scheme == "symmetric" else torch.uint8))
    code_bytes = 50 * (16 if bits <= 4 else 32)
    groups = 1 if granularity == "channel" else 32 // group_size
    assert size_bytes(q) == code_bytes + 50 * groups * 4 + (50 * groups if scheme == "asymmetric" else 0)
    rel = (q.weight - emb.weight).norm() / emb.weight.norm()
    assert rel < (0.01 if bits == 8 else 0.25)


def test_quantize_embeddings_in_bert_and_gpt():
    model = _bert()
    ref = copy.deepcopy(model)
    report = quantize_embeddings(model)
    assert report.replaced == ["embeddings.word_embeddings", "embeddings.position_embeddings",
                               "embeddings.token_type_embeddings"]
    assert report.bytes_before - report.bytes_after == (60 + 32 + 2) * 32 * 3 - (60 + 32 + 2) * 4
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():  # close to the float model (BERT reads position_embeddings.weight directly)
        assert_close(model(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state, rtol=0.05, atol=0.05)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=16, n_layers=1, n_heads=2, d_model=16))
    report = quantize_embeddings(gpt)
    assert report.skipped == {"transformer.wte": "weight tied to another parameter"}
    assert report.replaced == ["transformer.wpe"]
    with pytest.raises(TypeError, match="nn.Embedding"):
        QuantizedEmbedding.from_embedding(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'channel' or"):
        QuantizedEmbedding(quantize(torch.randn(4, 4), 8, granularity="tensor"))
    with pytest.raises(TypeError, match="holding embeddings"):
        quantize_embeddings(nn.Embedding(3, 2))


def test_keep_layers_copies_the_teachers_layers():
    teacher = _bert()
    clf = SequenceClassifier(teacher, 32, 2, pooling="mean").eval()
    student = keep_layers(clf, [0, 2])
    assert len(student.encoder.encoder.layers) == 2 and student.encoder.config.n_layers == 2
    assert len(clf.encoder.encoder.layers) == 4 and teacher.config.n_layers == 4  # teacher untouched
    ids = torch.randint(0, 60, (3, 8))
    with torch.no_grad():  # by hand: embeddings, teacher layers 0 and 2, pooling, classifier
        x = teacher.embeddings(ids, torch.zeros_like(ids))
        for i in (0, 2):
            x = teacher.encoder.layers[i](x)
        expected = clf.classifier(x.mean(dim=1))
        assert_close(student(input_ids=ids).logits, expected)
    student.encoder.encoder.layers[0].ffn.linear1.weight.data.zero_()  # a copy, not shared
    assert teacher.encoder.layers[0].ffn.linear1.weight.abs().sum() > 0
    gpt = GPT(GPTConfig(vocab_size=40, block_size=16, n_layers=3, n_heads=2, d_model=16))
    assert len(keep_layers(gpt, [2]).transformer.h) == 1
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        keep_layers(teacher, [4])
    with pytest.raises(ValueError, match="twice"):
        keep_layers(teacher, [1, 1])
    with pytest.raises(ValueError, match="exactly one stack"):
        keep_layers(nn.Linear(2, 2), [0])


def test_trim_vocabulary_is_exact_on_kept_tokens_and_maps_the_rest_to_unk():
    teacher = _bert()
    encoder = copy.deepcopy(teacher)
    keep = [5, 7, 11, 13, 40, 41]
    unk = 1
    trimmed = trim_vocabulary(encoder, keep, unk)
    assert isinstance(trimmed, TrimmedVocabulary)
    assert encoder.embeddings.word_embeddings.num_embeddings == 8  # + [UNK] and [PAD] (id 0)
    assert encoder.config.vocab_size == 8 and encoder.config.pad_id == 0
    ids = torch.tensor([[5, 7, 11, 0], [40, 41, 13, 5]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.equal(trimmed(input_ids=ids, attention_mask=mask).last_hidden_state,
                           teacher(input_ids=ids, attention_mask=mask).last_hidden_state)
        unseen = torch.tensor([[5, 30, 7]])
        as_unk = torch.tensor([[5, unk, 7]])
        assert torch.equal(trimmed(input_ids=unseen).last_hidden_state, teacher(input_ids=as_unk).last_hidden_state)
    assert size_bytes(trimmed) == size_bytes(teacher) - (60 - 8) * 32 * 4 + 60 * 4  # rows gone, int32 map added
    clf = SequenceClassifier(trimmed, 32, 2)  # the wrapper is an encoder like any other
    assert clf(input_ids=ids, attention_mask=mask).logits.shape == (2, 2)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=16, n_layers=1, n_heads=2, d_model=16))
    with pytest.raises(ValueError, match="tied"):
        trim_vocabulary(gpt, [1, 2], 0, embedding="transformer.wte")
    with pytest.raises(ValueError, match="no submodule"):
        trim_vocabulary(_bert(), [1], 0, embedding="embeddings.words")
    with pytest.raises(ValueError, match=r"keep_ids must lie in \[0, 60\)"):
        trim_vocabulary(_bert(), [60], 0)
    with pytest.raises(ValueError, match="unk_id"):
        trim_vocabulary(_bert(), [1], 99)


def test_distillation_loss_fn_uses_the_teacher_without_gradients():
    torch.manual_seed(0)
    teacher = SequenceClassifier(_bert(n_layers=2), 32, 2).train()
    student = SequenceClassifier(_bert(n_layers=1), 32, 2).eval()
    batch = {"input_ids": torch.randint(0, 60, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1, 0])}
    loss_fn = make_distillation_loss_fn(teacher, T=3.0, alpha=0.7)
    assert not teacher.training  # dropout off in the teacher
    loss = loss_fn(student, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected = distillation_loss(student(**inputs).logits, teacher(**inputs).logits, batch["labels"], 3.0, 0.7)
    assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad is not None
    with pytest.raises(ValueError, match="alpha"):
        make_distillation_loss_fn(teacher, alpha=1.5)
    with pytest.raises(TypeError, match="teacher"):
        make_distillation_loss_fn(lambda x: x)


def test_saved_size_counts_the_safetensors_file(tmp_path):
    model = _bert(n_layers=1)
    path = tmp_path / "fp32.safetensors"
    n = saved_size(model, path)
    tensors = load_file(str(path))
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    assert payload == size_bytes(model) and payload < n < payload + 20_000  # + a JSON header
    quantize_model(model)
    quantize_embeddings(model)
    q_path = tmp_path / "int8.safetensors"
    assert saved_size(model, q_path) < n / 2.5  # tiny model: biases and norms stay float32
    assert {t.dtype for t in load_file(str(q_path)).values()} >= {torch.int8, torch.float32}
    gpt = GPT(GPTConfig(vocab_size=40, block_size=16, n_layers=1, n_heads=2, d_model=16))
    assert saved_size(gpt) < size_bytes(gpt) + 40 * 16 * 4  # the tied table is stored once
    with pytest.raises(TypeError, match="nn.Module"):
        saved_size({"w": torch.ones(2)})


def test_latency_side_by_side_runs_every_candidate_round_robin():
    calls = []
    ms = latency_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4 and set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    with pytest.raises(ValueError, match="repeats"):
        latency_side_by_side({"a": lambda: None}, repeats=0)
    with pytest.raises(TypeError, match="callable"):
        latency_side_by_side({"a": 1})


def test_trimmed_encoder_works_with_the_freezing_strategies():
    from scratchlm.finetune import configure_finetuning

    trimmed = trim_vocabulary(_bert(), [5, 6, 7], 1)
    clf = SequenceClassifier(trimmed, 32, 2)
    configure_finetuning(clf, "top_k", k=1)
    assert trimmed.config.vocab_size == 5 and trimmed.embeddings is trimmed.model.embeddings
    assert not trimmed.embeddings.word_embeddings.weight.requires_grad
    assert not trimmed.encoder.layers[0].ffn.linear1.weight.requires_grad
    assert trimmed.encoder.layers[-1].ffn.linear1.weight.requires_grad
    assert clf.classifier.weight.requires_grad
