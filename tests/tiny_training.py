"""The tiny model, data and config the training-loop tests share (not a test module itself)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from scratchlm.training import TrainConfig

VOCAB, BLOCK, BATCH = 17, 8, 4


class TinyLM(nn.Module):
    """Embedding -> dropout -> LayerNorm -> Linear, with tied weights (like the GPT) and dropout."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(BLOCK, width) * 0.02)
        self.drop = nn.Dropout(0.3)  # makes the run depend on the torch RNG state
        self.ln = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB, bias=False)
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


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def counting_loss():
    """tiny_loss plus a list recording every call (True: in train mode)."""
    calls: list[bool] = []

    def loss_fn(model, batch):
        calls.append(model.training)
        return tiny_loss(model, batch)

    return loss_fn, calls


def nan_loss_at(bad_index: int):
    """tiny_loss, except NaN for the training micro-batch number ``bad_index`` (0-based)."""
    seen = {"n": 0}

    def loss_fn(model, batch):
        loss = tiny_loss(model, batch)
        if model.training:
            seen["n"] += 1
            if seen["n"] - 1 == bad_index:
                return loss * float("nan")
        return loss

    return loss_fn
