"""The nanoGPT benchmark command: its whole-split loss equals a per-window brute force, and a short run
prints every figure the issue asks for (no timing assertions: timings are the benchmark's output)."""

import math

import torch
import torch.nn.functional as F

from scratchlm.bench.gpt_shakespeare import full_split_loss, main
from scratchlm.models.gpt import GPT, GPTConfig


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


def test_short_run_prints_the_figures(capsys):
    main(["--custom", "--iters", "3", "--eval-interval", "3", "--eval-iters", "2", "--n-layer", "1",
          "--n-embd", "32", "--n-head", "2", "--threads", "1"])
    out = capsys.readouterr().out
    for figure in ("wall", "ms/iter", "tokens/s", "train", "val", "whole split"):
        assert figure in out, figure
