"""The chapters' set-up cell: its one text, and where `scratchlm` is installed from outside a checkout.

Every chapter's first code cell is :data:`TEMPLATE` with two blanks filled in: the chapter number and
the install source, a pip source (a URL such as ``git+https://github.com/<owner>/<repo>@<ref>``, or a
local clone's path) that is kept in ONE place, ``_config.yml`` -> ``sphinx.config.scratchlm_install_source``.
A notebook downloaded from the website or opened on Colab cannot read ``_config.yml``, so the value
is written into the cell itself:

* ``book/sync_setup_cell.py`` rewrites the set-up cell of every chapter from ``_config.yml`` (run it
  after changing the value; ``tests/test_hygiene.py`` fails while a notebook disagrees);
* at build time, ``scratchlm_book`` (the book's Sphinx extension) writes ``$SCRATCHLM_INSTALL_SOURCE``
  into the executed and the downloadable notebooks when that variable is set (a fork's or a release's
  build), so what readers download installs what the site was built from;
* at run time, ``$SCRATCHLM_INSTALL_SOURCE`` in the kernel's environment wins over the cell's value.

Pure Python (no Sphinx), shared by the extension, the sync command and the tests.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

INSTALL_ENV = "SCRATCHLM_INSTALL_SOURCE"
CONFIG_KEY = "scratchlm_install_source"  # under sphinx: config: in _config.yml
EXTRAS = "book"  # [project.optional-dependencies] in pyproject.toml: what the chapters import

TEMPLATE = '''\
# Set-up: make `scratchlm` importable, then seed, pick the profile and device, and print versions.
# In a checkout of the book's repository the package is imported from there. Anywhere else (Colab,
# a downloaded notebook) pip installs it with what the chapters need; your PyTorch is kept.
import importlib, os, pathlib, subprocess, sys
INSTALL_SOURCE = {source}  # where pip gets scratchlm; $SCRATCHLM_INSTALL_SOURCE overrides it
try:
    import scratchlm
except ImportError:
    here = pathlib.Path.cwd().resolve()
    root = next((p for p in [here, *here.parents] if (p / "scratchlm" / "__init__.py").is_file()), None)
    if root is not None:
        sys.path.insert(0, str(root))
    else:
        source = os.environ.get("SCRATCHLM_INSTALL_SOURCE") or INSTALL_SOURCE
        if pathlib.Path(source).expanduser().is_dir():  # a local clone: install its working tree
            source = pathlib.Path(source).expanduser().resolve().as_uri()
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"scratchlm[{extras}] @ {{source}}"])
        importlib.invalidate_caches()
    import scratchlm

ctx = scratchlm.setup_chapter({chapter})'''

SOURCE_LINE = re.compile(r'^INSTALL_SOURCE = ("(?:[^"\\]|\\.)*")', re.MULTILINE)
CHAPTER_CALL = re.compile(r'scratchlm\.setup_chapter\("(\d\d)"\)')


def check_source(source: str) -> str:
    """``source`` if it is a usable one-line pip source; otherwise a ``ValueError`` saying why."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"the install source must be a non-empty string; got {source!r}")
    if source != source.strip() or any(c in source for c in "\n\r\"'"):
        raise ValueError(f"the install source must be one line without quotes or surrounding spaces; got {source!r}")
    return source


def render(chapter: str, source: str) -> str:
    """The set-up cell of chapter ``chapter`` ("01", "02", ...) installing from ``source``."""
    if not re.fullmatch(r"\d\d[a-z]?", chapter):  # "06b": an interlude after chapter 06
        raise ValueError(f"chapter must be two digits like '03' (or an interlude like '06b'); got {chapter!r}")
    return TEMPLATE.format(source=json.dumps(check_source(source)), chapter=json.dumps(chapter), extras=EXTRAS)


def read_source(cell_text: str) -> str | None:
    """The install source written in a set-up cell, or None when the cell has no such line."""
    match = SOURCE_LINE.search(cell_text)
    return json.loads(match.group(1)) if match else None


def configured_source(config_file: Path) -> str:
    """``sphinx.config.scratchlm_install_source`` from ``_config.yml`` (ValueError when missing)."""
    import yaml

    config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
    value = ((config.get("sphinx") or {}).get("config") or {}).get(CONFIG_KEY)
    if value is None:
        raise ValueError(f"{config_file} has no sphinx.config.{CONFIG_KEY} (the install source of the set-up cell)")
    return check_source(value)


def effective_source(configured: str) -> str:
    """``$SCRATCHLM_INSTALL_SOURCE`` when set (a fork's or a release's build), else ``configured``."""
    override = os.environ.get(INSTALL_ENV, "").strip()
    return check_source(override) if override else check_source(configured)


def _source_text(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def first_code_cell(notebook: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in notebook.get("cells", []) if c.get("cell_type") == "code"), None)


def set_source_in_notebook(notebook: dict[str, Any], source: str) -> bool:
    """Write ``source`` into the ``INSTALL_SOURCE = ...`` line of the set-up cell, in place.

    Only that line changes. Returns True when the notebook changed; False when it already held
    ``source`` or has no such line (a notebook that is not a chapter).
    """
    cell = first_code_cell(notebook)
    if cell is None:
        return False
    text = _source_text(cell)
    match = SOURCE_LINE.search(text)
    if match is None or json.loads(match.group(1)) == source:
        return False
    new = text[: match.start(1)] + json.dumps(check_source(source)) + text[match.end(1):]
    cell["source"] = new.splitlines(keepends=True) if isinstance(cell.get("source"), list) else new
    return True


def sync_notebook(notebook: dict[str, Any], chapter: str, source: str) -> bool:
    """Make the first code cell exactly :func:`render` (chapter, source), in place; True if it changed."""
    cell = first_code_cell(notebook)
    if cell is None:
        raise ValueError("the notebook has no code cell to hold the set-up")
    wanted = render(chapter, source)
    if _source_text(cell) == wanted:
        return False
    cell["source"] = wanted.splitlines(keepends=True) if isinstance(cell.get("source"), list) else wanted
    return True


def dumps(notebook: dict[str, Any]) -> str:
    """A notebook as the repository stores it (nbformat's layout: indent 1, UTF-8, final newline)."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
