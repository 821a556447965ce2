"""Tests for the training loop, its optimizer and schedule (Chapter 06); checkpoint files: test_checkpoint.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from scratchlm.data.lm import make_lm_get_batch
from scratchlm.training import (
    TrainConfig,
    TrainHistory,
    adamw_with_decay_groups,
    fused_adamw_available,
    lr_at,
    read_checkpoint_metadata,
    train,
)

VOCAB, BLOCK, BATCH = 17, 8, 4


class TinyLM(nn.Module):
    """Embedding -> dropout -> LayerNorm -> Linear, with tied weights (like the GPT) and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, 16)
        self.pos = nn.Parameter(torch.randn(BLOCK, 16) * 0.02)
        self.drop = nn.Dropout(0.3)  # makes the run depend on the torch RNG state
        self.ln = nn.LayerNorm(16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, VOCAB, bias=False)
        self.head.weight = self.wte.weight  # tied: the checkpoint must store it once

    def forward(self, x):
        h = self.drop(self.wte(x) + self.pos[: x.shape[1]])  # (B, T, C)
        return self.head(self.ln(h + torch.tanh(self.mix(h))))  # (B, T, V)


def tiny_loss(model, batch):
    x, y = batch
    logits = model(x)  # (B, T, V)
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))


def tiny_get_batch(split: str, index: int):
    """Pure function of (split, index), independent of scratchlm.data.lm."""
    g = torch.Generator().manual_seed(10_000 * (split == "val") + index)
    data = torch.arange(200) * 7 % VOCAB  # a learnable periodic sequence
    starts = torch.randint(0, 200 - BLOCK - 1, (BATCH,), generator=g)
    x = torch.stack([data[s : s + BLOCK] for s in starts.tolist()])
    y = torch.stack([data[s + 1 : s + 1 + BLOCK] for s in starts.tolist()])
    return x, y


def cfg(**kw) -> TrainConfig:
    base = TrainConfig(max_steps=20, learning_rate=3e-2, min_lr=3e-3, warmup_steps=3, eval_every=5,
                       eval_batches=2, grad_accum_steps=2, progress=False, fused=False)
    return replace(base, **kw)


# ---- learning-rate schedule ------------------------------------------------------------------
def test_lr_schedule_matches_formula_at_landmarks():
    c = TrainConfig(max_steps=2000, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100)
    assert lr_at(0, c) == pytest.approx(1e-3 / 101)
    assert lr_at(99, c) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(100, c) == pytest.approx(1e-3)  # peak right after warm-up
    assert lr_at(1050, c) == pytest.approx((1e-3 + 1e-4) / 2)  # cosine midpoint
    assert lr_at(2000, c) == pytest.approx(1e-4)
    assert lr_at(5000, c) == pytest.approx(1e-4)
    lrs = [lr_at(s, c) for s in range(2001)]
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101], strict=True))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:], strict=False))  # decay never rises
    s = 700  # an arbitrary point of the cosine, recomputed independently
    expected = 1e-4 + 0.5 * (1 + math.cos(math.pi * 600 / 1900)) * 9e-4
    assert lr_at(s, c) == pytest.approx(expected)


def test_lr_schedule_respects_lr_decay_steps_and_rejects_negative_step():
    c = TrainConfig(max_steps=100, learning_rate=1.0, min_lr=0.0, warmup_steps=0, lr_decay_steps=50)
    assert lr_at(50, c) == pytest.approx(0.0)
    assert lr_at(25, c) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, c)


@pytest.mark.parametrize("kw, word", [
    (dict(max_steps=0), "max_steps"), (dict(grad_accum_steps=0), "grad_accum_steps"),
    (dict(min_lr=1.0, learning_rate=0.1), "min_lr"), (dict(autocast="fp16"), "autocast"),
    (dict(beta2=1.0), "betas"), (dict(resume=True), "checkpoint_path"),
    (dict(warmup_steps=10, lr_decay_steps=5), "lr_decay_steps"), (dict(eval_batches=1.5), "eval_batches"),
])
def test_train_config_rejects_bad_values(kw, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kw)


def test_train_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        train("not a model", tiny_get_batch, tiny_loss, cfg())
    with pytest.raises(TypeError, match="TrainConfig"):
        train(TinyLM(), tiny_get_batch, tiny_loss, {"max_steps": 3})
    with pytest.raises(TypeError, match="callables"):
        train(TinyLM(), None, tiny_loss, cfg())


# ---- optimizer groups ------------------------------------------------------------------------
def test_decay_groups_split_matrices_from_vectors_and_count_tied_weights_once():
    model = TinyLM()
    opt = adamw_with_decay_groups(model.named_parameters(), learning_rate=1e-3, weight_decay=0.1,
                                  betas=(0.9, 0.99))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())  # parameters() dedups the tie
    with pytest.raises(ValueError, match="no trainable"):
        adamw_with_decay_groups([], learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.99))


# ---- the loop --------------------------------------------------------------------------------
def test_training_learns_and_records_history():
    torch.manual_seed(0)
    hist = train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=40))
    assert hist.steps == list(range(1, 41)) and len(hist.train_loss) == len(hist.lr) == 40
    assert hist.eval_steps == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert hist.val_loss[0] > math.log(VOCAB) - 0.5  # untrained: about uniform
    assert hist.val_loss[-1] < 0.5 * hist.val_loss[0]
    assert hist.lr[0] == pytest.approx(lr_at(0, cfg()))
    assert set(hist.curves()) == {"train (per step)", "validation"}


def test_gradient_accumulation_equals_one_big_batch():
    """A=2 micro-batches of 4 == one batch of 8 (same examples): the same parameters after a step."""

    def big_batch(split, index):
        a, b = tiny_get_batch(split, 2 * index), tiny_get_batch(split, 2 * index + 1)
        return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])

    results = []
    for get_batch, accum in ((tiny_get_batch, 2), (big_batch, 1)):
        torch.manual_seed(0)
        model = TinyLM()
        model.drop.p = 0.0  # dropout would draw different masks for different batch shapes
        train(model, get_batch, tiny_loss, cfg(max_steps=3, grad_accum_steps=accum, eval_every=0))
        results.append(model.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6)


def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path):
    """20 steps straight == 10 steps, crash, fresh model + scrambled RNG, resume for 10 more."""
    torch.manual_seed(1)
    straight = TinyLM()
    ref = train(straight, tiny_get_batch, tiny_loss, cfg())

    path = tmp_path / "run.safetensors"
    torch.manual_seed(1)
    interrupted = TinyLM()

    def crashing_get_batch(split, index):
        if split == "train" and index >= 10 * 2:  # step 10 with 2 micro-batches per step
            raise KeyboardInterrupt("simulated crash")
        return tiny_get_batch(split, index)

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, crashing_get_batch, tiny_loss, cfg(checkpoint_path=str(path), checkpoint_every=10))
    assert read_checkpoint_metadata(path)["step"] == 10

    torch.manual_seed(999)  # a different init and RNG stream: everything must come from the file
    fresh = TinyLM()
    resumed = train(fresh, tiny_get_batch, tiny_loss, cfg(checkpoint_path=str(path), resume=True))
    assert resumed.train_loss == ref.train_loss  # bitwise, all 20 steps
    assert resumed.val_loss == ref.val_loss and resumed.eval_steps == ref.eval_steps
    assert resumed.lr == ref.lr
    for name, value in straight.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
    assert fresh.head.weight is fresh.wte.weight  # loading kept the tie


def test_bf16_autocast_on_cpu_runs_and_history_roundtrips():
    torch.manual_seed(0)
    hist = train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=4, autocast="bf16", eval_every=2))
    assert all(math.isfinite(v) for v in hist.train_loss)
    assert TrainHistory.from_dict(hist.to_dict()) == hist


# ---- fused AdamW: versions compared as versions -------------------------------------------
@pytest.mark.parametrize("version, device, expected", [
    ("2.13.0", "mps", True),  # the string comparison "2.13.0" >= "2.5" said False
    ("2.10.0+cu128", "mps", True), ("2.5.0", "mps", True), ("2.5.0.dev20240801+cpu", "mps", True),
    ("2.4.1", "mps", False), ("2.13.0", "cpu", True), ("2.3.1", "cpu", False), ("2.1.0", "cuda", True),
    ("2.13.0", "meta", False),
])
def test_fused_adamw_available_compares_versions_as_versions(monkeypatch, version, device, expected):
    monkeypatch.setattr(torch, "__version__", version)
    assert fused_adamw_available(torch.device(device)) is expected
    assert fused_adamw_available(device) is expected  # a device string works too


# ---- the LM batch function -------------------------------------------------------------------
def test_make_lm_get_batch_is_pure_and_shifted():
    pytest.importorskip("scratchlm.data.lm")
    ids = torch.arange(1000)
    get_batch = make_lm_get_batch({"train": ids, "val": ids + 5000}, batch_size=3, block_size=6, seed=4)
    x, y = get_batch("train", 12)
    x2, y2 = get_batch("train", 12)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # same index, same batch: resume-safe
    assert x.shape == y.shape == (3, 6)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert not torch.equal(get_batch("train", 13)[0], x)  # neighbouring index, other windows
    assert (get_batch("val", 12)[0] >= 5000).all()
    with pytest.raises(ValueError, match="unknown split"):
        get_batch("test", 0)
    with pytest.raises(ValueError, match="block_size"):
        make_lm_get_batch({"train": ids[:5]}, batch_size=2, block_size=6)
