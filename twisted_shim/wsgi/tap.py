"""
C{twist --reactor=rust shim-wsgi [options] MODULE:APP} (and C{twistd}): the
WSGI host as a Twisted plugin (C{twisted/plugins/twisted_shim_wsgi.py}), for
deployments that run Twisted services with C{twist}/C{twistd}. The host's
own command, C{twisted-shim serve}, adds pre-forked workers and a thread
pool.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from twisted_shim.wsgi.server import ServerConfig
from twisted_shim.wsgi.service import WSGIService
from twisted_shim.wsgi.workers import (
    StartupError,
    load_app,
    parse_bind,
    parse_forwarded_allow_ips,
)

_log = Logger(namespace="twisted_shim.wsgi.access")

DEFAULT_BIND = "127.0.0.1:8000"


class Options(usage.Options):
    synopsis = "[options] MODULE:APP"
    longdesc = (
        "Serve a PEP 3333 application with twisted_shim's HTTP/1.1 host on the "
        "reactor thread (pause_output available). Needs --reactor=rust."
    )
    optFlags = [["access-log", None, "log one line per response (twisted.logger)"]]
    optParameters = [
        ["grace", None, 30.0, "seconds requests in flight may take at shutdown", float],
        ["backlog", None, 1024, "listen backlog", int],
        ["max-header", None, 65536, "largest request head, bytes (431 above)", int],
        ["max-body", None, 16 * 1024 * 1024, "largest request body (413 above)", int],
        [
            "forwarded-allow-ips",
            None,
            "127.0.0.1,::1",
            "reverse proxies whose X-Forwarded-For/-Proto are believed ('' none)",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["bind"] = []
        self["uds"] = []

    def opt_bind(self, value: str) -> None:
        """HOST:PORT or [IPV6]:PORT to listen on (repeatable; default 127.0.0.1:8000)"""
        try:
            parse_bind(value)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["bind"].append(value)

    def opt_uds(self, path: str) -> None:
        """UNIX socket path to listen on (repeatable)"""
        self["uds"].append(path)

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
        if not self["bind"] and not self["uds"]:
            self["bind"].append(DEFAULT_BIND)
        try:
            self["forwarded-allow-ips"] = parse_forwarded_allow_ips(
                self["forwarded-allow-ips"]
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["application"] = load_app(self["app"])
        except StartupError as e:
            raise usage.UsageError(str(e)) from None


def _access_log(line: str) -> None:
    _log.info("{line}", line=line)


def makeService(options: Any) -> WSGIService:
    config = ServerConfig(
        max_header=options["max-header"],
        max_body=options["max-body"],
        access_log=_access_log if options["access-log"] else None,
        forwarded_allow_ips=options["forwarded-allow-ips"],
    )
    return WSGIService(
        options["application"],
        binds=options["bind"],
        uds=options["uds"],
        config=config,
        grace=options["grace"],
        backlog=options["backlog"],
    )
