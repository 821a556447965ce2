"""Tests for scratchlm.training.checkpoint: the file format, atomic writes, and every way a file can be wrong."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import scratchlm.training.checkpoint as ckpt
from scratchlm.errors import CheckpointError
from scratchlm.training import (
    RESERVED_KEYS,
    adamw_with_decay_groups,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
    tensor_checksum,
)

VOCAB = 11
ROOT = Path(__file__).resolve().parents[1]


class Tied(nn.Module):
    """Embedding -> residual tanh blocks -> LayerNorm -> head tied to the embedding."""

    def __init__(self, width: int = 8, layers: int = 1) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.emb(x)  # (B, T, C)
        for block in self.blocks:
            h = h + torch.tanh(block(h))  # (B, T, C)
        return self.head(self.norm(h))  # (B, T, V)


def adamw(model: nn.Module) -> torch.optim.AdamW:
    return adamw_with_decay_groups(model.named_parameters(), learning_rate=1e-2, weight_decay=0.1,
                                   betas=(0.9, 0.99), fused=False)


def one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x = torch.arange(12).reshape(2, 6) % VOCAB  # (B, T)
    logits = model(x)  # (B, T, V)
    nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x.roll(-1, dims=1).reshape(-1)).backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.fixture
def saved(tmp_path) -> tuple[Path, Tied, torch.optim.AdamW]:
    """A real checkpoint (model + AdamW state after one step) and the objects that wrote it."""
    torch.manual_seed(0)
    model = Tied()
    opt = adamw(model)
    one_step(model, opt)
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, step=7, metadata={"note": "hi"})
    return path, model, opt


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rewrite(src: Path, dst: Path, *, doc_change=None, tensor_change=None, fix_checksum: bool = False) -> Path:
    """Copy a checkpoint, editing its JSON document and/or tensors on the way."""
    tensors = load_file(str(src))
    doc = read_checkpoint_metadata(src)
    if tensor_change is not None:
        tensor_change(tensors)
    if fix_checksum:
        doc["checksum"] = tensor_checksum(tensors)
    if doc_change is not None:
        doc_change(doc)
    save_file(tensors, str(dst), metadata={"scratchlm": json.dumps(doc)})
    return dst


def expect_error(path: Path, match: str, *load_args, **load_kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path, *load_args, **load_kwargs) if load_args else read_checkpoint_metadata(path)
    assert err.value.path == str(path) and str(path) in str(err.value)
    assert isinstance(err.value, ValueError)  # callers that caught ValueError keep working
    return err.value


# ---- the format ---------------------------------------------------------------------------------
def test_checkpoint_is_plain_safetensors_with_json_metadata_and_tied_weight_stored_once(saved, tmp_path):
    path, model, opt = saved
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "model.emb.weight" in keys and "model.head.weight" not in keys
    assert {"optim.0.exp_avg", "optim.0.exp_avg_sq", "optim.0.step", "rng.torch"} <= keys
    meta = read_checkpoint_metadata(path)
    assert meta["step"] == 7 and meta["note"] == "hi" and meta["aliases"] == {"head.weight": "emb.weight"}
    assert meta["format"] == ckpt.FORMAT and meta["optimizer"] == {"class": "AdamW", "group_sizes": [2, 3]}
    assert meta["checksum"] == tensor_checksum(load_file(str(path))) and meta["checksum"].startswith("sha256:")
    assert not list(tmp_path.glob("*.tmp"))  # temp file renamed away

    other = Tied()
    opt2 = adamw(other)
    load_checkpoint(path, other, opt2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[name])
    assert other.head.weight is other.emb.weight  # the tie survives loading
    for p, q in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(p["exp_avg_sq"], q["exp_avg_sq"])


def test_checksum_covers_names_dtypes_shapes_and_bytes():
    base = {"a": torch.arange(4, dtype=torch.float32), "b": torch.zeros(2, 2)}
    same = tensor_checksum(base)
    assert tensor_checksum(dict(reversed(list(base.items())))) == same  # order of the dict: irrelevant
    assert tensor_checksum({"a2": base["a"], "b": base["b"]}) != same  # renamed
    assert tensor_checksum({"a": base["a"].reshape(2, 2), "b": base["b"]}) != same  # reshaped, same bytes
    assert tensor_checksum({"a": base["a"].view(torch.int32), "b": base["b"]}) != same  # same bytes, other dtype
    flipped = base["a"].clone()
    flipped[1] = 1.0000001
    assert tensor_checksum({"a": flipped, "b": base["b"]}) != same
    assert tensor_checksum({"s": torch.tensor(3.0), "h": torch.ones(3, dtype=torch.bfloat16)})  # 0-d and bf16 work


# ---- files that are not checkpoints -------------------------------------------------------------
def test_missing_file_and_directory(tmp_path):
    expect_error(tmp_path / "nope.safetensors", "file does not exist")
    expect_error(tmp_path / "nope.safetensors", "file does not exist", Tied())
    expect_error(tmp_path, "not a regular file", Tied())


@pytest.mark.parametrize("kind", ["header_cut", "data_cut", "empty", "random_bytes", "pickle"])
def test_unreadable_files_are_checkpoint_errors(saved, tmp_path, kind):
    path, model, _ = saved
    blob = path.read_bytes()
    content = {
        "header_cut": blob[:20],
        "data_cut": blob[:-7],
        "empty": b"",
        "random_bytes": random.Random(0).randbytes(500),
        "pickle": pickle.dumps(model.state_dict()),  # what torch.save-style checkpoints hold
    }[kind]
    bad = tmp_path / f"{kind}.safetensors"
    bad.write_bytes(content)
    expect_error(bad, "not a readable safetensors file")
    expect_error(bad, "not a readable safetensors file", Tied())


def test_plain_safetensors_is_not_a_checkpoint(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    expect_error(tmp_path / "plain.safetensors", "not a scratchlm checkpoint", Tied())


@pytest.mark.parametrize("raw, match", [("{'step': 1", "malformed JSON"), ("[1, 2]", "must be a JSON object")])
def test_malformed_json_metadata(tmp_path, raw, match):
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"scratchlm": raw})
    expect_error(path, match)


def test_wrong_format_tag(saved, tmp_path):
    path = rewrite(saved[0], tmp_path / "v1.safetensors", doc_change=lambda d: d.update(format="scratchlm-checkpoint-v1"))
    err = expect_error(path, "wrong checkpoint format tag", Tied())
    assert "scratchlm-checkpoint-v1" in str(err) and ckpt.FORMAT in str(err)


@pytest.mark.parametrize("field", sorted(RESERVED_KEYS - {"format"}))
def test_missing_metadata_fields(saved, tmp_path, field):
    path = rewrite(saved[0], tmp_path / "m.safetensors", doc_change=lambda d: d.pop(field))
    expect_error(path, rf"metadata fields missing: \['{field}'\]", Tied())


@pytest.mark.parametrize("change, match", [
    (dict(step="7"), "'step' has the wrong type"), (dict(step=True), "'step' has the wrong type"),
    (dict(step=-1), "'step' must be >= 0"), (dict(aliases=["x"]), "'aliases' has the wrong type"),
])
def test_metadata_fields_of_the_wrong_type(saved, tmp_path, change, match):
    path = rewrite(saved[0], tmp_path / "t.safetensors", doc_change=lambda d: d.update(change))
    expect_error(path, match)


# ---- corrupted tensors: the checksum -------------------------------------------------------------
def test_a_flipped_byte_fails_the_checksum_and_changes_nothing(saved, tmp_path):
    path, _, _ = saved
    blob = bytearray(path.read_bytes())
    header_len = int.from_bytes(blob[:8], "little")
    blob[8 + header_len + 5] ^= 0x01  # one bit of the first tensor's data
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(blob))
    assert read_checkpoint_metadata(bad)["step"] == 7  # the header is intact: only loading can tell
    model, rng_before = Tied(), None
    before = snapshot(model)
    torch.rand(3)
    rng_before = torch.get_rng_state()
    expect_error(bad, "checksum mismatch", model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_renamed_tensor_with_the_old_checksum_fails(saved, tmp_path):
    def rename(tensors):
        tensors["model.norm.gain"] = tensors.pop("model.norm.weight")

    bad = rewrite(saved[0], tmp_path / "renamed.safetensors", tensor_change=rename)
    expect_error(bad, "checksum mismatch", Tied())


# ---- tensors that do not fit the model ----------------------------------------------------------
def test_shapes_that_do_not_fit_name_the_tensors(saved):
    model = Tied(width=12)
    before = snapshot(model)
    err = expect_error(saved[0], "tensors do not fit Tied", model)
    assert "shape mismatch: emb.weight (checkpoint (11, 8), model (11, 12))" in str(err)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_and_unexpected_tensors_are_listed(saved, tmp_path):
    expect_error(saved[0], r"missing from the checkpoint: blocks\.1\.weight, blocks\.1\.bias", Tied(layers=2))
    deeper = Tied(layers=2)
    path = save_checkpoint(tmp_path / "deep.safetensors", deeper)
    expect_error(path, r"not in the model: blocks\.1\.bias, blocks\.1\.weight", Tied())


def test_alias_to_a_missing_tensor(saved, tmp_path):
    bad = rewrite(saved[0], tmp_path / "alias.safetensors", doc_change=lambda d: d.update(aliases={"head.weight": "x"}))
    expect_error(bad, "alias 'head.weight' points at 'x'", Tied())


# ---- optimizer state that does not fit -----------------------------------------------------------
def test_optimizer_state_missing_or_for_another_optimizer(saved, tmp_path):
    path, _, _ = saved
    model = Tied()
    no_opt = save_checkpoint(tmp_path / "weights_only.safetensors", model)
    expect_error(no_opt, "holds no optimizer state", model, adamw(model))
    err = expect_error(path, "optimizer mismatch", model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert "AdamW" in str(err) and "SGD" in str(err)
    expect_error(path, r"sizes \[2, 3\], now AdamW with \[5\]", model, torch.optim.AdamW(model.parameters()))


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.update({"optim.0.exp_avg": torch.zeros(3)}), r"'optim.0.exp_avg' has shape \(3,\)"),
    (lambda t: t.update({"optim.99.exp_avg": torch.zeros(3)}), "state for parameter 99"),
    (lambda t: t.update({"optim.x.exp_avg": torch.zeros(3)}), "malformed optimizer tensor name"),
])
def test_optimizer_tensors_that_do_not_fit(saved, tmp_path, edit, match):
    bad = rewrite(saved[0], tmp_path / "opt.safetensors", tensor_change=edit, fix_checksum=True)
    model = Tied()
    opt = adamw(model)
    one_step(model, opt)
    state_before = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(opt.state.values())}
    expect_error(bad, match, model, opt)
    for i, s in enumerate(opt.state.values()):  # untouched by the refused load
        assert all(torch.equal(v, state_before[i][k]) for k, v in s.items())


def test_missing_rng_state(saved, tmp_path):
    bad = rewrite(saved[0], tmp_path / "rng.safetensors", tensor_change=lambda t: t.pop("rng.numpy"),
                  fix_checksum=True)
    expect_error(bad, r"RNG state tensors missing: \['rng.numpy'\]", Tied())
    load_checkpoint(bad, Tied(), restore_rng=False)  # weights alone still load


# ---- writing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
def test_user_metadata_cannot_overwrite_reserved_keys(tmp_path, key):
    path = tmp_path / "c.safetensors"
    with pytest.raises(ValueError, match=f"reserved keys \\['{key}'\\]"):
        save_checkpoint(path, Tied(), metadata={key: 1, "fine": 2})
    assert not path.exists()


@pytest.mark.parametrize("metadata, error", [({"tags": {1, 2}}, TypeError), ({"w": torch.zeros(1)}, TypeError),
                                             ({1: "x"}, TypeError), (["not", "a", "dict"], TypeError)])
def test_user_metadata_must_be_json(tmp_path, metadata, error):
    path = tmp_path / "c.safetensors"
    with pytest.raises(error, match="metadata"):
        save_checkpoint(path, Tied(), metadata=metadata)
    assert not path.exists()


def test_bad_save_arguments(tmp_path):
    with pytest.raises(TypeError, match="nn.Module"):
        save_checkpoint(tmp_path / "x.safetensors", {"w": torch.zeros(1)})
    with pytest.raises(TypeError, match="Optimizer"):
        save_checkpoint(tmp_path / "x.safetensors", Tied(), optimizer="adam")
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "x.safetensors", Tied(), step=-1)
    with pytest.raises(TypeError, match="nn.Module"):
        load_checkpoint(tmp_path / "x.safetensors", {"w": torch.zeros(1)})


def test_a_failed_write_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, model, opt = saved
    previous = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, step=8)
    assert path.read_bytes() == previous
    assert not list(path.parent.glob("*.tmp"))


def test_the_next_save_removes_temp_files_of_a_killed_save(tmp_path):
    """A process killed between writing its temp file and renaming it leaves ``<name>.*.tmp``."""
    target = tmp_path / "run[1].safetensors"  # glob characters in the name must not matter
    script = textwrap.dedent(f"""
        import os, torch
        from scratchlm.training import save_checkpoint
        os.replace = lambda src, dst: os._exit(9)  # killed right before the rename
        save_checkpoint({str(target)!r}, torch.nn.Linear(2, 2))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    orphans = list(tmp_path.glob("*.tmp"))
    assert len(orphans) == 1 and orphans[0].name.startswith(target.name + ".") and not target.exists()

    keep = [tmp_path / "run[1].safetensors.tmp", tmp_path / "other.safetensors.abc.tmp",
            tmp_path / "run[1].safetensors.abc.tmp.bak"]
    for path in keep:
        path.write_text("not ours")
    save_checkpoint(target, nn.Linear(2, 2))
    assert not orphans[0].exists()
    assert all(path.exists() for path in keep)
    load_checkpoint(target, nn.Linear(2, 2))
