"""PEFT from scratch (Chapter 10): closed-form counts, identity at initialisation, merge/unmerge,
equality with Hugging Face ``peft`` (LoRA and prefix-tuning on the real MiniLM, LoRA on GPT-2),
cached generation with prefixes and prompts, saving/loading only the adapter, and bad inputs."""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
import torch._dynamo
from torch import nn

import scratchlm.peft as P
from scratchlm.decoding import generate
from scratchlm.heads import SequenceClassifier
from scratchlm.models import (
    GPT,
    T5,
    BertConfig,
    BertModel,
    EncoderDecoderConfig,
    EncoderDecoderTransformer,
    GPTConfig,
    T5Config,
)

V = 60


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=48, n_layers=2, n_heads=2, d_model=32, **kw)).eval()


def _bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_positions=48)).eval()


def _t5() -> T5:
    torch.manual_seed(0)
    return T5(T5Config(vocab_size=V, d_model=32, n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=64)).eval()


def _transformer() -> EncoderDecoderTransformer:
    torch.manual_seed(0)
    return EncoderDecoderTransformer(EncoderDecoderConfig(
        src_vocab_size=V, tgt_vocab_size=V, d_model=32, n_heads=2, n_encoder_layers=2, n_decoder_layers=2,
        d_ff=64, dropout=0.0, decoder_start_id=1)).eval()


def _batch(B: int = 3, T: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 3:] = 0  # a right-padded row
    return dict(input_ids=ids, attention_mask=mask)


def _out(model: nn.Module, batch: dict) -> torch.Tensor:
    extra = {"decoder_input_ids": batch["input_ids"]} if isinstance(model, (T5, EncoderDecoderTransformer)) else {}
    out = model(**batch, **extra)
    return out.logits if out.logits is not None else out.last_hidden_state


def _randomise(model: nn.Module, seed: int = 1, std: float = 0.2) -> None:
    """Give every trainable tensor random values (a zero B or W_up would make tests blind)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


# ---- counts ---------------------------------------------------------------------------------------
def test_trainable_counts_equal_the_closed_forms():
    C, L = 32, 2
    lora = P.apply_peft(_bert(), P.LoraConfig(r=4, target_modules=r"(q_proj|v_proj)$"))
    assert P.count_parameters(lora)["trainable"] == L * 2 * 4 * (C + C)  # r (d_in + d_out) per matrix
    gpt = P.apply_peft(_gpt(), P.LoraConfig(r=4, qkv_parts=("q", "v")))  # fused qkv: two thirds adapted
    assert P.count_parameters(gpt)["trainable"] == L * 2 * 4 * (C + C)
    whole = P.apply_peft(_gpt(), P.LoraConfig(r=4, qkv_parts=None))  # the fused layer as one matrix
    assert P.count_parameters(whole)["trainable"] == L * 4 * (C + 3 * C)
    assert P.LoRALinear.num_lora_params(C, 3 * C, 4, parts=3, n_enabled=2) == 2 * 4 * (C + C)

    m = 8
    adapters = P.apply_peft(_bert(), P.AdapterConfig(bottleneck=m, train_norms=False))
    assert P.count_parameters(adapters)["trainable"] == L * 2 * (2 * C * m + m + C)
    houlsby = P.apply_peft(_bert(), P.AdapterConfig(bottleneck=m))  # + every LayerNorm: 2 per layer + embeddings'
    assert P.count_parameters(houlsby)["trainable"] == L * 2 * (2 * C * m + m + C) + (L * 2 + 1) * 2 * C

    Pn, h = 5, 16
    prefix = P.apply_peft(_bert(), P.PrefixConfig(num_virtual_tokens=Pn, hidden=h))
    assert P.count_parameters(prefix)["trainable"] == Pn * C + (C + 1) * h + (h + 1) * L * 2 * C
    direct = P.apply_peft(_bert(), P.PrefixConfig(num_virtual_tokens=Pn, hidden=None))
    assert P.count_parameters(direct)["trainable"] == Pn * L * 2 * C
    baked = P.bake_prefix(prefix)
    assert baked == Pn * L * 2 * C and sum(t.numel() for t in P.peft_state_dict(prefix).values()) == baked

    prompt = P.apply_peft(_bert(), P.PromptConfig(num_virtual_tokens=Pn))
    assert P.count_parameters(prompt)["trainable"] == Pn * C

    bitfit = P.apply_peft(_bert(), P.BitFitConfig())
    assert P.count_parameters(bitfit)["trainable"] == sum(p.numel() for n, p in _bert().named_parameters()
                                                          if n.endswith("bias"))
    total = P.count_parameters(bitfit)
    assert total["total"] == sum(p.numel() for p in _bert().parameters())
    assert 0 < total["percent"] < 100


def test_a_head_stays_trainable_through_the_trainable_patterns():
    head = SequenceClassifier(_bert(), 32, 3)
    model = P.apply_peft(head, P.LoraConfig(r=2, trainable=("classifier",)))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= names
    assert all("lora_" in n or n.startswith("classifier") for n in names)


# ---- identity at initialisation, merge ------------------------------------------------------------
@pytest.mark.parametrize("build", [_gpt, _bert, _t5, _transformer])
@pytest.mark.parametrize("config", [P.LoraConfig(r=4, target_modules=r"(q_proj|v_proj|qkv_proj|out_proj)$"),
                                    P.AdapterConfig(bottleneck=8, sites=("self_attn", "ffn", "cross_attn"))])
def test_lora_and_adapters_leave_the_model_unchanged_at_initialisation(build, config):
    base = build()
    batch = _batch()
    with torch.no_grad():
        before = _out(base, batch)
        if isinstance(config, P.AdapterConfig) and isinstance(base, (GPT, BertModel)):
            config = P.AdapterConfig(bottleneck=8)  # encoder blocks have no cross-attention slot
        model = P.apply_peft(base, config)
        after = _out(model, batch)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    _randomise(model)
    with torch.no_grad():
        assert not torch.allclose(_out(model, batch), before)  # ... and the inserted weights do act


def test_random_b_changes_the_model_before_any_training():
    """The seed-style mistake: B initialised randomly means step 0 is no longer the pretrained model."""
    model = P.apply_peft(_gpt(), P.LoraConfig(r=4))
    batch = _batch()
    with torch.no_grad():
        before = _out(model, batch)
        for layer in model.modules():
            if isinstance(layer, P.LoRALinear):
                for b in layer.lora_B:
                    nn.init.normal_(b.weight, std=0.5)
        assert (_out(model, batch) - before).abs().max() > 1e-2


@pytest.mark.parametrize("qkv_parts", [("q", "v"), ("k",), None])
def test_merged_lora_equals_unmerged_and_unmerge_restores_the_weights(qkv_parts):
    model = P.apply_peft(_gpt(), P.LoraConfig(r=4, alpha=8, qkv_parts=qkv_parts,
                                              target_modules=r"(qkv_proj|out_proj|linear1|linear2)$"))
    _randomise(model)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if "base" in n}
    batch = _batch()
    with torch.no_grad():
        unmerged = _out(model, batch)
        assert P.merge_lora(model) == 8
        merged = _out(model, batch)
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="already merged"):
            P.merge_lora(model)
        P.unmerge_lora(model)
    for n, p in model.named_parameters():
        if n in original:
            torch.testing.assert_close(p, original[n], atol=1e-6, rtol=0)


def test_only_the_adapter_gets_gradients():
    model = P.apply_peft(_gpt(), P.LoraConfig(r=2, dropout=0.1))
    model.train()
    batch = _batch()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in n), n
    # B = 0: at the first step only B moves (dL/dA = Bᵀ(...) = 0, dL/dB = (...)(A x)ᵀ ≠ 0); A follows after.
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert all(p.grad.abs().sum() == 0 for n, p in model.named_parameters() if "lora_A" in n)


# ---- equality with Hugging Face peft ---------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from scratchlm.data.corpora import minilm_files

    try:
        directory = minilm_files().directory
    except FileNotFoundError as err:
        pytest.skip(str(err))
    ours = BertModel.from_pretrained(directory)
    hf = transformers.BertModel.from_pretrained(directory).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (3, 12), generator=g)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    return ours, hf, ids, mask


def _quiet_peft():
    import peft

    warnings.filterwarnings("ignore", module="peft")
    return peft


def test_lora_equals_hugging_face_peft_on_minilm(minilm):
    ours, hf, ids, mask = minilm
    peft = _quiet_peft()
    theirs = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    mine = P.apply_peft(copy.deepcopy(ours), P.LoraConfig(r=4, alpha=8, target_modules=r"(q_proj|v_proj)$"))
    g = torch.Generator().manual_seed(1)
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for i in range(ours.config.n_layers):
            for hf_name, name in (("query", "q_proj"), ("value", "v_proj")):
                layer = mine.get_submodule(f"encoder.layers.{i}.self_attn.{name}")
                for part, ours_part in (("lora_A", layer.lora_A[0]), ("lora_B", layer.lora_B[0])):
                    value = torch.randn(ours_part.weight.shape, generator=g) * 0.1
                    params[f"base_model.model.encoder.layer.{i}.attention.self.{hf_name}.{part}.default.weight"].copy_(value)
                    ours_part.weight.copy_(value)
        theirs.eval()
        ref = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        base = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = mine(ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        assert (ref - base)[keep].abs().max() > 0.1  # the adapter matters
        torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)
        P.merge_lora(mine)
        theirs.merge_adapter()
        torch.testing.assert_close(mine(ids, attention_mask=mask).last_hidden_state[keep],
                                   theirs(input_ids=ids, attention_mask=mask).last_hidden_state[keep],
                                   atol=1e-5, rtol=1e-5)
    assert P.count_parameters(mine)["trainable"] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


def _copy_prefix_encoder(mine: nn.Module, theirs_encoder: nn.Module) -> None:
    with torch.no_grad():
        for name, p in mine.prefix_encoder.named_parameters():
            p.copy_(theirs_encoder.get_parameter(name))  # same layout: embedding, transform.0, transform.2


def test_prefix_tuning_equals_hugging_face_peft_on_minilm(minilm):
    ours, hf, ids, mask = minilm
    peft = _quiet_peft()
    Pn = 5
    config = peft.PrefixTuningConfig(task_type=peft.TaskType.FEATURE_EXTRACTION, num_virtual_tokens=Pn,
                                     prefix_projection=True, encoder_hidden_size=32)
    theirs = peft.get_peft_model(copy.deepcopy(hf), config).eval()
    mine = P.apply_peft(copy.deepcopy(ours), P.PrefixConfig(num_virtual_tokens=Pn, hidden=32)).eval()
    _copy_prefix_encoder(mine, theirs.prompt_encoder.default)
    assert P.count_parameters(mine)["trainable"] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    keep = mask.bool()
    T = ids.shape[1]
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        # peft treats the prefix as P cached tokens, so BERT's positions start at P; ours start at 0
        # unless told otherwise. Same positions -> same numbers:
        out = mine(ids, attention_mask=mask, position_ids=torch.arange(Pn, Pn + T)[None]).last_hidden_state
        torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)
        # ... and with positions 0..T-1 on both sides (HF's BertModel fed peft's prefix directly):
        ext = torch.cat([torch.ones(ids.shape[0], Pn, dtype=torch.long), mask], dim=1)
        cache_kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
        ref0 = hf(input_ids=ids, attention_mask=ext, **{cache_kw: theirs.get_prompt(ids.shape[0])},
                  position_ids=torch.arange(T)[None].expand(ids.shape[0], T)).last_hidden_state
        out0 = mine(ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(out0[keep], ref0[keep], atol=1e-5, rtol=1e-5)
        assert (out0 - hf(input_ids=ids, attention_mask=mask).last_hidden_state)[keep].abs().max() > 0.1
        P.bake_prefix(mine)  # the MLP is gone; the plain tensors give the same numbers
        torch.testing.assert_close(mine(ids, attention_mask=mask).last_hidden_state[keep], out0[keep],
                                   atol=1e-6, rtol=1e-6)


def test_lora_on_fused_qkv_equals_peft_on_gpt2_c_attn(tmp_path):
    peft = _quiet_peft()
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2,
                                                              n_head=2)).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn"],
                                                     fan_in_fan_out=True))
    mine = P.apply_peft(ours, P.LoraConfig(r=3, alpha=6, target_modules=r"qkv_proj$", qkv_parts=None))
    params = dict(theirs.named_parameters())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for i in range(2):
            layer = mine.get_submodule(f"transformer.h.{i}.self_attn.qkv_proj")
            for part, ours_part in (("lora_A", layer.lora_A[0]), ("lora_B", layer.lora_B[0])):
                value = torch.randn(ours_part.weight.shape, generator=g) * 0.2
                params[f"base_model.model.transformer.h.{i}.attn.c_attn.{part}.default.weight"].copy_(value)
                ours_part.weight.copy_(value)
        theirs.eval()
        ids = _batch()["input_ids"]
        torch.testing.assert_close(mine(ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


# ---- prefixes and prompts: caches, compile, the difference ------------------------------------------
@pytest.mark.parametrize("config", [P.PrefixConfig(num_virtual_tokens=4, hidden=16),
                                    P.PromptConfig(num_virtual_tokens=4)])
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_generation_with_a_cache_equals_without(config, positions):
    model = P.apply_peft(_gpt(positions=positions), config)
    _randomise(model, std=0.5)
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    from scratchlm.data.collate import left_pad

    ids, mask = left_pad(prompts, pad_id=0)
    kw = dict(attention_mask=mask, greedy=True)
    with_cache = generate(model, ids, 12, use_cache=True, **kw)
    without = generate(model, ids, 12, use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    alone = generate(model, torch.tensor([prompts[1]]), 12, greedy=True)  # a padded row = the row alone
    assert torch.equal(with_cache[1, -14:], alone[0])
    with torch.no_grad():  # the prefix / prompt changes the next-token logits
        assert (model(ids, attention_mask=mask).logits - _gpt(positions=positions)(ids, attention_mask=mask).logits
                ).abs().max() > 1e-2


def test_prefix_and_prompt_are_different_methods():
    """Prefix-tuning adds keys/values inside every layer; prompt tuning only adds input embeddings."""
    prefix = P.apply_peft(_gpt(), P.PrefixConfig(num_virtual_tokens=3, hidden=None))
    prompt = P.apply_peft(_gpt(), P.PromptConfig(num_virtual_tokens=3))
    assert all(m.prefix is not None for n, m in prefix.named_modules() if n.endswith("self_attn"))
    assert all(getattr(m, "prefix", None) is None for m in prompt.modules())
    C, L = 32, 2
    assert P.count_parameters(prefix)["trainable"] == L * 2 * 3 * C == 4 * P.count_parameters(prompt)["trainable"]
    batch = _batch()
    out = prompt(**batch, output_hidden_states=True)
    assert out.logits.shape == (3, 10, V) and out.hidden_states[0].shape == (3, 10, C)  # virtual positions stripped


def test_prefix_sees_every_key_and_nothing_sees_a_padded_one():
    model = P.apply_peft(_bert(), P.PrefixConfig(num_virtual_tokens=3, hidden=None))
    _randomise(model)
    batch = _batch()
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    w = out.attentions[0]  # (B, H, T, P + T)
    assert w.shape == (3, 4, 10, 13)
    assert (w[:, :, :, :3] > 0).all()  # every query attends to the prefix
    assert (w[1, :, :, 3 + 7:] == 0).all()  # nobody attends to padding
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 10))


@pytest.mark.parametrize("config", [P.LoraConfig(r=2), P.PrefixConfig(num_virtual_tokens=3, hidden=8),
                                    P.AdapterConfig(bottleneck=4)])
def test_peft_models_compile_without_graph_breaks(config):
    model = P.apply_peft(_gpt(), config)
    torch._dynamo.reset()
    batch = _batch()
    explanation = torch._dynamo.explain(model)(**batch, labels=batch["input_ids"])
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]


def test_prompt_tuning_inside_a_head_wraps_the_encoder():
    head = P.apply_peft(SequenceClassifier(_bert(), 32, 2), P.PromptConfig(num_virtual_tokens=4, trainable=("classifier",)))
    assert isinstance(head.encoder, P.PromptTuningModel)
    batch = _batch()
    out = head(**batch, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2) and torch.isfinite(out.loss)
    out.loss.backward()
    assert head.encoder.embedding.prompt.grad is not None
    assert head.encoder.embedding.base.weight.grad is None


# ---- saving and loading only the adapter ---------------------------------------------------------------
@pytest.mark.parametrize("config", [P.LoraConfig(r=4), P.AdapterConfig(bottleneck=8),
                                    P.PrefixConfig(num_virtual_tokens=3, hidden=8), P.PromptConfig(num_virtual_tokens=3),
                                    P.BitFitConfig()])
def test_saving_and_loading_adapter_weights_round_trips(config, tmp_path):
    trained = P.apply_peft(_gpt(), config)
    _randomise(trained)
    path = P.save_peft(trained, tmp_path / "adapter.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]  # no temp files left
    n_trained = sum(t.numel() for t in P.peft_state_dict(trained).values())
    assert path.stat().st_size < 4 * n_trained + 4096  # only the adapter, not the model
    fresh = P.apply_peft(_gpt(), config)
    batch = _batch()
    with torch.no_grad():
        assert not torch.allclose(_out(fresh, batch), _out(trained, batch))
        P.load_peft(fresh, path)
        torch.testing.assert_close(_out(fresh, batch), _out(trained, batch), rtol=0, atol=0)


def test_a_baked_prefix_saves_and_loads(tmp_path):
    trained = P.apply_peft(_gpt(), P.PrefixConfig(num_virtual_tokens=3, hidden=8))
    _randomise(trained)
    P.bake_prefix(trained)
    P.save_peft(trained, tmp_path / "prefix.safetensors")
    fresh = P.apply_peft(_gpt(), P.PrefixConfig(num_virtual_tokens=3, hidden=8))
    P.bake_prefix(fresh)
    P.load_peft(fresh, tmp_path / "prefix.safetensors")
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(_out(fresh, batch), _out(trained, batch), rtol=0, atol=0)


# ---- bad inputs ----------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="rank r must be a positive int"):
        P.apply_peft(_gpt(), P.LoraConfig(r=0))
    with pytest.raises(ValueError, match="rank r must be a positive int"):
        P.LoRALinear(nn.Linear(4, 4), r=-1)
    with pytest.raises(ValueError, match="no Linear module matches"):
        P.apply_peft(_gpt(), P.LoraConfig(target_modules=r"query$"))
    with pytest.raises(ValueError, match="no MultiHeadAttention module matches"):
        P.apply_peft(_gpt(), P.PrefixConfig(target_modules="nothing"))
    with pytest.raises(ValueError, match="qkv_parts"):
        P.apply_peft(_gpt(), P.LoraConfig(qkv_parts=("x",)))
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive int"):
        P.apply_peft(_gpt(), P.PrefixConfig(num_virtual_tokens=0))
    with pytest.raises(ValueError, match="bottleneck must be a positive int"):
        P.apply_peft(_gpt(), P.AdapterConfig(bottleneck=0))
    with pytest.raises(ValueError, match="matches no parameter"):
        P.apply_peft(_gpt(), P.LoraConfig(trainable=("classifier",)))
    with pytest.raises(TypeError, match="expects one of"):
        P.apply_peft(_gpt(), {"r": 4})
    model = P.apply_peft(_gpt(), P.LoraConfig(r=2))
    with pytest.raises(ValueError, match="already has a PEFT method"):
        P.apply_peft(model, P.LoraConfig(r=2))
    with pytest.raises(ValueError, match="already has a PEFT method"):
        P.apply_peft(model, P.AdapterConfig())
    with pytest.raises(ValueError, match="already has LoRA"):
        P.LoRALinear(model.transformer.h[0].self_attn.qkv_proj, r=2)
    with pytest.raises(ValueError, match="not merged"):
        model.transformer.h[0].self_attn.qkv_proj.unmerge()
    with pytest.raises(ValueError, match="no PEFT method applied"):
        P.save_peft(_gpt(), tmp_path / "x.safetensors")

    P.save_peft(model, tmp_path / "r2.safetensors")
    with pytest.raises(ValueError, match=r"lora_A.0.weight has shape \(2, 32\).*expects \(4, 32\)"):
        P.load_peft(P.apply_peft(_gpt(), P.LoraConfig(r=4)), tmp_path / "r2.safetensors")
    with pytest.raises(ValueError, match="holds a 'lora' adapter; the model has 'adapter'"):
        P.load_peft(P.apply_peft(_gpt(), P.AdapterConfig()), tmp_path / "r2.safetensors")
    with pytest.raises(ValueError, match="missing"):
        P.load_peft(P.apply_peft(_gpt(), P.LoraConfig(r=2, qkv_parts=("q", "k", "v"))), tmp_path / "r2.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        P.load_peft(model, tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        P.load_peft(model, tmp_path / "missing.safetensors")

    prefix = P.apply_peft(_gpt(), P.PrefixConfig(num_virtual_tokens=2, hidden=4))
    P.bake_prefix(prefix)
    with pytest.raises(ValueError, match="no prefix encoder"):
        P.bake_prefix(prefix)
    attention = _gpt().transformer.h[0].self_attn
    attention.prefix = lambda B: (torch.zeros(B, 2, 3, 16), torch.zeros(B, 2, 3, 15))
    with pytest.raises(ValueError, match="prefix must return two"):
        attention(torch.zeros(1, 4, 32))


# ---- memory accounting ----------------------------------------------------------------------------
def test_training_memory_counts_state_and_saved_activations():
    torch.manual_seed(0)
    layer = nn.Linear(10, 5)
    x = torch.randn(4, 10)
    mem = P.training_memory(layer, lambda m: m(x).sum())
    # the weight gradient needs the input: 4 x 10 floats are saved; the weights are not activations
    assert mem["activations"] == 4 * 10 * 4
    assert mem["weights"] == mem["gradients"] == (10 * 5 + 5) * 4 and mem["optimizer"] == 2 * mem["weights"]
    layer.weight.requires_grad_(False)  # a frozen weight needs no saved input (x needs no grad either)
    assert P.training_memory(layer, lambda m: m(x).sum())["activations"] == 0
    full = P.training_memory(_gpt(), lambda m: m(**_batch(), labels=_batch()["input_ids"]).loss)
    lora_model = P.apply_peft(_gpt(), P.LoraConfig(r=2))
    lora = P.training_memory(lora_model, lambda m: m(**_batch(), labels=_batch()["input_ids"]).loss)
    assert lora["optimizer"] < full["optimizer"] / 10 and lora["activations"] > 0
