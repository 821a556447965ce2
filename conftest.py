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
