"""
Helpers shared by the tests, the benchmarks and the conformance runs (as
C{twisted.internet.testing} is Twisted's): nothing here is used by the
reactor or the WSGI host.

Invariants: standard library only, and no import of the reactor or of the
Rust extension, so that a benchmark harness can import it before it chooses
a reactor, or without the extension built.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port on C{host} that was free a moment ago (nothing listens on it
    now; another process may take it before the caller binds it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
