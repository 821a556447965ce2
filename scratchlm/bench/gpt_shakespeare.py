"""Benchmark: nanoGPT's character-level Tiny Shakespeare CPU run with scratchlm's GPT and train loop.

    python -m scratchlm.bench.gpt_shakespeare            # nanoGPT's config, then the fastest settings
    python -m scratchlm.bench.gpt_shakespeare --sweep    # time every candidate setting
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

Why the whole split: nanoGPT's "1.88" is its 20-batch estimate. Its own 2,000-iteration run scores
1.8857 that way but 1.8976 on the whole split, so at 2,000 iterations *neither* implementation is
at 1.88; both need ~2,250 iterations (see ``NANOGPT_MEASURED``). A benchmark, not a test: the
timings depend on the machine and its load (on the book's 2-core VM the same run varies by ±8 %).
"""

from __future__ import annotations

import argparse
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
# nanoGPT itself on the book's 2-core AMD EPYC (AVX2) with torch 2.13 CPU, 2 threads, 2026-11-23: its
# model.py and train.py CPU path with the README's command (seed 1337); wall time of its training loop
# (steps + evaluations, after start-up). The 20-batch figure at 2,000 iterations reproduces the 1.8857
# nanoGPT reports. {iterations: (loop seconds, val loss on 20 batches, val loss on the whole split)}
NANOGPT_MEASURED = {2000: (175.2, 1.8857, 1.8976), 2250: (178.2, 1.8904, 1.8687),
                    2500: (227.8, 1.8502, 1.8380)}


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


def report(settings: Settings, r: dict[str, float], args: argparse.Namespace) -> None:
    ok = "reaches" if r["final_val"] <= ANCHOR_VAL_LOSS else "MISSES"
    print(f"[{settings.name}] {r['iters']:.0f} iters, compile={settings.compile} fused={settings.fused} "
          f"threads={r['threads']:.0f} autocast={settings.autocast} | wall {r['wall_s']:.1f} s | "
          f"{r['ms_per_iter']:.1f} ms/iter | {r['tokens_per_s']:,.0f} tokens/s | train {r['train_loss']:.4f} "
          f"val {r['val_loss']:.4f} ({args.eval_iters} batches) | val {r['final_val']:.4f} (whole split; "
          f"{ok} <= {ANCHOR_VAL_LOSS}) | eval {r['eval_s']:.1f} s", flush=True)


SETTINGS = {
    "nanogpt": Settings("nanoGPT config"),  # eager, fused AdamW where available, PyTorch's thread count
    # The second line: the fastest settings found by --sweep that reach 1.88 on the whole split, at the
    # shortest schedule (in steps of 250) that gets there: 2,250 iterations (2,000 give 1.902).
    # Ours vs nanoGPT on the book's machine (wall of the training loop; ours in several runs):
    # 2,000 iters 142.9 / 145.5 s vs 175.2 s; 2,250 iters 166.4 / 186.0 s vs 178.2 s (whole-split val
    # 1.8681 vs 1.8687); 2,500 iters 177.6-189.6 s vs 227.8 s. About 15 % faster on average, within
    # the machine's noise for a single pair of runs.
    # Sweep on the book's machine, 2,500 iterations: eager + for-each AdamW 66.9 ms/iter, eager + fused
    # 71.9 (the two swap places between runs: the noise), 1 thread 84.9, torch.compile 81.8 (its
    # ~40 s of compiling, twice: train and eval graphs, is not repaid by fusing GELU and LayerNorm on a
    # model whose time is 58 % matmul). bf16 autocast is left out: this CPU has no bf16 instructions.
    "fast": Settings("fastest reaching 1.88", fused=False, threads=2, iters=2250),
}
SWEEP = [  # candidates for --sweep; the fastest (wall) that still reaches the target is reported
    Settings("eager+foreach", fused=False, threads=2),
    Settings("eager+fused", fused=True, threads=2),
    Settings("eager+fused, 1 thread", fused=True, threads=1),  # wins when the cores are busy elsewhere
    Settings("compile+fused", compile=True, fused=True, threads=2),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SETTINGS), help="run one settings preset")
    parser.add_argument("--compile", action="store_true", help="custom run: torch.compile")
    parser.add_argument("--no-fused", action="store_true", help="custom run: the for-each AdamW")
    parser.add_argument("--threads", type=int, default=None, help="custom run: torch threads")
    parser.add_argument("--autocast", choices=["off", "bf16"], default="off", help="custom run: autocast")
    parser.add_argument("--custom", action="store_true", help="run only the settings given by the flags")
    parser.add_argument("--sweep", action="store_true", help="time every candidate setting, report the fastest")
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
    for iters, (wall, val20, val_all) in NANOGPT_MEASURED.items():
        print(f"[nanoGPT itself, measured on the book's 2-core machine] {iters} iters | loop {wall:.1f} s | "
              f"val {val20:.4f} (20 batches) | val {val_all:.4f} (whole split)")
    results = []
    for settings in runs:
        results.append((settings, run(settings, args)))
        report(*results[-1], args)
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
