"""
The WSGI host: HTTP/1.1 and PEP 3333 on the Rust loop, with pause_output.

An application runs on the reactor thread. When it must wait for I/O it
pauses its output, lets a Deferred fire, and is resumed — no thread per
request (see C{shared/specs/pause_output.md}):

    def app(environ, start_response):
        w = environ["twisted_shim.wait"](treq.get(url), timeout=10.0)
        yield b""
        resp = w.result()
        ...

L{WSGIServer} serves one application on listening sockets of the installed
reactor; C{twisted-shim serve module:app} (L{twisted_shim.cli}) is the command
line, with pre-forked workers and a thread-pool mode for blocking
applications.
"""

from __future__ import annotations

from twisted_shim.wsgi.server import ServerConfig, WSGIServer

__all__ = ["ServerConfig", "WSGIServer"]
