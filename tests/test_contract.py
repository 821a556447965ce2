"""The model contract, checked for every model of the book (GPT, BERT, T5, the Chapter 05 Transformer).

1. keyword inputs ``input_ids`` / ``attention_mask`` / ``labels`` and one ``ModelOutput``;
2. every ``nn.Linear`` is *called* in forward (a LoRA / quantized wrapper cannot be skipped);
3. ``forward`` compiles without graph breaks (no host syncs);
4. ``save_pretrained`` / ``from_pretrained`` round-trip, and broken directories give CheckpointError.
(The Hugging Face round trips both ways are in test_gpt / test_bert / test_t5.)
"""

from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo
from torch import nn

from scratchlm.errors import CheckpointError
from scratchlm.models import (
    GPT,
    T5,
    BertConfig,
    BertForPreTraining,
    BertModel,
    EncoderDecoderConfig,
    EncoderDecoderTransformer,
    GPTConfig,
    ModelOutput,
    T5Config,
)

V = 50


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, 9), generator=g)  # (B, T)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, -100)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


MODELS = {
    "gpt": lambda: GPT(GPTConfig(vocab_size=V, block_size=16, n_layers=2, n_heads=2, d_model=32)),
    "gpt-speedrun": lambda: GPT(GPTConfig(vocab_size=V, block_size=16, n_layers=2, n_heads=2, d_model=32,
                                          positions="rope", qk_norm=True, activation="swiglu", norm="rmsnorm",
                                          tie_embeddings=False)),
    "bert": lambda: BertForPreTraining(BertConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                                                  max_positions=16)),
    "t5": lambda: T5(T5Config(vocab_size=V, d_model=32, n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=64)),
    "transformer": lambda: EncoderDecoderTransformer(EncoderDecoderConfig(
        src_vocab_size=V, tgt_vocab_size=V, d_model=32, n_heads=2, n_encoder_layers=2, n_decoder_layers=2,
        d_ff=64, dropout=0.0, decoder_start_id=1)),
}


def _outputs(model: nn.Module, batch: dict) -> torch.Tensor:
    """Every tensor the model returns that depends on its weights, flattened into one vector."""
    out = model(**batch)
    parts = [out.logits, getattr(out, "nsp_logits", None), out.pooler_output]
    return torch.cat([p.flatten() for p in parts if p is not None])


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_keyword_inputs_one_output_type_and_a_loss(name):
    model = _model(name)
    batch = _inputs()
    model.validate_inputs(batch)  # the value checks pass on a good batch
    out = model(**batch)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape[:2] == (2, 9) and out.logits.shape[-1] == V
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert model(**{k: v for k, v in batch.items() if k != "labels"} | (
        {"decoder_input_ids": batch["input_ids"]} if name in ("t5", "transformer") else {})).loss is None


class Recorder(nn.Module):
    """Wraps an nn.Linear: counts its calls and adds ``offset`` times a fixed pattern to its output.

    A pattern, not a constant: a constant added to every key, say, cancels in the softmax.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear, self.calls, self.offset = linear, 0, 0.0

    def forward(self, x):
        self.calls += 1
        y = self.linear(x)
        if self.offset:
            pattern = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
            y = y + self.offset * pattern
        return y


def _wrap_all_linears(model: nn.Module) -> dict[str, Recorder]:
    wrapped = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                recorder = Recorder(child)
                setattr(module, child_name, recorder)
                wrapped[f"{name}.{child_name}".lstrip(".")] = recorder
    return wrapped


@pytest.mark.parametrize("name", list(MODELS))
def test_every_linear_is_called_as_a_module(name):
    model = _model(name)
    batch = _inputs(1)
    with torch.no_grad():
        before = _outputs(model, batch)
        recorders = _wrap_all_linears(model)
        assert recorders, "the model has Linear layers"
        same = _outputs(model, batch)
    torch.testing.assert_close(same, before, rtol=0, atol=0)  # zero offset: the wrapper is transparent
    never = [n for n, r in recorders.items() if r.calls == 0]
    assert not never, f"these Linear layers are bypassed in forward: {never}"
    for n, r in recorders.items():  # an offset in any one layer must reach the output
        r.offset = 0.5
        with torch.no_grad():
            changed = _outputs(model, batch)
        r.offset = 0.0
        assert not torch.allclose(changed, before), f"an offset in {n} does not change the output"


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_has_no_graph_breaks(name):
    model = _model(name)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(**_inputs(2))
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]


@pytest.mark.parametrize("name", list(MODELS))
def test_save_and_load_round_trip_exactly(name, tmp_path):
    model = _model(name)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    again = type(model).from_pretrained(tmp_path)
    assert again.config == model.config and not again.training
    batch = _inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [GPT, BertModel, T5, EncoderDecoderTransformer])
def test_broken_model_directories_raise_checkpoint_error_naming_the_file(cls, tmp_path):
    model = {GPT: lambda: _model("gpt"), BertModel: lambda: BertModel(BertConfig(vocab_size=V, d_model=32,
             n_layers=1, n_heads=2, d_ff=64, max_positions=16)), T5: lambda: _model("t5"),
             EncoderDecoderTransformer: lambda: _model("transformer")}[cls]()
    model.save_pretrained(tmp_path)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors"):
        cls.from_pretrained(tmp_path)
    weights.write_bytes(b"\x80\x04\x95 not safetensors but a pickle")
    with pytest.raises(CheckpointError, match="safetensors"):
        cls.from_pretrained(tmp_path)
    weights.write_bytes(good_weights)
    config.write_text(good_config[:-10])  # malformed JSON
    with pytest.raises(CheckpointError, match="malformed JSON"):
        cls.from_pretrained(tmp_path)
    data = json.loads(good_config)
    data.pop("scratchlm", None)
    data.pop(next((k for k in ("n_embd", "hidden_size", "d_model") if k in data), None), None)  # a missing field
    config.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="config.json"):
        cls.from_pretrained(tmp_path)
    config.unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        cls.from_pretrained(tmp_path)


def test_a_checkpoint_of_another_shape_is_rejected_with_the_tensor_name(tmp_path):
    _model("gpt").save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["scratchlm"]["d_model"] = 64  # the config now disagrees with the tensors
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="shape"):
        GPT.from_pretrained(tmp_path)


def test_interrupted_save_leaves_the_previous_directory_intact(tmp_path, monkeypatch):
    model = _model("gpt")
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    import scratchlm.models.hf as hf

    def crash(fd, *args):
        raise OSError("disk full")

    monkeypatch.setattr(hf.os, "fsync", crash)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
