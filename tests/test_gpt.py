"""Tests for scratchlm.models.gpt (Chapter 06): shapes, init, cache, and exact agreement with HF GPT-2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchlm.decoding.sampling import generate
from scratchlm.models.gpt import GPT, GPTConfig

SMALL = dict(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=32)


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**SMALL, **kw})).eval()


def test_forward_shapes_and_untrained_loss_is_about_log_vocab():
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128))
    x, y = torch.randint(0, 65, (2, 3, 64))
    logits, loss = model(x, targets=y)  # random targets (y = x would favour the tied self-logit)
    assert logits.shape == (3, 64, 65)
    assert abs(loss.item() - math.log(65)) < 0.1  # N(0, 0.02) init: near-uniform predictions
    assert model(x)[1] is None


def test_parameter_names_follow_hf_gpt2_and_embeddings_are_tied():
    model = small_gpt()
    names = set(model.state_dict())
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.ln_1.weight",
              "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.bias",
              "transformer.h.1.ln_2.bias", "transformer.h.1.mlp.c_fc.weight",
              "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert n in names, n
    assert model.lm_head.weight is model.transformer.wte.weight
    expected = (50 * 32 + 32 * 32 + 2 * 32  # wte, wpe, ln_f
                + 2 * (2 * 2 * 32 + 32 * 96 + 96 + 32 * 32 + 32 + 32 * 128 + 128 + 128 * 32 + 32))
    assert model.num_params(non_embedding=False) == expected
    assert model.num_params() == expected - 32 * 32


def test_init_uses_gpt2_stds_with_scaled_residual_projections():
    model = GPT(GPTConfig(block_size=64, vocab_size=500, n_layer=8, n_head=4, n_embd=256))
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.transformer.h[3].mlp.c_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.transformer.h[3].attn.c_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(model.transformer.h[0].attn.c_attn.bias) == 0
    assert torch.equal(model.transformer.ln_f.weight, torch.ones(256))


def test_causality_future_tokens_do_not_change_past_logits():
    model = small_gpt()
    x = torch.randint(0, 50, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 50
    torch.testing.assert_close(model(x)[0][:, :8], model(y)[0][:, :8])
    assert not torch.allclose(model(x)[0][:, 8:], model(y)[0][:, 8:])


def test_reference_attention_path_matches_sdpa_and_returns_causal_weights():
    sdpa, ref = small_gpt(), small_gpt(attn_impl="reference")
    x = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(sdpa(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    out = sdpa.run(x, need_weights=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 10, 10)
    w = out.attentions[1]
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 10))
    assert torch.count_nonzero(torch.triu(w, diagonal=1)) == 0


def test_kv_cache_logits_equal_full_recompute():
    model = small_gpt()
    x = torch.randint(0, 50, (2, 14))
    full = model.run(x).logits
    out = model.run(x[:, :9], use_cache=True)
    pieces = [out.logits]
    past = out.past_key_values
    for t in range(9, 14):
        out = model.run(x[:, t : t + 1], past_key_values=past, use_cache=True)
        pieces.append(out.logits)
        past = out.past_key_values
    assert past[0][0].shape == (2, 2, 14, 16)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
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
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 4, dtype=torch.long), targets=torch.zeros(1, 5, dtype=torch.long))


def test_configure_optimizers_groups():
    model = small_gpt()
    opt = model.configure_optimizers(learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), fused=False)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(model.transformer.wte.weight) in decayed and id(model.transformer.h[0].attn.c_attn.weight) in decayed
    assert id(model.transformer.h[0].ln_1.weight) not in decayed and id(model.transformer.ln_f.bias) not in decayed
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
    ours = GPT.from_pretrained_dir(path).eval()
    assert ours.config.n_layer == 3 and ours.config.block_size == 48
    x = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(x).logits
    torch.testing.assert_close(ours(x)[0], ref, rtol=0, atol=1e-5)
    prompt = x[:1, :5]
    hf_tokens = hf.generate(prompt, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(prompt))
    our_tokens = generate(ours, prompt, 20, greedy=True)
    assert torch.equal(our_tokens, hf_tokens)


def test_from_pretrained_dir_rejects_bad_directories(hf_dir, tmp_path):
    path, _ = hf_dir
    with pytest.raises(ValueError, match="config.json is missing"):
        GPT.from_pretrained_dir(tmp_path)
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="gpt2"):
        GPT.from_pretrained_dir(bad)
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPT.from_pretrained_dir(path, n_layers=2)
