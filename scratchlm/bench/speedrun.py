"""Speed run: character-level Tiny Shakespeare to val loss 1.88 on the whole validation split, fast.

    python -m scratchlm.bench.speedrun                               # the recipe; stops at 1.88
    python -m scratchlm.bench.speedrun --nanogpt-dir ~/src/nanoGPT   # nanoGPT's README CPU run first, then
                                                                     # the recipe, and the ratio of times
    python -m scratchlm.bench.speedrun --recipe nanogpt              # nanoGPT's configuration, same stopper

nanoGPT's CPU run (4 layers, 4 heads, 128 wide, block 64, batch 12, 2,000 iterations of AdamW at
1e-3, cosine) spends most of a step in matrix products, so kernels cannot halve its time; what can
is learning more per second. A :class:`Recipe` names everything that changed (model shape and
options, batch, optimizer, schedule, number of steps); Chapter 6½ measures each change alone.

The rules, the same for every recipe:

* data: nanoGPT's split (first 90 % of the characters train, last 10 % validation), its character
  vocabulary, random training windows from a seeded generator (:func:`make_lm_get_batch`);
* target: the mean next-character loss over the **whole** validation split in consecutive windows
  of 64 characters (nanoGPT's block size, whatever context the recipe trains with), exact
  (:func:`~scratchlm.bench.gpt_shakespeare.full_split_loss`), ≤ ``target`` (1.88);
* stopping: from ``check_from`` on, every ``check_every`` steps a cheap estimate (every
  ``estimate_stride``-th window of the split) decides whether to run the exact whole-split check;
  training stops at the first exact check that reaches the target (or at the recipe's last step,
  where the exact check always runs). Both kinds of check are counted in the time;
* time: the wall seconds of the whole :func:`scratchlm.training.train` call (set-up, steps, checks),
  compared with nanoGPT's training-loop seconds (steps + its own evaluations) measured in the same
  session by :func:`scratchlm.bench.nanogpt.run_nanogpt`. Process start-up and data loading are left
  out of both.

A benchmark, not a test: times depend on the machine and its load (printed with the results).
Introduced in Chapter 6½.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..data.lm import make_lm_get_batch
from ..data.registry import dataset_path
from ..models.base import token_cross_entropy
from ..models.gpt import GPT, GPTConfig
from ..runtime.profiles import capped, dry_run
from ..training import TrainConfig, TrainHistory, causal_lm_loss, train
from .gpt_shakespeare import full_split_loss, load_text, prepare_data

TARGET = 1.88  # val loss on the whole validation split (nanoGPT's README figure for its CPU run)
EVAL_BLOCK = 64  # windows of the evaluation: nanoGPT's block size, for every recipe


@dataclass(frozen=True)
class Recipe:
    """One way to train to the target: model, batch, optimizer, schedule, and when to check.

    ``model`` holds :class:`GPTConfig` fields (vocabulary and block size are filled in), ``train``
    :class:`TrainConfig` fields (``max_steps`` is the length of the schedule; evaluation, progress
    and checkpoints are set by the speed run).
    """

    name: str
    model: dict[str, Any]
    train: dict[str, Any]
    batch_size: int = 12
    block_size: int = 64
    check_from: int = 0  # first step at which the stopper looks (0: check_every)
    check_every: int = 50  # steps between checks
    estimate_stride: int = 8  # the estimate uses every n-th validation window
    estimate_margin: float = 0.02  # run the exact check once the estimate is <= target + margin
    eval_block: int = EVAL_BLOCK  # evaluation windows (64: nanoGPT's CPU block size, the same for every recipe)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size * self.train.get("grad_accum_steps", 1)

    def describe(self) -> str:
        m, t = self.model, self.train
        shape = f"{m['n_layers']} layers x {m['d_model']} wide, {m['n_heads']} heads"
        options = ", ".join(f"{k}={v}" for k, v in m.items() if k not in ("n_layers", "d_model", "n_heads"))
        opt = (f"Muon lr {t['muon_lr']:g} + AdamW lr {t['learning_rate']:g}" if t.get("optimizer") == "muon"
               else f"AdamW lr {t['learning_rate']:g}")
        sched = t.get("schedule", "cosine")
        if sched == "wsd":
            sched = f"wsd (cool-down {t.get('cooldown_fraction', 0.2):.0%})"
        return (f"{shape} ({options}); batch {self.batch_size} x {self.block_size}; {opt}, warm-up "
                f"{t.get('warmup_steps', 100)}, {sched} to {t.get('min_lr', 1e-4):g} over {t['max_steps']} steps, "
                f"weight decay {t.get('weight_decay', 0.1):g}")


NANOGPT_MODEL = dict(n_layers=4, n_heads=4, d_model=128, dropout=0.0, bias=False, activation="gelu")
NANOGPT_TRAIN = dict(max_steps=2000, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
                     beta1=0.9, beta2=0.99, grad_clip=1.0)

RECIPES: dict[str, Recipe] = {
    # nanoGPT's README CPU configuration (what bench.gpt_shakespeare runs), through the same stopper.
    "nanogpt": Recipe("nanogpt", NANOGPT_MODEL, NANOGPT_TRAIN, check_from=1500, check_every=250),
    # The fastest recipe found (Chapter 6½ measures each of its changes alone): nanoGPT's model and
    # batch; Muon (lr 0.02) for the hidden matrices + AdamW (lr 3e-3) for the rest; warm-up 50, then
    # warmup-stable-decay to 0 with a 30 % cool-down. With a 550-step schedule (seed 1337, one thread)
    # it reached 1.8738 on the whole split at step 540, a thin margin; 600 steps leave room for other
    # seeds and thread counts at ~10 % more time.
    "speedrun": Recipe("speedrun", NANOGPT_MODEL,
                       dict(NANOGPT_TRAIN, max_steps=600, learning_rate=3e-3, min_lr=0.0, warmup_steps=50,
                            optimizer="muon", muon_lr=0.02, schedule="wsd", cooldown_fraction=0.3),
                       check_from=480, check_every=20),
}


@dataclass
class Check:
    """One look of the stopper: at ``step``, ``seconds`` after training started."""

    step: int
    seconds: float
    kind: str  # "estimate" (every n-th window) or "exact" (the whole split)
    loss: float


@dataclass
class SpeedrunResult:
    """What a speed run measured."""

    recipe: Recipe
    target: float
    reached: bool  # the exact whole-split loss reached the target
    steps: int  # optimizer steps taken
    tokens: int  # training tokens seen
    wall_s: float  # the whole train() call: set-up, steps and checks
    train_s: float  # training steps only
    check_s: float  # the stopper's estimates and exact checks
    final_val: float  # exact whole-split loss where training stopped
    threads: int
    checks: list[Check] = field(default_factory=list)
    history: TrainHistory | None = None

    def summary(self) -> str:
        verdict = "reached" if self.reached else "did NOT reach"
        return (f"[{self.recipe.name}] {verdict} val <= {self.target} (whole split: {self.final_val:.4f}) after "
                f"{self.steps} iterations, {self.tokens:,} tokens, in {self.wall_s:.1f} s (training "
                f"{self.train_s:.1f} s, checks {self.check_s:.1f} s; {self.threads} threads)")


class TargetStopper:
    """``after_step`` for :func:`train`: stop once the whole-split validation loss is <= ``target``.

    Exact checks are expensive (the whole split is ~1,700 windows); an estimate over every
    ``stride``-th window costs 1/stride of that and decides when the exact check is worth running.
    The last step is always checked exactly. Under a step cap (``SCRATCHLM_MAX_STEPS``, a dry run)
    both checks use only the first ``cap`` windows: the run proves that the code works, not the loss.
    """

    def __init__(self, val_ids: torch.Tensor, target: float, *, max_steps: int, check_from: int, check_every: int,
                 stride: int, margin: float, block: int = EVAL_BLOCK) -> None:
        self.val_ids, self.target, self.max_steps, self.block = val_ids, target, max_steps, block
        self.check_from, self.check_every, self.margin = check_from, check_every, margin
        n_windows = (len(val_ids) - 1) // block
        if dry_run():  # a step cap: prove the code runs, on as many windows as steps (not the loss)
            n_windows = min(n_windows, capped(n_windows))
            val_ids = val_ids[: n_windows * block + 1]
            self.val_ids = val_ids
        starts = torch.arange(0, n_windows, stride, device=val_ids.device) * block  # (n / stride,)
        offsets = torch.arange(block + 1, device=val_ids.device)  # (block + 1,)
        self.sample = val_ids[starts[:, None] + offsets]  # (n / stride, block + 1): x and its shifted y
        self.checks: list[Check] = []
        self.check_s = 0.0
        self.final: float | None = None
        self.start = time.perf_counter()

    @torch.no_grad()
    def _estimate(self, model: torch.nn.Module) -> float:
        """Mean loss over the sampled windows (every stride-th), as full_split_loss computes it."""
        was_training = model.training
        model.eval()
        try:
            logits = model(self.sample[:, :-1]).logits  # (n, T, V)
            return token_cross_entropy(logits, self.sample[:, 1:]).item()  # targets (n, T)
        finally:
            model.train(was_training)

    def __call__(self, done: int, model: torch.nn.Module, history: TrainHistory) -> bool:
        last = done == self.max_steps
        if not last and (done < self.check_from or done % self.check_every):
            return False
        t0 = time.perf_counter()
        try:
            if not last:
                estimate = self._estimate(model)
                self.checks.append(Check(done, t0 - self.start, "estimate", estimate))
                if estimate > self.target + self.margin:
                    return False
            exact = full_split_loss(model, self.val_ids, self.block)
            self.checks.append(Check(done, time.perf_counter() - self.start, "exact", exact))
            self.final = exact
            return exact <= self.target
        finally:
            self.check_s += time.perf_counter() - t0


def build(recipe: Recipe, vocab_size: int, device: torch.device | str = "cpu") -> GPT:
    """The recipe's model (block size at least the evaluation's, so the evaluation windows fit)."""
    config = GPTConfig(vocab_size=vocab_size, block_size=max(recipe.block_size, recipe.eval_block), **recipe.model)
    return GPT(config).to(device)


def run_speedrun(recipe: Recipe, *, target: float = TARGET, seed: int = 1337, threads: int | None = None,
                 device: str = "cpu", progress: bool = False, max_steps: int | None = None,
                 data: dict[str, torch.Tensor] | None = None, vocab_size: int | None = None) -> SpeedrunResult:
    """Train ``recipe`` until the whole-split val loss is <= ``target`` (or its schedule ends); time it.

    ``max_steps`` shortens the run (and its schedule) for tests; ``data``/``vocab_size`` reuse
    already prepared splits. PyTorch's thread count is restored afterwards.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe; got {type(recipe).__name__}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None; got {threads!r}")
    if data is None:
        data, vocab_size = prepare_data(torch.device(device))
    elif vocab_size is None:
        raise ValueError("run_speedrun: pass vocab_size with data")
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = build(recipe, vocab_size, device)
        get_batch = make_lm_get_batch(data, batch_size=recipe.batch_size, block_size=recipe.block_size, seed=seed,
                                      device=device)
        overrides = {} if max_steps is None else {"max_steps": max_steps}
        cfg = TrainConfig(**{**recipe.train, **overrides, "eval_every": 0, "eval_at_start": False,
                             "progress": progress, "checkpoint_path": None})
        stopper = TargetStopper(data["val"], target, max_steps=capped(cfg.max_steps),  # a dry run's last step
                                check_from=recipe.check_from or recipe.check_every,
                                check_every=recipe.check_every, stride=recipe.estimate_stride,
                                margin=recipe.estimate_margin, block=recipe.eval_block)
        t0 = time.perf_counter()
        stopper.start = t0
        history = train(model, get_batch, causal_lm_loss, cfg, after_step=stopper)
        wall = time.perf_counter() - t0
        steps = history.steps[-1] if history.steps else 0
        final = stopper.final if stopper.final is not None else full_split_loss(model, data["val"], recipe.eval_block)
        return SpeedrunResult(recipe=recipe, target=target, reached=final <= target, steps=steps,
                              tokens=steps * recipe.tokens_per_step, wall_s=wall, train_s=history.train_time_s,
                              check_s=stopper.check_s, final_val=final, threads=torch.get_num_threads(),
                              checks=stopper.checks, history=history)
    finally:
        torch.set_num_threads(threads_before)


def step_costs(recipes: list[Recipe], *, data: dict[str, torch.Tensor], vocab_size: int, steps: int = 10,
               rounds: int = 3, seed: int = 1337, device: str = "cpu") -> dict[str, float]:
    """Seconds per optimizer step of each recipe, measured side by side in this process.

    Round-robin: every round trains each recipe's model for ``steps`` steps with
    :func:`scratchlm.training.train` (its ``train_time_s`` counts the steps only, not the set-up),
    after one warm-up round; the figure is the best round. Interleaving puts every recipe under the
    same machine load, so the ratios hold even on a busy machine where the absolute times do not. Under
    a step cap (a dry run, :func:`~scratchlm.runtime.profiles.dry_run`) one round without warm-up: the
    run proves that every recipe steps, not what a step costs.
    """
    if not recipes:
        raise ValueError("step_costs needs at least one recipe")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"step_costs: rounds must be an int >= 1; got {rounds!r}")
    warmup, total = (0, 1) if dry_run() else (1, rounds + 1)
    runs = []
    for recipe in recipes:
        torch.manual_seed(seed)
        model = build(recipe, vocab_size, device)
        get_batch = make_lm_get_batch(data, batch_size=recipe.batch_size, block_size=recipe.block_size, seed=seed,
                                      device=device)
        cfg = TrainConfig(**{**recipe.train, "max_steps": steps, "warmup_steps": 0, "lr_decay_steps": None,
                             "eval_every": 0, "progress": False, "checkpoint_path": None})
        runs.append((recipe.name, model, get_batch, cfg))
    best: dict[str, float] = {}
    for round_ in range(total):
        for name, model, get_batch, cfg in runs:
            history = train(model, get_batch, causal_lm_loss, cfg)
            if round_ >= warmup and history.steps:  # round 0 warms up (allocations, first-call overheads)
                per_step = history.train_time_s / len(history.steps)
                best[name] = min(best.get(name, per_step), per_step)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="speedrun")
    parser.add_argument("--target", type=float, default=TARGET, help="whole-split val loss to reach")
    parser.add_argument("--nanogpt-dir", default=None, help="a nanoGPT checkout: run its README CPU command first")
    parser.add_argument("--nanogpt-iters", type=int, default=2000, help="nanoGPT's max_iters (README: 2000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both runs (default: PyTorch's)")
    parser.add_argument("--max-steps", type=int, default=None, help="shorten the recipe's schedule (for tests)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--timeout", type=float, default=None, help="seconds before nanoGPT is killed")
    parser.add_argument("--progress", action="store_true", help="show a tqdm bar")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    print(f"speed run to val <= {args.target} over the whole validation split (windows of {EVAL_BLOCK}) | "
          f"torch {torch.__version__}", flush=True)
    print(f"recipe {recipe.name}: {recipe.describe()}", flush=True)

    nano = None
    if args.nanogpt_dir is not None:
        from .nanogpt import run_nanogpt

        print(f"nanoGPT ({args.nanogpt_dir}), README CPU command, {args.nanogpt_iters} iterations | {load_text()}",
              flush=True)
        nano = run_nanogpt(args.nanogpt_dir, max_iters=args.nanogpt_iters, threads=args.threads,
                           input_text=dataset_path("tinyshakespeare", "input.txt"), timeout=args.timeout)
        print(nano.summary(), flush=True)

    print(f"scratchlm speed run | {load_text()}", flush=True)
    result = run_speedrun(recipe, target=args.target, seed=args.seed, threads=args.threads,
                          progress=args.progress, max_steps=args.max_steps)
    for check in result.checks:
        print(f"  step {check.step:5d} at {check.seconds:6.1f} s: {check.kind:8s} val {check.loss:.4f}")
    print(result.summary(), flush=True)
    print(f"after the runs | {load_text()}", flush=True)
    if nano is not None:
        ratio = result.wall_s / nano.loop_seconds
        print(f"ratio: scratchlm {result.wall_s:.1f} s / nanoGPT {nano.loop_seconds:.1f} s (its {args.nanogpt_iters}-"
              f"iteration training loop, evaluations included) = {ratio:.2f} (goal <= 0.5; nanoGPT's last val "
              f"estimate {nano.final_val_loss:.4f} on 20 batches)", flush=True)


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a plain dict (for printing or JSON)."""
    return asdict(recipe)


def with_changes(recipe: Recipe, name: str, *, model: dict[str, Any] | None = None,
                 train: dict[str, Any] | None = None, **fields: Any) -> Recipe:
    """A copy of ``recipe`` with some model / train fields (merged) and recipe fields replaced."""
    return replace(recipe, name=name, model={**recipe.model, **(model or {})},
                   train={**recipe.train, **(train or {})}, **fields)


if __name__ == "__main__":
    main()
