"""Tests for scratchlm.models.char_lm: the Chapter 05 character LM, its gradient recorder and training run."""

import pytest
import torch
import torch.nn.functional as F

from scratchlm.models.char_lm import CharLM, LayerGradNorms, train_char_lm


def _model(norm_first=True, seed=0):
    torch.manual_seed(seed)
    return CharLM(11, 16, 2, 3, 12, norm_first=norm_first)


@pytest.mark.parametrize("norm_first", [False, True])
def test_causal_future_tokens_do_not_change_earlier_logits(norm_first):
    model = _model(norm_first).eval()
    x = torch.randint(0, 11, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 11  # rewrite the future from position 7 on
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4  # ... and the rewritten positions do change


def test_loss_is_the_shifted_cross_entropy():
    model = _model()
    x = torch.randint(0, 11, (3, 10))
    out = model(input_ids=x, labels=x)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 11), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_layer_grad_norms_equal_the_norms_computed_by_hand():
    model = _model(norm_first=False)
    recorder = LayerGradNorms(model.stack.layers)
    x = torch.randint(0, 11, (4, 12))
    for _ in range(2):  # two backward passes -> two rows (gradients zeroed in between)
        model.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
    recorder.remove()
    by_hand = torch.stack([torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in layer.parameters()]))
                           for layer in model.stack.layers])  # (L,)
    rows = recorder.as_tensor()
    assert rows.shape == (2, 3)
    torch.testing.assert_close(rows[-1], by_hand)
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()  # removed: nothing more is recorded
    assert recorder.as_tensor().shape == (2, 3)


def test_train_char_lm_learns_is_reproducible_and_records_every_step():
    ids = torch.tensor([i % 7 for i in range(600)])  # a periodic "text": easy to learn
    data = {"train": ids[:500], "val": ids[500:]}
    runs = []
    for _ in range(2):
        model = _model(norm_first=True, seed=3)
        runs.append(train_char_lm(model, data, steps=30, batch_size=8, learning_rate=3e-3, warmup_steps=5,
                                  seed=1, eval_batches=2))
    first, second = runs
    assert first.losses == second.losses and first.val_loss == second.val_loss  # same seed, same run
    assert first.layer_grads.shape == (30, 3)
    assert torch.isfinite(first.layer_grads).all()
    assert first.val_loss < first.losses[0] - 1.0  # the period is learnt
    assert first.history.lr[0] < first.history.lr[5] == first.history.lr[-1] == 3e-3  # warm-up, then constant


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        CharLM(11, 10, 3, 1, 8)
    with pytest.raises(ValueError, match="n_layers"):
        CharLM(11, 16, 2, 0, 8)
    model = _model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="'train' and 'val'"):
        train_char_lm(model, {"train": torch.arange(50)}, steps=1, batch_size=2, learning_rate=1e-3)
    with pytest.raises(ValueError, match="trainable"):
        LayerGradNorms([torch.nn.ReLU()])
