"""
The pipe-separated files the conformance runners read
(C{expected_failures.txt}, C{expected_slow.txt}, C{expected_asyncio.txt}).

One row a line, C{field | field | ...}; blank lines and lines starting with
C{#} are comments. The last field (the reason) may itself contain C{|}.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def rows(path: Path, fields: int) -> Iterator[list[str]]:
    """Each row of C{path} split into C{fields} stripped fields."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        yield [part.strip() for part in line.split("|", fields - 1)]
