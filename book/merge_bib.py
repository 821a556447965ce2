"""Merge the chapter authors' BibTeX parts into the book's bibliography.

Authors drop entries into ``book/references_parts/<area>.bib``; the build reads only
``book/references.bib``. This script appends every entry whose key is not yet in
``references.bib`` (in the order the parts list them) and reports keys that two files define
differently, without touching either. Running it again changes nothing.

    python book/merge_bib.py            # merge
    python book/merge_bib.py --check    # exit 1 if something is left to merge (for CI)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
TARGET = BOOK / "references.bib"
PARTS = BOOK / "references_parts"
ENTRY_START = re.compile(r"@(\w+)\s*\{\s*([^,\s]+)\s*,")
NOT_ENTRIES = {"comment", "string", "preamble"}


def split_entries(text: str) -> list[tuple[str, str]]:
    """(key, full entry text) for each BibTeX entry, found by matching braces."""
    entries = []
    position = 0
    while (match := ENTRY_START.search(text, position)) is not None:
        depth, opening = 0, text.index("{", match.start())
        for index in range(opening, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                break
        else:
            raise ValueError(f"unbalanced braces in the entry starting {text[match.start():match.start() + 60]!r}")
        if match.group(1).lower() not in NOT_ENTRIES:
            entries.append((match.group(2), text[match.start():index + 1]))
        position = index + 1
    return entries


def _normalised(entry: str) -> str:
    return re.sub(r"\s+", " ", entry).strip().lower()


def merge(check_only: bool = False) -> int:
    text = TARGET.read_text(encoding="utf-8")
    known = dict(split_entries(text))
    additions: list[str] = []
    conflicts: list[str] = []
    for part in sorted(PARTS.glob("*.bib")) if PARTS.is_dir() else []:
        for key, entry in split_entries(part.read_text(encoding="utf-8")):
            if key not in known:
                known[key] = entry
                additions.append(f"% from references_parts/{part.name}\n{entry}")
            elif _normalised(known[key]) != _normalised(entry):
                conflicts.append(f"{key}: {part.name} differs from the entry already merged")
    for conflict in conflicts:
        print(f"merge_bib.py: conflict (kept the first) {conflict}", file=sys.stderr)
    if check_only:
        if additions:
            print(f"merge_bib.py: {len(additions)} entries are not merged yet; run python book/merge_bib.py")
        return 1 if additions else 0
    if additions:
        TARGET.write_text(text.rstrip() + "\n\n" + "\n\n".join(additions) + "\n", encoding="utf-8")
    print(f"merge_bib.py: added {len(additions)} entries; {len(known)} in {TARGET.name}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, do not write")
    sys.exit(merge(check_only=parser.parse_args().check))
