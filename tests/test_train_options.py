"""The training loop's optimizer choice (AdamW / Muon) and schedule choice (cosine / WSD), Chapter 6½.

References are independent of the loop: the WSD rate is recomputed from its piecewise definition,
and the loop with ``optimizer="muon"`` is compared bitwise with a hand-written loop that builds
:func:`build_muon_adamw` itself.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny_training import TinyLM, cfg, tiny_get_batch, tiny_loss

from scratchlm.training import (
    MuonAdamW,
    TrainConfig,
    build_muon_adamw,
    build_optimizer,
    lr_at,
    read_checkpoint_metadata,
    train,
    training_fingerprint,
)


# ---- schedules ---------------------------------------------------------------------------------
def _wsd_reference(s: int, lr_max: float, lr_min: float, warmup: int, total: int, cooldown: int) -> float:
    """Warmup-stable-decay written out step by step: rise, hold, fall linearly, floor."""
    if s < warmup:
        return lr_max * (s + 1) / (warmup + 1)
    start = total - cooldown
    if s < start:
        return lr_max
    if s <= total:
        return lr_max + (lr_min - lr_max) * (s - start) / cooldown
    return lr_min


def test_wsd_schedule_matches_its_definition_everywhere():
    c = TrainConfig(max_steps=1000, learning_rate=2e-3, min_lr=0.0, warmup_steps=50, schedule="wsd",
                    cooldown_fraction=0.3)
    for s in range(1200):
        assert lr_at(s, c) == pytest.approx(_wsd_reference(s, 2e-3, 0.0, 50, 1000, 300), abs=1e-15), s
    assert lr_at(699, c) == 2e-3 and lr_at(700, c) == 2e-3  # the cool-down starts at 1000 - 300
    assert lr_at(850, c) == pytest.approx(1e-3)  # half-way down
    assert lr_at(1000, c) == 0.0


def test_wsd_respects_lr_decay_steps_and_a_cooldown_longer_than_the_stable_phase():
    c = TrainConfig(max_steps=400, learning_rate=1.0, min_lr=0.1, warmup_steps=0, lr_decay_steps=200,
                    schedule="wsd", cooldown_fraction=0.5)
    assert lr_at(99, c) == 1.0 and lr_at(150, c) == pytest.approx(0.55) and lr_at(300, c) == 0.1
    long = replace(c, warmup_steps=150, cooldown_fraction=1.0)  # cool-down clipped to end of warm-up
    assert lr_at(150, long) == 1.0 and lr_at(175, long) == pytest.approx(0.55)


def test_cosine_stays_the_default_and_is_unchanged():
    c = TrainConfig(max_steps=2000)
    assert c.schedule == "cosine" and c.optimizer == "adamw"
    assert lr_at(1050, c) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(1050, replace(c, cooldown_fraction=0.9)) == lr_at(1050, c)  # ignored by the cosine


@pytest.mark.parametrize("kw, error, word", [
    (dict(optimizer="sgd"), ValueError, "optimizer"), (dict(schedule="linear"), ValueError, "schedule"),
    (dict(cooldown_fraction=0.0), ValueError, "cooldown_fraction"),
    (dict(cooldown_fraction=1.5), ValueError, "cooldown_fraction"),
    (dict(muon_lr=0.0), ValueError, "muon_lr"), (dict(muon_momentum=1.0), ValueError, "muon_momentum"),
    (dict(muon_lr="0.02"), TypeError, "muon_lr"), (dict(cooldown_fraction=float("nan")), TypeError, "cooldown"),
])
def test_new_options_reject_bad_values(kw, error, word):
    with pytest.raises(error, match=word):
        TrainConfig(**kw)


# ---- the optimizer choice ----------------------------------------------------------------------
def test_build_optimizer_muon_groups_and_rates():
    model = TinyLM()
    opt = build_optimizer(model, TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.05,
                                             weight_decay=0.1, muon_momentum=0.9))
    assert isinstance(opt, MuonAdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["muon"]["params"]} == {id(model.mix.weight), id(model.pos)}
    assert groups["muon"]["lr"] * groups["muon"]["lr_scale"] == pytest.approx(0.05)
    assert groups["adamw_decay"]["lr"] * groups["adamw_decay"]["lr_scale"] == pytest.approx(1e-3)
    assert groups["muon"]["momentum"] == 0.9
    assert groups["muon"]["weight_decay"] == pytest.approx(0.1 * 1e-3 / 0.05)  # same shrink per step
    adamw = build_optimizer(model, TrainConfig())
    assert isinstance(adamw, torch.optim.AdamW)


def test_train_with_muon_equals_a_hand_written_loop():
    c = cfg(optimizer="muon", muon_lr=0.03, schedule="wsd", max_steps=12, grad_accum_steps=1, eval_every=0)
    torch.manual_seed(3)
    model = TinyLM()
    hist = train(model, tiny_get_batch, tiny_loss, c)

    torch.manual_seed(3)
    ref = TinyLM()
    opt = build_muon_adamw(ref, muon_lr=0.03, adamw_lr=c.learning_rate, weight_decay=c.weight_decay,
                           betas=(c.beta1, c.beta2), eps=c.eps, momentum=c.muon_momentum)
    losses = []
    for step in range(c.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, c)
        loss = tiny_loss(ref, tiny_get_batch("train", step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), c.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert hist.train_loss == losses
    for name, value in ref.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert hist.lr == [lr_at(s, c) for s in range(c.max_steps)]


def test_muon_run_resumes_bitwise_and_refuses_another_optimizer(tmp_path):
    c = cfg(optimizer="muon", muon_lr=0.03, schedule="wsd")
    torch.manual_seed(1)
    straight = TinyLM()
    ref = train(straight, tiny_get_batch, tiny_loss, c)

    path = tmp_path / "muon.safetensors"
    torch.manual_seed(1)

    def crashing_get_batch(split, index):
        if split == "train" and index >= 10 * 2:
            raise KeyboardInterrupt("simulated crash")
        return tiny_get_batch(split, index)

    with pytest.raises(KeyboardInterrupt):
        train(TinyLM(), crashing_get_batch, tiny_loss, replace(c, checkpoint_path=str(path), checkpoint_every=10))
    assert read_checkpoint_metadata(path)["step"] == 10
    with pytest.raises(ValueError, match="optimizer: checkpoint 'muon', now"):
        train(TinyLM(), tiny_get_batch, tiny_loss, replace(c, optimizer="adamw", checkpoint_path=str(path),
                                                           resume=True))
    torch.manual_seed(999)
    fresh = TinyLM()
    resumed = train(fresh, tiny_get_batch, tiny_loss, replace(c, checkpoint_path=str(path), resume=True))
    assert resumed.train_loss == ref.train_loss
    for name, value in straight.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_fingerprint_holds_the_new_options_only_away_from_their_defaults():
    batch = tiny_get_batch("train", 0)
    plain = training_fingerprint(cfg(), batch, TinyLM())
    assert not {"optimizer", "schedule", "muon_lr", "muon_momentum", "cooldown_fraction"} & set(plain)
    wsd = training_fingerprint(cfg(schedule="wsd", cooldown_fraction=0.3), batch, TinyLM())
    assert wsd["schedule"] == "wsd" and wsd["cooldown_fraction"] == 0.3


# ---- early stopping: after_step-------------------------------------------------------------------
def test_after_step_sees_every_step_and_stops_where_asked(tmp_path):
    c = cfg(max_steps=20, lr_decay_steps=20, eval_every=0)
    seen = []

    def stop_at_7(done, model, history):
        seen.append((done, model))
        return done == 7

    torch.manual_seed(2)
    model = TinyLM()
    path = tmp_path / "stop.safetensors"
    hist = train(model, tiny_get_batch, tiny_loss, replace(c, checkpoint_path=str(path)), after_step=stop_at_7)
    assert [d for d, _ in seen] == list(range(1, 8)) and all(m is model for _, m in seen)
    assert hist.steps == list(range(1, 8)) and len(hist.train_loss) == 7
    assert read_checkpoint_metadata(path)["step"] == 7  # the state where it stopped

    torch.manual_seed(2)
    short = TinyLM()
    ref = train(short, tiny_get_batch, tiny_loss, replace(c, max_steps=7))  # same schedule, 7 steps
    assert hist.train_loss == ref.train_loss
    for name, value in short.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name

    torch.manual_seed(2)
    straight = TinyLM()
    full = train(straight, tiny_get_batch, tiny_loss, c)
    torch.manual_seed(5)
    resumed_model = TinyLM()
    resumed = train(resumed_model, tiny_get_batch, tiny_loss, replace(c, checkpoint_path=str(path), resume=True))
    assert resumed.train_loss == full.train_loss  # stopping early and resuming = never stopping
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


def test_after_step_false_or_none_changes_nothing_and_must_be_callable():
    c = cfg(max_steps=6, eval_every=3)
    torch.manual_seed(4)
    a = train(TinyLM(), tiny_get_batch, tiny_loss, c, after_step=lambda done, model, history: None)
    torch.manual_seed(4)
    b = train(TinyLM(), tiny_get_batch, tiny_loss, c)
    assert a.train_loss == b.train_loss and a.val_loss == b.val_loss and a.steps == list(range(1, 7))
    with pytest.raises(TypeError, match="after_step"):
        train(TinyLM(), tiny_get_batch, tiny_loss, c, after_step=3)
