"""The website: it builds with warnings as errors, and every page renders in a real browser.

The slow tests are marked ``site`` (``pytest -m "not site"`` leaves them out). They

1. build the whole book (``jupyter-book build . -W -n --keep-going``, every chapter executed under
   the ``smoke`` profile, offline; conftest.py sets the environment) into ``_build/site-test``;
2. serve ``_build/site-test/_build/html`` on 127.0.0.1 and open every page of ``_toc.yml`` in
   Debian's chromium driven by Playwright, checking: no console errors, no failed requests, no
   request that leaves 127.0.0.1, MathJax typeset every formula, every Mermaid block became an SVG,
   every image loaded, widgets rendered, and chapter pages show at least one output figure;
3. build a one-page book with and without ``SCRATCHLM_STUDENT=1`` and check that the student build
   drops the solutions (and the normal build keeps them).

They are skipped, with the reason, only when ``/usr/bin/chromium`` is missing and
``SCRATCHLM_REQUIRE_SITE`` is not set (``make test`` installs chromium, so CI runs them).
The unmarked tests at the end check the student-build helpers of ``book/_ext`` quickly.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import nbformat
import pytest
from sphinx_external_toc.parsing import parse_toc_yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build" / "site-test"  # jupyter-book writes BUILD/_build/html
HTML = BUILD / "_build" / "html"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
PAGE_TIMEOUT_MS = 60_000


def _require_browser() -> None:
    """Skip (with the reason) unless chromium and Playwright are here or the site test is required."""
    required = os.environ.get("SCRATCHLM_REQUIRE_SITE", "").strip() not in {"", "0"}
    if not CHROMIUM.is_file() and not required:
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium: `make browser`); "
                    "set SCRATCHLM_REQUIRE_SITE=1 to make this a failure")
    assert CHROMIUM.is_file(), f"SCRATCHLM_REQUIRE_SITE is set but {CHROMIUM} is missing"


def _jupyter_book(source: Path, output: Path, log: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``jupyter-book build SOURCE -W -n --keep-going --path-output OUTPUT``, log to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as handle:
        return subprocess.run(
            [str(JUPYTER_BOOK), "build", str(source), "-W", "-n", "--keep-going", "--path-output", str(output)],
            cwd=source, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False,
        )


def _log_tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def _serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 at a free port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


# ----------------------------------------------------------------------------- the real book


@pytest.fixture(scope="module")
def built_site() -> Path:
    """Build the whole book once for this module; returns the html directory.

    ``SCRATCHLM_SITE_HTML=path/to/html`` checks an existing build instead (e.g. ``_build/html`` after
    ``make book``) -- for working on the site; CI always builds.
    """
    _require_browser()
    existing = os.environ.get("SCRATCHLM_SITE_HTML")
    if existing:
        assert (Path(existing) / "index.html").is_file(), f"SCRATCHLM_SITE_HTML={existing} has no index.html"
        return Path(existing)
    vendor = subprocess.run([sys.executable, str(ROOT / "book" / "vendor.py")], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert vendor.returncode == 0, f"book/vendor.py failed:\n{vendor.stdout}\n{vendor.stderr}"
    if BUILD.exists():
        shutil.rmtree(BUILD)
    # conftest.py sets MPLBACKEND=Agg for the tests; the kernels that execute the chapters must use
    # the inline backend, or plt.show() draws nothing and the pages have no figures.
    env = {**os.environ, "SCRATCHLM_PROFILE": "smoke", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    env.pop("SCRATCHLM_STUDENT", None)
    log = ROOT / "_build" / "site-test.log"
    result = _jupyter_book(ROOT, BUILD, log, env)
    assert result.returncode == 0, f"jupyter-book build failed (full log: {log}):\n{_log_tail(log)}"
    assert (HTML / "index.html").is_file()
    return HTML


def _toc_docnames() -> list[str]:
    return list(parse_toc_yaml(ROOT / "_toc.yml"))


@pytest.mark.site
def test_html_loads_nothing_from_a_cdn(built_site):
    """Scripts and stylesheets all come from the site itself (links to papers are fine)."""
    import re

    tag = re.compile(r"<(script|link)\b[^>]*?\b(src|href)=\"(https?:)?//[^\"]*\"[^>]*>", re.IGNORECASE)
    offenders = []
    for page in sorted(built_site.rglob("*.html")):
        for match in tag.finditer(page.read_text(encoding="utf-8")):
            if "rel=\"canonical\"" not in match.group(0):
                offenders.append(f"{page.relative_to(built_site)}: {match.group(0)[:160]}")
    assert offenders == []
    modules = re.compile(r"import \w+ from \"([^\"]+)\"")
    remote = [m for page in built_site.rglob("*.html")
              for m in modules.findall(page.read_text(encoding="utf-8")) if "//" in m]
    assert remote == [], f"inline modules import from the network: {sorted(set(remote))}"
    root = parse_toc_yaml(ROOT / "_toc.yml").root.docname
    assert f"{root}.html" in (built_site / "index.html").read_text(encoding="utf-8"), "index.html redirect"


# JavaScript run in each page after "load": waits for MathJax, Mermaid, images and widgets, then
# returns what it found.
_PAGE_PROBE = """
async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const until = async (test, ms) => { const t0 = Date.now();
    while (!test() && Date.now() - t0 < ms) await sleep(100); return test(); };
  const maths = [...document.querySelectorAll('.math')];
  if (maths.length) {
    await until(() => window.MathJax && MathJax.startup && MathJax.startup.promise, 20000);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  }
  const mermaids = [...document.querySelectorAll('pre.mermaid, div.mermaid')];
  await until(() => mermaids.every((m) => m.querySelector('svg')), 30000);
  const images = [...document.images];
  images.forEach((img) => { img.loading = 'eager'; });
  await Promise.all(images.map((img) => img.complete ? null
    : new Promise((r) => { img.addEventListener('load', r); img.addEventListener('error', r); })));
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
  await until(() => document.querySelectorAll('.jupyter-widgets').length >= views.length, 20000);
  return {
    maths: maths.length,
    mathsTypeset: maths.filter((m) => m.querySelector('mjx-container')).length,
    mermaids: mermaids.length,
    mermaidSvgs: mermaids.filter((m) => m.querySelector('svg')).length,
    mermaidErrors: mermaids.filter((m) => /Syntax error|Parse error/i.test(m.textContent)).length,
    images: images.map((img) => ({src: img.getAttribute('src'), width: img.naturalWidth})),
    outputImages: document.querySelectorAll('.cell_output img').length,
    widgetViews: views.length,
    widgetsRendered: document.querySelectorAll('.jupyter-widgets').length,
  };
}
"""


@pytest.mark.site
def test_every_page_renders_in_chromium(built_site):
    from playwright.sync_api import sync_playwright

    docnames = _toc_docnames()
    problems: list[str] = []
    left_localhost: list[str] = []
    screenshots = built_site.parent / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    with _serve(built_site) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})

            def guard(route):
                host = urllib.parse.urlsplit(route.request.url).hostname
                if route.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
                    route.continue_()
                else:
                    left_localhost.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            for docname in docnames:
                page = context.new_page()
                errors: list[str] = []
                page.on("console", lambda m, e=errors: e.append(f"console {m.type}: {m.text}")
                        if m.type == "error" else None)
                page.on("pageerror", lambda exc, e=errors: e.append(f"page error: {exc}"))
                page.on("requestfailed", lambda r, e=errors: e.append(f"request failed: {r.url} ({r.failure})"))
                page.on("response", lambda r, e=errors: e.append(f"HTTP {r.status}: {r.url}")
                        if r.status >= 400 else None)
                page.goto(f"{base}/{docname}.html", wait_until="load", timeout=PAGE_TIMEOUT_MS)
                found = page.evaluate(_PAGE_PROBE)
                page.wait_for_timeout(200)  # let late console errors arrive
                if docname in {docnames[0], next((d for d in docnames if d.startswith("chapters/")), "")}:
                    page.screenshot(path=str(screenshots / f"{docname.replace('/', '_')}.png"), full_page=False)
                page.close()

                where = f"{docname}.html"
                problems += [f"{where}: {e[:300]}" for e in errors]
                if found["mathsTypeset"] != found["maths"]:
                    problems.append(f"{where}: MathJax typeset {found['mathsTypeset']} of {found['maths']} formulas")
                if found["mermaidSvgs"] != found["mermaids"] or found["mermaidErrors"]:
                    problems.append(f"{where}: {found['mermaidSvgs']} of {found['mermaids']} Mermaid blocks became "
                                    f"SVGs, {found['mermaidErrors']} show a syntax error")
                broken = [img["src"] for img in found["images"] if not img["width"]]
                if broken:
                    problems.append(f"{where}: images that did not load: {broken}")
                if found["widgetsRendered"] < found["widgetViews"]:
                    problems.append(f"{where}: {found['widgetsRendered']} of {found['widgetViews']} widgets rendered")
                if docname.startswith("chapters/") and found["outputImages"] == 0:
                    problems.append(f"{where}: a chapter page without any output figure")
                if docname.startswith("chapters/") and found["mermaids"] == 0:
                    problems.append(f"{where}: a chapter page without a Mermaid diagram")
                if docname == "book/intro" and found["mermaids"] == 0:
                    problems.append(f"{where}: expected the chapter map diagram")
                if docname == "book/notation" and found["maths"] < 10:
                    problems.append(f"{where}: only {found['maths']} formulas")
        finally:
            browser.close()
    assert left_localhost == [], f"requests left 127.0.0.1: {sorted(set(left_localhost))[:20]}"
    assert problems == [], "\n".join(problems)


# ----------------------------------------------------------------------------- the student build


def _mini_book(root: Path) -> None:
    """A one-chapter book that uses the real _config.yml and the book's Sphinx extension."""
    (root / "book").mkdir(parents=True)
    (root / "chapters").mkdir()
    shutil.copy2(ROOT / "_config.yml", root / "_config.yml")
    shutil.copytree(ROOT / "book" / "_ext", root / "book" / "_ext")
    shutil.copytree(ROOT / "book" / "_static", root / "book" / "_static", ignore=shutil.ignore_patterns("vendor"))
    shutil.copy2(ROOT / "book" / "references.bib", root / "book" / "references.bib")
    (root / "book" / "intro.md").write_text("# Mini book\n\nA page.\n", encoding="utf-8")
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: chapters/01_mini\n", encoding="utf-8")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 01 · Mini"),
        nbformat.v4.new_code_cell("print('VISIBLE-' + 'OUTPUT')"),
        nbformat.v4.new_markdown_cell("```{exercise}\n:label: ex-01-mini\nEXERCISE-TEXT: add two numbers.\n```"),
        nbformat.v4.new_markdown_cell("```{solution} ex-01-mini\n:class: dropdown\nSOLUTION-TEXT: use +.\n```"),
        nbformat.v4.new_code_cell("answer = 2 + 2  # SOLUTION-CODE\nprint('SOLUTION-' + 'OUTPUT', answer)",
                                  metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("print('AFTER-' + 'OUTPUT', answer)"),  # relies on the solution cell
    ]
    nbformat.write(nb, root / "chapters" / "01_mini.ipynb")


@pytest.mark.site
@pytest.mark.parametrize("student", [False, True], ids=["full", "student"])
def test_student_build_drops_solutions(tmp_path, student):
    _mini_book(tmp_path / "src")
    env = {**os.environ, "SCRATCHLM_STUDENT": "1" if student else "0"}
    log = tmp_path / "build.log"
    result = _jupyter_book(tmp_path / "src", tmp_path / "out", log, env)
    assert result.returncode == 0, _log_tail(log)
    html_dir = tmp_path / "out" / "_build" / "html"
    page = (html_dir / "chapters" / "01_mini.html").read_text(encoding="utf-8")
    source_nb = json.loads((html_dir / "_sources" / "chapters" / "01_mini.ipynb").read_text(encoding="utf-8"))
    source_text = json.dumps(source_nb)
    # always there: the exercise, the ordinary cells, and the cell that uses the solution's result
    for marker in ["EXERCISE-TEXT", "VISIBLE-OUTPUT", "AFTER-OUTPUT 4"]:
        assert marker in page
    for marker in ["SOLUTION-TEXT", "SOLUTION-CODE", "SOLUTION-OUTPUT"]:
        assert (marker in page) is not student, f"{marker} {'in' if student else 'missing from'} the page"
    for marker in ["SOLUTION-TEXT", "SOLUTION-CODE"]:
        assert (marker in source_text) is not student, f"{marker} in the downloadable notebook"
    assert "EXERCISE-TEXT" in source_text


@pytest.mark.site
def test_build_cache_follows_profile_and_package_and_writes_the_install_source(tmp_path):
    """Per-profile execution caches, emptied when the package changes; a build-time install source.

    The mini book's chapter starts with the real set-up cell. Four builds into the same output:
    smoke (executes), smoke again (served from the cache), cpu (executes: the page must say
    profile=cpu, not show the smoke outputs), cpu after a change to the package (executes again).
    """
    import sys

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import setup_cell

    src = tmp_path / "src"
    _mini_book(src)
    (src / "scratchlm").mkdir()  # what the fingerprint reads (the kernel imports the real package)
    (src / "scratchlm" / "__init__.py").write_text("# version 1\n", encoding="utf-8")
    nb = nbformat.read(src / "chapters" / "01_mini.ipynb", as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(setup_cell.render("01", setup_cell.configured_source(ROOT / "_config.yml"))))
    nbformat.write(nb, src / "chapters" / "01_mini.ipynb")
    fork = "git+https://example.org/fork/scratchlm@v9"
    html_dir = tmp_path / "out" / "_build" / "html"

    def build(profile: str, n: int) -> tuple[str, str]:
        env = {**os.environ, "SCRATCHLM_PROFILE": profile, "SCRATCHLM_INSTALL_SOURCE": fork, "SCRATCHLM_STUDENT": "0"}
        log = tmp_path / f"build{n}.log"
        result = _jupyter_book(src, tmp_path / "out", log, env)
        assert result.returncode == 0, _log_tail(log)
        return log.read_text(encoding="utf-8"), (html_dir / "chapters" / "01_mini.html").read_text(encoding="utf-8")

    log, page = build("smoke", 1)
    assert "Executing notebook" in log and "profile=smoke" in page and "profile=cpu" not in page
    assert fork in page  # the executed set-up cell carries the build's install source ...
    downloaded = json.loads((html_dir / "_sources" / "chapters" / "01_mini.ipynb").read_text(encoding="utf-8"))
    assert setup_cell.read_source("".join(downloaded["cells"][1]["source"])) == fork  # ... and so does the download
    assert json.loads((tmp_path / "out" / "_build" / ".jupyter_cache" / "smoke" / "scratchlm-fingerprint.json")
                      .read_text(encoding="utf-8"))["scratchlm"]

    log, page = build("smoke", 2)
    assert "Executing notebook" not in log and "profile=smoke" in page

    log, page = build("cpu", 3)
    assert "Executing notebook" in log and "profile=cpu" in page and "profile=smoke" not in page

    (src / "scratchlm" / "__init__.py").write_text("# version 2\n", encoding="utf-8")
    log, page = build("cpu", 4)
    assert "emptied" in log and "Executing notebook" in log and "profile=cpu" in page


# ----------------------------------------------------------------------------- fast: the helpers


def _extension():
    spec = importlib.util.spec_from_file_location("scratchlm_book", ROOT / "book" / "_ext" / "scratchlm_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nb_with_solution() -> dict:
    return {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "```{exercise}\n:label: e\nQ\n```"},
        {"cell_type": "markdown", "metadata": {}, "source": ["```{solution} e\n", "A\n", "```"]},
        {"cell_type": "code", "metadata": {"tags": ["solution"]}, "source": "x = 1", "outputs": []},
        {"cell_type": "markdown", "metadata": {}, "source": ":::{solution} e\nB\n:::"},
        {"cell_type": "code", "metadata": {"tags": ["keep"]}, "source": "y = 2", "outputs": []},
    ]}


def test_student_mode_reads_the_environment(monkeypatch):
    ext = _extension()
    for value, expected in [("1", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv(ext.STUDENT_ENV, value)
        assert ext.student_mode() is expected
    monkeypatch.delenv(ext.STUDENT_ENV)
    assert ext.student_mode() is False


def test_tag_solutions_for_removal_tags_only_solution_code_cells():
    ext = _extension()
    nb = _nb_with_solution()
    assert ext.tag_solutions_for_removal(nb) == 1
    assert nb["cells"][2]["metadata"]["tags"] == ["solution", "remove-cell"]
    assert nb["cells"][4]["metadata"]["tags"] == ["keep"]
    assert ext.tag_solutions_for_removal(nb) == 1  # idempotent: no second remove-cell
    assert nb["cells"][2]["metadata"]["tags"].count("remove-cell") == 1


def test_strip_solutions_removes_solution_cells_and_directives():
    ext = _extension()
    nb = _nb_with_solution()
    assert ext.strip_solutions(nb) == 3
    assert [c["source"] for c in nb["cells"]] == ["```{exercise}\n:label: e\nQ\n```", "y = 2"]


def test_execution_cache_is_per_profile_and_emptied_when_the_fingerprint_changes(tmp_path):
    ext = _extension()
    first = {"scratchlm": "a", "torch": "2.13.0", "python": "3.11.7", "device": ""}
    folder, emptied = ext.prepare_execution_cache(tmp_path, "smoke", first)
    assert folder == tmp_path / "smoke" and not emptied
    (folder / "executed.txt").write_text("outputs")
    assert ext.prepare_execution_cache(tmp_path, "smoke", dict(first)) == (folder, False)
    assert (folder / "executed.txt").is_file()  # same fingerprint: kept
    cpu, _ = ext.prepare_execution_cache(tmp_path, "cpu", first)
    assert cpu != folder and (folder / "executed.txt").is_file()  # another profile: its own folder
    assert ext.prepare_execution_cache(tmp_path, "smoke", {**first, "scratchlm": "b"}) == (folder, True)
    assert not (folder / "executed.txt").exists() and (folder / ext.FINGERPRINT_FILE).is_file()
    assert ext.prepare_execution_cache(tmp_path, "smoke", {**first, "scratchlm": "b", "torch": "2.14.0"})[1]


def test_fingerprint_sees_every_package_file_but_not_bytecode(tmp_path, monkeypatch):
    ext = _extension()
    package = tmp_path / "scratchlm"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "registry.py").write_text("URL = 'a'\n")
    before = ext.fingerprint(tmp_path)
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert ext.fingerprint(tmp_path) == before
    (package / "data" / "registry.py").write_text("URL = 'b'\n")
    assert ext.fingerprint(tmp_path)["scratchlm"] != before["scratchlm"]
    monkeypatch.setenv("SCRATCHLM_DEVICE", "cpu")
    assert ext.fingerprint(tmp_path)["device"] == "cpu"
    monkeypatch.setenv("SCRATCHLM_PROFILE", "smoke")
    assert ext.build_profile(tmp_path) == "smoke"  # a package without runtime/profiles.py: the variable
    assert ext.build_profile(ROOT) == "smoke"  # the real rule
    monkeypatch.setenv("SCRATCHLM_PROFILE", "huge")
    with pytest.raises(ValueError, match="SCRATCHLM_PROFILE"):
        ext.build_profile(ROOT)
