"""Benchmark: latency of our eager model, its ``torch.export`` program and onnxruntime, side by side.

    python -m scratchlm.bench.export                   # GPT 4 x 128 (vocab 65), MiniLM-shaped classifier
    python -m scratchlm.bench.export --layers 6 --d-model 384 --vocab 50257 --threads 1

For the GPT (random weights, the KV cache as explicit inputs and outputs, see
:mod:`scratchlm.serve.export`): a prompt step (empty cache, ``--prompt`` tokens) and a decode step
(one token after a cache of ``--prompt`` tokens), each for a batch of 1 and of 8 (the exported
program runs with ``check_guards=False``, see :func:`~scratchlm.serve.export.export_gpt`). For the classifier
(all-MiniLM-L6-v2's real weights when available, else random ones of its shape): a batch of 8
messages of ``--text-len`` tokens. Every runtime's output is compared with ours (largest absolute
difference). Timings: the median of ``--repeats`` calls after one warm-up, runtimes interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..heads import SequenceClassifier
from ..models import GPT, BertConfig, BertModel, GPTConfig
from ..serve.export import (
    GPTWithCache,
    OnnxClassifier,
    OnnxGPT,
    export_classifier,
    export_gpt,
    gpt_onnx_names,
    to_onnx,
)
from .generation import load_average


def _interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def _classifier(seed: int) -> tuple[SequenceClassifier, int, str]:
    try:
        from ..data.corpora import minilm_files

        encoder = BertModel.from_pretrained(minilm_files(download_missing=False).directory)
        source = "all-MiniLM-L6-v2"
    except (FileNotFoundError, OSError, ValueError):
        torch.manual_seed(seed)
        encoder = BertModel(BertConfig(vocab_size=30522, d_model=384, n_layers=6, n_heads=12, d_ff=1536))
        source = "random, MiniLM-shaped"
    torch.manual_seed(seed)
    clf = SequenceClassifier(encoder, encoder.config.d_model, 2, pooling="mean", dropout=0.0).eval()
    return clf, encoder.config.vocab_size, source


@torch.no_grad()
def benchmark_export(*, n_layers: int = 4, d_model: int = 128, n_heads: int = 4, vocab: int = 65, block: int = 256,
                     prompt: int = 64, text_len: int = 32, repeats: int = 20, threads: int | None = None,
                     classifier: bool = True, seed: int = 0) -> list[dict]:
    """Export, check and time (see the module docstring); one dict per (model, shape, runtime)."""
    if prompt + 1 > block:
        raise ValueError(f"prompt + 1 = {prompt + 1} exceeds block={block}")
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(seed)
            gpt = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layers=n_layers, n_heads=n_heads,
                                d_model=d_model)).eval()
            wrapper = GPTWithCache(gpt, logits_to_keep=1)
            t0 = time.perf_counter()
            program = export_gpt(gpt, logits_to_keep=1)
            path = to_onnx(program, Path(tmp) / "gpt.onnx", *gpt_onnx_names(n_layers))
            export_s = time.perf_counter() - t0
            ort = OnnxGPT(path, n_layers, n_heads, d_model // n_heads, threads=torch.get_num_threads())
            module = program.module(check_guards=False)
            g = torch.Generator().manual_seed(seed)
            for B in (1, 8):
                x = torch.randint(0, vocab, (B, prompt), generator=g)
                m = torch.ones_like(x)
                empty = wrapper.empty_past(B)
                logits, *past = wrapper(x, m, *empty)
                xs, ms = x[:, :1], torch.ones(B, prompt + 1, dtype=torch.long)
                step_ref = wrapper(xs, ms, *past)[0]
                past_np = [p.numpy() for p in past]
                cases = {f"prompt step, B={B} x {prompt}": (lambda x=x, m=m, e=empty: wrapper(x, m, *e),
                                                           lambda x=x, m=m, e=empty: module(x, m, *e),
                                                           lambda x=x, m=m: ort(x.numpy(), m.numpy()), logits),
                         f"decode step, B={B}, cache {prompt}": (lambda p=past, xs=xs, ms=ms: wrapper(xs, ms, *p),
                                                                 lambda p=past, xs=xs, ms=ms: module(xs, ms, *p),
                                                                 lambda pn=past_np, xs=xs, ms=ms: ort(xs.numpy(), ms.numpy(), pn),
                                                                 step_ref)}
                for shape, (eager, exported, onnx, ref) in cases.items():
                    fns = {"ours (eager)": eager, "torch.export program": exported, "onnxruntime": onnx}
                    ms_ = _interleaved_ms(fns, repeats)
                    diffs = {"ours (eager)": 0.0, "torch.export program": float((exported()[0] - ref).abs().max()),
                             "onnxruntime": float(np.abs(onnx()[0] - ref.numpy()).max())}
                    rows += [dict(model=f"GPT {n_layers}x{d_model}, vocab {vocab}", shape=shape, runtime=k,
                                  ms=v, max_abs_diff=diffs[k], export_s=export_s) for k, v in ms_.items()]
            if classifier:
                clf, clf_vocab, source = _classifier(seed)
                t0 = time.perf_counter()
                cprog = export_classifier(clf, vocab_size=clf_vocab)
                cpath = to_onnx(cprog, Path(tmp) / "clf.onnx", ["input_ids", "attention_mask"], ["logits"])
                export_s = time.perf_counter() - t0
                cort = OnnxClassifier(cpath, threads=torch.get_num_threads())
                x = torch.randint(1000, clf_vocab, (8, text_len), generator=g)
                m = torch.ones_like(x)
                ref = clf(x, attention_mask=m).logits
                cmod = cprog.module(check_guards=False)
                fns = {"ours (eager)": lambda: clf(x, attention_mask=m), "torch.export program": lambda: cmod(x, m),
                       "onnxruntime": lambda: cort(x.numpy(), m.numpy())}
                diffs = {"ours (eager)": 0.0, "torch.export program": float((cmod(x, m) - ref).abs().max()),
                         "onnxruntime": float(np.abs(cort(x.numpy(), m.numpy()) - ref.numpy()).max())}
                for k, v in _interleaved_ms(fns, repeats).items():
                    rows.append(dict(model=f"classifier ({source})", shape=f"B=8 x {text_len} tokens", runtime=k,
                                     ms=v, max_abs_diff=diffs[k], export_s=export_s))
    finally:
        torch.set_num_threads(saved)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model / shape':<52} {'runtime':<22} {'ms':>9} {'vs eager':>8} {'max |diff|':>10}"]
    eager = {(r["model"], r["shape"]): r["ms"] for r in rows if r["runtime"] == "ours (eager)"}
    for r in rows:
        ratio = eager[(r["model"], r["shape"])] / r["ms"]
        lines.append(f"{r['model'] + ': ' + r['shape']:<52} {r['runtime']:<22} {r['ms']:>9.3f} {ratio:>7.2f}x "
                     f"{r['max_abs_diff']:>10.1e}")
    exports = {r["model"]: r["export_s"] for r in rows}
    lines.append("export + ONNX translation: " + ", ".join(f"{k} {v:.1f} s" for k, v in exports.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-classifier", action="store_true")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, {load_average()}")
    rows = benchmark_export(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, vocab=args.vocab,
                            block=args.block, prompt=args.prompt, text_len=args.text_len, repeats=args.repeats,
                            threads=args.threads, classifier=not args.no_classifier)
    print(format_table(rows))
    print(f"after: {load_average()}")
    return rows


if __name__ == "__main__":
    main()
