"""Serve the book's JavaScript from the site itself: Mermaid, d3, MathJax and the widget manager.

By default the HTML pages would load Mermaid, MathJax and the Jupyter widget manager from public
CDNs. The site test runs without internet, and a classroom may have none either, so this script
installs pinned npm packages into a cache (``.venv/npm`` by default, ignored by git) and copies only
the files the pages need into ``book/_static/vendor/`` (also ignored by git). ``_config.yml`` points
``mermaid_use_local``, ``d3_use_local``, ``mathjax_path`` and ``nb_ipywidgets_js`` at those copies.

Run it with ``make vendor`` (or ``python book/vendor.py``). It is idempotent: when the copies are in
place for the pinned versions it returns in well under a second without touching npm.

Environment variables:

* ``SCRATCHLM_NPM_CACHE`` -- where the npm packages are installed (default ``.venv/npm``).
* ``NPM`` -- the npm executable (default ``npm`` on ``PATH``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
DEST = BOOK / "_static" / "vendor"
STAMP = DEST / "VERSIONS.json"

# Pinned versions. Mermaid matches sphinxcontrib-mermaid 1.2's default (11.12.1) and d3 its default
# (7.9.0); the widget manager 1.x renders ipywidgets 8 state; MathJax 3 is what Sphinx 7 expects.
PACKAGES: dict[str, str] = {
    "mermaid": "11.12.1",
    "d3": "7.9.0",
    "mathjax": "3.2.2",
    "@jupyter-widgets/html-manager": "1.0.15",
    "requirejs": "2.3.7",
}

# (npm package, path inside the package, destination under book/_static/vendor, keep predicate).
# A directory is copied recursively; source maps and unused bundles are left out to keep the site
# small.
COPIES: list[tuple[str, str, str]] = [
    ("mermaid", "dist/mermaid.esm.min.mjs", "mermaid/mermaid.esm.min.mjs"),
    # the ES module imports its chunks by relative path
    ("mermaid", "dist/chunks/mermaid.esm.min", "mermaid/chunks/mermaid.esm.min"),
    ("d3", "dist/d3.min.js", "d3/d3.min.js"),
    # MathJax loads its fonts and any extra TeX extension relative to the combined component
    ("mathjax", "es5/tex-mml-chtml.js", "mathjax/tex-mml-chtml.js"),
    ("mathjax", "es5/input", "mathjax/input"),
    ("mathjax", "es5/output/chtml", "mathjax/output/chtml"),
    ("mathjax", "es5/output/chtml.js", "mathjax/output/chtml.js"),
    ("mathjax", "es5/ui", "mathjax/ui"),
    ("mathjax", "es5/a11y", "mathjax/a11y"),
    ("mathjax", "es5/adaptors", "mathjax/adaptors"),
    ("mathjax", "es5/sre", "mathjax/sre"),
    ("requirejs", "require.js", "widgets/require.js"),
    # embed-amd.js finds its font files next to itself (webpack public path = script directory)
    ("@jupyter-widgets/html-manager", "dist", "widgets"),
]

SKIP_SUFFIXES = (".map", ".d.ts")
SKIP_NAMES = {"embed.js", "libembed-amd.js", "embed.js.LICENSE.txt"}


def npm_cache() -> Path:
    """Where the npm packages are installed (``$SCRATCHLM_NPM_CACHE`` or ``.venv/npm``)."""
    return Path(os.environ.get("SCRATCHLM_NPM_CACHE", ROOT / ".venv" / "npm")).resolve()


def installed_version(cache: Path, package: str) -> str | None:
    """The version of ``package`` installed under ``cache``, or None."""
    manifest = cache / "node_modules" / package / "package.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get("version")


def ensure_npm_packages(cache: Path) -> None:
    """``npm install`` the pinned packages into ``cache`` unless they are already there."""
    missing = [f"{name}@{version}" for name, version in PACKAGES.items()
               if installed_version(cache, name) != version]
    if not missing:
        return
    npm = os.environ.get("NPM") or shutil.which("npm")
    if npm is None:
        raise SystemExit(
            "vendor.py: npm was not found on PATH; install Node.js (e.g. `apt-get install npm`) "
            "or set NPM=/path/to/npm"
        )
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / "package.json"
    if not manifest.exists():
        manifest.write_text(json.dumps({"name": "scratchlm-vendor", "private": True}, indent=2) + "\n")
    print(f"vendor.py: npm install {' '.join(missing)} (into {cache})", flush=True)
    subprocess.run(
        [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
         *[f"{name}@{version}" for name, version in PACKAGES.items()]],
        check=True,
    )
    wrong = {n: installed_version(cache, n) for n, v in PACKAGES.items() if installed_version(cache, n) != v}
    if wrong:
        raise SystemExit(f"vendor.py: npm did not install the pinned versions: {wrong} (wanted {PACKAGES})")


def iter_files(source: Path) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to ``source``) for a file or every kept file under a directory."""
    if source.is_file():
        yield source, Path(source.name)
        return
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.name.endswith(SKIP_SUFFIXES) and path.name not in SKIP_NAMES:
            yield path, path.relative_to(source)


def build_vendor_tree(cache: Path, target: Path) -> int:
    """Copy the needed files from the npm cache into ``target``; returns the number of files."""
    count = 0
    for package, inside, destination in COPIES:
        source = cache / "node_modules" / package / inside
        if not source.exists():
            raise SystemExit(f"vendor.py: expected {source} in npm package {package}; it is missing")
        if source.is_file():
            out = target / destination
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out)
            count += 1
            continue
        for path, relative in iter_files(source):
            out = target / destination / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)
            count += 1
    return count


def expected_stamp() -> dict:
    """What ``VERSIONS.json`` records: the pinned versions and the copy list."""
    return {"packages": PACKAGES, "copies": [list(c) for c in COPIES]}


def is_up_to_date() -> bool:
    """True when ``book/_static/vendor`` holds the copies for the pinned versions."""
    if not STAMP.is_file():
        return False
    try:
        stamp = json.loads(STAMP.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    if stamp != expected_stamp():
        return False
    return all((DEST / destination).exists() for _, _, destination in COPIES)


def main() -> int:
    if is_up_to_date():
        print(f"vendor.py: {DEST.relative_to(ROOT)} is up to date")
        return 0
    cache = npm_cache()
    ensure_npm_packages(cache)
    # Build next to the destination and swap it in, so that an interrupted run never leaves a
    # half-written vendor directory behind.
    DEST.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".vendor-", dir=DEST.parent))
    try:
        count = build_vendor_tree(cache, staging)
        (staging / STAMP.name).write_text(json.dumps(expected_stamp(), indent=2) + "\n", encoding="utf-8")
        if DEST.exists():
            shutil.rmtree(DEST)
        staging.rename(DEST)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    size = sum(p.stat().st_size for p in DEST.rglob("*") if p.is_file())
    print(f"vendor.py: copied {count} files ({size / 1e6:.1f} MB) into {DEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
