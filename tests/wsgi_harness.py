"""
Serve one WSGI application with L{twisted_shim.wsgi.WSGIServer}, for the
host tests (C{tests/conftest.py} starts it in a subprocess):

    python tests/wsgi_harness.py MODULE:APP [--max-header N] [--max-body N]
        [--header-timeout S] [--keepalive-timeout S] [--send-timeout S]
        [--max-pause S|none]
        [--high-water N]

It installs the Rust reactor, imports the application, binds a TCP socket on
127.0.0.1 port 0, prints C{PORT <n>} on stdout and runs the reactor until
SIGTERM, which shuts the server down gracefully and exits with status 0.

Everything logged through C{twisted.logger} (C{wsgi.errors} included) goes to
stderr. So do warnings from C{wsgiref.validate}, each on a line starting with
C{WSGI-VALIDATOR-WARNING:}, so that the tests can assert none occurred. If the
application's module has a C{harness_started(server)} function, it is called
with the server once it listens.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import socket
import sys
import warnings
from typing import TextIO, cast
from wsgiref.validate import WSGIWarning

VALIDATOR_WARNING = "WSGI-VALIDATOR-WARNING:"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The application, and the host's options exactly as C{twisted-shim
    serve} takes them (derived from the one configuration definition)."""
    from twisted_shim.cli import add_option
    from twisted_shim.wsgi.config import SERVE, ServerConfig, command_line

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("app", help="MODULE:APP, the WSGI application")
    host = {f.name for f in dataclasses.fields(ServerConfig)}
    for option in command_line(SERVE):
        if option.name in host:
            add_option(p, option)
    # Not a serve option (the tests shrink it to reach backpressure early).
    p.add_argument("--high-water", type=int, default=argparse.SUPPRESS)
    p.add_argument(
        "--nofile", type=int, help="lower RLIMIT_NOFILE to this (descriptor starvation)"
    )
    return p.parse_args(argv)


def collect_validator_warnings(stream: TextIO) -> None:
    """Report every C{WSGIWarning} (not only the first per place) on
    C{stream}, marked; other warnings keep their usual route."""
    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, WSGIWarning):
            stream.write(f"{VALIDATOR_WARNING} {message} ({filename}:{lineno})\n")
            stream.flush()
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("always", WSGIWarning)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import twisted_shim

    reactor = twisted_shim.install()

    from twisted.logger import ILogObserver, globalLogBeginner, textFileLogObserver

    observer = cast(ILogObserver, textFileLogObserver(sys.stderr))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    collect_validator_warnings(sys.stderr)

    from twisted_shim.wsgi import ServerConfig, WSGIServer

    module_name, _, app_name = args.app.partition(":")
    module = importlib.import_module(module_name)
    application = getattr(module, app_name or "application")

    from twisted_shim.wsgi.config import options_from_values

    host = {f.name for f in dataclasses.fields(ServerConfig)}
    values = {name: getattr(args, name) for name in host if hasattr(args, name)}
    high_water = values.pop("high_water", None)
    config = options_from_values(args.app, values).server
    if high_water is not None:
        config = dataclasses.replace(config, high_water=high_water)
    server = WSGIServer(application, config, reactor)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    server.listen(sock)
    started = getattr(module, "harness_started", None)
    if started is not None:
        started(server)

    # SIGTERM stops the reactor (Twisted's handler); before it stops, the
    # server finishes what is in flight for a short grace period.
    reactor.addSystemEventTrigger("before", "shutdown", server.shutdown, 0.5)
    if args.nofile is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    # Announced from the loop's first pass, when the reactor runs with
    # everything it opens at start (its signal wake-up pipe included), so
    # that tests counting the server's descriptors start from the full set.
    reactor.callLater(0, lambda: print(f"PORT {port}", flush=True))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
