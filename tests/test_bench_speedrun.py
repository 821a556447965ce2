"""The speed-run command: its stopper checks cheaply, confirms exactly and stops at the target; the recipes
build; the command prints every figure and, with a nanoGPT checkout, the ratio (no timing assertions)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fake_nanogpt import make_fake_nanogpt

import scratchlm.bench.speedrun as speedrun
from scratchlm.bench.gpt_shakespeare import full_split_loss, prepare_data
from scratchlm.bench.speedrun import (
    EVAL_BLOCK,
    RECIPES,
    Recipe,
    TargetStopper,
    build,
    run_speedrun,
    step_costs,
    with_changes,
)
from scratchlm.models.gpt import GPT, GPTConfig

TINY = Recipe("tiny", dict(n_layers=1, n_heads=2, d_model=16, dropout=0.0, bias=False, activation="gelu"),
              dict(max_steps=6, learning_rate=3e-3, min_lr=0.0, warmup_steps=1, schedule="wsd"),
              batch_size=4, block_size=32, check_every=2, estimate_stride=64)


@pytest.fixture(scope="module")
def data():
    return prepare_data(torch.device("cpu"))


def test_estimate_is_the_loss_over_every_nth_window():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=EVAL_BLOCK, vocab_size=7, n_layers=1, n_heads=2, d_model=16))
    ids = torch.randint(0, 7, (EVAL_BLOCK * 10 + 3,))
    stopper = TargetStopper(ids, 1.0, max_steps=10, check_from=1, check_every=1, stride=3, margin=0.0)
    total = 0.0
    with torch.no_grad():
        for w in (0, 3, 6, 9):  # every third window of 64
            x = ids[w * EVAL_BLOCK: (w + 1) * EVAL_BLOCK + 1]
            total += F.cross_entropy(model(x[None, :-1]).logits[0], x[1:], reduction="sum").item()
    assert math.isclose(stopper._estimate(model), total / (4 * EVAL_BLOCK), rel_tol=1e-5)
    whole = TargetStopper(ids, 1.0, max_steps=10, check_from=1, check_every=1, stride=1, margin=0.0)
    assert math.isclose(whole._estimate(model), full_split_loss(model, ids, EVAL_BLOCK), rel_tol=1e-5)


def test_stopper_gates_the_exact_check_and_always_checks_the_last_step():
    ids = torch.randint(0, 7, (EVAL_BLOCK * 4 + 1,))
    model = GPT(GPTConfig(block_size=EVAL_BLOCK, vocab_size=7, n_layers=1, n_heads=2, d_model=16))
    never = TargetStopper(ids, 0.0, max_steps=6, check_from=2, check_every=2, stride=1, margin=0.5)
    assert [never(d, model, None) for d in range(1, 7)] == [False] * 6
    assert [(c.step, c.kind) for c in never.checks] == [(2, "estimate"), (4, "estimate"), (6, "exact")]
    always = TargetStopper(ids, 100.0, max_steps=6, check_from=4, check_every=2, stride=1, margin=0.0)
    assert [always(d, model, None) for d in range(1, 5)] == [False, False, False, True]
    assert [(c.step, c.kind) for c in always.checks] == [(4, "estimate"), (4, "exact")]
    assert always.final == always.checks[-1].loss and always.check_s > 0


def test_run_stops_at_the_target_and_counts_tokens(data):
    ids, vocab = data
    reached = run_speedrun(with_changes(TINY, "easy"), target=100.0, threads=1, data=ids, vocab_size=vocab)
    assert reached.reached and reached.steps == 2 and reached.tokens == 2 * 4 * 32
    assert [c.kind for c in reached.checks] == ["estimate", "exact"] and reached.history.steps == [1, 2]
    missed = run_speedrun(TINY, target=0.5, threads=1, data=ids, vocab_size=vocab)
    assert not missed.reached and missed.steps == 6 and missed.checks[-1].kind == "exact"
    assert missed.final_val == missed.checks[-1].loss > 0.5
    assert "did NOT reach" in missed.summary() and "6 iterations" in missed.summary()


def test_recipes_build_and_step(data):
    ids, vocab = data
    short = {"train": ids["train"], "val": ids["val"][: 4 * EVAL_BLOCK + 1]}  # a 4-window exact check
    for recipe in RECIPES.values():
        model = build(recipe, vocab)
        assert model.config.block_size >= EVAL_BLOCK
        result = run_speedrun(recipe, target=0.0, threads=1, max_steps=1, data=short, vocab_size=vocab)
        assert result.steps == 1 and math.isfinite(result.final_val)
        assert recipe.describe()


def test_command_prints_the_figures_and_the_ratio(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(RECIPES, "tiny", TINY)
    speedrun.main(["--recipe", "tiny", "--threads", "1", "--target", "100"])
    out = capsys.readouterr().out
    assert "reached val <= 100.0" in out and "2 iterations, 256 tokens" in out and "load" in out
    assert "nanoGPT" not in out.split("recipe tiny")[1]

    fake = make_fake_nanogpt(tmp_path / "nanoGPT")
    speedrun.main(["--recipe", "tiny", "--threads", "1", "--target", "100", "--nanogpt-dir", str(fake),
                   "--nanogpt-iters", "3"])
    out = capsys.readouterr().out
    assert "nanoGPT 3 iters" in out
    ratio = next(line for line in out.splitlines() if line.startswith("ratio:"))
    assert "nanoGPT 0.1 s" in ratio  # the fake's loop: (50 + 11 + 12 + 53) ms


def test_bad_arguments():
    with pytest.raises(TypeError, match="Recipe"):
        run_speedrun("speedrun")
    with pytest.raises(ValueError, match="threads"):
        run_speedrun(TINY, threads=0)


def test_step_costs_time_every_recipe_side_by_side(data, monkeypatch):
    ids, vocab = data
    wide = with_changes(TINY, "wide", model=dict(d_model=32))
    calls = []
    real_train = speedrun.train
    monkeypatch.setattr(speedrun, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    costs = step_costs([TINY, wide], data=ids, vocab_size=vocab, steps=2, rounds=2)
    assert set(costs) == {"tiny", "wide"} and all(c > 0 for c in costs.values())
    assert len(calls) == 2 * 3  # a warm-up round, then two measured rounds, each visiting both
    calls.clear()
    monkeypatch.setenv("SCRATCHLM_MAX_STEPS", "1")  # a dry run: one round, no warm-up
    assert set(step_costs([TINY, wide], data=ids, vocab_size=vocab, steps=2, rounds=2)) == {"tiny", "wide"}
    assert len(calls) == 2
    with pytest.raises(ValueError, match="at least one recipe"):
        step_costs([], data=ids, vocab_size=vocab)
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        step_costs([TINY], data=ids, vocab_size=vocab, rounds=0)
