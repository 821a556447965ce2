"""Tests for the training loop's guards: pre-flight checks, resume refusal, distributed hooks (Chapter 06)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace

import pytest
import torch
from safetensors import safe_open
from tiny_training import (
    TinyLM,
    assert_same_weights,
    cfg,
    counting_loss,
    snapshot,
    tiny_get_batch,
    tiny_loss,
)
from torch import nn

import scratchlm.training.loop as loop_module
import scratchlm.training.preflight as preflight
from scratchlm.errors import CheckpointError
from scratchlm.training import (
    TrainHistory,
    grad_sync_context,
    read_checkpoint_metadata,
    save_checkpoint,
    train,
    unwrap_model,
)


# ---- pre-flight ----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["under_a_regular_file", "read_only_directory"])
def test_preflight_refuses_an_unwritable_checkpoint_location_before_any_step(tmp_path, where):
    if where == "under_a_regular_file":
        (tmp_path / "file.txt").write_text("not a directory")
        path = tmp_path / "file.txt" / "ckpt.safetensors"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            (locked / "probe").touch()  # root ignores permission bits: then this case proves nothing
        except PermissionError:
            pass
        else:
            locked.chmod(0o700)
            pytest.skip("running with privileges that write into read-only directories (see the test below)")
        path = locked / "ckpt.safetensors"
    model = TinyLM()
    before = snapshot(model)
    loss_fn, calls = counting_loss()
    try:
        with pytest.raises(ValueError, match="cannot write in") as err:
            train(model, tiny_get_batch, loss_fn, cfg(checkpoint_path=str(path)))
    finally:
        if where == "read_only_directory":
            locked.chmod(0o700)
    assert "checkpoint_path" in str(err.value)
    assert calls == []  # not even the evaluation at step 0 ran
    assert_same_weights(before, snapshot(model))
    if path.parent.is_dir():
        assert not list(path.parent.glob("*.tmp"))  # the probe left nothing behind


def test_preflight_reports_a_denied_probe_file(tmp_path, monkeypatch):
    """What a read-only directory does for a user without root privileges, simulated for everyone."""
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", denied)
    loss_fn, calls = counting_loss()
    with pytest.raises(ValueError, match=r"cannot write in .*\(Permission denied\)"):
        train(TinyLM(), tiny_get_batch, loss_fn, cfg(checkpoint_path=str(tmp_path / "run.safetensors")))
    assert calls == []


def test_preflight_refuses_a_directory_as_checkpoint_path(tmp_path):
    loss_fn, calls = counting_loss()
    with pytest.raises(ValueError, match="is a directory"):
        train(TinyLM(), tiny_get_batch, loss_fn, cfg(checkpoint_path=str(tmp_path)))
    assert calls == []


@pytest.mark.parametrize("value", [{"a", "b"}, torch.zeros(2), float("nan")], ids=["set", "tensor", "nan"])
def test_preflight_refuses_extra_that_json_cannot_hold(value):
    loss_fn, calls = counting_loss()
    config = cfg()
    config.extra["tags"] = value  # set after construction, as notebooks do
    with pytest.raises(TypeError, match=r"extra\['tags'\]"):
        train(TinyLM(), tiny_get_batch, loss_fn, config)
    assert calls == []


@pytest.mark.parametrize("field_name, value, error", [
    ("learning_rate", -1.0, ValueError), ("learning_rate", "3e-2", TypeError), ("nonfinite", "ignore", ValueError),
    ("log_every", 0, ValueError), ("validate_inputs", "yes", TypeError), ("eps", 0.0, ValueError),
])
def test_preflight_rechecks_fields_reassigned_after_construction(field_name, value, error):
    config = cfg()
    setattr(config, field_name, value)  # dataclass assignment runs no check
    loss_fn, calls = counting_loss()
    with pytest.raises(error, match=field_name if field_name != "learning_rate" or error is TypeError
                       else "learning_rate > 0"):
        train(TinyLM(), tiny_get_batch, loss_fn, config)
    assert calls == []


def test_checkpoint_path_may_be_a_path_object_and_is_stored_as_str(tmp_path):
    c = cfg(checkpoint_path=tmp_path / "run.safetensors")
    assert c.checkpoint_path == str(tmp_path / "run.safetensors")
    json.dumps(c.checkpoint_path)


# ---- resume refuses another run ------------------------------------------------------------
def test_resume_refuses_a_different_setup_and_lists_every_difference(tmp_path):
    path = str(tmp_path / "run.safetensors")
    torch.manual_seed(0)
    train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=6, checkpoint_path=path))

    def doubled_batch(split, index):
        x, y = tiny_get_batch(split, index)
        return torch.cat([x, x]), torch.cat([y, y])  # (8, T), (8, T)

    fresh = TinyLM(width=24)
    before = snapshot(fresh)
    loss_fn, calls = counting_loss()
    with pytest.raises(ValueError, match="refusing to resume") as err:
        train(fresh, doubled_batch, loss_fn, cfg(max_steps=6, checkpoint_path=path, resume=True,
                                                 learning_rate=1e-2, grad_accum_steps=1, beta2=0.95))
    message = str(err.value)
    for line in ("learning_rate: checkpoint 0.03, now 0.01", "grad_accum_steps: checkpoint 2, now 1",
                 "beta2: checkpoint 0.99, now 0.95", "batch: checkpoint [[4, 8], [4, 8]], now [[8, 8], [8, 8]]",
                 "model.mix.weight: checkpoint [16, 16], now [24, 24]"):
        assert line in message
    assert "min_lr" not in message and "warmup_steps" not in message  # unchanged fields are not listed
    assert calls == []
    assert_same_weights(before, snapshot(fresh))


@dataclass
class TinyConfig:
    width: int = 16
    dropout: float = 0.3


class ConfiguredLM(TinyLM):
    """TinyLM with a dataclass ``config``, as the book's models have."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config.width)
        self.drop.p = config.dropout
        self.config = config


def test_resume_compares_the_model_config_when_the_model_has_one(tmp_path):
    path = str(tmp_path / "run.safetensors")
    train(ConfiguredLM(TinyConfig()), tiny_get_batch, tiny_loss, cfg(max_steps=4, checkpoint_path=path))
    fingerprint = read_checkpoint_metadata(path)["fingerprint"]
    assert fingerprint["model"] == {"class": "ConfiguredLM", "width": 16, "dropout": 0.3}
    with pytest.raises(ValueError, match=r"model\.dropout: checkpoint 0\.3, now 0\.1"):
        train(ConfiguredLM(TinyConfig(dropout=0.1)), tiny_get_batch, tiny_loss,
              cfg(max_steps=4, checkpoint_path=path, resume=True))
    with pytest.raises(ValueError, match="model.class: checkpoint 'ConfiguredLM', now 'TinyLM'"):
        train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=4, checkpoint_path=path, resume=True))


def test_resume_may_extend_max_steps_only_with_a_fixed_decay_horizon(tmp_path):
    path = str(tmp_path / "run.safetensors")
    torch.manual_seed(0)
    train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=10, checkpoint_path=path))
    with pytest.raises(ValueError, match=r"lr_decay_steps \(effective; None means max_steps\): checkpoint 10, now 20"):
        train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=20, checkpoint_path=path, resume=True))

    fixed = dict(lr_decay_steps=20, eval_every=0)
    torch.manual_seed(0)
    straight_model = TinyLM()
    straight = train(straight_model, tiny_get_batch, tiny_loss, cfg(max_steps=20, **fixed))
    path2 = str(tmp_path / "fixed.safetensors")
    torch.manual_seed(0)
    train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=10, checkpoint_path=path2, **fixed))
    torch.manual_seed(123)
    resumed_model = TinyLM()
    resumed = train(resumed_model, tiny_get_batch, tiny_loss,
                    cfg(max_steps=20, checkpoint_path=path2, resume=True, **fixed))
    assert resumed.train_loss == straight.train_loss and resumed.steps == list(range(1, 21))
    assert_same_weights(snapshot(straight_model), snapshot(resumed_model))
    with pytest.raises(ValueError, match="step 20, past TrainConfig.max_steps=15"):
        train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=15, checkpoint_path=path2, resume=True, **fixed))


def test_resume_needs_a_checkpoint_written_by_train(tmp_path):
    path = tmp_path / "manual.safetensors"
    save_checkpoint(path, TinyLM(), step=3, metadata={"history": TrainHistory().to_dict()})
    with pytest.raises(CheckpointError, match="'fingerprint' missing"):
        train(TinyLM(), tiny_get_batch, tiny_loss, cfg(checkpoint_path=str(path), resume=True))


# ---- distributed hooks ---------------------------------------------------------------------
class FakeDDP(nn.Module):
    """Stands in for DistributedDataParallel: counts ``no_sync`` entries and records, for every
    training forward and backward, whether it ran inside ``no_sync``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.entered = 0
        self.in_no_sync = False
        self.forward_log: list[bool] = []
        self.backward_log: list[bool] = []

    @contextlib.contextmanager
    def no_sync(self):
        self.entered += 1
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, x):
        out = self.inner(x)  # (B, T, V)
        if self.training:
            self.forward_log.append(self.in_no_sync)
            out.register_hook(lambda grad: self.backward_log.append(self.in_no_sync))
        return out


def test_no_sync_is_entered_for_all_but_the_last_micro_batch_of_each_step():
    c = cfg(max_steps=4, grad_accum_steps=3, eval_every=2)
    torch.manual_seed(0)
    plain = TinyLM()
    train(plain, tiny_get_batch, tiny_loss, c)
    torch.manual_seed(0)
    wrapped = FakeDDP(TinyLM())
    train(wrapped, tiny_get_batch, tiny_loss, c)
    assert wrapped.entered == 4 * (3 - 1)
    assert wrapped.forward_log == [True, True, False] * 4  # evaluation forwards are not logged
    assert wrapped.backward_log == [True, True, False] * 4  # the backward ran inside, too
    assert_same_weights(snapshot(plain), snapshot(wrapped.inner))


def test_grad_sync_context_switches_fsdp2_style_sync_and_ignores_plain_modules():
    class FakeFSDP(TinyLM):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[bool] = []

        def set_requires_gradient_sync(self, flag: bool) -> None:
            self.calls.append(flag)

    model = FakeFSDP()
    train(model, tiny_get_batch, tiny_loss, cfg(max_steps=2, grad_accum_steps=3, eval_every=0))
    assert model.calls == [False, True] * 2 * 2  # off then on again, for micro-batches 1 and 2 of 2 steps
    with grad_sync_context(TinyLM(), sync=False):  # a plain module: nothing to switch, no error
        pass


def test_only_rank_zero_shows_progress_and_writes_checkpoints(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.safetensors"
    monkeypatch.setattr(loop_module, "is_main_process", lambda: False)
    hist = train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=4, checkpoint_path=str(path), progress=True))
    assert not path.exists() and hist.steps == [1, 2, 3, 4]
    assert "train" not in capsys.readouterr().err
    monkeypatch.setattr(loop_module, "is_main_process", lambda: True)
    train(TinyLM(), tiny_get_batch, tiny_loss, cfg(max_steps=4, checkpoint_path=str(path), progress=True))
    assert path.exists() and "train" in capsys.readouterr().err


def test_real_ddp_in_a_world_of_one_trains_like_the_plain_model(tmp_path):
    dist = torch.distributed
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        c = cfg(max_steps=3, eval_every=0)
        torch.manual_seed(0)
        plain = TinyLM()
        train(plain, tiny_get_batch, tiny_loss, c)
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(TinyLM())
        assert unwrap_model(ddp) is ddp.module
        path = tmp_path / "ddp.safetensors"
        train(ddp, tiny_get_batch, tiny_loss, replace(c, checkpoint_path=str(path)))
    finally:
        dist.destroy_process_group()
    for name, value in snapshot(plain).items():
        torch.testing.assert_close(ddp.module.state_dict()[name], value, rtol=0, atol=1e-6)
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
    assert "model.wte.weight" in names and not any(n.startswith("model.module.") for n in names)


def test_unwrap_model_sees_through_torch_compile():
    model = TinyLM()
    assert unwrap_model(torch.compile(model)) is model
    assert unwrap_model(model) is model
