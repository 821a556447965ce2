"""The fine-tuning benchmark: both loops start from the same model, and a tiny run prints every figure."""

from __future__ import annotations

import torch

from scratchlm.bench.finetune import HFHead, hf_model_like, main, our_head
from scratchlm.data import minilm_files
from scratchlm.tokenizers import WordPieceTokenizer


def test_hf_models_start_where_ours_start():
    files = minilm_files()
    tok = WordPieceTokenizer.from_vocab_file(files.vocab)
    batch = tok.batch_encode(["win a free prize now", "see you at dinner"])
    for name in ("sms", "stsb", "pos"):
        torch.manual_seed(0)
        ours = our_head(name, files.directory).eval()
        hf = HFHead(hf_model_like(name, ours, files.directory), "regression" if name == "stsb" else "x").eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(**batch).logits, hf(**batch).logits, rtol=1e-4, atol=1e-4)


def test_tiny_run_prints_the_figures(capsys):
    results = main(["--tasks", "sms", "--limit", "8", "--batch-size", "4", "--threads", "1"])
    out = capsys.readouterr().out
    for figure in ("wall s", "examples/s", "accuracy", "scratchlm", "HF Trainer", "load average"):
        assert figure in out, figure
    ours, hf = results
    assert ours.steps == hf.steps == 2 and ours.examples == hf.examples == 8
