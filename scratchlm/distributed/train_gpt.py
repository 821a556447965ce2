"""Train Chapter 06's character GPT on Tiny Shakespeare: one process, DDP or FSDP2 — one script.

    python -m scratchlm.distributed.train_gpt --strategy single --steps 50
    torchrun --standalone --nproc_per_node 2 -m scratchlm.distributed.train_gpt --strategy ddp --steps 50
    torchrun --standalone --nproc_per_node 2 -m scratchlm.distributed.train_gpt --strategy fsdp \\
        --grad-accum 2 --checkpoint-dir ckpt --checkpoint-every 25
    torchrun --standalone --nproc_per_node 1 -m scratchlm.distributed.train_gpt --strategy single \\
        --checkpoint-dir ckpt --resume                      # continue the 2-process run with 1 process

gloo on CPUs, nccl on GPUs (chosen automatically; one GPU per process via LOCAL_RANK). Multi-node:
the same script under ``torchrun --nnodes K --nproc_per_node G --rdzv-backend c10d
--rdzv-endpoint HOST:PORT`` on every node (Chapter 14).

``--batch-size`` is the **global** number of rows per micro-batch: N ranks each take B/N of them
(:func:`~scratchlm.distributed.make_sharded_get_batch`), so every strategy and world size trains on
the same data and the same sequence of updates, up to float rounding. Figures printed at the end:
per rank (step time, tokens/s, bytes of parameters, gradients and optimizer state it holds) and
global (loss, tokens/s). ``--out`` writes everything as JSON (rank 0), ``--params-out`` the full
trained weights as safetensors (gathered from the shards), ``--bench-allreduce R`` times R gloo/nccl
all-reduces of the gradients' size.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..data.corpora import load_shakespeare
from ..data.lm import make_lm_get_batch
from ..models.gpt import GPT, GPTConfig
from ..tokenizers import CharTokenizer
from ..training import TrainConfig, build_optimizer, causal_lm_loss, unwrap_model
from ..training.preflight import fingerprint_differences, training_fingerprint
from .checkpoint import latest_checkpoint, load_sharded_checkpoint, save_sharded_checkpoint
from .data import make_sharded_get_batch
from .launch import STRATEGIES, DistEnv, cleanup_distributed, init_distributed, wrap_model
from .loop import StepRecord, evaluate_distributed, train_distributed
from .memory import MemoryBytes, measure_memory
from .scaling import bus_bandwidth

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scratchlm.distributed.train_gpt", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: cuda (nccl) when GPUs are present, else cpu (gloo)")
    p.add_argument("--strategy", choices=STRATEGIES, default="single", help="single process, DDP, or FSDP2 (ZeRO-3)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps in total")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--batch-size", type=int, default=12, help="GLOBAL rows per micro-batch (divisible by ranks)")
    p.add_argument("--block-size", type=int, default=64, help="characters per row")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0, help="> 0 breaks equality across world sizes (per-rank masks)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="parameter dtype; float64 makes float rounding too small to hide any difference between runs")
    p.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on CUDA only")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every this many steps (and at the end); 0: end only")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--checkpoint-dir", type=str, default=None, help="sharded (DCP) checkpoints go here")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save every this many steps (and at the end)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="continue from the latest checkpoint in --checkpoint-dir, or from PATH")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads per process")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--bench-allreduce", type=int, default=0, metavar="R", help="time R all-reduces of the gradients")
    p.add_argument("--out", type=str, default=None, help="write the results as JSON (rank 0)")
    p.add_argument("--params-out", type=str, default=None, help="write the trained weights (safetensors, rank 0)")
    p.add_argument("--quiet", action="store_true", help="print only the final tables")
    return p


@functools.lru_cache(maxsize=1)
def char_data() -> tuple[int, torch.Tensor, torch.Tensor]:
    """Chapter 06's data: (vocabulary size, train ids, val ids), nanoGPT's 90 / 10 split of Tiny Shakespeare."""
    text = load_shakespeare()
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)  # (N,)
    n_train = int(0.9 * len(ids))
    return tok.vocab_size, ids[:n_train], ids[n_train:]


def _check_args(args: argparse.Namespace, env: DistEnv) -> None:
    for name in ("steps", "grad_accum", "batch_size", "block_size", "n_layers", "n_heads", "d_model", "log_every",
                 "eval_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.batch_size % env.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is the global batch: it must be divisible by the "
                         f"{env.world_size} processes")
    if args.dtype == "float64" and args.autocast == "bf16":
        raise ValueError("--dtype float64 with --autocast bf16 computes in bf16 anyway; use --autocast off")
    if (args.checkpoint_every or args.resume == "latest") and not args.checkpoint_dir:
        raise ValueError("--checkpoint-every and --resume (without a path) need --checkpoint-dir")


def _gather(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _bench_allreduce(numel: int, dtype: torch.dtype, reps: int, env: DistEnv) -> dict[str, float]:
    """Median time of an all-reduce of ``numel`` elements of ``dtype`` over all ranks, and its bus bandwidth."""
    buf = torch.ones(numel, dtype=dtype, device=env.device)  # (Ψ,)
    nbytes = buf.nelement() * buf.element_size()
    times = []
    for _ in range(reps + 1):  # the first call sets up connections: not timed
        torch.distributed.barrier()
        t0 = time.perf_counter()
        torch.distributed.all_reduce(buf)
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    return {"bytes": nbytes, "seconds": seconds, "busbw_bytes_per_s": bus_bandwidth(nbytes, env.world_size, seconds)}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, train, print the tables (rank 0); return the results (on every rank)."""
    args = build_parser().parse_args(argv)
    env = init_distributed(None if args.device == "auto" else args.device)
    try:
        return _run(args, env)
    finally:
        cleanup_distributed(env)


def _run(args: argparse.Namespace, env: DistEnv) -> dict[str, Any]:
    _check_args(args, env)
    say = print if env.is_main else (lambda *a, **k: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    # ---- data: the same global batches in every run; this rank keeps its rows ---------------------------
    vocab_size, train_ids, val_ids = char_data()  # cached: a second run in the same process reuses it
    global_batch = make_lm_get_batch({"train": train_ids, "val": val_ids}, batch_size=args.batch_size,
                                     block_size=args.block_size, seed=args.seed)
    get_batch = make_sharded_get_batch(global_batch, env.rank, env.world_size, env.device)
    # ---- model: identical initialisation on every rank, then wrapped for the strategy --------------------
    torch.manual_seed(args.seed)
    gcfg = GPTConfig(vocab_size=vocab_size, block_size=args.block_size, n_layers=args.n_layers,
                     n_heads=args.n_heads, d_model=args.d_model, dropout=args.dropout, bias=False, activation="gelu")
    model = GPT(gcfg).to(env.device, DTYPES[args.dtype])
    num_params = model.num_params(non_embedding=False)
    cfg = TrainConfig(max_steps=args.steps, learning_rate=args.lr, min_lr=args.min_lr, warmup_steps=args.warmup,
                      weight_decay=args.weight_decay, grad_clip=args.grad_clip, grad_accum_steps=args.grad_accum,
                      autocast=args.autocast)
    fingerprint = training_fingerprint(cfg, global_batch("train", 0), model)  # global shapes: any world size
    fingerprint["dtype"] = args.dtype
    model = wrap_model(model, args.strategy, env)
    optimizer = build_optimizer(unwrap_model(model), cfg)  # after wrapping: FSDP2's params are shards
    say(f"[train_gpt] strategy={args.strategy} world_size={env.world_size} backend={env.backend} "
        f"device={env.device} params={num_params:,} global batch={args.batch_size}x{args.block_size}"
        f"x{args.grad_accum} micro-batches, {args.batch_size // env.world_size} rows per rank")
    # ---- resume ---------------------------------------------------------------------------------------
    history: dict[str, list] = {"steps": [], "loss": [], "lr": [], "grad_norm": [], "eval_steps": [], "val_loss": []}
    start, resumed = 0, None
    if args.resume:
        path = latest_checkpoint(args.checkpoint_dir) if args.resume == "latest" else Path(args.resume)
        if path is None:
            say(f"[train_gpt] no checkpoint in {args.checkpoint_dir}: starting from step 0")
        else:
            doc = load_sharded_checkpoint(path, model, optimizer)
            differences = fingerprint_differences(doc["metadata"]["fingerprint"], fingerprint)
            if differences:
                raise ValueError(f"refusing to resume from {path}: this run differs from the one that wrote it\n  "
                                 + "\n  ".join(differences))
            start, history = doc["step"], doc["metadata"]["history"]
            resumed = {"path": str(path), "step": start, "saved_world_size": doc["world_size"]}
            say(f"[train_gpt] resumed from {path} (step {start}, saved by {doc['world_size']} process(es))")
    if start > args.steps:
        raise ValueError(f"the checkpoint is at step {start}, past --steps {args.steps}")
    # ---- train, in segments between evaluations / checkpoints ------------------------------------------
    memory: list[MemoryBytes] = []

    def after_update(step: int) -> None:
        if not memory:
            memory.append(measure_memory(model, optimizer))

    records: list[StepRecord] = []
    checkpoints: list[str] = []
    step = start
    t_run = time.perf_counter()
    while step < args.steps:
        stops = [args.steps] + [(step // k + 1) * k for k in (args.eval_every, args.checkpoint_every) if k]
        stop = min(stops)
        new = train_distributed(model, optimizer, get_batch, causal_lm_loss, cfg, start_step=step, stop_step=stop,
                                after_update=after_update)
        records += new
        for r in new:
            history["steps"].append(r.step)
            history["loss"].append(r.loss)
            history["lr"].append(r.lr)
            history["grad_norm"].append(r.grad_norm)
            if not args.quiet and (r.step % args.log_every == 0 or r.step == args.steps):
                say(f"step {r.step:5d} | loss {r.loss:.4f} | lr {r.lr:.2e} | {1000 * r.time_s:7.1f} ms")
        step = stop
        if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
            val = evaluate_distributed(model, get_batch, causal_lm_loss, "val", range(args.eval_batches),
                                       autocast=args.autocast)
            history["eval_steps"].append(step)
            history["val_loss"].append(val)
            if not args.quiet:
                say(f"step {step:5d} | val loss {val:.4f}")
        if args.checkpoint_dir and ((args.checkpoint_every and step % args.checkpoint_every == 0)
                                    or step == args.steps):
            meta = {"history": history, "fingerprint": fingerprint, "strategy": args.strategy}
            path = save_sharded_checkpoint(args.checkpoint_dir, model, optimizer, step=step, metadata=meta)
            checkpoints.append(str(path))
    wall = time.perf_counter() - t_run
    # ---- figures per rank and global -------------------------------------------------------------------
    timed = [r.time_s for r in records[1:]] or [r.time_s for r in records]  # the first step warms up
    step_s = statistics.mean(timed) if timed else float("nan")
    tokens_rank = args.batch_size // env.world_size * args.block_size * args.grad_accum  # per step, this rank
    mine = {"rank": env.rank, "step_ms": 1000 * step_s, "tokens_per_s": tokens_rank / step_s,
            "memory": memory[0].to_dict() if memory else None}
    ranks = _gather(mine, env)
    slowest = max(r["step_ms"] for r in ranks) / 1000
    result: dict[str, Any] = {
        "strategy": args.strategy, "world_size": env.world_size, "backend": env.backend, "device": str(env.device),
        "threads": torch.get_num_threads(), "dtype": args.dtype, "args": vars(args), "model": asdict(gcfg), "num_params": num_params,
        "history": history, "resumed": resumed, "checkpoints": checkpoints, "ranks": ranks, "wall_s": wall,
        "global": {"step_ms": 1000 * slowest, "tokens_per_s": tokens_rank * env.world_size / slowest,
                   "final_loss": history["loss"][-1] if history["loss"] else None,
                   "final_val_loss": history["val_loss"][-1] if history["val_loss"] else None},
    }
    if args.bench_allreduce and env.distributed:
        result["allreduce"] = _bench_allreduce(num_params, DTYPES[args.dtype], args.bench_allreduce, env)
    _print_tables(result, say)
    if args.params_out:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if env.is_main:  # every rank took part in the gather above; rank 0 holds the full tensors
            from safetensors.torch import save_file

            save_file({k: v.detach().clone().contiguous() for k, v in full.items()}, args.params_out)
    if args.out and env.is_main:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:8.3f}"


def _print_tables(result: dict[str, Any], say) -> None:
    say(f"\nper rank ({result['strategy']}, {result['world_size']} process(es), {result['threads']} thread(s) each)")
    say(" rank | step ms | tokens/s | params MiB | grads MiB | optim MiB (m, v) | optim other B")
    for r in result["ranks"]:
        m = r["memory"] or {"parameters": 0, "gradients": 0, "optimizer": 0, "optimizer_other": 0}
        say(f" {r['rank']:4d} | {r['step_ms']:7.1f} | {r['tokens_per_s']:8.0f} | {_mib(m['parameters'])}   | "
            f"{_mib(m['gradients'])}  | {_mib(m['optimizer'])}         | {m['optimizer_other']:8d}")
    g = result["global"]
    say(f"global: loss {g['final_loss']:.4f} | val loss {g['final_val_loss']:.4f} | step {g['step_ms']:.1f} ms "
        f"(slowest rank) | {g['tokens_per_s']:.0f} tokens/s")
    if "allreduce" in result:
        a = result["allreduce"]
        say(f"all-reduce of {a['bytes'] / 2**20:.2f} MiB: {1000 * a['seconds']:.2f} ms, "
            f"bus bandwidth {a['busbw_bytes_per_s'] / 1e9:.3f} GB/s")


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
