"""Rewrite the set-up cell of every chapter from ``_config.yml`` (the one place the install source lives).

    python book/sync_setup_cell.py           # rewrite chapters/*.ipynb where the cell differs
    python book/sync_setup_cell.py --check   # only report; exit status 1 if a notebook differs

The cell's text is ``book/_ext/setup_cell.py``'s ``TEMPLATE`` with the chapter number (from the file
name, ``NN_short_name.ipynb``) and ``sphinx.config.scratchlm_install_source`` from ``_config.yml``.
Only the first code cell changes; every other byte of the notebook stays as it was. Each file is
written through a temp file and a rename.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import setup_cell  # noqa: E402 (book/_ext is not a package)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def sync(notebooks: list[Path], source: str, *, check: bool = False) -> list[Path]:
    """Notebooks whose set-up cell differs from the template (rewritten unless ``check``)."""
    changed = []
    for path in notebooks:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        if setup_cell.sync_notebook(notebook, path.name.split("_", 1)[0], source):
            changed.append(path)
            if not check:
                _write_atomically(path, setup_cell.dumps(notebook))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks that differ; change nothing")
    parser.add_argument("--config", type=Path, default=ROOT / "_config.yml")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: chapters/*.ipynb")
    args = parser.parse_args(argv)
    source = setup_cell.configured_source(args.config)
    notebooks = args.notebooks or sorted((ROOT / "chapters").glob("[0-9][0-9]*_*.ipynb"))
    changed = sync(notebooks, source, check=args.check)
    for path in changed:
        print(f"{'differs' if args.check else 'rewrote'}: {path}")
    if args.check and changed:
        print(f"{len(changed)} set-up cell(s) differ from _config.yml ({source}); "
              "run `python book/sync_setup_cell.py`", file=sys.stderr)
        return 1
    print(f"set-up cells: {len(notebooks) - len(changed) if args.check else len(notebooks)} of "
          f"{len(notebooks)} match _config.yml (install source {source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
