"""Benchmark: greedy generation — Hugging Face ``generate`` next to ours (dynamic cache, static cache,
static cache + compiled decode step), with the same weights, tokens/s per batch size.

    python -m scratchlm.bench.generation                       # GPT-2-shaped 6 x 384, batches 1 and 8
    python -m scratchlm.bench.generation --batch-sizes 1 2 4 8 16 --new-tokens 128 --threads 1
    python -m scratchlm.bench.generation --no-compile --no-hf  # quick: our eager paths only

The model is GPT-2-shaped (vocab 50,257, learned positions, tied output layer) with random
weights, saved with ``save_pretrained`` and loaded into ``transformers.GPT2LMHeadModel``. Prompts
are random token ids of ragged lengths, left-padded (so the padding paths run too). Every method
decodes greedily the same number of new tokens; its output must equal Hugging Face's token for
token, and the table says whether it does.

Timing: every method is warmed up first (the compiled step is compiled then; the compile time is
reported on its own), then the methods run round-robin ``--repeats`` times and the median wall
time of each is reported, with the fastest repeat ("best": the least disturbed by other jobs) and
the process CPU time beside it. Round-robin matters on a shared
machine: a burst of load hits every method rather than one. The load average before and after is
printed; numbers from a loaded machine are comparable only within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.collate import left_pad
from ..decoding import StaticGenerator, generate
from ..models.gpt import GPT, GPTConfig
from ..runtime.profiles import capped

METHODS = ("HF generate", "ours: KVCache", "ours: static", "ours: static+compile")


@dataclass
class GenRow:
    """One (batch size, method) measurement."""

    batch: int
    method: str
    tokens_per_s: float  # new tokens (batch x new_tokens) per second of wall time, median
    cpu_tokens_per_s: float  # the same per second of process CPU time (all threads)
    best_tokens_per_s: float  # the fastest repeat's wall time (the least disturbed on a busy machine)
    identical: bool | None  # tokens equal to Hugging Face's (None: HF not run)
    compile_s: float | None = None  # time of the first (compiling) call, compiled method only


def load_average() -> str:
    """The 1-minute load average and the core count, for the record (a shared machine is noisy)."""
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:  # pragma: no cover - not available on every platform
        return f"{os.cpu_count()} cores"


def make_prompts(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-padded prompts: row b has between length/2 and length tokens (padding id 0)."""
    g = torch.Generator().manual_seed(seed + batch)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch,), generator=g).tolist()
    lengths[0] = length  # the longest row sets the padded width
    rows = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]
    return left_pad(rows, pad_id=0)


def build_models(n_layers: int, d_model: int, n_heads: int, vocab: int, block: int, seed: int):
    """A random GPT-2-shaped GPT and the Hugging Face GPT2LMHeadModel with the same weights."""
    torch.manual_seed(seed)
    ours = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layers=n_layers, n_heads=n_heads,
                         d_model=d_model)).eval()
    return ours, hf_twin(ours)


def hf_twin(ours: GPT):
    """``transformers.GPT2LMHeadModel`` with our weights (save_pretrained -> from_pretrained), or None."""
    try:
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is in requirements.txt
        return None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        return GPT2LMHeadModel.from_pretrained(tmp).eval()


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _methods(ours: GPT, theirs, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int,
             compile: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The generation calls to time, by name, for one batch of prompts (outputs on the CPU)."""
    length = ids.shape[1] + new_tokens
    methods: dict[str, Callable[[], torch.Tensor]] = {}
    if theirs is not None:
        hf_ids, hf_mask = ids.to(theirs.device), mask.to(theirs.device)
        methods[METHODS[0]] = lambda: theirs.generate(hf_ids, attention_mask=hf_mask, max_new_tokens=new_tokens,
                                                      min_new_tokens=new_tokens, do_sample=False,
                                                      pad_token_id=0).cpu()
    device = next(ours.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    methods[METHODS[1]] = lambda: generate(ours, ids, new_tokens, attention_mask=mask, greedy=True).cpu()
    static = StaticGenerator(ours, batch_size=ids.shape[0], max_length=length)
    methods[METHODS[2]] = lambda: static.generate(ids, new_tokens, attention_mask=mask).cpu()
    if compile:
        fast = StaticGenerator(ours, batch_size=ids.shape[0], max_length=length, compile=True)
        methods[METHODS[3]] = lambda: fast.generate(ids, new_tokens, attention_mask=mask).cpu()
    return methods


def benchmark_generation(*, batch_sizes: tuple[int, ...] = (1, 8), new_tokens: int = 256, prompt_len: int = 8,
                         n_layers: int = 6, d_model: int = 384, n_heads: int = 6, vocab: int = 50257,
                         block: int = 1024, threads: int | None = None, repeats: int = 3, compile: bool = True,
                         hf: bool = True, seed: int = 0, log: Callable[[str], None] | None = None,
                         models: tuple[GPT, object] | None = None) -> list[GenRow]:
    """Measure every method at every batch size (see the module docstring); returns one row each.

    ``models``: (ours, Hugging Face's or None) to measure instead of a random GPT-2-shaped pair
    (a chapter passes its trained model); the size arguments are then ignored. Under a step cap
    (``SCRATCHLM_MAX_STEPS``, a dry run) ``new_tokens`` and ``repeats`` are capped.
    """
    if repeats < 1 or new_tokens < 1 or prompt_len < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"repeats, new_tokens, prompt_len and batch sizes must be >= 1; got {repeats}, "
                         f"{new_tokens}, {prompt_len}, {batch_sizes}")
    # a dry run (SCRATCHLM_MAX_STEPS) decodes at most the cap with every method, Hugging Face's included
    new_tokens, repeats = capped(new_tokens), capped(repeats)
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    ours, theirs = models if models is not None else build_models(n_layers, d_model, n_heads, vocab, block, seed)
    vocab, block = ours.config.vocab_size, ours.config.block_size
    if prompt_len + new_tokens > block:
        raise ValueError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds block={block}")
    rows: list[GenRow] = []
    try:
        for batch in batch_sizes:
            ids, mask = make_prompts(batch, prompt_len, vocab, seed)
            methods = _methods(ours, theirs if hf else None, ids, mask, new_tokens, compile)
            outputs, first = {}, {}
            with torch.no_grad():
                for name, fn in methods.items():  # warm-up (compiles the compiled step)
                    first[name], _, outputs[name] = _timed(fn)
                    if log:
                        log(f"batch {batch}: warmed up {name} ({first[name]:.1f} s)")
                walls: dict[str, list[float]] = {n: [] for n in methods}
                cpus: dict[str, list[float]] = {n: [] for n in methods}
                for _ in range(repeats):
                    for name, fn in methods.items():
                        w, c, _ = _timed(fn)
                        walls[name].append(w)
                        cpus[name].append(c)
            ref = outputs.get(METHODS[0])
            for name in methods:
                n_tok = batch * new_tokens
                rows.append(GenRow(batch, name, n_tok / statistics.median(walls[name]),
                                   n_tok / statistics.median(cpus[name]), n_tok / min(walls[name]),
                                   None if ref is None else bool(torch.equal(outputs[name], ref)),
                                   first[name] if name == METHODS[3] else None))
    finally:
        torch.set_num_threads(saved)
    return rows


def speedups(rows: list[GenRow], baseline: str = METHODS[0], attr: str = "tokens_per_s") -> dict[tuple[int, str], float]:
    """tokens/s (``attr``) of each row divided by the baseline method's at the same batch size."""
    base = {r.batch: getattr(r, attr) for r in rows if r.method == baseline}
    return {(r.batch, r.method): getattr(r, attr) / base[r.batch] for r in rows if r.batch in base}


def format_table(rows: list[GenRow]) -> str:
    ratio = speedups(rows)
    head = (f"{'batch':>5}  {'method':<22} {'tokens/s':>9} {'vs HF':>6} {'best':>9} {'vs HF':>6} {'CPU tok/s':>10} "
            f"{'same tokens':>11}")
    best = speedups(rows, attr="best_tokens_per_s")
    lines = [head, "-" * len(head)]
    for r in rows:
        vs = f"{ratio[(r.batch, r.method)]:.2f}x" if (r.batch, r.method) in ratio else "-"
        vs_best = f"{best[(r.batch, r.method)]:.2f}x" if (r.batch, r.method) in best else "-"
        same = "-" if r.identical is None else ("yes" if r.identical else "NO")
        extra = f"  (compile {r.compile_s:.0f} s)" if r.compile_s is not None else ""
        lines.append(f"{r.batch:>5}  {r.method:<22} {r.tokens_per_s:>9.1f} {vs:>6} {r.best_tokens_per_s:>9.1f} "
                     f"{vs_best:>6} {r.cpu_tokens_per_s:>10.1f} "
                     f"{same:>11}{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[GenRow]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled decode step")
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads or torch.get_num_threads()}, {load_average()}")
    print(f"model: {args.layers} layers x {args.d_model} wide, {args.heads} heads, vocab {args.vocab}; "
          f"prompts up to {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy")
    rows = benchmark_generation(batch_sizes=tuple(args.batch_sizes), new_tokens=args.new_tokens,
                                prompt_len=args.prompt_len, n_layers=args.layers, d_model=args.d_model,
                                n_heads=args.heads, vocab=args.vocab, threads=args.threads, repeats=args.repeats,
                                compile=not args.no_compile, hf=not args.no_hf, seed=args.seed,
                                log=lambda s: print("  " + s, flush=True))
    print(format_table(rows))
    print(f"after: {load_average()}")
    return rows


if __name__ == "__main__":
    main()
