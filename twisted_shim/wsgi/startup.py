"""
What every way of starting the host shares when something goes wrong:
L{StartupError}, and L{say}, the one-line C{twisted-shim: ...} report.

Invariants: a L{StartupError}'s message is one line, fit to print after
C{twisted-shim: error: }; L{say} never raises (stderr may be closed). This
module imports nothing of the package, so that every other module of the
command line may import it.
"""

from __future__ import annotations

import sys

__all__ = ["PREFIX", "StartupError", "say"]

PREFIX = "twisted-shim"


class StartupError(Exception):
    """
    The server cannot start; the message is one line, printed after
    C{twisted-shim: error: }.
    """


def say(line: str) -> None:
    """Print one C{twisted-shim: } line to stderr, flushed."""
    try:
        sys.stderr.write(f"{PREFIX}: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
