"""Run a user's nanoGPT checkout on Tiny Shakespeare (CPU recipe) to compare on the same machine.

    python -m scratchlm.bench.nanogpt ~/src/nanoGPT --iters 2000 --threads 2 --input input.txt

Machines differ by 2× and more on the same run, so the book compares its GPT with nanoGPT only when
both ran on one machine in one session. :func:`run_nanogpt` runs nanoGPT's README command for the
character-level Shakespeare model on a CPU,

    python data/shakespeare_char/prepare.py          (only when the prepared data are missing)
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

with ``max_iters`` (and ``lr_decay_iters``, so the schedule still decays over the whole run)
substituted, and reads what it prints: ``iter N: loss X, time Y ms, mfu Z%`` after every optimizer
step and ``step N: train loss X, val loss Y`` at every evaluation (20 random batches per split).
Nothing of nanoGPT is imported or copied; it runs as a separate process in its own directory.
Introduced in Chapter 06.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

README_ARGS = ("config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
               "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0")
REQUIRED_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                  "data/shakespeare_char/prepare.py")
DATA_DIR = Path("data/shakespeare_char")
PREPARED_FILES = ("train.bin", "val.bin", "meta.pkl")  # without meta.pkl train.py uses GPT-2's vocab

_NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"
ITER_LINE = re.compile(rf"^iter (\d+): loss {_NUM}, time {_NUM}ms")
EVAL_LINE = re.compile(rf"^step (\d+): train loss {_NUM}, val loss {_NUM}")
TOKENS_LINE = re.compile(r"^tokens per iteration will be: ([\d,]+)")


class NanoGPTError(RuntimeError):
    """nanoGPT's prepare.py or train.py failed; the message ends with the tail of what it printed."""


class NanoGPTTimeoutError(NanoGPTError, TimeoutError):
    """nanoGPT ran longer than the timeout and was killed."""


@dataclass
class NanoGPTLog:
    """What nanoGPT's train.py printed, parsed. One ``iter`` line per optimizer step, 0..max_iters."""

    iters: list[int] = field(default_factory=list)  # iteration numbers
    losses: list[float] = field(default_factory=list)  # training loss of that step's batch
    iter_ms: list[float] = field(default_factory=list)  # nanoGPT's time for that iteration (ms)
    eval_steps: list[int] = field(default_factory=list)  # iterations at which it evaluated
    eval_train_loss: list[float] = field(default_factory=list)  # mean over eval_iters random batches
    eval_val_loss: list[float] = field(default_factory=list)
    tokens_per_iter: int | None = None  # batch_size × block_size × gradient accumulation


def parse_log(stdout: str) -> NanoGPTLog:
    """Parse nanoGPT's ``iter``, ``step`` and ``tokens per iteration`` lines; other lines are ignored."""
    log = NanoGPTLog()
    for line in stdout.splitlines():
        line = line.strip()
        if m := ITER_LINE.match(line):
            log.iters.append(int(m[1]))
            log.losses.append(float(m[2]))
            log.iter_ms.append(float(m[3]))
        elif m := EVAL_LINE.match(line):
            log.eval_steps.append(int(m[1]))
            log.eval_train_loss.append(float(m[2]))
            log.eval_val_loss.append(float(m[3]))
        elif m := TOKENS_LINE.match(line):
            log.tokens_per_iter = int(m[1].replace(",", ""))
    return log


@dataclass
class NanoGPTResult:
    """One nanoGPT run: the parsed log and the times measured around it.

    Times: ``wall_seconds`` is train.py's whole process (interpreter start, imports, data, model,
    training loop, exit) on this process's clock. ``loop_seconds`` is the sum of nanoGPT's own
    per-iteration times: its clock starts just before the loop and each ``time`` covers everything
    since the previous step ended (the evaluation and checkpoint at eval steps too), so with
    ``--log_interval=1`` the sum is the loop's wall time (steps + evaluations). ``loop_seconds_observed``
    checks it from outside: the time between the arrival of the last line printed before the loop and
    of the last ``iter`` line (stdout unbuffered).
    """

    command: list[str]
    nanogpt_dir: Path
    max_iters: int
    threads: int | None
    device: str
    log: NanoGPTLog
    wall_seconds: float
    loop_seconds: float
    loop_seconds_observed: float | None
    prepare_seconds: float | None  # prepare.py's run time when it had to run, else None
    stdout: str
    stderr: str

    @property
    def final_train_loss(self) -> float | None:
        return self.log.eval_train_loss[-1] if self.log.eval_train_loss else None

    @property
    def final_val_loss(self) -> float | None:
        """nanoGPT's last val-loss estimate (20 random batches), as its README quotes it."""
        return self.log.eval_val_loss[-1] if self.log.eval_val_loss else None

    @property
    def ms_per_iter(self) -> float:
        """Mean ms of the training iterations that did not also evaluate (their time includes it)."""
        evals = set(self.log.eval_steps)
        times = [ms for it, ms in zip(self.log.iters, self.log.iter_ms, strict=True) if it not in evals]
        times = times or self.log.iter_ms
        return sum(times) / len(times)

    @property
    def tokens_per_second(self) -> float | None:
        if self.log.tokens_per_iter is None:
            return None
        return self.log.tokens_per_iter / (self.ms_per_iter / 1000)

    def summary(self) -> str:
        val = f"{self.final_val_loss:.4f}" if self.final_val_loss is not None else "n/a"
        tps = f"{self.tokens_per_second:,.0f}" if self.tokens_per_second is not None else "n/a"
        observed = f"{self.loop_seconds_observed:.1f}" if self.loop_seconds_observed is not None else "n/a"
        return (f"nanoGPT {self.max_iters} iters on {self.device}, threads={self.threads or 'default'}: "
                f"process {self.wall_seconds:.1f} s, loop {self.loop_seconds:.1f} s (observed {observed} s), "
                f"{self.ms_per_iter:.2f} ms/iter, {tps} tokens/s, last val loss {val} "
                f"(step {self.log.eval_steps[-1] if self.log.eval_steps else 'n/a'})")


def check_nanogpt_dir(nanogpt_dir: str | os.PathLike) -> Path:
    """The checkout's path, after checking it has nanoGPT's files (else a ValueError naming the missing)."""
    root = Path(nanogpt_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a directory; expected a nanoGPT checkout")
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise ValueError(f"{str(root)!r} is not a nanoGPT checkout: missing {', '.join(missing)}")
    return root.resolve()


def nanogpt_command(max_iters: int, *, device: str = "cpu", extra_args: Sequence[str] = (),
                    python: str | os.PathLike = sys.executable) -> list[str]:
    """README's train.py command with max_iters, lr_decay_iters and device substituted, then extra_args."""
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(f"max_iters must be an int >= 0; got {max_iters!r}")
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a non-empty string like 'cpu'; got {device!r}")
    if isinstance(extra_args, str):
        raise TypeError("extra_args must be a sequence of '--key=value' strings, not one string")
    for arg in extra_args:
        if not isinstance(arg, str) or not re.fullmatch(r"--\w+=\S*", arg):
            raise ValueError(f"extra_args entries must look like '--key=value' (nanoGPT's configurator); got {arg!r}")
    substitute = {"--max_iters": str(max_iters), "--lr_decay_iters": str(max_iters), "--device": device}
    args = [f"{arg.split('=')[0]}={substitute[arg.split('=')[0]]}" if arg.split("=")[0] in substitute else arg
            for arg in README_ARGS]
    return [str(python), "-u", "train.py", *args, *extra_args]  # -u: lines arrive when printed


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def prepare_shakespeare_char(root: Path, input_text: str | os.PathLike | None, python: str | os.PathLike,
                 timeout: float | None) -> float | None:
    """Run prepare.py if train.bin/val.bin/meta.pkl are missing; returns its seconds (None: not needed).

    prepare.py downloads Tiny Shakespeare only when ``data/shakespeare_char/input.txt`` does not
    exist (``os.path.exists``), so ``input_text`` is copied there first. An existing, different
    input.txt is never overwritten (the prepared ids would no longer match the text): a ValueError.
    """
    data = root / DATA_DIR
    target = data / "input.txt"
    if input_text is not None:
        source = Path(input_text).expanduser()
        if not source.is_file():
            raise ValueError(f"input_text {str(source)!r} is not a file; expected Tiny Shakespeare's input.txt")
        if target.exists() and not filecmp.cmp(source, target, shallow=False):
            raise ValueError(f"{str(target)!r} exists and differs from {str(source)!r}; remove it and "
                             f"{', '.join(PREPARED_FILES)} to prepare from the new text")
    if all((data / name).is_file() for name in PREPARED_FILES):
        return None
    if input_text is not None and not target.exists():
        shutil.copyfile(input_text, target)
    command = [str(python), str(DATA_DIR / "prepare.py")]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise NanoGPTTimeoutError(f"nanoGPT's prepare.py ran longer than {timeout} s") from err
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        hint = "" if target.exists() else " (it downloads input.txt; pass input_text= to use a local copy)"
        raise NanoGPTError(f"nanoGPT's prepare.py failed with exit code {done.returncode}{hint}; "
                           f"stderr ends:\n{_tail(done.stderr)}")
    return seconds


def run_nanogpt(
    nanogpt_dir: str | os.PathLike,
    *,
    max_iters: int,
    threads: int | None = None,
    device: str = "cpu",
    extra_args: Sequence[str] = (),
    timeout: float | None = None,
    input_text: str | os.PathLike | None = None,
    python: str | os.PathLike = sys.executable,
) -> NanoGPTResult:
    """Run nanoGPT's CPU Shakespeare recipe in ``nanogpt_dir`` and return the parsed, timed result.

    nanoGPT trains for max_iters + 1 optimizer steps (iterations 0..max_iters) and evaluates at every
    multiple of eval_interval (250) including 0 and, when divisible, max_iters. ``threads`` sets
    OMP_NUM_THREADS / MKL_NUM_THREADS for the process (PyTorch's thread count; None: its default).
    ``extra_args`` (``--key=value``) come last, so they override the recipe. ``timeout`` (seconds)
    applies to prepare.py and to train.py each. ``python`` is the interpreter (it needs torch and
    numpy, and prepare.py imports requests even when it does not download).

    Not done: the whole-validation-split loss of nanoGPT's trained model (the book's exact figure).
    It would need nanoGPT's ``ckpt.pt``, a pickle, and the book never unpickles files; compare its
    20-batch estimate instead, or the times. train.py writes that checkpoint into the checkout's
    ``out-shakespeare-char`` unless ``extra_args`` sets ``--out_dir``.
    """
    root = check_nanogpt_dir(nanogpt_dir)
    command = nanogpt_command(max_iters, device=device, extra_args=extra_args, python=python)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None; got {threads!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds or None; got {timeout!r}")
    prepare_seconds = prepare_shakespeare_char(root, input_text, python, timeout)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    lines: list[tuple[float, str]] = []  # (arrival time, line)
    err_chunks: list[str] = []
    start = time.perf_counter()
    killed = threading.Event()
    with subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, bufsize=1) as proc:  # the with block closes the pipes

        def kill() -> None:
            killed.set()
            proc.kill()

        err_reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        err_reader.start()
        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            for line in proc.stdout:
                lines.append((time.perf_counter(), line.rstrip("\n")))
            returncode = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err_reader.join()
    wall = time.perf_counter() - start
    stdout, stderr = "\n".join(text for _, text in lines), "".join(err_chunks)
    if killed.is_set():
        raise NanoGPTTimeoutError(f"nanoGPT's train.py ran longer than {timeout} s and was killed; "
                                  f"stdout ends:\n{_tail(stdout, 5)}")
    if returncode != 0:
        raise NanoGPTError(f"nanoGPT's train.py failed with exit code {returncode}; command: "
                           f"{' '.join(command)}\nstderr ends:\n{_tail(stderr)}")
    log = parse_log(stdout)
    if not log.iters:
        raise NanoGPTError(f"train.py printed no 'iter N: loss X, time Y ms' lines (log_interval set?); "
                           f"stdout ends:\n{_tail(stdout, 10)}")
    return NanoGPTResult(command=command, nanogpt_dir=root, max_iters=max_iters, threads=threads, device=device,
                         log=log, wall_seconds=wall, loop_seconds=sum(log.iter_ms) / 1000,
                         loop_seconds_observed=_observed_loop_seconds(lines), prepare_seconds=prepare_seconds,
                         stdout=stdout, stderr=stderr)


def _observed_loop_seconds(lines: list[tuple[float, str]]) -> float | None:
    """Arrival of the last iter line minus arrival of the last line before the first step/iter line."""
    in_loop = [i for i, (_, text) in enumerate(lines) if ITER_LINE.match(text) or EVAL_LINE.match(text)]
    if not in_loop or in_loop[0] == 0:
        return None
    last_iter = max(i for i, (_, text) in enumerate(lines) if ITER_LINE.match(text))
    return lines[last_iter][0] - lines[in_loop[0] - 1][0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nanogpt_dir", help="path of a nanoGPT checkout")
    parser.add_argument("--iters", type=int, default=2000, help="max_iters (and lr_decay_iters)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for nanoGPT")
    parser.add_argument("--input", default=None, help="local Tiny Shakespeare input.txt (no download)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before nanoGPT is killed")
    args = parser.parse_args(argv)
    result = run_nanogpt(args.nanogpt_dir, max_iters=args.iters, threads=args.threads, input_text=args.input,
                         timeout=args.timeout)
    for step, train, val in zip(result.log.eval_steps, result.log.eval_train_loss, result.log.eval_val_loss,
                                strict=True):
        print(f"step {step:5d}: train loss {train:.4f}, val loss {val:.4f}")
    print(result.summary())


if __name__ == "__main__":
    main()
