"""Where a benchmark's result goes: ``<out>/<name>_<card slug>_<date><suffix>.json`` and ``.md``,
written atomically (``harness.fileio.atomic_write``), the Markdown also printed."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def slug(text: str) -> str:
    """A file-name part: runs of anything but letters and digits become one ``_``; lower case."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def write_results(out: Path, name: str, card: str, date: str, doc: dict, markdown: str,
                  suffix: str = "") -> Path:
    """Write ``doc`` (JSON) and ``markdown`` beside each other; returns the common stem."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from harness.fileio import atomic_write

    stem = Path(out) / f"{name}_{slug(card)}_{date}{suffix}"
    atomic_write(stem.with_suffix(".json"), json.dumps(doc, indent=1, default=str).encode())
    atomic_write(stem.with_suffix(".md"), markdown.encode())
    print(markdown)
    return stem
