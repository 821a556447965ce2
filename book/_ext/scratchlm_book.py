"""Sphinx glue for the scratchlm book: offline Mermaid, clean pages and the student build.

Loaded by ``_config.yml`` (``sphinx.local_extensions``). Three jobs:

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
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- Sphinx hooks


def _config_inited(app: Sphinx, config: Any) -> None:
    if student_mode():
        config.hide_solutions = True
        logger.info("scratchlm_book: student build (solutions hidden, solution cells removed)")


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    """In the student build, mark solution cells ``remove-cell`` before myst-nb parses them."""
    if not student_mode() or not app.env.doc2path(docname).endswith(".ipynb"):
        return
    notebook = json.loads(source[0])
    if tag_solutions_for_removal(notebook):
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
    """In the student build, remove solutions from the downloadable notebooks."""
    if exception is not None or not student_mode() or app.builder.format != "html":
        return
    sources = Path(app.outdir) / "_sources"
    for path in sorted(sources.rglob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        if strip_solutions(notebook):
            path.write_text(json.dumps(notebook, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_exercise")
    app.setup_extension("sphinxcontrib.mermaid")
    app.connect("config-inited", _config_inited)
    app.connect("config-inited", _config_mermaid)
    app.connect("source-read", _source_read)
    app.connect("html-page-context", _mermaid_before, priority=499)
    app.connect("html-page-context", _mermaid_after, priority=501)
    app.connect("html-page-context", _dedupe_inline_scripts, priority=502)
    app.connect("build-finished", _build_finished)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
