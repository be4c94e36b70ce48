"""
The configuration is defined once (L{twisted_shim.wsgi.config}): the
C{serve} command line, the C{shim-wsgi} plugin, L{WSGIServer} and
L{WSGIService} take their options, parsers and defaults from it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from twisted_shim import cli
from twisted_shim.reactor import RustReactor
from twisted_shim.wsgi import tap
from twisted_shim.wsgi.config import (
    PLUGIN,
    SERVE,
    ServeOptions,
    ServerConfig,
    command_line,
    default_of,
)
from twisted_shim.wsgi.loading import load_app
from twisted_shim.wsgi.service import WSGIService
from twisted_shim.wsgi.startup import StartupError

#: What C{serve} has that the plugin leaves to C{twist}/C{twistd}: the
#: process model (one process under twist), the process's garbage collector
#: (twistd's process may run other services) and logging.
SERVE_ONLY = {
    "--workers",
    "--max-requests",
    "--max-requests-jitter",
    "--threads",
    "--gc-threshold",
    "--log-level",
}

#: The same values, given to both command lines.
GIVEN = [
    "--bind",
    "127.0.0.1:0",
    "--bind",
    "[::1]:0",
    "--uds",
    "/tmp/twisted-shim-test.sock",
    "--access-log",
    "--max-header",
    "4096",
    "--max-body",
    "0",
    "--header-timeout",
    "1.5",
    "--keepalive-timeout",
    "2",
    "--send-timeout",
    "3",
    "--max-pause",
    "0",
    "--forwarded-allow-ips",
    "10.0.0.0/8, *",
    "--grace",
    "4",
    "--backlog",
    "7",
]


def serve_options(*args: str) -> ServeOptions:
    return cli.options_from(cli.build_parser().parse_args(["serve", *args, "m:app"]))


def plugin_options(monkeypatch: pytest.MonkeyPatch, *args: str) -> ServeOptions:
    """The plugin's options, parsed as under C{twist --reactor=rust}."""
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", RustReactor())
    options = tap.Options()
    options.parseOptions([*args, "json:dumps"])
    return dataclasses.replace(options["options"], app="m:app")


def test_plugin_offers_every_serve_option_but_the_process_model() -> None:
    serve = {o.setting.flag for o in command_line(SERVE)}
    plugin = {o.setting.flag for o in command_line(PLUGIN)}
    assert plugin == serve - SERVE_ONLY


def test_defaults_are_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing given: both command lines mean the same, and the host's and
    the service's defaults are the definition's."""
    from_serve = serve_options()
    assert from_serve == plugin_options(monkeypatch)
    assert from_serve.server == ServerConfig()
    assert [str(b) for b in from_serve.binds] == ["127.0.0.1:8000"]
    service = WSGIService(lambda e, s: [])
    assert (service.grace, service.backlog) == (from_serve.grace, from_serve.backlog)
    assert service.grace == default_of(ServeOptions, "grace")


def test_same_values_same_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from_serve = serve_options(*GIVEN)
    assert from_serve == plugin_options(monkeypatch, *GIVEN)
    assert from_serve.server == dataclasses.replace(
        ServerConfig(),
        max_header=4096,
        max_body=0,
        header_timeout=1.5,
        keepalive_timeout=2.0,
        send_timeout=3.0,
        max_pause=None,
        forwarded_allow_ips=("10.0.0.0/8", "*"),
    )
    assert (from_serve.grace, from_serve.backlog) == (4.0, 7)
    assert [str(b) for b in from_serve.binds] == ["127.0.0.1:0", "[::1]:0"]
    assert from_serve.access_log is True


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-header", "0", "'0' is not a positive integer"),
        ("--send-timeout", "0", "'0' is not a positive number of seconds"),
        ("--max-pause", "-1", "'-1' is not a non-negative number of seconds"),
        ("--bind", "nowhere", "malformed address 'nowhere'"),
        ("--forwarded-allow-ips", "localhost", 'entry "localhost"'),
    ],
)
def test_same_checks(
    monkeypatch: pytest.MonkeyPatch, flag: str, value: str, message: str
) -> None:
    """A value one command line refuses, the other refuses, with the same
    message."""
    with pytest.raises(usage.UsageError, match=message):
        plugin_options(monkeypatch, flag, value)
    with pytest.raises(SystemExit):
        serve_options(flag, value)


def test_every_setting_documented() -> None:
    """Each command-line field has a flag, help, and shows its default."""
    for command in (SERVE, PLUGIN):
        for option in command_line(command):
            assert option.setting.flag == "--" + option.name.replace("_", "-") or (
                option.name == "binds"
            )
            assert option.setting.help
            if not option.is_switch:
                assert "(default " in option.help()


def test_module_alone_means_application(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "alone_app.py").write_text(
        "def application(environ, start_response):\n    return [b'alone']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import alone_app

    assert load_app("alone_app") is alone_app.application
    assert load_app("alone_app:application") is alone_app.application
    with pytest.raises(StartupError, match="cannot import 'alone_app:app'"):
        load_app("alone_app:app")
