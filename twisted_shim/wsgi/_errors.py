"""
C{wsgi.errors}: a text stream whose lines go to C{twisted.logger}.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from twisted.logger import Logger

_log = Logger(namespace="twisted_shim.wsgi")


class ErrorStream(io.TextIOBase):
    """
    The C{wsgi.errors} stream. Each complete line written is one error event
    in C{twisted.logger}; C{flush()} emits a pending partial line.
    """

    def __init__(self) -> None:
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"wsgi.errors takes str, not {type(s).__name__}")
        text = self._pending + s
        *lines, self._pending = text.split("\n")
        for line in lines:
            _log.error("{line}", line=line)
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            _log.error("{line}", line=line)
