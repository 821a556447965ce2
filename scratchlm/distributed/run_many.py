"""Several ``train_gpt`` runs in ONE ``torchrun`` launch (introduced in Chapter 14).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m scratchlm.distributed.run_many SPEC.json

``SPEC.json`` is ``{"common": [args...], "runs": [[name, [args...]], ...], "out": dir}``; run ``name``
is ``train_gpt`` with ``common + args`` and writes ``<out>/<name>.json`` (results) and
``<out>/<name>.safetensors`` (final weights, gathered from the shards). The runs execute one after
the other in the same processes, sharing one process group.

Why: starting N Python processes that import PyTorch and form a group costs seconds of CPU per
process, far more than a short training run. A notebook or a test that needs several distributed
runs with the same number of processes pays that start-up once with
:func:`~scratchlm.distributed.launch_runs`, which writes the SPEC and launches this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .launch import cleanup_distributed, init_distributed
from .train_gpt import build_parser, run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of every worker: join the group once, run the SPEC's runs in order, leave."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: torchrun ... -m scratchlm.distributed.run_many SPEC.json")
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    out = Path(spec["out"])
    first = build_parser().parse_args([*spec["common"], *spec["runs"][0][1]])  # the device decides the backend
    env = init_distributed(None if first.device == "auto" else first.device)  # every run reuses this group
    try:
        for name, extra in spec["runs"]:
            run([*spec["common"], *extra, "--out", str(out / f"{name}.json"),
                 "--params-out", str(out / f"{name}.safetensors")])
    finally:
        cleanup_distributed(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
