"""
The command line: C{twisted-shim serve MODULE:APP [options]} (also
C{python -m twisted_shim serve ...}).

    twisted-shim serve myapp:application --bind 0.0.0.0:8000 --workers 4

serves a WSGI application with the Rust host, in this process
(L{twisted_shim.wsgi.runner}) or in pre-forked workers
(L{twisted_shim.wsgi.supervisor}), on the reactor thread or from a thread
pool (C{--threads N}, L{twisted_shim.wsgi.threaded}). Once it listens it
prints, to stderr, one C{twisted-shim: listening on URL} line per listener
and then C{twisted-shim: ready (pid P, workers N, threads T)}. A startup
error is one C{twisted-shim: error: ...} line and exit status 1. SIGTERM or
SIGINT stops it gracefully (exit status 0): it stops accepting and lets the
requests in flight finish for up to C{--grace} seconds; a second signal
aborts them.

The options of C{serve} are not written here: they are the settings of
L{twisted_shim.wsgi.config} offered on C{serve}, with their parsers, help
and defaults. This module only turns them into argparse arguments and back
into a L{ServeOptions}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted_shim import __version__
from twisted_shim.wsgi.config import (
    DEFAULT_BIND,
    SERVE,
    CommandLineOption,
    ServeOptions,
    command_line,
    options_from_values,
)
from twisted_shim.wsgi.runner import serve
from twisted_shim.wsgi.startup import StartupError
from twisted_shim.wsgi.supervisor import Supervisor

__all__ = ["DEFAULT_BIND", "main", "build_parser", "options_from"]

PROG = "twisted-shim"


class _Parser(argparse.ArgumentParser):
    """Report a usage error as one C{twisted-shim: error:} line, status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{PROG}: error: {message}\n")


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """C{parse}, with its C{ValueError} as argparse's usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_option(parser: argparse.ArgumentParser, option: CommandLineOption) -> None:
    """
    Add C{option} to C{parser}. Its default is left out of the namespace
    (L{options_from} takes it from the definition), so only what was given
    is in it.
    """
    s = option.setting
    kwargs: dict[str, Any] = {
        "dest": option.name,
        "default": argparse.SUPPRESS,
        "help": option.help(),
    }
    if option.is_switch:
        kwargs["action"] = "store_true"
    else:
        kwargs["metavar"] = s.metavar
        kwargs["action"] = "append" if s.repeatable else "store"
        if s.choices:
            kwargs["choices"] = s.choices
            kwargs.pop("metavar")
        else:
            kwargs["type"] = _argument_type(s.parse)
    parser.add_argument(s.flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """
    The C{twisted-shim} argument parser; C{serve}'s options are those of
    L{twisted_shim.wsgi.config} offered on C{serve}.
    """
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
            "Serve the WSGI application APP of MODULE over HTTP/1.1 (MODULE"
            " alone: MODULE:application). The reactor is installed before"
            " MODULE is imported. SIGTERM or SIGINT stops gracefully; a second"
            " one aborts the requests in flight."
        ),
    )
    s.add_argument(
        "app",
        metavar="MODULE:APP",
        help="the application, e.g. myapp:application (MODULE alone: MODULE:application)",
    )
    for option in command_line(SERVE):
        add_option(s, option)
    return parser


def options_from(args: argparse.Namespace) -> ServeOptions:
    """The L{ServeOptions} of parsed C{serve} arguments."""
    values = {
        option.name: getattr(args, option.name)
        for option in command_line(SERVE)
        if hasattr(args, option.name)
    }
    return options_from_values(args.app, values)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{twisted-shim} with C{argv} (default: C{sys.argv[1:]}); return the
    exit status.
    """
    args = build_parser().parse_args(argv)
    options = options_from(args)
    try:
        # Recycling needs a supervisor to start the replacement, even for
        # one worker.
        if options.workers > 1 or options.max_requests > 0:
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
