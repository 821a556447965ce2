"""Execute chapters under a profile for several seeds and thread counts; print every asserted metric
with its margin, the run times, and (for the gpu dry run) the parameter counts and a GPU-time estimate.

    python -m book.check_profiles --profile cpu --seeds 1337 1 2 --threads 1 2 --chapters 01 04
    python -m book.check_profiles --profile smoke cpu --chapters 01 02       # run times (make times)
    python -m book.check_profiles --profile gpu --max-steps 2 --chapters 01   # gpu dry run on a CPU

Each run executes one notebook with nbclient in a fresh kernel whose environment carries
SCRATCHLM_PROFILE, SCRATCHLM_SEED, SCRATCHLM_THREADS (and SCRATCHLM_MAX_STEPS for a dry run); the chapter
reads them in ``scratchlm.setup_chapter``. What the chapter asserted comes back through the glue names
of ``scratchlm.check_metric`` (``check_<name>_value`` / ``_threshold`` / ``_op`` / ``_skipped``) and
``scratchlm.report_training`` (``train_<name>_params`` / ``_tokens``), read from the executed
notebook's outputs. Runs are sequential (never two at once: timings on a shared machine are noisy
enough; runs with an explicit thread count set OMP_WAIT_POLICY=PASSIVE, which changes no number but
stops idle OpenMP threads from spinning on a shared machine). Exit status 1 if a run failed or a check
did not hold.

Why in ``book/`` and not in ``scratchlm.bench``: it runs the book's notebooks, which a pip-installed
``scratchlm`` does not contain; the package's benchmarks measure the package.

The GPU-time estimate is the training compute 6·N·D (N trained parameters, D training tokens of the
uncapped profile; Kaplan et al., 2020) divided by an *assumed* sustained throughput,
``--gpu-tflops`` (default 100 TFLOP/s, about a third of an A100's 312 TFLOP/s dense bf16 peak per
NVIDIA's datasheet; large models sustain 40-50 % of peak, e.g. PaLM's 46 %, Chowdhery et al., 2022).
Small models reach far less, so read the estimate as a lower bound: nanoGPT's 10.7 M-parameter
Shakespeare model (82 M tokens, 5.3e15 FLOPs, 53 s at 100 TFLOP/s) takes about 3 minutes on one A100.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
GLUE_MIME = "application/papermill.record/text/plain"
CHECK_PREFIX, TRAIN_PREFIX = "check_", "train_"
CHECK_FIELDS = ("value", "threshold", "op", "skipped")
TRAIN_FIELDS = ("params", "tokens")
DEFAULT_GPU_TFLOPS = 100.0
OVERRIDES = ("SCRATCHLM_SEED", "SCRATCHLM_THREADS", "SCRATCHLM_MAX_STEPS")


# ----------------------------------------------------------------------------- reading glue


def parse_glued(text: str) -> object:
    """The Python value of a glued ``text/plain`` repr (floats incl. nan/inf, ints, strings, bools)."""
    text = text.strip()
    if text in ("nan", "inf", "-inf"):
        return float(text)
    if text.startswith("np.") and text.endswith(")") and "(" in text:  # np.float64(0.5): NumPy 2's repr
        text = text[text.index("(") + 1: -1]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def glued_values(nb: dict) -> dict[str, object]:
    """Every value glued with myst-nb in an executed notebook, by name (later glues win)."""
    found: dict[str, object] = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            data = out.get("data", {})
            if name is None:
                continue
            text = data.get(GLUE_MIME, data.get("text/plain"))
            if text is not None:
                found[name] = parse_glued("".join(text) if isinstance(text, list) else text)
    return found


def _grouped(glued: dict[str, object], prefix: str, fields: tuple[str, ...]) -> dict[str, dict[str, object]]:
    groups: dict[str, dict[str, object]] = {}
    for key, value in glued.items():
        if not key.startswith(prefix):
            continue
        for f in fields:
            if key.endswith("_" + f):
                groups.setdefault(key[len(prefix): -len(f) - 1], {})[f] = value
                break
    return groups


@dataclass
class Check:
    metric: str
    value: float
    op: str
    threshold: float
    skipped: bool = False

    @property
    def margin(self) -> float:
        return self.threshold - self.value if self.op.startswith("<") else self.value - self.threshold

    @property
    def rel_margin(self) -> float:
        return self.margin / abs(self.threshold) if self.threshold else math.inf * (1 if self.margin >= 0 else -1)

    @property
    def passed(self) -> bool:
        ops = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}
        return ops[self.op](float(self.value), float(self.threshold))


def checks_of(glued: dict[str, object]) -> list[Check]:
    """The ``check_<name>_*`` groups of a notebook's glue, as :class:`Check` rows (incomplete ones dropped)."""
    rows = []
    for metric, parts in _grouped(glued, CHECK_PREFIX, CHECK_FIELDS).items():
        if {"value", "threshold", "op"} <= parts.keys():
            rows.append(Check(metric, float(parts["value"]), str(parts["op"]), float(parts["threshold"]),
                              bool(parts.get("skipped", False))))
    return rows


def trainings_of(glued: dict[str, object]) -> dict[str, tuple[int, int]]:
    """``train_<name>_params`` / ``_tokens`` pairs: name -> (N, D)."""
    return {name: (int(p["params"]), int(p["tokens"]))
            for name, p in _grouped(glued, TRAIN_PREFIX, TRAIN_FIELDS).items() if {"params", "tokens"} <= p.keys()}


# ----------------------------------------------------------------------------- running


@dataclass
class Run:
    chapter: str
    profile: str
    seed: int | None
    threads: int | None
    ok: bool = False
    error: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    checks: list[Check] = field(default_factory=list)
    trainings: dict[str, tuple[int, int]] = field(default_factory=dict)


def find_chapters(wanted: list[str]) -> list[Path]:
    """Notebooks for chapter numbers ("1", "01"), names, or "all"."""
    notebooks = sorted(CHAPTERS.glob("[0-9][0-9]*_*.ipynb"))  # 06b: an interlude after 06
    if not wanted or wanted == ["all"]:
        return notebooks
    chosen = []
    for w in wanted:
        key = w.zfill(2) if w.isdigit() else w
        match = [p for p in notebooks if p.name.split("_", 1)[0] == key or p.stem == key or p.name == key]
        if not match:
            raise SystemExit(f"no chapter {w!r} in {CHAPTERS} (have {', '.join(p.stem for p in notebooks)})")
        chosen += [p for p in match if p not in chosen]
    return chosen


def run_env(profile: str, seed: int | None, threads: int | None, max_steps: int | None) -> dict[str, str]:
    """The variables a run sets (the rest of the environment is inherited)."""
    env = {"SCRATCHLM_PROFILE": profile}
    if seed is not None:
        env["SCRATCHLM_SEED"] = str(seed)
    if threads is not None:
        env["SCRATCHLM_THREADS"] = str(threads)
        env["OMP_NUM_THREADS"] = str(threads)
        # Waiting OpenMP threads sleep instead of spinning: the numbers are the same (same thread count,
        # same work split), but on a shared machine a spinning 2-thread run can be 10x slower.
        env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    if max_steps is not None:
        env["SCRATCHLM_MAX_STEPS"] = str(max_steps)
    return env


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(path: Path, env: dict[str, str], timeout: int, keep: Path | None = None) -> tuple[dict, str]:
    """Execute a notebook in a fresh kernel with ``env`` added; return (notebook, error or "")."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    defaults = {"SCRATCHLM_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    saved = dict(os.environ)
    for name in OVERRIDES:  # a run sets exactly what it asks for, whatever the caller's shell holds
        os.environ.pop(name, None)
    os.environ.update({k: v for k, v in defaults.items() if k not in os.environ} | env)
    # this checkout's scratchlm, whatever else is on the path
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in saved.get("PYTHONPATH", "").split(os.pathsep) if p])
    error = ""
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    except CellExecutionError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        error = lines[-1][:200] if lines else type(exc).__name__
    except Exception as exc:  # a kernel that died, a timeout
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        tag = "_".join(f"{k.split('_')[-1].lower()}{v}" for k, v in sorted(env.items()) if k != "OMP_NUM_THREADS")
        nbformat.write(nb, keep / f"{path.stem}__{tag}.ipynb")
    return nb, error


def run_one(path: Path, profile: str, seed: int | None, threads: int | None, max_steps: int | None,
            timeout: int, keep: Path | None) -> Run:
    run = Run(path.name.split("_", 1)[0], profile, seed, threads)
    run.load_before = os.getloadavg()[0]
    cpu0, t0 = _children_cpu_s(), time.perf_counter()
    nb, run.error = execute(path, run_env(profile, seed, threads, max_steps), timeout, keep)
    run.wall_s, run.cpu_s = time.perf_counter() - t0, _children_cpu_s() - cpu0
    run.load_after = os.getloadavg()[0]
    run.ok = not run.error
    glued = glued_values(nb)
    run.checks, run.trainings = checks_of(glued), trainings_of(glued)
    return run


# ----------------------------------------------------------------------------- reporting


def fmt_time(seconds: float) -> str:
    """Run times as the book quotes them: "41 s" below 90 s, else "3.2 min"."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _opt(x: int | None) -> str:
    return "-" if x is None else str(x)


def check_rows(runs: list[Run], thin: float) -> list[list[object]]:
    rows = []
    for r in runs:
        for c in sorted(r.checks, key=lambda c: c.metric):
            verdict = "skip" if c.skipped else ("PASS" if c.passed else "FAIL")
            if verdict == "PASS" and c.rel_margin < thin:
                verdict = "THIN"
            rows.append([r.chapter, r.profile, _opt(r.seed), _opt(r.threads), c.metric, f"{c.value:.4g}", c.op,
                         f"{c.threshold:.4g}", f"{c.margin:+.4g}", f"{100 * c.rel_margin:+.1f}%", verdict])
    return rows


def summary_rows(runs: list[Run], thin: float) -> list[list[object]]:
    """Per chapter, profile and metric: the worst margin over seeds and thread counts."""
    worst: dict[tuple[str, str, str], list[Check]] = {}
    for r in runs:
        for c in r.checks:
            if not c.skipped:
                worst.setdefault((r.chapter, r.profile, c.metric), []).append(c)
    rows = []
    for (chapter, profile, metric), cs in sorted(worst.items()):
        w = min(cs, key=lambda c: c.rel_margin)
        values = [c.value for c in cs]
        verdict = "PASS" if all(c.passed for c in cs) else "FAIL"
        if verdict == "PASS" and w.rel_margin < thin:
            verdict = "THIN"
        rows.append([chapter, profile, metric, len(cs), f"{min(values):.4g}..{max(values):.4g}", w.op,
                     f"{w.threshold:.4g}", f"{w.margin:+.4g}", f"{100 * w.rel_margin:+.1f}%", verdict])
    return rows


def training_rows(runs: list[Run], tflops: float) -> list[list[object]]:
    seen, rows = set(), []
    for r in runs:
        for name, (n, d) in sorted(r.trainings.items()):
            if (r.chapter, r.profile, name) in seen:
                continue
            seen.add((r.chapter, r.profile, name))
            flops = 6.0 * n * d
            rows.append([r.chapter, r.profile, name, f"{n:,}", f"{d:,}", f"{flops:.3g}", f"{flops / (tflops * 1e12):.3g} s"])
    return rows


def report(runs: list[Run], *, thin: float, tflops: float, out=sys.stdout) -> None:
    print("\n## Runs", file=out)
    print(table(["chapter", "profile", "seed", "threads", "status", "wall", "CPU", "load 1-min (before/after)"],
                [[r.chapter, r.profile, _opt(r.seed), _opt(r.threads), "ok" if r.ok else f"FAILED: {r.error}",
                  fmt_time(r.wall_s), fmt_time(r.cpu_s), f"{r.load_before:.1f} / {r.load_after:.1f}"] for r in runs]),
          file=out)
    rows = check_rows(runs, thin)
    if rows:
        print(f"\n## Asserted metrics (margin: distance from failing; THIN: below {100 * thin:.0f}% of the threshold)",
              file=out)
        print(table(["chapter", "profile", "seed", "threads", "metric", "value", "op", "threshold", "margin",
                     "rel.", "pass"], rows), file=out)
        summary = summary_rows(runs, thin)
        if summary and len(rows) > len(summary):
            print("\n## Worst margin per metric over seeds and thread counts", file=out)
            print(table(["chapter", "profile", "metric", "runs", "values", "op", "threshold", "worst margin",
                         "rel.", "verdict"], summary), file=out)
    trainings = training_rows(runs, tflops)
    if trainings:
        print(f"\n## Training compute (6·N·D) and GPU time at an assumed sustained {tflops:g} TFLOP/s "
              "(a lower bound for small models; see the module docstring)", file=out)
        print(table(["chapter", "profile", "training", "params N", "tokens D", "FLOPs", "est. GPU time"], trainings),
              file=out)
    timed = [r for r in runs if r.ok and r.seed is None and r.threads is None and r.profile in ("smoke", "cpu")]
    if timed:
        print("\n## Run times for book/instructor_guide.md and the chapters' Run time paragraphs", file=out)
        for chapter in sorted({r.chapter for r in timed}):
            parts = [f"{r.profile} {fmt_time(r.wall_s)}" for r in timed if r.chapter == chapter]
            print(f"{chapter}: " + " · ".join(parts), file=out)
    print(f"\nmachine: {os.cpu_count()} CPUs, load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
          file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", nargs="+", default=["cpu"], choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[None],
                        help="SCRATCHLM_SEED values (default: the chapter's own seed)")
    parser.add_argument("--threads", nargs="+", type=int, default=[None],
                        help="SCRATCHLM_THREADS values (default: the profile's own choice)")
    parser.add_argument("--chapters", nargs="*", default=["all"], help="chapter numbers (01 4) or 'all'")
    parser.add_argument("--max-steps", type=int, default=None, help="SCRATCHLM_MAX_STEPS: a dry run")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--keep", type=Path, default=None, help="save executed notebooks in this folder")
    parser.add_argument("--thin", type=float, default=0.05, help="relative margin below which a pass is THIN")
    parser.add_argument("--gpu-tflops", type=float, default=DEFAULT_GPU_TFLOPS,
                        help="assumed sustained GPU throughput for the time estimate")
    args = parser.parse_args(argv)
    if any(s is not None and s < 0 for s in args.seeds) or any(t is not None and t < 1 for t in args.threads):
        parser.error("seeds must be >= 0 and threads >= 1")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    notebooks = find_chapters(args.chapters)
    runs = []
    plan = [(nb, p, s, t) for nb in notebooks for p in args.profile for s in args.seeds for t in args.threads]
    for i, (nb, profile, seed, threads) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {nb.stem} profile={profile} seed={_opt(seed)} threads={_opt(threads)}"
              + (f" max_steps={args.max_steps}" if args.max_steps else ""), end=" ... ", flush=True)
        run = run_one(nb, profile, seed, threads, args.max_steps, args.timeout, args.keep)
        runs.append(run)
        print(("ok" if run.ok else f"FAILED ({run.error})") + f" in {fmt_time(run.wall_s)}", flush=True)
    report(runs, thin=args.thin, tflops=args.gpu_tflops)
    bad = [r for r in runs if not r.ok] + [r for r in runs for c in r.checks if not c.skipped and not c.passed]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
