"""Benchmark: nanoGPT's character-level Tiny Shakespeare CPU run with scratchlm's GPT and train loop.

    python -m scratchlm.bench.gpt_shakespeare                              # nanoGPT's config, then the fastest settings
    python -m scratchlm.bench.gpt_shakespeare --nanogpt-dir ~/src/nanoGPT  # nanoGPT itself first, same config; ratios
    python -m scratchlm.bench.gpt_shakespeare --sweep                      # time every candidate setting
    python -m scratchlm.bench.gpt_shakespeare --custom --no-fused --threads 1 --iters 500

The configuration is nanoGPT's README CPU command (4 layers, 4 heads, 128 wide, block 64, batch 12,
2000 iterations, dropout 0, lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4, AdamW
β = (0.9, 0.99), weight decay 0.1, clip 1.0, evaluation every 250 steps on 20 batches), bias-free
Linear/LayerNorm and the exact GELU as in nanoGPT's train.py; the data split is nanoGPT's (first
90 % of the characters train, last 10 % validation).

Reported per run: wall seconds of the whole ``train()`` call (optimizer set-up, steps, evaluations),
ms per training iteration and tokens per second (training steps only), the final train and val loss
estimated like nanoGPT (mean over ``--eval-iters`` random batches of 12 x 64 tokens, drawn from a
seeded generator; train batches are ones never trained on), and the val loss over the **whole**
validation split (1,742 consecutive windows of 64 characters: exact, no sampling noise). The 1.88
target is checked on the whole split.

Only what is measured in the run is printed. Machines differ by 2x and more on the same run (and a
busy machine by more), so a time measured elsewhere says nothing about this one. With
``--nanogpt-dir`` the command first runs a nanoGPT checkout with the same configuration
(:func:`scratchlm.bench.nanogpt.run_nanogpt`: its README command, with the sizes, iterations,
evaluation settings and thread count of this run) and prints ours / nanoGPT for the wall time of
the training loop (steps and evaluations; nanoGPT's own per-iteration times summed) and for ms per
iteration. nanoGPT's val loss is its own 20-batch estimate (the whole-split loss of its model would
need its pickled checkpoint, which the book does not load).

Why the whole split: nanoGPT's "1.88" is its 20-batch estimate; the estimate of one run can sit
0.01 below the whole-split figure, which is the target here. A benchmark, not a test: the timings
depend on the machine and its load (printed with them).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..data.corpora import load_shakespeare
from ..data.lm import SlidingWindowDataset, make_lm_get_batch
from ..models.base import token_cross_entropy
from ..models.gpt import GPT, GPTConfig
from ..tokenizers import CharTokenizer
from ..training import TrainConfig, causal_lm_loss, train

ANCHOR_VAL_LOSS = 1.88  # target val loss (whole validation split), nanoGPT's reported CPU result


@dataclass
class Settings:
    """Speed knobs that must not change what is computed (beyond float rounding)."""

    name: str  # label printed with the results
    compile: bool = False  # torch.compile the model
    fused: bool | None = None  # fused AdamW kernel (None: when available)
    threads: int | None = None  # torch.set_num_threads (None: PyTorch's default)
    autocast: str = "off"  # "off" or "bf16" (CPU bf16 is only fast with AMX / AVX512-BF16)
    iters: int | None = None  # training iterations (None: --iters); the schedule decays over them


def prepare_data(device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """Character ids of Tiny Shakespeare split 90/10 like nanoGPT; returns (splits, vocab size)."""
    text = load_shakespeare()
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)  # (1,115,394,)
    n = int(0.9 * len(ids))
    return {"train": ids[:n].to(device), "val": ids[n:].to(device)}, tok.vocab_size


@torch.no_grad()
def full_split_loss(model: GPT, ids: torch.Tensor, block_size: int, windows_per_batch: int = 256) -> float:
    """Mean next-token loss over a whole split, in consecutive non-overlapping windows of ``block_size``.

    Every position is predicted from the context inside its window, as in training; no sampling, so
    the figure is exact and the same for every run of the same weights.
    """
    windows = SlidingWindowDataset(ids, block_size)  # Chapter 02's windows, stride = block_size
    was_training = model.training
    model.eval()
    total = count = 0
    for x, y in DataLoader(windows, batch_size=windows_per_batch):  # (b, T) each; y = x shifted by one
        loss = token_cross_entropy(model(x).logits, y)  # the pre-shifted targets: every position counts
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def run(settings: Settings, args: argparse.Namespace) -> dict[str, float]:
    """Train once under ``settings``; return the measured figures (PyTorch's thread count is restored)."""
    threads_before = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train_and_measure(settings, args)
    finally:
        torch.set_num_threads(threads_before)


def _train_and_measure(settings: Settings, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    data, vocab = prepare_data(device)
    torch.manual_seed(args.seed)
    # bias=False and the exact (erf) GELU: nanoGPT train.py's defaults, which its CPU run uses.
    model = GPT(GPTConfig(block_size=args.block_size, vocab_size=vocab, n_layers=args.n_layer,
                          n_heads=args.n_head, d_model=args.n_embd, dropout=0.0, bias=False,
                          activation="gelu")).to(device)
    get_batch = make_lm_get_batch(data, batch_size=args.batch_size, block_size=args.block_size,
                                  seed=args.seed, device=device)
    iters = settings.iters or args.iters
    cfg = TrainConfig(max_steps=iters, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100,
                      weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
                      eval_every=args.eval_interval, eval_batches=args.eval_iters, eval_train=True,
                      eval_at_start=False, autocast=settings.autocast, compile=settings.compile,
                      fused=settings.fused, progress=args.progress)
    t0 = time.perf_counter()
    hist = train(model, get_batch, causal_lm_loss, cfg)
    wall = time.perf_counter() - t0
    final_val = full_split_loss(model, data["val"], args.block_size)
    tokens = iters * args.batch_size * args.block_size
    return {"iters": iters, "wall_s": wall, "ms_per_iter": 1000 * hist.train_time_s / iters,
            "tokens_per_s": tokens / hist.train_time_s, "train_loss": hist.eval_train_loss[-1],
            "val_loss": hist.val_loss[-1], "final_val": final_val, "eval_s": hist.eval_time_s,
            "threads": torch.get_num_threads()}


def load_text() -> str:
    """The machine's load average (1 / 5 / 15 minutes), printed beside every timing."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return "load n/a"
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} cores"


def report(settings: Settings, r: dict[str, float], args: argparse.Namespace) -> None:
    ok = "reaches" if r["final_val"] <= ANCHOR_VAL_LOSS else "MISSES"
    print(f"[{settings.name}] {r['iters']:.0f} iters, compile={settings.compile} fused={settings.fused} "
          f"threads={r['threads']:.0f} autocast={settings.autocast} | wall {r['wall_s']:.1f} s | "
          f"{r['ms_per_iter']:.1f} ms/iter | {r['tokens_per_s']:,.0f} tokens/s | train {r['train_loss']:.4f} "
          f"val {r['val_loss']:.4f} ({args.eval_iters} batches) | val {r['final_val']:.4f} (whole split; "
          f"{ok} <= {ANCHOR_VAL_LOSS}) | eval {r['eval_s']:.1f} s | {load_text()}", flush=True)


SETTINGS = {
    "nanogpt": Settings("nanoGPT config"),  # eager, fused AdamW where available, PyTorch's thread count
    # The fastest settings --sweep found on the book's 2-core machine that still reach 1.88 on the whole
    # split, at the shortest schedule (in steps of 250) that gets there: 2,000 iterations give about 1.90,
    # 2,250 about 1.87. torch.compile lost there (its compile time, twice: train and eval graphs, is not
    # repaid on a model whose step is mostly matrix products); run --sweep to see this machine's answer.
    "fast": Settings("fastest reaching 1.88", fused=False, threads=2, iters=2250),
}
SWEEP = [  # candidates for --sweep; the fastest (wall) that still reaches the target is reported
    Settings("eager+foreach", fused=False, threads=2),
    Settings("eager+fused", fused=True, threads=2),
    Settings("eager+fused, 1 thread", fused=True, threads=1),  # wins when the cores are busy elsewhere
    Settings("compile+fused", compile=True, fused=True, threads=2),
]


def nanogpt_extra_args(args: argparse.Namespace) -> tuple[str, ...]:
    """This run's configuration as nanoGPT ``--key=value`` overrides (the README's values by default)."""
    return (f"--batch_size={args.batch_size}", f"--block_size={args.block_size}", f"--n_layer={args.n_layer}",
            f"--n_head={args.n_head}", f"--n_embd={args.n_embd}", f"--eval_interval={args.eval_interval}",
            f"--eval_iters={args.eval_iters}")


def compare(settings: Settings, r: dict[str, float], nano) -> None:
    """One line: ours / nanoGPT for the training loop's wall time and for ms per iteration."""
    print(f"[{settings.name}] / nanoGPT: loop {r['wall_s']:.1f} s / {nano.loop_seconds:.1f} s = "
          f"{r['wall_s'] / nano.loop_seconds:.2f} | ms/iter {r['ms_per_iter']:.1f} / {nano.ms_per_iter:.1f} = "
          f"{r['ms_per_iter'] / nano.ms_per_iter:.2f} | iterations {r['iters']:.0f} / {nano.max_iters + 1}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SETTINGS), help="run one settings preset")
    parser.add_argument("--compile", action="store_true", help="custom run: torch.compile")
    parser.add_argument("--no-fused", action="store_true", help="custom run: the for-each AdamW")
    parser.add_argument("--threads", type=int, default=None, help="custom run (and nanoGPT): torch threads")
    parser.add_argument("--autocast", choices=["off", "bf16"], default="off", help="custom run: autocast")
    parser.add_argument("--custom", action="store_true", help="run only the settings given by the flags")
    parser.add_argument("--sweep", action="store_true", help="time every candidate setting, report the fastest")
    parser.add_argument("--nanogpt-dir", default=None,
                        help="a nanoGPT checkout: run it first with the same configuration and print the ratios")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before nanoGPT is killed")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=20, help="batches per evaluation (nanoGPT: 20)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--progress", action="store_true", help="show a tqdm bar")
    args = parser.parse_args(argv)

    if args.sweep:
        runs = SWEEP
    elif args.custom:
        runs = [Settings("custom", compile=args.compile, fused=False if args.no_fused else None,
                         threads=args.threads, autocast=args.autocast)]
    elif args.only:
        runs = [SETTINGS[args.only]]
    else:
        runs = list(SETTINGS.values())
    print(f"nanoGPT CPU config: {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, block "
          f"{args.block_size}, batch {args.batch_size}, {args.iters} iters | torch {torch.__version__} | "
          f"target: val <= {ANCHOR_VAL_LOSS} on the whole split", flush=True)
    nano = None
    if args.nanogpt_dir is not None:
        from ..data.registry import dataset_path
        from .nanogpt import run_nanogpt

        print(f"[nanoGPT itself] {args.nanogpt_dir}, README command with this configuration | {load_text()}",
              flush=True)
        nano = run_nanogpt(args.nanogpt_dir, max_iters=args.iters, device=args.device, threads=args.threads,
                           extra_args=nanogpt_extra_args(args), timeout=args.timeout,
                           input_text=dataset_path("tinyshakespeare", "input.txt"))
        print(f"[nanoGPT itself] {nano.summary()} | {load_text()}", flush=True)
    results = []
    for settings in runs:
        results.append((settings, run(settings, args)))
        report(*results[-1], args)
        if nano is not None:
            compare(*results[-1], nano)
    if args.sweep:
        good = [(s, r) for s, r in results if r["final_val"] <= ANCHOR_VAL_LOSS]
        if good:
            best = min(good, key=lambda sr: sr[1]["wall_s"])
            print("fastest reaching the target:", end=" ")
            report(*best, args)
        else:
            print(f"no setting reached val <= {ANCHOR_VAL_LOSS}")


if __name__ == "__main__":
    main()
