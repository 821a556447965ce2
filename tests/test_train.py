"""Tests for the training loop, its optimizer and schedule (Chapter 06).

Checkpoint files: test_checkpoint.py; pre-flight checks, resume guards and distributed hooks:
test_train_guards.py; the shared tiny model and data: tiny_training.py.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from tiny_training import (
    VOCAB,
    TinyLM,
    assert_same_weights,
    cfg,
    counting_loss,
    nan_loss_at,
    snapshot,
    tiny_get_batch,
    tiny_loss,
)

from scratchlm.data.lm import make_lm_get_batch
from scratchlm.training import (
    TrainConfig,
    TrainHistory,
    adamw_with_decay_groups,
    evaluate,
    fused_adamw_available,
    lr_at,
    read_checkpoint_metadata,
    train,
)


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


# ---- host transfers at log intervals only --------------------------------------------------
def test_history_reaches_the_host_every_log_every_steps_and_equals_per_step_logging():
    """log_every=7 keeps steps on the device until steps 7, 10 (eval), 14, 20 (end), and records
    exactly what log_every=1 records."""
    runs = {}
    for log_every in (1, 7):
        torch.manual_seed(0)
        hist = TrainHistory()
        seen: list[tuple[int, int]] = []  # (step about to run, steps already in the history)

        def get_batch(split, index, hist=hist, seen=seen):
            if split == "train" and index % 2 == 0:
                seen.append((index // 2, len(hist.steps)))
            return tiny_get_batch(split, index)

        train(TinyLM(), get_batch, tiny_loss, cfg(max_steps=20, eval_every=10, log_every=log_every), history=hist)
        runs[log_every] = hist, seen
    every, every_seen = runs[1]
    lazy, lazy_seen = runs[7]
    assert [n for _, n in every_seen] == list(range(20))
    assert lazy_seen == [(s, max([0] + [f for f in (7, 10, 14) if f <= s])) for s in range(20)]
    timing = {"train_time_s", "eval_time_s"}
    assert {k: v for k, v in lazy.to_dict().items() if k not in timing} == \
           {k: v for k, v in every.to_dict().items() if k not in timing}
    assert lazy.steps == list(range(1, 21)) and len(lazy.train_loss) == len(lazy.grad_norm) == 20


def test_log_every_must_be_positive():
    with pytest.raises(ValueError, match="log_every"):
        TrainConfig(log_every=0)


# ---- evaluate restores the mode ------------------------------------------------------------
@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_evaluate_restores_the_mode_when_the_loss_raises(start_in_train_mode):
    model = TinyLM().train(start_in_train_mode)
    calls = []

    def failing_loss(m, batch):
        calls.append(m.training)
        if len(calls) == 2:
            raise RuntimeError("loss exploded")
        return tiny_loss(m, batch)

    with pytest.raises(RuntimeError, match="exploded"):
        evaluate(model, tiny_get_batch, failing_loss, "val", range(4), autocast="off")
    assert calls == [False, False]  # it did evaluate in eval mode
    assert model.training is start_in_train_mode
    with pytest.raises(ValueError, match="no indices"):
        evaluate(model, tiny_get_batch, tiny_loss, "val", [], autocast="off")


# ---- non-finite loss -----------------------------------------------------------------------
def test_nonfinite_loss_raises_naming_the_step_with_the_weights_of_the_step_before():
    k = 4  # the 1-based step whose loss is NaN (its second micro-batch)
    c = cfg(max_steps=10, lr_decay_steps=20, eval_every=0)  # fixed horizon: the same lr whatever max_steps
    torch.manual_seed(0)
    reference = TinyLM()
    train(reference, tiny_get_batch, tiny_loss, replace(c, max_steps=k - 1))
    torch.manual_seed(0)
    model = TinyLM()
    hist = TrainHistory()
    with pytest.raises(FloatingPointError, match=rf"non-finite loss at step {k} .*after step {k - 1}"):
        train(model, tiny_get_batch, nan_loss_at((k - 1) * 2 + 1), c, history=hist)
    assert_same_weights(snapshot(reference), snapshot(model))
    assert all(p.grad is None for p in model.parameters())  # the NaN gradients were dropped
    assert hist.steps == [1, 2, 3] and all(math.isfinite(v) for v in hist.train_loss)  # flushed on the way out


def test_nonfinite_gradient_norm_with_a_finite_loss_also_stops():
    def loss_fn(model, batch):  # finite value, NaN gradient: d/dx sqrt(|x|) at 0, times 0
        loss = tiny_loss(model, batch)
        return loss + 0.0 * torch.sqrt((model.mix.bias - model.mix.bias.detach()).abs().sum())

    with pytest.raises(FloatingPointError, match="non-finite gradient norm at step 1 "):
        train(TinyLM(), tiny_get_batch, loss_fn, cfg(eval_every=0))


def test_nonfinite_skip_leaves_weights_and_optimizer_state_untouched(tmp_path):
    k, A = 4, 2
    c = cfg(max_steps=k, lr_decay_steps=20, eval_every=0, nonfinite="skip")
    torch.manual_seed(0)
    reference = TinyLM()
    train(reference, tiny_get_batch, tiny_loss,
          replace(c, max_steps=k - 1, checkpoint_path=str(tmp_path / "ref.safetensors")))
    torch.manual_seed(0)
    model = TinyLM()
    hist = train(model, tiny_get_batch, nan_loss_at((k - 1) * A),
                 replace(c, checkpoint_path=str(tmp_path / "skip.safetensors")))
    assert hist.skipped_steps == [k] and hist.steps == [1, 2, 3, 4]
    assert math.isnan(hist.train_loss[k - 1]) and all(math.isfinite(v) for v in hist.train_loss[: k - 1])
    assert_same_weights(snapshot(reference), snapshot(model))
    with safe_open(str(tmp_path / "ref.safetensors"), "pt") as f, \
            safe_open(str(tmp_path / "skip.safetensors"), "pt") as g:
        optim_keys = sorted(key for key in f.keys() if key.startswith("optim."))
        assert optim_keys and optim_keys == sorted(key for key in g.keys() if key.startswith("optim."))
        for key in optim_keys:  # AdamW's step counter and moments: as after step k - 1
            assert torch.equal(f.get_tensor(key), g.get_tensor(key)), key
    assert read_checkpoint_metadata(tmp_path / "skip.safetensors")["history"]["skipped_steps"] == [k]

    torch.manual_seed(0)  # and training goes on after the skipped step
    longer_model = TinyLM()
    longer = train(longer_model, tiny_get_batch, nan_loss_at((k - 1) * A), replace(c, max_steps=12))
    assert longer.skipped_steps == [k]
    assert all(math.isfinite(v) for i, v in enumerate(longer.train_loss) if i != k - 1)
    assert longer.train_loss[-1] < longer.train_loss[0]
    assert all(torch.isfinite(p).all() for p in longer_model.parameters())


def test_nonfinite_off_keeps_the_unchecked_behaviour():
    model = TinyLM()
    hist = train(model, tiny_get_batch, nan_loss_at(2), cfg(max_steps=3, eval_every=0, nonfinite="off"))
    assert hist.steps == [1, 2, 3] and hist.skipped_steps == []
    assert any(torch.isnan(p).any() for p in model.parameters())  # what "raise" protects against


# ---- validate_inputs -----------------------------------------------------------------------
class CheckedLM(TinyLM):
    """A model with a ``validate_inputs`` that records every batch it sees and rejects bad ids."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list = []

    def validate_inputs(self, batch) -> None:
        x, _ = batch
        if int(x.min()) < 0 or int(x.max()) >= VOCAB:
            raise ValueError(f"token ids must lie in [0, {VOCAB}); got {int(x.min())}..{int(x.max())}")
        self.validated.append(batch)


def test_train_and_evaluate_validate_every_batch_once():
    model = CheckedLM()
    train(model, tiny_get_batch, tiny_loss, cfg(max_steps=3, eval_every=3, eval_batches=2))
    expected = ([("train", 0), ("val", 0), ("val", 1)] + [("train", i) for i in range(1, 6)]
                + [("val", 0), ("val", 1)])
    assert len(model.validated) == len(expected)
    for (x, y), (split, index) in zip(model.validated, expected, strict=True):
        ex, ey = tiny_get_batch(split, index)
        assert torch.equal(x, ex) and torch.equal(y, ey), (split, index)

    quiet = CheckedLM()
    train(quiet, tiny_get_batch, tiny_loss, cfg(max_steps=3, eval_every=3, validate_inputs=False))
    assert quiet.validated == []


def bad_ids_at(bad_index: int):
    def get_batch(split, index):
        x, y = tiny_get_batch(split, index)
        if split == "train" and index == bad_index:
            x = x.clone()
            x[0, 0] = VOCAB  # one id past the vocabulary
        return x, y
    return get_batch


def test_a_rejected_first_batch_stops_training_before_any_step():
    model = CheckedLM()
    before = snapshot(model)
    loss_fn, calls = counting_loss()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 17\)"):
        train(model, bad_ids_at(0), loss_fn, cfg())
    assert calls == [] and model.validated == []
    assert_same_weights(before, snapshot(model))


def test_a_rejected_later_batch_stops_before_its_step():
    model = CheckedLM()
    hist = TrainHistory()
    with pytest.raises(ValueError, match="token ids"):
        train(model, bad_ids_at(5), tiny_loss, cfg(eval_every=0), history=hist)  # step 3, micro-batch 2
    assert hist.steps == [1, 2]
    with pytest.raises(ValueError, match="token ids"):
        evaluate(CheckedLM(), bad_ids_at(1), tiny_loss, "train", range(3), autocast="off")
    assert evaluate(CheckedLM(), bad_ids_at(1), tiny_loss, "train", [0], autocast="off") > 0
    with pytest.raises(IndexError):  # without the check: the embedding's cryptic error, from inside forward
        evaluate(CheckedLM(), bad_ids_at(1), tiny_loss, "train", range(3), autocast="off", validate_inputs=False)


def test_defaults_of_the_new_options():
    c = TrainConfig()
    assert (c.log_every, c.nonfinite, c.validate_inputs) == (10, "raise", True)
    assert os.fspath(TrainConfig(checkpoint_path="a.safetensors").checkpoint_path) == "a.safetensors"
