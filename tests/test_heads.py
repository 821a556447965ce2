"""Chapter 09 task heads on a tiny stand-in encoder: pooling, losses, CRF compaction, training, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.constants import IGNORE_INDEX
from scratchlm.heads import (
    CRF,
    BiEncoder,
    SequenceClassifier,
    SequenceRegressor,
    TokenClassifier,
    gather_labelled,
    pool,
)
from scratchlm.models.outputs import ModelOutput

V, C = 12, 16


class TinyEncoder(nn.Module):
    """Embedding + nn.TransformerEncoder, no positions (so padding side does not change a real
    token's state), a BERT-like pooler; records the keyword arguments it was called with."""

    def __init__(self, seed: int = 0, with_pooler: bool = True):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(V, C)
        self.types = nn.Embedding(2, C)
        layer = nn.TransformerEncoderLayer(C, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.pooler = nn.Linear(C, C) if with_pooler else None
        self.calls: list[set[str]] = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls.append({"input_ids", "attention_mask", *kwargs})
        x = self.embed(input_ids)  # (B, T, C)
        if "token_type_ids" in kwargs:
            x = x + self.types(kwargs["token_type_ids"])  # (B, T, C)
        pad = None if attention_mask is None else ~attention_mask.bool()  # (B, T)
        h = self.layers(x, src_key_padding_mask=pad)  # (B, T, C)
        pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None  # (B, C)
        return ModelOutput(last_hidden_state=h, pooler_output=pooled)


class LinearEncoder(nn.Module):
    """Embedding + linear: small enough to trace with torch.compile(fullgraph=True)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, C)
        self.proj = nn.Linear(C, C)

    def forward(self, input_ids, attention_mask=None):
        return ModelOutput(last_hidden_state=torch.tanh(self.proj(self.embed(input_ids))))


def _right_padded(lengths, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (len(lengths), T), generator=g)  # (B, T)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    return ids * mask, mask


def _to_left(ids, mask):
    """The same sequences, padding moved to the left."""
    lengths = mask.sum(1)
    T = ids.shape[1]
    left_ids, left_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for b, n in enumerate(lengths.tolist()):
        left_ids[b, T - n:] = ids[b, :n]
        left_mask[b, T - n:] = 1
    return left_ids, left_mask


# ----------------------------------------------------------------------------- pooling


def test_mean_pooling_is_the_per_row_mean_of_real_tokens():
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, C)
    _, mask = _right_padded([6, 3, 1, 5], 6)
    for m in (mask, mask.bool()):
        pooled = pool(hidden, m, "mean")
        for b in range(4):
            torch.testing.assert_close(pooled[b], hidden[b, m[b].bool()].mean(0))
    torch.testing.assert_close(pool(hidden, None, "mean"), hidden.mean(1))


def test_cls_and_last_pooling_under_right_and_left_padding():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, C)
    lengths = [5, 2, 3]
    _, right = _right_padded(lengths, 5)
    _, left = _to_left(torch.zeros(3, 5, dtype=torch.long), right)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(pool(hidden, right, "last")[b], hidden[b, n - 1])
        torch.testing.assert_close(pool(hidden, left, "last")[b], hidden[b, 4])
        torch.testing.assert_close(pool(hidden, right, "cls")[b], hidden[b, 0])
        torch.testing.assert_close(pool(hidden, left, "cls")[b], hidden[b, 5 - n])


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_classifier_ignores_the_padding_side(pooling):
    """The encoder has no positions, so only the padding side differs: logits must not change."""
    head = SequenceClassifier(TinyEncoder(), C, 3, pooling=pooling).eval()
    ids, mask = _right_padded([5, 2, 4], 5)
    left_ids, left_mask = _to_left(ids, mask)
    torch.testing.assert_close(head(ids, mask).logits, head(left_ids, left_mask).logits)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("pooling", ["cls", "mean", "last", "pooler"])
def test_classifier_loss_is_cross_entropy(pooling):
    head = SequenceClassifier(TinyEncoder(), C, 4, pooling=pooling).eval()
    ids, mask = _right_padded([5, 2, 4, 3], 5)
    labels = torch.tensor([0, 3, 1, IGNORE_INDEX])
    out = head(ids, mask, labels=labels)
    assert out.logits.shape == (4, 4)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    hidden = head.encoder(input_ids=ids, attention_mask=mask)
    pooled = hidden.pooler_output if pooling == "pooler" else pool(hidden.last_hidden_state, mask, pooling)
    torch.testing.assert_close(out.logits, head.classifier(pooled))


def test_token_type_ids_are_passed_only_when_given():
    enc = TinyEncoder()
    head = SequenceClassifier(enc, C, 2).eval()
    ids, mask = _right_padded([3, 2], 3)
    head(ids, mask)
    head(ids, mask, token_type_ids=torch.ones_like(ids))
    assert enc.calls == [{"input_ids", "attention_mask"}, {"input_ids", "attention_mask", "token_type_ids"}]
    assert not torch.equal(head(ids, mask).logits, head(ids, mask, token_type_ids=torch.ones_like(ids)).logits)


def test_regressor_loss_is_mse():
    head = SequenceRegressor(TinyEncoder(), C, pooling="mean").eval()
    ids, mask = _right_padded([5, 2, 4], 5)
    labels = torch.tensor([0.5, 4.2, 2.0])
    out = head(ids, mask, labels=labels)
    assert out.logits.shape == (3,)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits, labels))
    torch.testing.assert_close(head(ids, mask, labels=torch.tensor([1, 4, 2])).loss,
                               F.mse_loss(out.logits, torch.tensor([1.0, 4.0, 2.0])))


def test_bi_encoder_is_cosine_of_pooled_embeddings():
    enc = TinyEncoder()
    head = BiEncoder(enc, pooling="mean").eval()
    a, ma = _right_padded([5, 2, 4], 5, seed=1)
    b, mb = _right_padded([3, 3, 1], 3, seed=2)
    labels = torch.tensor([0.2, 1.0, 0.0])
    out = head(a, b, ma, mb, labels=labels)
    u = pool(enc(input_ids=a, attention_mask=ma).last_hidden_state, ma, "mean")
    v = pool(enc(input_ids=b, attention_mask=mb).last_hidden_state, mb, "mean")
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    torch.testing.assert_close(out.logits, cos)
    torch.testing.assert_close(out.loss, F.mse_loss(cos, labels))
    torch.testing.assert_close(head.encode(a, ma), u)


def test_token_classifier_ignores_minus_100():
    head = TokenClassifier(TinyEncoder(), C, 5).eval()
    ids, mask = _right_padded([5, 3], 5)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, 4, 0], [1, IGNORE_INDEX, 3, -100, -100]])
    out = head(ids, mask, labels=labels)
    assert out.logits.shape == (2, 5, 5)
    keep = labels != IGNORE_INDEX
    manual = -torch.log_softmax(out.logits, -1)[keep].gather(1, labels[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, manual)
    # changing what sits at ignored positions changes nothing
    other = labels.masked_fill(~keep, IGNORE_INDEX)
    torch.testing.assert_close(head(ids, mask, labels=other).loss, out.loss)
    assert head.decode(ids, mask, labels=labels) == [out.logits[b].argmax(-1)[keep[b]].tolist() for b in range(2)]


def test_gather_labelled():
    values = torch.arange(12).reshape(2, 6)
    keep = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    compact, mask = gather_labelled(values, keep)
    assert compact[0, :3].tolist() == [1, 3, 4]
    assert mask.tolist() == [[True] * 3 + [False] * 3, [False] * 6]


def _hand_gathered(emissions, labels):
    """Per row: the labelled positions' emissions and tags, left-aligned, by a Python loop."""
    B, T, K = emissions.shape
    rows = [torch.nonzero(labels[b] != IGNORE_INDEX).flatten().tolist() for b in range(B)]
    L = max(len(r) for r in rows)
    em = torch.zeros(B, L, K)
    tags = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, r in enumerate(rows):
        em[b, :len(r)] = emissions[b, r]
        tags[b, :len(r)] = labels[b, r]
        mask[b, :len(r)] = True
    return em, tags, mask


@pytest.mark.parametrize("reduction", ["mean", "sum", "token_mean"])
def test_crf_head_runs_over_labelled_positions_only(reduction):
    """First sub-words carry labels; the loss equals the CRF on hand-gathered word sequences."""
    torch.manual_seed(0)
    head = TokenClassifier(TinyEncoder(), C, 4, crf=True, crf_reduction=reduction).eval()
    with torch.no_grad():
        for p in head.crf.parameters():
            p.normal_()
    ids, mask = _right_padded([7, 5, 6], 7)
    labels = torch.tensor([[-100, 1, 2, -100, 3, 0, -100],  # [CLS] w ##w w w [SEP]-like layout
                           [-100, 2, -100, -100, 1, -100, -100],
                           [-100, 0, 1, 1, 2, -100, -100]])
    out = head(ids, mask, labels=labels)
    em, tags, cmask = _hand_gathered(out.logits, labels)
    torch.testing.assert_close(out.loss, head.crf.nll(em, tags, cmask, reduction=reduction))
    # the decoded tags are Viterbi over the same word sequences
    assert head.decode(ids, mask, labels=labels) == head.crf.decode(em, cmask)
    assert head.predict(ids, mask, label_mask=labels != IGNORE_INDEX) == head.crf.decode(em, cmask)
    # a CRF over all sub-words would be a different (wrong) model
    full = head.crf.nll(out.logits, labels.clamp(min=0), mask, reduction=reduction)
    assert not torch.allclose(out.loss, full)


def test_crf_head_rows_without_labels_add_nothing():
    head = TokenClassifier(TinyEncoder(), C, 3, crf=True).eval()
    ids, mask = _right_padded([4, 3], 4)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, -100, -100]])
    both = head(ids, mask, labels=labels).loss
    first = head(ids[:1], mask[:1], labels=labels[:1]).loss
    torch.testing.assert_close(both, first)
    assert head.decode(ids, mask, labels=labels)[1] == []


def test_heads_compile_without_graph_breaks():
    """forward does no host sync: it traces into one graph (eager backend: no compiler needed)."""
    ids, mask = _right_padded([4, 2], 4)
    cls = SequenceClassifier(LinearEncoder(), C, 3, pooling="last").eval()
    compiled = torch.compile(cls, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(ids, mask, labels=torch.tensor([0, 2])).loss,
                               cls(ids, mask, labels=torch.tensor([0, 2])).loss)
    tok = TokenClassifier(LinearEncoder(), C, 3, crf=True).eval()
    labels = torch.tensor([[0, 1, -100, 2], [1, -100, -100, -100]])
    compiled = torch.compile(tok, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(ids, mask, labels=labels).loss, tok(ids, mask, labels=labels).loss)


# ----------------------------------------------------------------------------- training


def _train(head, batch, steps=25, lr=0.02):
    torch.manual_seed(0)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = head(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_few_steps_reduce_the_loss():
    """Toy tasks: does token 3 occur (class), how many 3s (score), is each token a 3 (tag), do both
    sentences of a pair agree on holding a 3 (similarity 1, else 0)."""
    ids, mask = _right_padded([6, 4, 5, 6, 3, 2, 6, 5], 6, seed=3)
    ids[::2, 1] = 3
    is3 = (ids == 3) & mask.bool()
    same = (is3.any(1) == is3.any(1).roll(1, 0)).float()
    cls = SequenceClassifier(TinyEncoder(), C, 2, pooling="mean", dropout=0.0)
    reg = SequenceRegressor(TinyEncoder(), C, pooling="mean", dropout=0.0)
    tok = TokenClassifier(TinyEncoder(), C, 2, crf=True, dropout=0.0)
    bi = BiEncoder(TinyEncoder())
    runs = {
        "classifier": _train(cls, {"input_ids": ids, "attention_mask": mask, "labels": is3.any(1).long()}),
        "regressor": _train(reg, {"input_ids": ids, "attention_mask": mask, "labels": is3.sum(1).float()}),
        "crf": _train(tok, {"input_ids": ids, "attention_mask": mask,
                            "labels": is3.long().masked_fill(mask == 0, IGNORE_INDEX)}),
        "bi-encoder": _train(bi, {"input_ids_a": ids, "attention_mask_a": mask, "input_ids_b": ids.roll(1, 0),
                                  "attention_mask_b": mask.roll(1, 0), "labels": same}),
    }
    for name, losses in runs.items():
        assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])


# ----------------------------------------------------------------------------- bad input


def test_constructor_errors():
    enc = TinyEncoder()
    with pytest.raises(TypeError, match="encoder must be an nn.Module"):
        SequenceClassifier(lambda **kw: None, C, 2)
    with pytest.raises(ValueError, match="num_labels must be a positive int"):
        SequenceClassifier(enc, C, 0)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        SequenceRegressor(enc, -1)
    with pytest.raises(ValueError, match="pooling must be one of"):
        SequenceClassifier(enc, C, 2, pooling="max")
    with pytest.raises(ValueError, match="dropout must be a float in"):
        TokenClassifier(enc, C, 2, dropout=1.5)
    with pytest.raises(ValueError, match="the CRF has 3 tags but num_tags=2"):
        TokenClassifier(enc, C, 2, crf=CRF(3))
    with pytest.raises(ValueError, match="crf_reduction must be one of"):
        TokenClassifier(enc, C, 2, crf=True, crf_reduction="none")
    with pytest.raises(ValueError, match="target_range must be"):
        BiEncoder(enc, target_range=(0.0, 5.0))
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(torch.zeros(1, 2, C), None, "pooler")


def test_forward_errors():
    ids, mask = _right_padded([3, 2], 3)
    cls = SequenceClassifier(TinyEncoder(), C, 2)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        cls(ids, mask, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        cls(ids, mask, labels=torch.tensor([[0], [1]]))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor of shape"):
        cls(ids.float(), mask)
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        cls(ids, mask[:, :2])
    with pytest.raises(TypeError, match="attention_mask must be an integer or bool tensor"):
        cls(ids, mask.float())
    with pytest.raises(ValueError, match="needs the encoder to return pooler_output"):
        SequenceClassifier(TinyEncoder(with_pooler=False), C, 2, pooling="pooler")(ids, mask)
    with pytest.raises(ValueError, match=r"last_hidden_state must have shape .* \(2, 3, 8\)"):
        SequenceClassifier(TinyEncoder(), 8, 2)(ids, mask)

    class Bare(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.zeros(*input_ids.shape, C)

    with pytest.raises(TypeError, match="must return a ModelOutput with last_hidden_state"):
        SequenceClassifier(Bare(), C, 2)(ids, mask)
    with pytest.raises(TypeError, match="real-valued tensor of targets"):
        SequenceRegressor(TinyEncoder(), C)(ids, mask, labels=torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3\)"):
        TokenClassifier(TinyEncoder(), C, 2)(ids, mask, labels=torch.tensor([0, 1]))


def test_validate_inputs_errors():
    ids, mask = _right_padded([3, 2], 3)
    cls = SequenceClassifier(TinyEncoder(), C, 2)
    cls.validate_inputs({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\) or -100; got \[2\]"):
        cls.validate_inputs({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])})
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        cls.validate_inputs({"input_ids": ids, "labels": torch.tensor([0.0, 1.0])})
    with pytest.raises(ValueError, match="every label is -100"):
        cls.validate_inputs({"input_ids": ids, "labels": torch.tensor([-100, -100])})
    with pytest.raises(ValueError, match=r"unexpected keys \['label'\]"):
        cls.validate_inputs({"input_ids": ids, "label": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="no 'input_ids'"):
        cls.validate_inputs({"attention_mask": mask})
    with pytest.raises(ValueError, match="only 0 and 1"):
        cls.validate_inputs({"input_ids": ids, "attention_mask": mask * 2})
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        cls.validate_inputs({"input_ids": ids, "attention_mask": mask * torch.tensor([[1], [0]])})
    reg = SequenceRegressor(TinyEncoder(), C)
    with pytest.raises(ValueError, match="NaN or inf"):
        reg.validate_inputs({"input_ids": ids, "labels": torch.tensor([1.0, float("nan")])})
    bi = BiEncoder(TinyEncoder())
    with pytest.raises(ValueError, match=r"labels must lie in \[0.0, 1.0\]"):
        bi.validate_inputs({"input_ids_a": ids, "input_ids_b": ids, "labels": torch.tensor([0.5, 4.0])})
    BiEncoder(TinyEncoder(), target_range=(-1.0, 1.0)).validate_inputs(
        {"input_ids_a": ids, "input_ids_b": ids, "labels": torch.tensor([-0.5, 1.0])})
    tok = TokenClassifier(TinyEncoder(), C, 3, crf=True)
    good = torch.tensor([[0, 1, 2], [1, 2, -100]])
    tok.validate_inputs({"input_ids": ids, "attention_mask": mask, "labels": good})
    with pytest.raises(ValueError, match="labels at padded positions"):
        tok.validate_inputs({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([[0, 1, 2]] * 2)})
    with pytest.raises(ValueError, match=r"got \[3\]"):
        tok.validate_inputs({"input_ids": ids, "labels": good.masked_fill(good == 2, 3)})
