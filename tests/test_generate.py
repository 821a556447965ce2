"""Tests for scratchlm.decoding.sampling (Chapter 06): filters, cache equivalence, batching, stop tokens."""

from __future__ import annotations

import pytest
import torch

from scratchlm.decoding.sampling import (
    generate,
    left_pad,
    next_token_distribution,
    top_k_filter,
    top_p_filter,
)
from scratchlm.models.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=24, vocab_size=40, n_layers=2, n_heads=2, d_model=32, dropout=0.1))
    with torch.no_grad():  # sharper, less uniform predictions than the N(0, 0.02) init
        m.transformer.wte.weight.mul_(20)
    return m


def test_top_k_never_samples_outside_the_k_best():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    best = torch.topk(logits, 5, dim=-1).indices  # (4, 5)
    probs = next_token_distribution(logits, temperature=1.3, top_k=5)
    draws = torch.multinomial(probs, 2000, replacement=True, generator=torch.Generator().manual_seed(1))
    for row in range(4):
        assert set(draws[row].tolist()) <= set(best[row].tolist())
        assert len(set(draws[row].tolist())) == 5  # and every one of the k can be drawn
    assert torch.equal(torch.isfinite(top_k_filter(logits, 5)).sum(-1), torch.full((4,), 5))


def test_top_p_keeps_the_minimal_set_reaching_the_mass():
    probs = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])  # sorted: 0.5, 0.2, 0.15, 0.1, 0.05
    logits = probs.log()[None]
    for p, expected in [(0.4, {1}), (0.6, {1, 3}), (0.8, {1, 3, 4}), (0.9, {1, 3, 4, 2}), (1.0, {0, 1, 2, 3, 4})]:
        kept = set(torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist())
        assert kept == expected, (p, kept)
        mass = probs[sorted(kept)].sum().item()
        smallest = min(probs[sorted(kept)].tolist())
        assert mass >= p - 1e-6 and mass - smallest < p  # reaches p, and no token is superfluous
    renorm = next_token_distribution(logits, top_p=0.6)[0]
    torch.testing.assert_close(renorm, torch.tensor([0, 0.5 / 0.7, 0, 0.2 / 0.7, 0]))


def test_low_temperature_approaches_greedy_and_high_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = next_token_distribution(logits, temperature=0.05)[0]
    hot = next_token_distribution(logits, temperature=100.0)[0]
    assert cold[0] > 0.999 and (hot - 1 / 3).abs().max() < 0.01


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(temperature=0.8, top_k=10), dict(top_p=0.9)])
def test_cached_and_uncached_generation_give_identical_tokens(model, kw):
    prompt = torch.randint(0, 40, (3, 5), generator=torch.Generator().manual_seed(2))
    outs = [generate(model, prompt, 30, use_cache=cache, generator=torch.Generator().manual_seed(7), **kw)
            for cache in (True, False)]  # 35 > block_size 24: also exercises the cropped window
    assert outs[0].shape == (3, 35)
    assert torch.equal(outs[0], outs[1])
    assert model.training  # generate restored the training flag


def test_batched_left_padded_prompts_equal_each_prompt_alone(model):
    prompts = [[3, 14, 15, 9, 2, 6], [5, 3], [35, 8, 9, 7]]
    ids, mask = left_pad(prompts, pad_id=0)
    assert ids.tolist()[1] == [0, 0, 0, 0, 5, 3] and mask.tolist()[1] == [0, 0, 0, 0, 1, 1]
    for cache in (True, False):
        batch = generate(model, ids, 12, greedy=True, attention_mask=mask, use_cache=cache)
        for row, prompt in enumerate(prompts):
            alone = generate(model, torch.tensor([prompt]), 12, greedy=True, use_cache=cache)
            assert batch[row, -12:].tolist() == alone[0, -12:].tolist()


def test_stop_tokens_end_rows_and_pad_them(model):
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generate(model, prompt, 10, greedy=True)
    stop = free[0, 3 + 2].item()  # the token row 0 emits at its 3rd step
    out = generate(model, prompt, 10, greedy=True, stop_tokens=[stop], pad_id=39)
    first = (free[:, 3:] == stop).int().argmax(dim=1)  # first emission per row (0 if never)
    row0 = out[0, 3:].tolist()
    assert row0[: first[0] + 1] == free[0, 3 : 3 + first[0] + 1].tolist()
    assert all(t == 39 for t in row0[first[0] + 1 :])
    assert out.shape == (2, 13)  # finished rows are padded to the promised width
    if not (free[1, 3:] == stop).any():  # row 1 never stops: it runs to the end
        assert torch.equal(out[1], free[1])


def test_bad_arguments_raise(model):
    prompt = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 3, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, prompt, 3, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, 3, top_p=1.5)
    with pytest.raises(ValueError, match="int64"):
        generate(model, prompt.float(), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt, -1)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(model, prompt, 3, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []])
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, prompt[:, :0], 3)
    with pytest.raises(ValueError, match="stop_tokens"):
        generate(model, prompt, 3, stop_tokens=[40])  # outside the vocabulary of 40


def test_nan_probabilities_and_empty_constraints_are_clear_errors(model):
    prompt = torch.tensor([[1, 2]])

    class NaNModel(torch.nn.Module):
        config = model.config

        def forward(self, input_ids, **kwargs):
            out = model(input_ids, **kwargs)
            out.logits = out.logits.clone().fill_(float("nan"))
            return out

    with pytest.raises(ValueError, match="NaN"):
        generate(NaNModel(), prompt, 3)
    with pytest.raises(ValueError, match="NaN"):
        generate(NaNModel(), prompt, 3, greedy=True)
    with pytest.raises(ValueError, match="allows no token"):
        generate(model, prompt, 3, greedy=True,
                 allowed_tokens=lambda done: torch.zeros(1, 40, dtype=torch.bool))


def test_constrained_greedy_picks_the_best_allowed_token(model):
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(3))
    allowed = torch.zeros(40, dtype=torch.bool)
    allowed[[5, 17, 33]] = True
    out = generate(model, prompt, 6, greedy=True, allowed_tokens=lambda done: allowed.expand(2, 40))
    assert set(out[:, 4:].flatten().tolist()) <= {5, 17, 33}
    logits = model(out[:, :-1]).logits[:, 3:]  # teacher forcing on its own output
    best = logits.masked_fill(~allowed, float("-inf")).argmax(-1)
    assert torch.equal(best, out[:, 4:])
