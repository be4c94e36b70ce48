"""
C{twist --reactor=rust shim-wsgi [options] MODULE:APP} (and C{twistd}): the
WSGI host as a Twisted plugin (C{twisted/plugins/twisted_shim_wsgi.py}), for
deployments that run Twisted services with C{twist}/C{twistd}. The host's
own command, C{twisted-shim serve}, adds pre-forked workers and a thread
pool.

Invariants: the plugin's options are those of L{twisted_shim.wsgi.config}
offered on C{shim-wsgi}: every limit of C{twisted-shim serve}, with the
same parsers and defaults (L{Options} is derived from the definitions, not
written out); a value is checked when parsed, so a bad one is a usage error
(exit status 64) naming it. Logging is C{twist}'s and C{twistd}'s own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from twisted_shim.wsgi.config import (
    PLUGIN,
    CommandLineOption,
    ServeOptions,
    command_line,
    options_from_values,
)
from twisted_shim.wsgi.loading import load_app
from twisted_shim.wsgi.service import WSGIService
from twisted_shim.wsgi.startup import StartupError

__all__ = ["Options", "makeService"]

_log = Logger(namespace="twisted_shim.wsgi.access")


def _usage_parser(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """C{parse}, with its C{ValueError} as a C{UsageError} of its message."""

    def coerce(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    return coerce


@dataclass(frozen=True)
class _Given:
    """A value given on the command line (C{None} may be one: C{--max-pause 0})."""

    value: Any


def _given(parse: Callable[[str], Any]) -> Callable[[str], _Given]:
    coerce = _usage_parser(parse)
    return lambda text: _Given(coerce(text))


def _appender(option: CommandLineOption) -> Callable[[usage.Options, str], None]:
    """The C{opt_} method of a repeatable option: parse, then append."""
    coerce = _usage_parser(option.setting.parse)

    def opt(self: usage.Options, value: str) -> None:
        self[option.key].append(coerce(value))

    opt.__doc__ = option.help()
    return opt


_OPTIONS = command_line(PLUGIN)


class Options(usage.Options):
    """
    The plugin's command line. Switches and single-valued options are
    C{optFlags} and C{optParameters} (a given value is boxed in L{_Given};
    not given, the definition's default applies); repeatable ones get an
    C{opt_} method each, below the class.
    """

    synopsis = "[options] MODULE:APP"
    longdesc = (
        "Serve a PEP 3333 application with twisted_shim's HTTP/1.1 host on the "
        "reactor thread (pause_output available). Needs --reactor=rust. "
        "MODULE alone means MODULE:application."
    )
    optFlags = [[o.key, None, o.help()] for o in _OPTIONS if o.is_switch]
    optParameters = [
        [o.key, None, None, o.help(), _given(o.setting.parse)]
        for o in _OPTIONS
        if not o.is_switch and not o.setting.repeatable
    ]

    def __init__(self) -> None:
        super().__init__()
        for o in _OPTIONS:
            if o.setting.repeatable:
                self[o.key] = []

    def parseArgs(self, app: str) -> None:
        self["app"] = app

    def postOptions(self) -> None:
        from twisted_shim.reactor import RustReactor

        installed = sys.modules.get("twisted.internet.reactor")
        if not isinstance(installed, RustReactor):
            raise usage.UsageError(
                "shim-wsgi runs on twisted_shim's reactor: use "
                "twist --reactor=rust shim-wsgi ... (or twistd --reactor=rust)"
            )
        values: dict[str, Any] = {}
        for o in _OPTIONS:
            value = self[o.key]
            if o.is_switch:
                values[o.name] = bool(value)
            elif isinstance(value, _Given):
                values[o.name] = value.value
            elif o.setting.repeatable and value:
                values[o.name] = value
        self["options"] = options_from_values(self["app"], values)
        try:
            self["application"] = load_app(self["app"])
        except StartupError as e:
            raise usage.UsageError(str(e)) from None


for _option in _OPTIONS:
    if _option.setting.repeatable:
        setattr(Options, "opt_" + _option.key.replace("-", "_"), _appender(_option))


def _access_log(line: str) -> None:
    _log.info("{line}", line=line)


def makeService(options: Any) -> WSGIService:
    serve: ServeOptions = options["options"]
    config = replace(serve.server, access_log=_access_log if serve.access_log else None)
    return WSGIService(
        options["application"],
        binds=serve.binds,
        uds=serve.uds,
        config=config,
        grace=serve.grace,
        backlog=serve.backlog,
    )
