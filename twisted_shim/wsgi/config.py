"""
The WSGI host's configuration, defined once.

L{ServerConfig} is what one L{twisted_shim.wsgi.server.WSGIServer} is told
(its limits and environ flags); L{ServeOptions} is what a command line says
(the application, where to listen, workers, threads, grace, ... and a
L{ServerConfig}). Every field a command line can set carries a L{Setting} in
its metadata, made with L{setting}: its flag, help, metavar, parser, and
which commands offer it. Its default is the field's default and nowhere
else. From these fields:

  - C{twisted-shim serve}'s argparse parser (L{twisted_shim.cli}),
  - the C{shim-wsgi} plugin's C{usage.Options} (L{twisted_shim.wsgi.tap}),
  - L{WSGIServer}'s and L{WSGIService}'s defaults

are derived, so that adding a knob is one field here plus the code that uses
it.

Invariants: the names and flags of command-line fields are unique across
L{ServeOptions} and L{ServerConfig} (a command line's values are one flat
mapping, split by L{options_from_values}; C{ServeOptions.access_log}, a
switch, is what makes C{ServerConfig.access_log}, a callable, be set); a L{Setting}'s parser takes the text of one
command-line value and returns the field's value, or raises C{ValueError}
with a one-line message (each front end wraps it in its own usage error);
a default never goes through the parser. This module imports only
L{twisted_shim.wsgi.addresses}.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted_shim.wsgi.addresses import (
    TCPAddress,
    parse_bind,
    parse_forwarded_allow_ips,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_BIND",
    "LOG_LEVELS",
    "CommandLineOption",
    "ServeOptions",
    "ServerConfig",
    "Setting",
    "command_line",
    "default_of",
    "options_from_values",
    "setting",
]

#: The command lines a setting may be offered on: C{twisted-shim serve} and
#: C{twist shim-wsgi} (also C{twistd shim-wsgi}).
SERVE = "serve"
PLUGIN = "shim-wsgi"
COMMANDS = frozenset({SERVE, PLUGIN})

#: Where a command line listens when it is given neither C{--bind} nor
#: C{--uds}.
DEFAULT_BIND = "127.0.0.1:8000"

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


# Parsers of one command-line value (ValueError with a one-line message).


def _number(
    kind: Callable[[str], float], minimum: float, what: str
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {what}") from None
        if value < minimum or value != value or value == float("inf"):
            raise ValueError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, 1, "a positive integer")
non_negative_int = _number(int, 0, "a non-negative integer")
positive_seconds = _number(float, 0.001, "a positive number of seconds")
non_negative_seconds = _number(float, 0, "a non-negative number of seconds")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    """
    A non-negative number of bytes, with an optional binary unit suffix:
    C{1048576}, C{64K}, C{16M}, C{8G} (K, M, G, T; any case; an optional
    trailing B or iB).
    """
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    number = t[: len(t) - len(unit)]
    try:
        value = int(number)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a size in bytes (e.g. 1048576, 64K, 1G)"
        ) from None
    if value < 0:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 1048576, 64K, 1G)")
    return value * _SIZE_UNITS[unit]


def directory(text: str) -> str:
    """An existing directory."""
    if not os.path.isdir(text):
        raise ValueError(f"{text!r} is not a directory")
    return text


def _seconds_or_no_cap(text: str) -> float | None:
    """Non-negative seconds; 0 means no cap (C{None})."""
    return non_negative_seconds(text) or None


def _log_level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text


# The description of a command-line setting.


@dataclass(frozen=True)
class Setting:
    """
    How one configuration field is given on command lines.

    @ivar flag: The long option, e.g. C{--max-header}.
    @ivar help: What it does, without its default (each front end shows the
        default its own way).
    @ivar metavar: The value's name in help (C{BYTES}, C{S}, ...), or
        C{None} for a switch: a flag without a value that sets C{True}.
    @ivar parse: The parser of one value's text (see the module docstring).
    @ivar repeatable: Whether the flag may be given several times; the field
        is then a tuple of the parsed values.
    @ivar choices: The values allowed, if they are a fixed list.
    @ivar commands: The commands that offer it (a subset of L{COMMANDS}).
    @ivar shown_default: How the default reads in help, when not just the
        field's default.
    """

    flag: str
    help: str
    metavar: str | None = None
    parse: Callable[[str], Any] = str
    repeatable: bool = False
    choices: tuple[str, ...] = ()
    commands: frozenset[str] = COMMANDS
    shown_default: str | None = None


def setting(default: Any, flag: str, help: str, **kwargs: Any) -> Any:
    """
    A dataclass field with C{default}, given on command lines as C{flag}
    (the other keyword arguments are L{Setting}'s).
    """
    return field(default=default, metadata={"setting": Setting(flag, help, **kwargs)})


# The definitions.


@dataclass(frozen=True)
class ServerConfig:
    """
    Limits and behaviour of a L{WSGIServer}.

    @ivar max_header: Largest request line plus headers, in bytes; a larger
        head is answered 431.
    @ivar max_body: Largest request body, in bytes (de-chunked); a larger one
        is answered 413 (at once when C{Content-Length} says so).
    @ivar body_buffer: Bytes of a request body kept in memory; a longer body
        is spooled, as it arrives, to a temporary file that has no name (so
        nothing is left on disk), and C{wsgi.input} reads from the file
        (nginx's C{client_body_buffer_size}). A body that cannot be stored is
        answered 503 (disk full) or 500, and logged.
    @ivar body_dir: The directory of those files (C{None}: Python's
        C{tempfile.gettempdir()}, i.e. C{$TMPDIR} or C{/tmp}).
    @ivar header_timeout: Seconds a client may take to send a request head,
        counted from its first byte (for a new connection, from the
        connection); then 408 and close.
    @ivar body_timeout: Seconds a request body may go without a byte
        arriving; then 408 and close (nginx's C{client_body_timeout}).
    @ivar min_body_rate: Bytes per second a request body must average once
        its first C{body_timeout} has passed: a body's time budget is
        C{body_timeout} plus one second per C{min_body_rate} bytes received
        (Apache's C{RequestReadTimeout body=...,MinRate=...}); a slower body
        is 408. 0: no minimum.
    @ivar keepalive_timeout: Seconds an idle persistent connection is kept.
    @ivar send_timeout: Seconds a client may take none of its response
        before the connection is aborted (the request's iterable is closed).
    @ivar max_pause: Server-wide cap, in seconds, on one pause of a request's
        output (C{None}: no cap); a per-call C{timeout} is capped by it.
    @ivar forwarded_allow_ips: Peers (addresses, CIDR networks, or C{"*"})
        whose C{X-Forwarded-For} and C{X-Forwarded-Proto} set C{REMOTE_ADDR}
        and C{wsgi.url_scheme}, as behind a reverse proxy; peers on a UNIX
        socket are always believed when this is not empty. Empty: the headers
        are never believed. The default, loopback, is gunicorn's and
        uvicorn's.
    @ivar high_water: Bytes queued for a connection above which the host
        stops pulling from the application's iterable until it drains.
    @ivar access_log: Called with one line (common log format plus the
        request's duration) per response, or C{None}.
    @ivar url_scheme: C{wsgi.url_scheme}.
    @ivar multithread: C{wsgi.multithread} (C{True} in thread-pool mode).
    @ivar multiprocess: C{wsgi.multiprocess} (C{True} with several workers).
    @ivar pause_keys: Whether environ gets the pause_output keys (C{False}
        in thread-pool mode, where a thread may simply block).
    """

    max_header: int = setting(
        64 * 1024,
        "--max-header",
        "largest request head, in bytes; larger: 431",
        metavar="BYTES",
        parse=positive_int,
    )
    max_body: int = setting(
        1 << 30,
        "--max-body",
        "largest request body (de-chunked), e.g. 8G; larger: 413",
        metavar="BYTES",
        parse=byte_size,
        shown_default="1G",
    )
    body_buffer: int = setting(
        1 << 20,
        "--body-buffer",
        "bytes of a request body kept in memory; the rest is spooled to an "
        "unnamed temporary file in --body-dir",
        metavar="BYTES",
        parse=byte_size,
        shown_default="1M",
    )
    body_dir: str | None = setting(
        None,
        "--body-dir",
        "directory of the temporary files of request bodies",
        metavar="DIR",
        parse=directory,
        shown_default="$TMPDIR or /tmp",
    )
    header_timeout: float = setting(
        10.0,
        "--header-timeout",
        "seconds to receive a request head; then 408",
        metavar="S",
        parse=positive_seconds,
    )
    body_timeout: float = setting(
        30.0,
        "--body-timeout",
        "seconds a request body may go without a byte; then 408",
        metavar="S",
        parse=positive_seconds,
    )
    min_body_rate: int = setting(
        1024,
        "--min-body-rate",
        "bytes/s a request body must average after its first --body-timeout; "
        "0: no minimum",
        metavar="BYTES",
        parse=non_negative_int,
    )
    keepalive_timeout: float = setting(
        5.0,
        "--keepalive-timeout",
        "seconds an idle persistent connection is kept",
        metavar="S",
        parse=positive_seconds,
    )
    send_timeout: float = setting(
        60.0,
        "--send-timeout",
        "seconds a client may take none of its response before it is cut off",
        metavar="S",
        parse=positive_seconds,
    )
    max_pause: float | None = setting(
        300.0,
        "--max-pause",
        "cap on one pause of a response, in seconds; 0: no cap",
        metavar="S",
        parse=_seconds_or_no_cap,
    )
    forwarded_allow_ips: tuple[str, ...] = setting(
        ("127.0.0.1", "::1"),
        "--forwarded-allow-ips",
        "comma-separated addresses or networks (or *) of reverse proxies "
        "whose X-Forwarded-For and X-Forwarded-Proto set REMOTE_ADDR and "
        "wsgi.url_scheme; UNIX-socket peers too unless empty; '' to believe "
        "no one",
        metavar="IPS",
        parse=parse_forwarded_allow_ips,
    )
    high_water: int = 256 * 1024
    access_log: Callable[[str], None] | None = None
    url_scheme: str = "http"
    multithread: bool = False
    multiprocess: bool = False
    pause_keys: bool = True


@dataclass(frozen=True)
class ServeOptions:
    """
    What a command line asked for: C{twisted-shim serve} (L{twisted_shim.cli})
    or the C{shim-wsgi} plugin (L{twisted_shim.wsgi.tap}). Each field's
    L{Setting} help is its documentation.

    @ivar app: C{MODULE:APP}, or C{MODULE} for C{MODULE:application}.
    @ivar server: The host's L{ServerConfig} (its command-line fields are
        flags of the same commands).
    """

    app: str
    binds: tuple[TCPAddress, ...] = setting(
        (),
        "--bind",
        "listen on HOST:PORT ([::1]:8000 for IPv6, port 0 for any); repeatable",
        metavar="HOST:PORT",
        parse=parse_bind,
        repeatable=True,
        shown_default=f"{DEFAULT_BIND} when neither --bind nor --uds is given",
    )
    uds: tuple[str, ...] = setting(
        (),
        "--uds",
        "listen on a UNIX socket (a stale socket file is removed); repeatable",
        metavar="PATH",
        repeatable=True,
        shown_default="none",
    )
    workers: int = setting(
        1,
        "--workers",
        "1: serve in this process; N>1: a supervisor forks N workers, each "
        "with its own SO_REUSEPORT socket",
        metavar="N",
        parse=positive_int,
        commands=frozenset({SERVE}),
    )
    max_requests: int = setting(
        0,
        "--max-requests",
        "recycle a worker after this many requests (plus its jitter): the "
        "supervisor starts its replacement, then stops it gracefully; 0: "
        "never (implies a supervisor, even with --workers 1)",
        metavar="N",
        parse=non_negative_int,
        commands=frozenset({SERVE}),
    )
    max_requests_jitter: int = setting(
        0,
        "--max-requests-jitter",
        "each worker's limit is --max-requests plus a random 0..J, so that "
        "workers are not all recycled at once",
        metavar="J",
        parse=non_negative_int,
        commands=frozenset({SERVE}),
    )
    threads: int = setting(
        0,
        "--threads",
        "0: the application runs on the reactor thread; N>0: in a pool of N "
        "threads (it may block; no pause keys)",
        metavar="N",
        parse=non_negative_int,
        commands=frozenset({SERVE}),
    )
    gc_threshold: int = setting(
        50_000,
        "--gc-threshold",
        "allocations between the garbage collector's young collections "
        "(Python's own default is 700, 2000 from 3.13; 0 keeps it); objects made at startup "
        "are frozen out of collections either way (gc.freeze)",
        metavar="N",
        parse=non_negative_int,
        commands=frozenset({SERVE}),
    )
    access_log: bool = setting(
        False,
        "--access-log",
        "log one line per response (serve: to stdout; twist/twistd: to Twisted's log)",
    )
    grace: float = setting(
        30.0,
        "--grace",
        "at shutdown (SIGTERM/SIGINT), seconds requests in flight may take to finish",
        metavar="S",
        parse=non_negative_seconds,
    )
    backlog: int = setting(
        1024, "--backlog", "listen backlog", metavar="N", parse=positive_int
    )
    # twist has a --log-level of its own (before the plugin's name), and
    # twistd its own log options: the plugin leaves logging to them.
    log_level: str = setting(
        "warn",
        "--log-level",
        "Twisted log events shown on stderr",
        metavar="LEVEL",
        parse=_log_level,
        choices=LOG_LEVELS,
        commands=frozenset({SERVE}),
    )
    server: ServerConfig = field(default_factory=ServerConfig)


# What front ends derive from the definitions.


@dataclass(frozen=True)
class CommandLineOption:
    """
    One field of L{ServeOptions} or L{ServerConfig} as a command line has it.

    @ivar name: The field's name (the key of L{options_from_values}).
    @ivar setting: The field's L{Setting}.
    @ivar default: The field's default.
    """

    name: str
    setting: Setting
    default: Any

    @property
    def key(self) -> str:
        """The flag without its dashes (C{max-header})."""
        return self.setting.flag.lstrip("-")

    @property
    def is_switch(self) -> bool:
        """Whether the flag takes no value."""
        return self.setting.metavar is None

    def shown_default(self) -> str | None:
        """The default as help shows it, or C{None} for a switch."""
        if self.setting.shown_default is not None:
            return self.setting.shown_default
        if self.is_switch:
            return None
        return _show(self.default)

    def help(self) -> str:
        """The help text, with the default."""
        shown = self.shown_default()
        return (
            self.setting.help
            if shown is None
            else f"{self.setting.help} (default {shown})"
        )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _settings(cls: type) -> Iterator[CommandLineOption]:
    for f in dataclasses.fields(cls):
        s = f.metadata.get("setting")
        if s is not None:
            yield CommandLineOption(f.name, s, f.default)


def command_line(command: str) -> list[CommandLineOption]:
    """
    The options of C{command} (C{"serve"} or C{"shim-wsgi"}), in the order
    their help lists them: L{ServeOptions}'s up to C{access_log}, then the
    host's (L{ServerConfig}), then the rest of L{ServeOptions}.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    own = list(_settings(ServeOptions))
    split = next(i for i, o in enumerate(own) if o.name == "access_log") + 1
    ordered = [*own[:split], *_settings(ServerConfig), *own[split:]]
    return [o for o in ordered if command in o.setting.commands]


def default_of(cls: type, name: str) -> Any:
    """The default of field C{name} of dataclass C{cls}."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}.{name} has no default")
            return f.default
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def options_from_values(app: str, values: Mapping[str, Any]) -> ServeOptions:
    """
    The L{ServeOptions} of a command line: C{values} maps field names to the
    values given (already parsed; lists for repeatable flags); a field not
    in it keeps its default. With neither C{binds} nor C{uds}, it listens on
    L{DEFAULT_BIND}.
    """
    server_names = {o.name for o in _settings(ServerConfig)}
    own_names = {o.name for o in _settings(ServeOptions)}
    unknown = set(values) - server_names - own_names
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    server = ServerConfig(
        **{k: _frozen(v) for k, v in values.items() if k in server_names}
    )
    own = {k: _frozen(v) for k, v in values.items() if k in own_names}
    options = ServeOptions(app=app, server=server, **own)
    if not options.binds and not options.uds:
        options = dataclasses.replace(options, binds=(parse_bind(DEFAULT_BIND),))
    return options


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_unique() -> None:
    shared = {o.name for o in _settings(ServeOptions)} & {
        o.name for o in _settings(ServerConfig)
    }
    flags = [o.setting.flag for o in _settings(ServeOptions)] + [
        o.setting.flag for o in _settings(ServerConfig)
    ]
    if shared or len(set(flags)) != len(flags):
        raise TypeError("ServeOptions and ServerConfig share a setting")


_check_unique()
