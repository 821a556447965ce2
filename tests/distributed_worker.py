"""Several ``train_gpt`` runs in ONE torchrun launch, for tests/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py SPEC.json

SPEC.json: ``{"common": [args...], "runs": [[name, [args...]], ...], "out": dir}``. Each run writes
``<out>/<name>.json`` and ``<out>/<name>.safetensors``. Why one launch: starting two Python processes
that import torch costs seconds on a 2-core machine; the runs themselves take a fraction of that.
The process group is created once here and reused by every run (``init_distributed`` is idempotent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scratchlm.distributed import cleanup_distributed, init_distributed
from scratchlm.distributed.train_gpt import run


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    out = Path(spec["out"])
    env = init_distributed()
    try:
        for name, extra in spec["runs"]:
            run([*spec["common"], *extra, "--out", str(out / f"{name}.json"),
                 "--params-out", str(out / f"{name}.safetensors")])
    finally:
        cleanup_distributed(env)


if __name__ == "__main__":
    main(sys.argv[1])
