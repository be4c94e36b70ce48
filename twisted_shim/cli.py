"""
The command line: C{twisted-shim serve MODULE:APP [options]} (also
C{python -m twisted_shim serve ...}).

    twisted-shim serve myapp:application --bind 0.0.0.0:8000 --workers 4

serves a WSGI application with the Rust host, in this process or in
pre-forked workers (L{twisted_shim.wsgi.workers}), on the reactor thread or
from a thread pool (C{--threads N}, L{twisted_shim.wsgi.threaded}). Once it
listens it prints, to stderr, one C{twisted-shim: listening on URL} line per
listener and then C{twisted-shim: ready (pid P, workers N, threads T)}. A
startup error is one C{twisted-shim: error: ...} line and exit status 1.
SIGTERM or SIGINT stops it gracefully (exit status 0): it stops accepting and
lets the requests in flight finish for up to C{--grace} seconds; a second
signal aborts them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from twisted_shim import __version__
from twisted_shim.wsgi.workers import (
    ServeOptions,
    StartupError,
    Supervisor,
    TCPAddress,
    parse_bind,
    parse_forwarded_allow_ips,
    serve,
)

__all__ = ["main", "build_parser", "options_from"]

PROG = "twisted-shim"
DEFAULT_BIND = "127.0.0.1:8000"


class _Parser(argparse.ArgumentParser):
    """Report a usage error as one C{twisted-shim: error:} line, status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{PROG}: error: {message}\n")


def _number(
    kind: Callable[[str], float], minimum: float, what: str
) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    convert.__name__ = what
    return convert


def _forwarded_allow_ips(text: str) -> tuple[str, ...]:
    try:
        return parse_forwarded_allow_ips(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bind(text: str) -> TCPAddress:
    try:
        return parse_bind(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The C{twisted-shim} argument parser."""
    parser = _Parser(
        prog=PROG,
        description="Serve WSGI applications on twisted_shim's Rust reactor.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    s = commands.add_parser(
        "serve",
        help="serve a WSGI application",
        description=(
            "Serve the WSGI application APP of MODULE over HTTP/1.1. The reactor"
            " is installed before MODULE is imported. SIGTERM or SIGINT stops"
            " gracefully; a second one aborts the requests in flight."
        ),
    )
    s.add_argument(
        "app", metavar="MODULE:APP", help="the application, e.g. myapp:application"
    )
    s.add_argument(
        "--bind",
        action="append",
        type=_bind,
        default=[],
        metavar="HOST:PORT",
        help=f"listen on HOST:PORT ([::1]:8000 for IPv6, port 0 for any); repeatable; default {DEFAULT_BIND} when neither --bind nor --uds is given",
    )
    s.add_argument(
        "--uds",
        action="append",
        default=[],
        metavar="PATH",
        help="listen on a UNIX socket (a stale socket file is removed); repeatable",
    )
    s.add_argument(
        "--workers",
        type=_number(int, 1, "a positive integer"),
        default=1,
        metavar="N",
        help="1 (default): serve in this process; N>1: a supervisor forks N workers, each with its own SO_REUSEPORT socket",
    )
    s.add_argument(
        "--threads",
        type=_number(int, 0, "a non-negative integer"),
        default=0,
        metavar="N",
        help="0 (default): the application runs on the reactor thread; N>0: in a pool of N threads (it may block; no pause keys)",
    )
    s.add_argument(
        "--access-log",
        action="store_true",
        help="print one line per response to stdout",
    )
    s.add_argument(
        "--max-header",
        type=_number(int, 1, "a positive integer"),
        default=65536,
        metavar="BYTES",
        help="largest request head (default 65536; larger: 431)",
    )
    s.add_argument(
        "--max-body",
        type=_number(int, 0, "a non-negative integer"),
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="largest request body (default 16777216; larger: 413)",
    )
    s.add_argument(
        "--header-timeout",
        type=_number(float, 0.001, "a positive number of seconds"),
        default=10.0,
        metavar="S",
        help="seconds to receive a request head (default 10)",
    )
    s.add_argument(
        "--keepalive-timeout",
        type=_number(float, 0.001, "a positive number of seconds"),
        default=5.0,
        metavar="S",
        help="seconds an idle persistent connection is kept (default 5)",
    )
    s.add_argument(
        "--send-timeout",
        type=_number(float, 0.001, "a positive number of seconds"),
        default=60.0,
        metavar="S",
        help="seconds a client may take none of its response before it is cut off (default 60)",
    )
    s.add_argument(
        "--max-pause",
        type=_number(float, 0, "a non-negative number of seconds"),
        default=300.0,
        metavar="S",
        help="cap on one pause of a response (default 300; 0: no cap)",
    )
    s.add_argument(
        "--grace",
        type=_number(float, 0, "a non-negative number of seconds"),
        default=30.0,
        metavar="S",
        help="on SIGTERM/SIGINT, seconds requests in flight may take to finish (default 30)",
    )
    s.add_argument(
        "--backlog",
        type=_number(int, 1, "a positive integer"),
        default=1024,
        metavar="N",
        help="listen backlog (default 1024)",
    )
    s.add_argument(
        "--forwarded-allow-ips",
        type=_forwarded_allow_ips,
        default=("127.0.0.1", "::1"),
        metavar="IPS",
        help="comma-separated addresses or networks (or *) of reverse proxies "
        "whose X-Forwarded-For and X-Forwarded-Proto set REMOTE_ADDR and "
        "wsgi.url_scheme; UNIX-socket peers too unless empty "
        "(default 127.0.0.1,::1; '' to believe no one)",
    )
    s.add_argument(
        "--log-level",
        choices=["debug", "info", "warn", "error", "critical"],
        default="warn",
        help="Twisted log events shown on stderr (default warn)",
    )
    return parser


def options_from(args: argparse.Namespace) -> ServeOptions:
    """The L{ServeOptions} of parsed C{serve} arguments."""
    binds: list[TCPAddress] = list(args.bind)
    if not binds and not args.uds:
        binds = [parse_bind(DEFAULT_BIND)]
    return ServeOptions(
        app=args.app,
        binds=tuple(binds),
        uds=tuple(args.uds),
        workers=int(args.workers),
        threads=int(args.threads),
        access_log=bool(args.access_log),
        max_header=int(args.max_header),
        max_body=int(args.max_body),
        header_timeout=float(args.header_timeout),
        keepalive_timeout=float(args.keepalive_timeout),
        send_timeout=float(args.send_timeout),
        max_pause=float(args.max_pause) or None,
        grace=float(args.grace),
        backlog=int(args.backlog),
        log_level=str(args.log_level),
        forwarded_allow_ips=tuple(args.forwarded_allow_ips),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{twisted-shim} with C{argv} (default: C{sys.argv[1:]}); return the
    exit status.
    """
    args = build_parser().parse_args(argv)
    options = options_from(args)
    try:
        if options.workers > 1:
            return Supervisor(options).run()
        return serve(options)
    except StartupError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        sys.stderr.flush()
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
