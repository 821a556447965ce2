"""The generation benchmark runs end to end on a tiny model and reports identical tokens (no timing checks)."""

from __future__ import annotations

import pytest

from scratchlm.bench import generation
from scratchlm.bench.generation import METHODS, benchmark_generation, format_table, make_prompts, speedups


def test_benchmark_generation_tiny_model_reports_every_method_with_identical_tokens():
    pytest.importorskip("transformers")
    rows = benchmark_generation(batch_sizes=(1, 3), new_tokens=6, prompt_len=4, n_layers=1, d_model=16, n_heads=2,
                                vocab=50, block=16, threads=1, repeats=1, compile=False)
    assert [(r.batch, r.method) for r in rows] == [(b, m) for b in (1, 3) for m in METHODS[:3]]
    assert all(r.identical for r in rows) and all(r.tokens_per_s > 0 for r in rows)
    assert speedups(rows)[(1, METHODS[0])] == 1.0
    table = format_table(rows)
    assert "HF generate" in table and "NO" not in table


def test_a_dry_run_caps_the_tokens_of_every_method(monkeypatch):
    pytest.importorskip("transformers")
    calls = []

    def fixed_time(fn):  # every call "takes" 1 s, so tokens/s is the number of tokens counted
        calls.append(fn)
        return 1.0, 1.0, fn()

    monkeypatch.setattr(generation, "_timed", fixed_time)
    monkeypatch.setenv("SCRATCHLM_MAX_STEPS", "2")
    rows = benchmark_generation(batch_sizes=(3,), new_tokens=6, prompt_len=4, n_layers=1, d_model=16, n_heads=2,
                                vocab=50, block=16, threads=1, repeats=5, compile=False)
    assert all(r.identical for r in rows)  # Hugging Face's generate decodes 2 tokens too, not 6
    assert [r.tokens_per_s for r in rows] == [3 * 2.0] * 3
    assert len(calls) == 3 * (1 + 2)  # warm-up + 2 repeats (capped from 5) per method


def test_prompts_are_left_padded_and_ragged():
    ids, mask = make_prompts(4, 8, 50, seed=0)
    assert ids.shape == (4, 8) and mask[0].all() and (mask.sum(1) >= 4).all()
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] > 0).all()
    with pytest.raises(ValueError, match="exceeds"):
        benchmark_generation(batch_sizes=(1,), new_tokens=20, prompt_len=4, n_layers=1, d_model=16, n_heads=2,
                             vocab=50, block=16, compile=False, hf=False)
