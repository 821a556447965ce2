"""The nanoGPT benchmark command: its whole-split loss equals a per-window brute force, a short run prints
every figure the issue asks for, and nanoGPT's side is printed only when it ran in the same session (no
timing assertions: timings are the benchmark's output)."""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from fake_nanogpt import make_fake_nanogpt

import scratchlm.bench.gpt_shakespeare as bench
from scratchlm.bench.gpt_shakespeare import full_split_loss, main
from scratchlm.models.gpt import GPT, GPTConfig

TINY = ["--custom", "--iters", "3", "--eval-interval", "3", "--eval-iters", "2", "--n-layer", "1",
        "--n-embd", "32", "--n-head", "2", "--threads", "1"]


def test_full_split_loss_equals_brute_force_over_windows():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=11, n_layers=1, n_heads=2, d_model=16, dropout=0.0))
    ids = torch.randint(0, 11, (16 * 9 + 5,))  # 9 whole windows, plus a tail that does not fill a window
    total = count = 0.0
    with torch.no_grad():
        for start in range(0, 16 * 9, 16):
            x = ids[start: start + 16][None]  # (1, 16)
            y = ids[start + 1: start + 17]  # (16,)
            logits = model(x).logits
            total += F.cross_entropy(logits[0], y, reduction="sum").item()
            count += 16
    got = full_split_loss(model, ids, 16, windows_per_batch=4)  # batches of 4 windows: 4 + 4 + 1
    assert math.isclose(got, total / count, rel_tol=1e-5)
    assert model.training  # restored


def test_short_run_prints_only_figures_measured_in_the_run(capsys):
    main(TINY)
    out = capsys.readouterr().out
    for figure in ("wall", "ms/iter", "tokens/s", "train", "val", "whole split", "load"):
        assert figure in out, figure
    assert "nanoGPT itself" not in out and "/ nanoGPT" not in out  # nothing from another run or machine
    assert not hasattr(bench, "NANOGPT_MEASURED")


def test_nanogpt_dir_runs_nanogpt_with_the_same_config_and_prints_the_ratios(capsys, tmp_path, monkeypatch):
    import scratchlm.bench.nanogpt as nanogpt

    runs, real_run = [], nanogpt.run_nanogpt

    def recording_run(*args, **kwargs):
        runs.append(real_run(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(nanogpt, "run_nanogpt", recording_run)
    fake = make_fake_nanogpt(tmp_path / "nanoGPT")
    main([*TINY, "--batch-size", "5", "--nanogpt-dir", str(fake)])
    out = capsys.readouterr().out
    (result,) = runs
    argv = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("ARGV "))[5:])
    for arg in ("--max_iters=3", "--batch_size=5", "--n_layer=1", "--n_head=2", "--n_embd=32", "--eval_iters=2",
                "--eval_interval=3"):
        assert arg in argv, arg
    assert "THREADS 1" in result.stdout
    lines = out.splitlines()
    nano = next(line for line in lines if line.startswith("[nanoGPT itself] nanoGPT 3 iters"))
    assert "threads=1" in nano and "ms/iter" in nano and "load" in nano
    ratio = next(line for line in lines if line.startswith("[custom] / nanoGPT"))
    assert "iterations 3 / 4" in ratio  # nanoGPT steps at iterations 0..max_iters
    # the fake's iterations took 10 + i ms (50 + i where it evaluates): loop (50 + 11 + 12 + 53) ms
    assert f"/ {0.126:.1f} s" in ratio and f"/ {(11 + 12) / 2:.1f} =" in ratio


def test_nanogpt_gets_this_runs_configuration():
    args = argparse.Namespace(batch_size=5, block_size=32, n_layer=1, n_head=2, n_embd=32, eval_interval=3,
                              eval_iters=2)
    assert bench.nanogpt_extra_args(args) == ("--batch_size=5", "--block_size=32", "--n_layer=1", "--n_head=2",
                                              "--n_embd=32", "--eval_interval=3", "--eval_iters=2")
