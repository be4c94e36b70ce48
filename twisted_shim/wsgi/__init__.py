"""
The WSGI host: HTTP/1.1 and PEP 3333 on the Rust loop, with pause_output.

An application runs on the reactor thread. When it must wait for I/O it
pauses its output, lets a Deferred fire (or an asyncio task, on the
reactor's own loop, finish), and is resumed — no thread per request
(C{docs/pause_output.md} is the contract):

    def app(environ, start_response):
        w = environ["twisted_shim.wait"](treq.get(url), timeout=10.0)
        yield b""
        resp = w.result()
        ...

L{WSGIServer} serves one application on listening sockets of the installed
reactor; C{twisted-shim serve module:app} (L{twisted_shim.cli}) is the command
line, with pre-forked workers and a thread-pool mode for blocking
applications.

The modules, each depending only on those above it:

  - C{startup}: L{StartupError} and the C{twisted-shim:} lines;
  - C{addresses}: C{HOST:PORT}, UNIX paths, C{--forwarded-allow-ips};
  - C{config}: L{ServerConfig} and C{ServeOptions}, every setting, flag and
    default, defined once;
  - C{sockets}: opening listening sockets, removing socket files;
  - C{loading}: importing C{MODULE:APP};
  - C{server}: L{WSGIServer}, the host on the loop;
  - C{threaded}: thread-pool mode;
  - C{runner}: one serving process; C{supervisor}: pre-forked workers;
  - C{service}, C{tap}: the host as a Twisted service and C{twist} plugin.
"""

from __future__ import annotations

from twisted_shim.wsgi.server import ServerConfig, WSGIServer

__all__ = ["ServerConfig", "WSGIServer"]
