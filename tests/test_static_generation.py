"""Tests for Chapter 13's fast generation: StaticKVCache, GPT's static-cache path and logits_to_keep,
StaticGenerator (eager and compiled) against decoding.generate and Hugging Face's generate."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.decoding import StaticGenerator, generate, left_pad, sample_rows
from scratchlm.layers import KVCache, StaticKVCache, scaled_dot_product_attention
from scratchlm.models import GPT, T5, GPTConfig, T5Config


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(block_size=32, vocab_size=61, n_layers=2, n_heads=2, d_model=32) | kw
    m = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # sharper predictions than the N(0, 0.02) init: fewer near-ties
        m.transformer.wte.weight.mul_(20)
    return m


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_gpt()


PROMPTS = [[3, 14, 15, 9, 2, 6], [5, 3], [35, 8, 9, 7]]


# ---- StaticKVCache -------------------------------------------------------------------------------
def test_static_cache_writes_in_place_and_advances_after_the_last_layer():
    cache = StaticKVCache(2, 1, 2, 8, 4)
    buffers = [t.data_ptr() for t in (*cache.keys, *cache.values)]
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    out_k, out_v = cache.update(0, k, v)
    assert out_k.shape == (1, 2, 8, 4) and cache.seq_length() == 0  # layer 1 has not written yet
    torch.testing.assert_close(out_k[:, :, :3], k)
    torch.testing.assert_close(out_v[:, :, :3], v)
    assert out_k[:, :, 3:].abs().sum() == 0
    cache.update(1, k, v)
    assert cache.seq_length() == 3
    k2 = torch.randn(1, 2, 1, 4)
    out_k, _ = cache.update(0, k2, k2)
    torch.testing.assert_close(out_k[:, :, 3:4], k2)  # written at slot 3
    assert [t.data_ptr() for t in (*cache.keys, *cache.values)] == buffers  # nothing reallocated
    assert cache.nbytes() == 2 * 2 * (1 * 2 * 8 * 4) * 4
    cache.reset()
    assert cache.seq_length() == 0 and cache.keys[0].abs().sum() == 0


def test_static_cache_rejects_overflow_wrong_shapes_and_bad_configs():
    cache = StaticKVCache(1, 2, 2, 4, 8)
    with pytest.raises(ValueError, match="holds"):
        cache.update(0, torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8))  # another batch size
    with pytest.raises(ValueError, match="layers"):
        cache.update(1, torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8))
    cache.update(0, torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8))
    with pytest.raises(RuntimeError, match="full"):
        cache.update(0, torch.randn(2, 2, 2, 8), torch.randn(2, 2, 2, 8))  # 3 + 2 > 4 slots
    with pytest.raises(ValueError, match="batch of 2"):
        cache.check_batch(3)
    for bad in (dict(max_length=0), dict(n_heads=True), dict(head_dim=2.5)):
        with pytest.raises(ValueError, match="positive int"):
            StaticKVCache(**(dict(n_layers=1, batch_size=1, n_heads=1, max_length=4, head_dim=4) | bad))
    with pytest.raises(TypeError, match="floating-point"):
        StaticKVCache(1, 1, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="block_size"):
        StaticKVCache.for_model(tiny_gpt(), 1, max_length=33)
    with pytest.raises(TypeError, match="GPT-like"):
        StaticKVCache.for_model(torch.nn.Linear(2, 2), 1)


def test_models_without_static_support_reject_the_static_cache():
    t5 = T5(T5Config(vocab_size=20, d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_ff=32))
    ids = torch.randint(0, 20, (1, 4))
    with pytest.raises(TypeError, match="GPT only"):
        t5(ids, decoder_input_ids=ids, past_key_values=StaticKVCache(1, 1, 2, 8, 8))


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_gpt_through_a_static_cache_equals_the_full_forward(positions):
    m = tiny_gpt(positions=positions)
    ids, mask = left_pad(PROMPTS, pad_id=0)  # (3, 6)
    more = torch.tensor([[8, 9], [10, 11], [12, 13]])  # two more tokens per row
    full_mask = torch.cat([mask, torch.ones_like(more)], 1)
    with torch.no_grad():
        full = m(torch.cat([ids, more], 1), attention_mask=full_mask).logits  # (3, 8, V)
        cache = StaticKVCache.for_model(m, 3, max_length=12)
        slots = torch.ones(3, 12, dtype=torch.long)
        slots[:, :6] = mask
        first = m(ids, attention_mask=slots, past_key_values=cache).logits  # (3, 6, V)
        step1 = m(more[:, :1], attention_mask=slots, past_key_values=cache).logits
        step2 = m(more[:, 1:], attention_mask=slots, past_key_values=cache, logits_to_keep=1).logits
    real = mask.bool()
    torch.testing.assert_close(first[real], full[:, :6][real], atol=1e-5, rtol=1e-5)  # padding rows aside
    torch.testing.assert_close(step1[:, 0], full[:, 6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step2[:, 0], full[:, 7], atol=1e-5, rtol=1e-5)
    assert cache.seq_length() == 8
    with pytest.raises(ValueError, match=r"\(B, T_max\)"):
        m(more[:, :1], attention_mask=full_mask, past_key_values=cache)
    with pytest.raises(ValueError, match="batch of 3"):
        m(more[:2, :1], past_key_values=cache)


def test_logits_to_keep_is_the_tail_of_the_full_logits(model):
    ids = torch.randint(0, 61, (2, 7))
    with torch.no_grad():
        full = model(ids).logits
        for n in (1, 3, 7):
            torch.testing.assert_close(model(ids, logits_to_keep=n).logits, full[:, -n:])
        torch.testing.assert_close(model(ids, logits_to_keep=0).logits, full)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, logits_to_keep=bad)
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=ids, logits_to_keep=1)


def test_a_nan_written_to_the_static_cache_spoils_later_steps_as_with_the_growing_cache():
    m = tiny_gpt(tie_embeddings=False)  # untied: the NaN embedding row is not also an output row
    with torch.no_grad():
        m.transformer.wte.weight[7] = float("nan")  # token 7 embeds to NaN: its keys and values are NaN
    ids = torch.tensor([[1, 7, 2], [1, 2, 3]])
    nxt = torch.tensor([[4], [4]])
    with torch.no_grad():
        dyn = KVCache()
        m(ids, past_key_values=dyn, use_cache=True)
        ref = m(nxt, past_key_values=dyn, use_cache=True).logits  # (2, 1, V)
        static = StaticKVCache.for_model(m, 2, max_length=8)
        m(ids, past_key_values=static)
        got = m(nxt, past_key_values=static).logits
    assert static.kv_nan(0)[0].all() and not static.kv_nan(0)[1].any()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)) and torch.isnan(got[0]).all()
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)


def test_attention_accepts_precomputed_kv_nan_flags_and_checks_them():
    q, k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    k[1, 2, 3, 0] = float("nan")
    flags = torch.isnan(k).flatten(2).any(-1)  # (2, 3)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, kv_nan=flags),
                               scaled_dot_product_attention(q, k, v), equal_nan=True)
    with pytest.raises(ValueError, match="kv_nan"):
        scaled_dot_product_attention(q, k, v, kv_nan=flags.long())


# ---- StaticGenerator -----------------------------------------------------------------------------
def test_static_greedy_equals_generate_with_left_padding_stops_and_a_smaller_batch(model):
    ids, mask = left_pad(PROMPTS, pad_id=0)
    gen = StaticGenerator(model, batch_size=4, max_length=24, stop_check_every=3)  # 4 rows: one dummy
    for kw in (dict(), dict(stop_tokens=[5, 17], pad_id=60)):
        ref = generate(model, ids, 14, attention_mask=mask, greedy=True, **kw)
        got = gen.generate(ids, 14, attention_mask=mask, **kw)
        assert torch.equal(got, ref), kw
    single = gen.generate(torch.tensor([PROMPTS[1]]), 10)
    assert torch.equal(single, generate(model, torch.tensor([PROMPTS[1]]), 10, greedy=True))
    assert torch.equal(gen.generate(ids, 0, attention_mask=mask), ids)


def test_static_sampling_draws_the_same_tokens_as_generate(model):
    ids, mask = left_pad(PROMPTS, pad_id=0)
    gen = StaticGenerator(model, batch_size=3, max_length=20)  # batch == rows: the same random draws
    for kw in (dict(temperature=0.9), dict(top_k=5), dict(top_p=0.8)):
        ref = generate(model, ids, 12, attention_mask=mask, generator=torch.Generator().manual_seed(3), **kw)
        got = gen.generate(ids, 12, attention_mask=mask, greedy=False, generator=torch.Generator().manual_seed(3),
                           **kw)
        assert torch.equal(got, ref), kw


def test_stream_yields_each_step_and_mixes_greedy_and_sampled_rows(model):
    ids, mask = left_pad(PROMPTS, pad_id=0)
    gen = StaticGenerator(model, batch_size=4, max_length=20)
    steps = list(gen.stream(ids, 8, attention_mask=mask, temperature=torch.tensor([0.0, 1.0, 0.0]),
                            generator=torch.Generator().manual_seed(0)))
    ref = generate(model, ids, 8, attention_mask=mask, greedy=True)[:, -8:]
    got = torch.tensor(steps).T  # (3, 8)
    assert got.shape == (3, 8)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])  # the greedy rows
    assert all(0 <= t < 61 for t in got[1].tolist())
    it = gen.stream(ids, 8, attention_mask=mask)
    next(it)
    it.close()  # a client went away: the generator stops without error
    assert not model.training


def test_sample_rows_respects_per_row_temperature_and_top_k():
    torch.manual_seed(0)
    logits = torch.randn(3, 30)
    temps = torch.tensor([0.0, 1.5, 1.0])
    top_k = torch.tensor([30, 30, 4])
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_rows(logits, temps, top_k, g) for _ in range(400)])  # (400, 3)
    assert (draws[:, 0] == logits[0].argmax()).all()  # temperature 0: greedy
    assert set(draws[:, 2].tolist()) == set(torch.topk(logits[2], 4).indices.tolist())  # exactly the top 4
    assert len(set(draws[:, 1].tolist())) > 4


def test_static_generator_rejects_bad_inputs(model):
    gen = StaticGenerator(model, batch_size=2, max_length=16)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="exceeds the cache"):
        gen.generate(ids, 14)
    with pytest.raises(ValueError, match="up to 2 rows"):
        gen.generate(torch.ones(3, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="stop_tokens"):
        gen.generate(ids, 2, stop_tokens=[61])
    with pytest.raises(ValueError, match="int64"):
        gen.generate(ids.float(), 2)
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(ids, 2, greedy=False, temperature=0)
    with pytest.raises(ValueError, match="stop_check_every"):
        StaticGenerator(model, batch_size=1, stop_check_every=0)
    t5 = T5(T5Config(vocab_size=20, d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_ff=32))
    with pytest.raises(ValueError, match="decoder-only"):
        StaticGenerator(t5, batch_size=1)


def test_nan_logits_are_reported_not_decoded():
    m = tiny_gpt(tie_embeddings=False)
    with torch.no_grad():
        m.transformer.wte.weight[4] = float("nan")
    gen = StaticGenerator(m, batch_size=1, max_length=16)
    with pytest.raises(ValueError, match="NaN"):
        gen.generate(torch.tensor([[1, 4]]), 5)


def test_greedy_tokens_equal_hugging_face_generate_with_shared_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    m = tiny_gpt(vocab_size=97, block_size=40)
    m.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids, mask = left_pad(PROMPTS, pad_id=0)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                         pad_token_id=0)
    ours = StaticGenerator(m, batch_size=3, max_length=26).generate(ids, 20, attention_mask=mask)
    assert torch.equal(ours, theirs)


def test_the_compiled_decode_step_gives_the_eager_tokens():
    """One compile of a 1-layer model (tens of seconds on a loaded 2-core CPU; fullgraph: no graph break)."""
    m = tiny_gpt(n_layers=1, d_model=16, n_heads=2, vocab_size=23, block_size=16)
    ids, mask = left_pad([[1, 2, 3, 4], [5, 6]], pad_id=0)
    eager = StaticGenerator(m, batch_size=2, max_length=12).generate(ids, 8, attention_mask=mask)
    fast = StaticGenerator(m, batch_size=2, max_length=12, compile=True)
    assert fast.compiled
    for _ in range(2):  # the second call replays the compiled step (new cache contents, same shapes)
        assert torch.equal(fast.generate(ids, 8, attention_mask=mask), eager)
    assert math.isclose(float(fast.cache.position), 4 + 7)  # prompt + 7 decode steps (the 8th token is not fed)
