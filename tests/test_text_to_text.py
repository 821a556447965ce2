"""Tests for scratchlm.decoding.text_to_text: decode_batch and score_targets (Chapter 08)."""

import pytest
import torch

from scratchlm.decoding import ItemSequenceConstraint, decode_batch, generate, score_targets
from scratchlm.models.t5 import T5, T5Config
from scratchlm.models.transformer import EncoderDecoderConfig, EncoderDecoderTransformer

PAD, EOS = 0, 1


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    return T5(T5Config(vocab_size=40, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=48,
                       dropout=0.0, pad_id=PAD, eos_id=EOS)).eval()


def _sources(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=g).tolist()
    return [torch.randint(2, 40, (k,), generator=g).tolist() + [EOS] for k in lengths]


def _brute_force_log_likelihood(model, src, tgt):
    """Σ_t log p(y_t | y_<t, x) from one unpadded teacher-forced pass, summed by hand."""
    x = torch.tensor([src])
    dec_in = torch.tensor([[PAD, *tgt[:-1]]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(x, decoder_input_ids=dec_in).logits[0].double(), -1)  # (T, V)
    return sum(log_probs[t, y].item() for t, y in enumerate(tgt))


def test_score_targets_equals_brute_force_per_pair(t5):
    sources = _sources()
    candidates = [[5, EOS], [6, 7, EOS], [8, 9, 10, 11, EOS]]  # different lengths: padding inside
    scores = score_targets(t5, sources, candidates, batch_size=3)  # chunks of 3: 3 + 3 + 1
    assert scores.shape == (len(sources), len(candidates))
    expected = torch.tensor([[_brute_force_log_likelihood(t5, s, c) for c in candidates] for s in sources],
                            dtype=torch.float64)
    torch.testing.assert_close(scores.double(), expected, atol=1e-4, rtol=1e-5)
    normalized = score_targets(t5, sources, candidates, normalize=True)
    torch.testing.assert_close(normalized, scores / torch.tensor([2.0, 3.0, 5.0]), atol=1e-5, rtol=1e-5)


def test_score_targets_argmax_agrees_with_greedy_on_the_first_token(t5):
    # With one-token candidates (+ </s>) the first factor decides unless </s> disagrees; compare the
    # scores of the first token alone with the greedy first token restricted to the candidates.
    sources = _sources(12, seed=1)
    tokens = [5, 6, 7]
    first_only = score_targets(t5, sources, [[t] for t in tokens])  # log p(t | x) at the first position
    allowed = torch.zeros(len(sources), 40, dtype=torch.bool)
    allowed[:, tokens] = True
    x = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in sources], batch_first=True, padding_value=PAD)
    greedy = generate(t5, x, 1, attention_mask=(x != PAD).long(), greedy=True, allowed_tokens=lambda _: allowed)
    assert torch.equal(torch.tensor(tokens)[first_only.argmax(-1)], greedy[:, 0])


def test_score_targets_restores_training_mode_and_works_for_the_chapter05_model():
    torch.manual_seed(1)
    model = EncoderDecoderTransformer(EncoderDecoderConfig(
        src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
        d_ff=32, dropout=0.1, pad_id=0, decoder_start_id=1, eos_id=2, max_len=32))
    model.train()
    scores = score_targets(model, [[3, 4, 5], [6, 7]], [[8, 2], [9, 10, 2]])
    assert model.training and scores.shape == (2, 2) and torch.isfinite(scores).all()
    assert (scores < 0).all()  # log-probabilities of multi-token sequences


def test_decode_batch_equals_generate_one_source_at_a_time(t5):
    sources = _sources(9, seed=2)
    answers = decode_batch(t5, sources, 6, batch_size=4)
    for src, answer in zip(sources, answers, strict=True):
        out = generate(t5, torch.tensor([src]), 6, greedy=True)[0].tolist()
        expected = out[: out.index(EOS)] if EOS in out else [t for t in out if t != PAD]
        assert answer == expected


def test_decode_batch_with_a_constraint_writes_the_grammar(t5):
    sources = _sources(5, seed=3)
    items = [[5], [6, 7], [8]]
    counts = [1, 2, 3, 2, 1]

    def constraint(start, stop):
        return ItemSequenceConstraint(items, items, counts[start:stop], eos_id=EOS, vocab_size=40)

    answers = decode_batch(t5, sources, 3 * 2 + 1, batch_size=2, constraint=constraint)
    for answer, n in zip(answers, counts, strict=True):
        i = k = 0
        while i < len(answer):  # parse the answer as a sequence of items
            match = next(item for item in items if answer[i: i + len(item)] == item)
            i += len(match)
            k += 1
        assert k == n


def test_bad_inputs_are_rejected(t5):
    with pytest.raises(ValueError, match="non-empty"):
        score_targets(t5, [[3, 4], []], [[5, EOS]])
    with pytest.raises(ValueError, match="candidates"):
        score_targets(t5, [[3, 4]], [[]])
    with pytest.raises(TypeError, match="sequence of token-id lists"):
        decode_batch(t5, "sms: hello", 4)
    with pytest.raises(ValueError, match="batch_size"):
        decode_batch(t5, [[3]], 4, batch_size=0)
    with pytest.raises(TypeError, match="encoder-decoder"):
        decode_batch(torch.nn.Linear(2, 2), [[3]], 4)
