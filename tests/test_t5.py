"""Tests for scratchlm.models.t5: against Hugging Face T5 with shared weights, RMSNorm, buckets, decoding."""

import pytest
import torch

from scratchlm.decoding import generate
from scratchlm.errors import CheckpointError
from scratchlm.layers import RMSNorm
from scratchlm.models.t5 import T5, T5Config, relative_position_bucket, shift_right

transformers = pytest.importorskip("transformers")
from transformers.models.t5.modeling_t5 import T5Attention  # noqa: E402

SMALL = dict(vocab_size=67, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=48,
             dropout=0.0, num_buckets=8, max_distance=20)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (16, 40)])
def test_bucket_function_matches_transformers(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-300, 301)[None, :]  # (1, 601) offsets key - query
    ours = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                    max_distance=max_distance)
    ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                                max_distance=max_distance)
    assert torch.equal(ours, ref)
    assert ours.min() >= 0 and ours.max() < num_buckets


def test_rmsnorm_matches_torch():
    x = torch.randn(4, 7, 32) * 3 + 1
    ours = RMSNorm(32, eps=1e-6)
    ref = torch.nn.RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x))


def _hf_pair(seed=0):
    torch.manual_seed(seed)
    hf_cfg = transformers.T5Config(
        vocab_size=SMALL["vocab_size"], d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
        feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, layer_norm_epsilon=1e-6)
    hf = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norm gains, so a swapped one shows
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    ours = T5(T5Config(**SMALL)).eval()
    ours.load_hf_state_dict(hf.state_dict())
    return hf, ours


def _batch(seed=0, B=3, S=13, T=9, V=67):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, V, (B, S), generator=g)  # (B, S)
    attn = torch.ones(B, S, dtype=torch.long)
    attn[1, 9:] = 0
    attn[2, 5:] = 0
    src = src.masked_fill(attn == 0, 0)
    labels = torch.randint(2, V, (B, T), generator=g)  # (B, T)
    labels[2, 6:] = -100
    return src, attn, labels


def test_logits_and_loss_match_transformers_with_shared_weights():
    hf, ours = _hf_pair()
    src, attn, labels = _batch()
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=attn, labels=labels)
        out = ours(src, attn, labels=labels)
    keep = labels != -100
    torch.testing.assert_close(out.logits[keep], ref.logits[keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_greedy_decoding_matches_transformers_generate():
    hf, ours = _hf_pair(seed=1)
    src, attn, _ = _batch(seed=2)
    ref = hf.generate(input_ids=src, attention_mask=attn, max_new_tokens=8, do_sample=False, num_beams=1)
    for cache in (True, False):
        out = generate(ours, src, 8, attention_mask=attn, greedy=True, use_cache=cache)
        L = min(out.shape[1], ref.shape[1] - 1)
        assert torch.equal(out[:, :L], ref[:, 1 : L + 1])


def test_save_pretrained_loads_in_transformers_and_round_trips(tmp_path):
    hf, ours = _hf_pair(seed=4)
    ours.save_pretrained(tmp_path)
    again = T5.from_pretrained(tmp_path)
    src, attn, labels = _batch(seed=6)
    with torch.no_grad():
        reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
        ref = reloaded(input_ids=src, attention_mask=attn, labels=labels)
        out = ours(src, attn, labels=labels)
        torch.testing.assert_close(again(src, attn, labels=labels).logits, out.logits, rtol=0, atol=0)
    keep = labels != -100
    torch.testing.assert_close(out.logits[keep], ref.logits[keep], atol=1e-4, rtol=1e-4)
    (tmp_path / "config.json").write_text('{"model_type": "t5", "d_model": 32}')
    with pytest.raises(CheckpointError, match="missing fields"):
        T5.from_pretrained(tmp_path)


def test_decoder_is_causal():
    model = T5(T5Config(**SMALL)).eval()
    src, attn, labels = _batch()
    dec = shift_right(labels, 0)
    with torch.no_grad():
        base = model(src, attn, decoder_input_ids=dec).logits
        changed = dec.clone()
        changed[:, 5:] = (changed[:, 5:] + 7) % 67
        after = model(src, attn, decoder_input_ids=changed).logits
    torch.testing.assert_close(base[:, :5], after[:, :5])  # positions < 5 cannot see the change
    assert not torch.allclose(base[:, 5:], after[:, 5:])


def test_encoder_ignores_padding():
    model = T5(T5Config(**SMALL)).eval()
    src, attn, labels = _batch()
    other = src.clone()
    other[attn == 0] = 5  # different junk under the padding
    with torch.no_grad():
        a = model(src, attn, labels=labels).logits
        b = model(other, attn, labels=labels).logits
    torch.testing.assert_close(a, b)


def test_teacher_forcing_agrees_with_greedy_decoding():
    """Feeding the greedy output back with teacher forcing reproduces it: argmax of every position."""
    model = T5(T5Config(**SMALL)).eval()
    src, attn, _ = _batch(seed=3)
    greedy = generate(model, src, 10, attention_mask=attn, greedy=True, stop_tokens=[])  # (B, L)
    dec = torch.cat([torch.zeros(src.shape[0], 1, dtype=torch.long), greedy[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(src, attn, decoder_input_ids=dec).logits
    assert torch.equal(logits.argmax(-1), greedy)


def test_shift_right_and_validation():
    labels = torch.tensor([[5, 6, 1, -100]])
    assert shift_right(labels, 0).tolist() == [[0, 5, 6, 1]]
    with pytest.raises(ValueError, match="divisible"):
        T5Config(d_model=30, n_heads=4)
    with pytest.raises(TypeError, match="T5Config"):
        T5(SMALL)
    model = T5(T5Config(**SMALL))
    with pytest.raises(TypeError, match="int64"):
        model.encode(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 67\)"):
        model.validate_inputs({"input_ids": torch.full((1, 3), 67)})
    with pytest.raises(ValueError, match=r"decoder_input_ids must lie in \[0, 67\)"):
        model.validate_inputs({"input_ids": torch.ones(1, 3, dtype=torch.long),
                               "decoder_input_ids": torch.full((1, 2), -1)})
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="a batch of 1 rows"):  # a cache from another batch size
        cache = model(torch.ones(1, 3, dtype=torch.long), decoder_input_ids=torch.zeros(1, 1, dtype=torch.long),
                      use_cache=True).past_key_values
        model(torch.ones(2, 3, dtype=torch.long), decoder_input_ids=torch.zeros(2, 1, dtype=torch.long),
              past_key_values=cache)
