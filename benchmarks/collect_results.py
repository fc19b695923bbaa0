"""Rebuild the per-area part of ``BENCHMARKS.md`` from ``benchmarks/<area>/RESULTS.md``.

Everything in ``BENCHMARKS.md`` above the marker line is kept as written (introduction, machine,
summary, foundation); below it, each area's ``RESULTS.md`` is copied with its headings moved one
level down. Run from the repository root after re-running an area's benchmark::

    python benchmarks/collect_results.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- per-area results below are copied from benchmarks/<area>/RESULTS.md -->"
AREAS = ("hessian", "surface", "connect", "ntk")


def demote(text: str) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def main() -> None:
    path = ROOT / "BENCHMARKS.md"
    head = path.read_text().split(MARKER)[0].rstrip() + "\n\n" + MARKER + "\n"
    parts = [head]
    for area in AREAS:
        res = ROOT / "benchmarks" / area / "RESULTS.md"
        if res.exists():
            parts.append(f"\n<!-- from benchmarks/{area}/RESULTS.md -->\n" + demote(res.read_text().strip()) + "\n")
    path.write_text("".join(parts))


if __name__ == "__main__":
    main()
