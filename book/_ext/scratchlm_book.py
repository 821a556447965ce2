"""Sphinx glue for the scratchlm book: offline Mermaid, clean pages, the student build, the set-up
cell's install source and the execution cache.

Loaded by ``_config.yml`` (``sphinx.local_extensions``). Five jobs:

1. **Mermaid from the site itself.** sphinxcontrib-mermaid writes an inline ``<script type="module">``
   that does ``import mermaid from "<mermaid_use_local>"``. An inline module resolves that URL against
   the *page*, so a single site-root-relative value breaks on pages in sub-folders (or when the book
   is hosted under a sub-path). Before the Mermaid extension handles each page we point
   ``mermaid_use_local`` at the vendored file *relative to that page*, and afterwards drop the
   ``<script src>`` tag it adds for the same file (Sphinx would resolve that relative path a second
   time; the inline module already imports it). ``mermaid_use_local`` in ``_config.yml`` is given
   relative to ``_static``, like ``mathjax_path`` and ``d3_use_local``.

2. **No JavaScript errors.** Repeated inline scripts are dropped (sphinx-thebe's configuration
   script is added twice under jupyter-book 1.0.4, a ``const`` redeclaration error on every page).

3. **Student build** (environment variable ``SCRATCHLM_STUDENT=1``, see ``make student-book``):

   * ``hide_solutions`` of sphinx-exercise is switched on, so every ``{solution}`` directive
     renders as nothing (the ``{exercise}`` stays);
   * code cells tagged ``solution`` get the myst-nb tag ``remove-cell``: they still execute (later
     cells may rely on them) but neither their code nor their output reaches the page;
   * the notebooks offered by the page's download button (``_sources/**/*.ipynb``) are rewritten
     without the solution code cells and the ``{solution}`` Markdown cells.

4. **Install source** (``sphinx.config.scratchlm_install_source`` in ``_config.yml``, see
   ``setup_cell.py`` beside this file). The committed chapters carry the configured value
   (``book/sync_setup_cell.py``). When ``$SCRATCHLM_INSTALL_SOURCE`` is set at build time (a fork's
   or a release's build), that value is written into the set-up cell of the executed notebooks and
   of the downloadable ones, so a downloaded chapter installs what the site was built from.

5. **Execution cache, never stale.** ``execute_notebooks: cache`` re-executes a chapter only when
   its code cells change (jupyter-cache hashes them). Outputs also depend on things the hash cannot
   see, so the cache is split and fingerprinted here:

   * one cache per profile: ``<build>/.jupyter_cache/<profile>`` (smoke, cpu or gpu, resolved the
     way ``scratchlm.current_profile`` does), so a smoke build never serves cpu outputs or back;
   * a fingerprint of everything else that shapes the outputs -- every file of the ``scratchlm``
     package, ``pyproject.toml``, the PyTorch and Python versions and ``$SCRATCHLM_DEVICE`` -- is
     stored beside that cache; when it changes the profile's cache is emptied, so every chapter
     runs again against the new package;
   * the fingerprint and the profile are also a Sphinx configuration value that rebuilds the
     environment when it changes, so Sphinx re-reads (and myst-nb re-executes) every page instead
     of keeping pages from the previous package or profile.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import posixpath
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_cell  # noqa: E402 (beside this file; book/_ext is on sys.path for local extensions too)

STUDENT_ENV = "SCRATCHLM_STUDENT"
SOLUTION_TAG = "solution"
# Diagrams at their natural size (capped at the column width by CSS) instead of stretched to the
# full column: with useMaxWidth off, Mermaid writes the real width and height into the SVG.
MERMAID_CONFIG: dict[str, Any] = {
    "startOnLoad": False,
    **{kind: {"useMaxWidth": False} for kind in ("flowchart", "sequence", "class", "state", "er", "gantt")},
}
# A Markdown cell that opens a sphinx-exercise solution directive (backtick or colon fence).
SOLUTION_DIRECTIVE = re.compile(r"^\s*(`{3,}|:{3,})\s*\{solution(-start)?\}", re.MULTILINE)


def student_mode() -> bool:
    """True when ``$SCRATCHLM_STUDENT`` asks for the student build ("1", "true", "yes")."""
    return os.environ.get(STUDENT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def is_solution_code_cell(cell: dict[str, Any]) -> bool:
    """A code cell tagged ``solution`` (cell metadata ``"tags": ["solution"]``)."""
    return cell.get("cell_type") == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def is_solution_markdown_cell(cell: dict[str, Any]) -> bool:
    """A Markdown cell holding a ``{solution}`` directive."""
    source = cell.get("source", "")
    text = "".join(source) if isinstance(source, list) else source
    return cell.get("cell_type") == "markdown" and bool(SOLUTION_DIRECTIVE.search(text))


def tag_solutions_for_removal(notebook: dict[str, Any]) -> int:
    """Add the myst-nb tag ``remove-cell`` to every solution code cell; returns how many."""
    count = 0
    for cell in notebook.get("cells", []):
        if is_solution_code_cell(cell):
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "remove-cell" not in tags:
                tags.append("remove-cell")
            count += 1
    return count


def strip_solutions(notebook: dict[str, Any]) -> int:
    """Drop solution code cells and ``{solution}`` Markdown cells in place; returns how many."""
    cells = notebook.get("cells", [])
    kept = [c for c in cells if not (is_solution_code_cell(c) or is_solution_markdown_cell(c))]
    notebook["cells"] = kept
    return len(cells) - len(kept)


# ----------------------------------------------------------------------------- the execution cache

PROFILE_ENV = "SCRATCHLM_PROFILE"
FINGERPRINT_FILE = "scratchlm-fingerprint.json"


def package_root(confdir: Path) -> Path | None:
    """The ``scratchlm`` package the chapters import: ``<book>/scratchlm`` or the installed one."""
    local = Path(confdir) / "scratchlm"
    if (local / "__init__.py").is_file():
        return local
    spec = importlib.util.find_spec("scratchlm")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def build_profile(confdir: Path) -> str:
    """The profile the chapters will run under (``scratchlm.current_profile``'s rule)."""
    root = package_root(confdir)
    module_file = root / "runtime" / "profiles.py" if root else None
    if module_file is None or not module_file.is_file():
        return os.environ.get(PROFILE_ENV, "").strip().lower() or "default"
    # profiles.py imports its sibling env.py: load both inside a stand-in package whose __init__ is
    # never run, so the build needs torch (for the CUDA check) but not the whole package.
    package = "_scratchlm_runtime_for_the_build"
    stand_in = types.ModuleType(package)
    stand_in.__path__ = [str(module_file.parent)]
    sys.modules[package] = stand_in
    spec = importlib.util.spec_from_file_location(f"{package}.profiles", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.current_profile()  # raises on a bad $SCRATCHLM_PROFILE, as the chapters would


def fingerprint(confdir: Path) -> dict[str, str]:
    """What, besides a chapter's own code, decides its outputs (see the module docstring, job 5)."""
    digest = hashlib.sha256()
    root = package_root(confdir)
    if root is not None:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    pyproject = Path(confdir) / "pyproject.toml"
    if pyproject.is_file():
        digest.update(pyproject.read_bytes())

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    return {
        "scratchlm": digest.hexdigest(),
        "torch": version("torch"),
        "python": platform.python_version(),
        "device": os.environ.get("SCRATCHLM_DEVICE", ""),
    }


def prepare_execution_cache(cache_root: Path, profile: str, current: dict[str, str]) -> tuple[Path, bool]:
    """The cache folder for ``profile`` under ``cache_root``, emptied if ``current`` differs from the
    fingerprint stored there. Returns (folder, whether it was emptied)."""
    folder = Path(cache_root) / profile
    stamp = folder / FINGERPRINT_FILE
    try:
        stored = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    emptied = False
    if stored != current:
        if folder.exists():
            shutil.rmtree(folder)
            emptied = True
        folder.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, stamp)
    return folder, emptied


def _config_execution_cache(app: Sphinx, config: Any) -> None:
    """Give each profile its own jupyter-cache and empty it when the package (or torch, ...) changed."""
    if config.nb_execution_mode != "cache":
        return
    profile = build_profile(Path(app.confdir))
    current = fingerprint(Path(app.confdir))
    base = Path(config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache")
    folder, emptied = prepare_execution_cache(base, profile, current)
    config.nb_execution_cache_path = str(folder)
    # an "env" config value: when it differs from the last build's, Sphinx re-reads every page
    config.scratchlm_execution_key = json.dumps({"profile": profile, **current}, sort_keys=True)
    logger.info(f"scratchlm_book: execution cache {folder} (profile {profile}"
                f"{'; emptied: the package or its environment changed' if emptied else ''})")


# ----------------------------------------------------------------------------- Sphinx hooks


def _config_inited(app: Sphinx, config: Any) -> None:
    if student_mode():
        config.hide_solutions = True
        logger.info("scratchlm_book: student build (solutions hidden, solution cells removed)")


def _install_source(app: Sphinx) -> str | None:
    """The source to write into set-up cells, or None when the notebooks already carry it."""
    if not os.environ.get(setup_cell.INSTALL_ENV, "").strip():
        return None  # the committed cells hold the configured value (checked by the hygiene test)
    return setup_cell.effective_source(app.config.scratchlm_install_source or "")


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    """Before myst-nb parses a notebook: the build's install source into its set-up cell, and in the
    student build, solution cells marked ``remove-cell``."""
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    notebook = json.loads(source[0])
    install = _install_source(app)
    changed = install is not None and setup_cell.set_source_in_notebook(notebook, install)
    if student_mode():
        changed = bool(tag_solutions_for_removal(notebook)) or changed
    if changed:
        source[0] = json.dumps(notebook, ensure_ascii=False)


def _config_mermaid(app: Sphinx, config: Any) -> None:
    """Remember the configured ``mermaid_use_local`` (a path under ``_static``) for the page hooks."""
    configured = config.mermaid_use_local
    if configured and "://" not in configured:
        app.scratchlm_mermaid_static = posixpath.join("_static", configured)
    else:  # a URL, or unset: leave sphinxcontrib-mermaid alone
        app.scratchlm_mermaid_static = None


def _mermaid_before(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Point Mermaid at the vendored module, relative to this page (runs before the extension)."""
    static_path = getattr(app, "scratchlm_mermaid_static", None)
    if not static_path:
        return
    page_relative = context["pathto"](static_path, 1)  # e.g. ../_static/vendor/mermaid/...
    app.config.mermaid_use_local = page_relative
    # A custom mermaid_init_js must import Mermaid itself (the extension only prefixes the default),
    # and the extension would otherwise bake the first page's URL into it: set it per page.
    app.config.mermaid_init_js = (
        f'import mermaid from "{page_relative}";mermaid.initialize({json.dumps(MERMAID_CONFIG)});'
    )


def _mermaid_after(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Drop the ``<script src>`` Sphinx made from the page-relative URL (the inline module imports it)."""
    if not getattr(app, "scratchlm_mermaid_static", None):
        return
    # the builder stores non-URL script names under _static/
    wrong = posixpath.join("_static", app.config.mermaid_use_local)
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        scripts[:] = [js for js in scripts if os.fspath(getattr(js, "filename", None) or "") != wrong]


def _dedupe_inline_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Drop repeated inline scripts (sphinx-thebe's ``const THEBE_JS_URL = ...`` arrives twice under
    jupyter-book, and declaring a ``const`` twice is a JavaScript error on every page).

    """
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple] = set()
    kept = []
    for js in scripts:
        attributes = getattr(js, "attributes", None)
        if not getattr(js, "filename", None) and isinstance(attributes, dict) and attributes.get("body"):
            key = tuple(sorted(attributes.items()))
            if key in seen:
                continue
            seen.add(key)
        kept.append(js)
    scripts[:] = kept


def _build_finished(app: Sphinx, exception: Exception | None) -> None:
    """The downloadable notebooks: the build's install source, and no solutions in the student build."""
    if exception is not None or app.builder.format != "html":
        return
    install = _install_source(app)
    if install is None and not student_mode():
        return
    sources = Path(app.outdir) / "_sources"
    for path in sorted(sources.rglob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        changed = install is not None and setup_cell.set_source_in_notebook(notebook, install)
        if student_mode():
            changed = bool(strip_solutions(notebook)) or changed
        if changed:
            tmp = path.with_suffix(".ipynb.tmp")
            tmp.write_text(json.dumps(notebook, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_exercise")
    app.setup_extension("sphinxcontrib.mermaid")
    app.setup_extension("myst_nb")  # its nb_execution_* values must exist before _config_execution_cache
    app.add_config_value("scratchlm_install_source", "", "env", types=[str])
    app.add_config_value("scratchlm_execution_key", "", "env", types=[str])
    app.connect("config-inited", _config_inited)
    app.connect("config-inited", _config_execution_cache)
    app.connect("config-inited", _config_mermaid)
    app.connect("source-read", _source_read)
    app.connect("html-page-context", _mermaid_before, priority=499)
    app.connect("html-page-context", _mermaid_after, priority=501)
    app.connect("html-page-context", _dedupe_inline_scripts, priority=502)
    app.connect("build-finished", _build_finished)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
