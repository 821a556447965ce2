"""Tests for scratchlm.models.gpt (Chapter 06): shapes, init, cache, and exact agreement with HF GPT-2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchlm.decoding import generate
from scratchlm.errors import CheckpointError
from scratchlm.models.gpt import GPT, GPTConfig

SMALL = dict(block_size=32, vocab_size=50, n_layers=2, n_heads=2, d_model=32)


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**SMALL, **kw})).eval()


def test_forward_shapes_and_untrained_loss_is_about_log_vocab():
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layers=4, n_heads=4, d_model=128))
    x = torch.randint(0, 65, (3, 64))
    out = model(x, labels=x)
    assert out.logits.shape == (3, 64, 65)
    assert abs(out.loss.item() - math.log(65)) < 0.1  # N(0, 0.02) init: near-uniform predictions
    assert model(x).loss is None


def test_labels_are_shifted_inside_and_minus_100_is_ignored():
    model = small_gpt()
    x = torch.randint(0, 50, (2, 12))
    labels = x.clone()
    labels[0, :5] = -100  # e.g. a prompt the loss must not learn
    out = model(x, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                            ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    none = model(x, labels=torch.full_like(x, -100)).loss  # no supervised position: defined as 0, not NaN
    assert none.item() == 0.0


def test_parameter_names_are_chapter_05_blocks_and_embeddings_are_tied():
    model = small_gpt()
    names = set(model.state_dict())
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.norm1.weight",
              "transformer.h.1.self_attn.qkv_proj.weight", "transformer.h.1.self_attn.out_proj.bias",
              "transformer.h.1.norm2.bias", "transformer.h.1.ffn.linear1.weight",
              "transformer.h.1.ffn.linear2.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert n in names, n
    assert model.lm_head.weight is model.transformer.wte.weight
    expected = (50 * 32 + 32 * 32 + 2 * 32  # wte, wpe, ln_f
                + 2 * (2 * 2 * 32 + 32 * 96 + 96 + 32 * 32 + 32 + 32 * 128 + 128 + 128 * 32 + 32))
    assert model.num_params(non_embedding=False) == expected
    assert model.num_params() == expected - 32 * 32


def test_init_uses_gpt2_stds_with_scaled_residual_projections():
    model = GPT(GPTConfig(block_size=64, vocab_size=500, n_layers=8, n_heads=4, d_model=256))
    assert model.transformer.h[0].self_attn.qkv_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.transformer.h[3].ffn.linear2.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.transformer.h[3].self_attn.out_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(model.transformer.h[0].self_attn.qkv_proj.bias) == 0
    assert torch.equal(model.transformer.ln_f.weight, torch.ones(256))


def test_causality_future_tokens_do_not_change_past_logits():
    model = small_gpt()
    x = torch.randint(0, 50, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 50
    torch.testing.assert_close(model(x).logits[:, :8], model(y).logits[:, :8])
    assert not torch.allclose(model(x).logits[:, 8:], model(y).logits[:, 8:])


def test_reference_attention_path_matches_sdpa_and_returns_causal_weights():
    sdpa, ref = small_gpt(), small_gpt(attn_impl="reference")
    x = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(sdpa(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)
    out = sdpa(x, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 10, 10)
    w = out.attentions[1]
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 10))
    assert torch.count_nonzero(torch.triu(w, diagonal=1)) == 0


def test_kv_cache_logits_equal_full_recompute():
    model = small_gpt()
    x = torch.randint(0, 50, (2, 14))
    full = model(x).logits
    out = model(x[:, :9], use_cache=True)
    pieces = [out.logits]
    past = out.past_key_values
    for t in range(9, 14):
        out = model(x[:, t : t + 1], past_key_values=past, use_cache=True)
        pieces.append(out.logits)
        past = out.past_key_values
    assert past.layers[0][0].shape == (2, 2, 14, 16)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)
    with pytest.raises(ValueError, match="attn_impl"):
        GPTConfig(attn_impl="flash")
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(dict(SMALL))
    model = small_gpt()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="labels"):
        model(torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_configure_optimizers_groups():
    model = small_gpt()
    opt = model.configure_optimizers(learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), fused=False)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(model.transformer.wte.weight) in decayed
    assert id(model.transformer.h[0].self_attn.qkv_proj.weight) in decayed
    assert id(model.transformer.h[0].norm1.weight) not in decayed and id(model.transformer.ln_f.bias) not in decayed
    assert len({id(p) for g in opt.param_groups for p in g["params"]}) == len(list(model.parameters()))


# ---- Hugging Face GPT-2 -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.GPT2Config(vocab_size=96, n_positions=48, n_embd=64, n_layer=3, n_head=4,
                                     bos_token_id=0, eos_token_id=None, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF leaves biases and LayerNorms at 0/1: randomise so the map is tested
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    return path, hf


def test_from_pretrained_dir_matches_hf_logits_and_greedy_tokens(hf_dir):
    path, hf = hf_dir
    ours = GPT.from_pretrained(path)
    assert ours.config.n_layers == 3 and ours.config.block_size == 48
    x = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(x).logits
    torch.testing.assert_close(ours(x).logits, ref, rtol=0, atol=1e-5)
    prompt = x[:1, :5]
    hf_tokens = hf.generate(prompt, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(prompt))
    our_tokens = generate(ours, prompt, 20, greedy=True)
    assert torch.equal(our_tokens, hf_tokens)


def test_from_pretrained_rejects_bad_directories(hf_dir, tmp_path):
    path, _ = hf_dir
    with pytest.raises(CheckpointError, match="config.json is missing"):
        GPT.from_pretrained(tmp_path)
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="gpt2"):
        GPT.from_pretrained(bad)
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPT.from_pretrained(path, n_layer=2)


@pytest.mark.parametrize("options", [dict(), dict(bias=False, activation="gelu"), dict(tie_embeddings=False),
                                     dict(positions="rope", qk_norm=True, activation="swiglu", norm="rmsnorm")])
def test_save_pretrained_round_trips_and_loads_in_transformers(tmp_path, options):
    model = small_gpt(**options)
    x = torch.randint(0, 50, (2, 9))
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path)
    assert again.config == model.config
    torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)
    if model.gpt2_compatible:
        transformers = pytest.importorskip("transformers")
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(x).logits, model(x).logits, rtol=0, atol=1e-5)
    else:
        assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "scratchlm-gpt"


def test_speed_run_options_build_train_and_keep_the_cache_exact():
    model = small_gpt(positions="rope", qk_norm=True, activation="relu2", norm="rmsnorm", tie_embeddings=False)
    assert "wpe" not in model.transformer and model.lm_head.weight is not model.transformer.wte.weight
    x = torch.randint(0, 50, (2, 12))
    full = model(x).logits
    out = model(x[:, :7], use_cache=True)
    step = model(x[:, 7:8], past_key_values=out.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[:, 0], full[:, 7], rtol=1e-5, atol=1e-5)
    loss = model(x, labels=x).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
