"""
How the benchmark scripts report: a plain table for the terminal, the same
table in Markdown (ready for the README, under its header lines), titled
lists, and the JSON file of results.

Used by C{reactor_bench.py} and C{wsgi_bench.py}; each script decides its
columns and cell text, this module only lays them out. Invariants: a table
is a header row plus rows of strings, all of the same length, and a column
is left- or right-aligned by C{right}; output is deterministic for the same
input (nothing here measures or reads the clock); a JSON file is written
whole, indented, with a final newline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "markdown_table",
    "plain_table",
    "print_list",
    "print_markdown",
    "read_previous",
    "write_json",
]


def plain_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Sequence[bool],
    *,
    group_column: int | None = None,
) -> str:
    """
    C{rows} under C{headers} and a rule, columns two spaces apart; a blank
    line between groups of rows whose C{group_column} differs.
    """
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w)
            for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if group_column is not None:
            if previous is not None and row[group_column] != previous:
                out.append("")
            previous = row[group_column]
        out.append(line(row))
    return "\n".join(out)


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Sequence[bool],
    *,
    code_columns: int = 0,
) -> str:
    """
    C{rows} as a Markdown table; the first C{code_columns} cells of a row
    (names) are set as code.
    """
    out = ["| " + " | ".join(headers) + " |"]
    out.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    for row in rows:
        cells = [f"`{c}`" if i < code_columns else c for i, c in enumerate(row)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def print_list(title: str, lines: Sequence[str]) -> None:
    """C{title:} and the lines under it, indented."""
    print(f"{title}:")
    for line in lines:
        print(f"  {line}")


def print_markdown(header: Sequence[str], table: str, bullets: Sequence[str]) -> None:
    """
    The Markdown section: the header lines (each ending in a Markdown line
    break), the table, then the bullets.
    """
    print("Markdown:")
    print()
    print("\n".join(f"{line}  " for line in header))
    print()
    print(table)
    print()
    for bullet in bullets:
        print(f"- {bullet}")
    print()


def read_previous(path: Path, key: str) -> dict[str, Any]:
    """
    The C{key} section of the results already in C{path} (to merge a partial
    run into), or an empty one if there are none or they cannot be read.
    """
    if not path.exists():
        return {}
    try:
        previous: dict[str, Any] = json.loads(path.read_text()).get(key, {})
    except (OSError, ValueError):
        return {}
    return previous


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write C{doc} to C{path} (its directory made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
