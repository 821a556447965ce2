"""Pytest set-up shared by package tests, notebook (nbval) tests and site tests.

Tests always run under the ``smoke`` profile, read data from ``../shared/data`` when it exists
(the byte-identical copies CI uses) and never download: kernels started by nbval inherit this
environment.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ["SCRATCHLM_PROFILE"] = "smoke"
os.environ.setdefault("SCRATCHLM_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "SCRATCHLM_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SCRATCHLM_DATA"] = str(SHARED_DATA)


# The longest files first: under pytest-xdist (`make test`, --dist loadfile) a worker takes whole files in
# collection order, so the site build (a full book build) and the learner test would otherwise start
# last and run alone at the end. The order of tests inside a file is kept.
SLOW_FIRST = ("tests/test_site.py", "tests/test_learner.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: everything else keeps its order
