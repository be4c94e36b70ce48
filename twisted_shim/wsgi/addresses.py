"""
Addresses to listen on, as the command lines spell them: L{TCPAddress}
(C{HOST:PORT}, C{[IPV6]:PORT}), L{UnixAddress}, and the list of trusted
reverse proxies (C{--forwarded-allow-ips}).

Invariants: the parsers raise C{ValueError} with a one-line message that
names the bad input, and nothing else; each front end (argparse, Twisted's
C{usage.Options}) wraps that message in its own kind of usage error. A
L{TCPAddress} is resolved once, when parsed: its C{sockaddr} is what is
bound. This module opens no socket.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "TCPAddress",
    "UnixAddress",
    "bracket",
    "parse_bind",
    "parse_forwarded_allow_ips",
]


def bracket(host: str) -> str:
    """C{host}, in brackets if it is an IPv6 address (as in a URL)."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class TCPAddress:
    """
    A TCP address to listen on.

    @ivar host: The host as given (an IPv6 address without its brackets).
    @ivar port: The port; 0 lets the system pick one.
    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar sockaddr: The address to bind, as C{getaddrinfo} gave it.
    """

    host: str
    port: int
    family: socket.AddressFamily
    sockaddr: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{bracket(self.host)}:{self.port}"

    def with_port(self, port: int) -> TCPAddress:
        """The same address with another port."""
        return replace(
            self, port=port, sockaddr=(self.sockaddr[0], port, *self.sockaddr[2:])
        )


@dataclass(frozen=True)
class UnixAddress:
    """A UNIX socket path to listen on."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


def parse_bind(value: str) -> TCPAddress:
    """
    Parse C{HOST:PORT} or C{[IPV6]:PORT}; resolve a host name.

    @raise ValueError: with a one-line message, if C{value} is malformed or
        its host does not resolve.
    """
    expected = "expected HOST:PORT, or [IPV6]:PORT"
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise ValueError(f"malformed address {value!r}: {expected}")
        host, port_text = value[1:end], value[end + 2 :]
        family = socket.AF_INET6
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"malformed address {value!r}: {expected}")
        if ":" in host:
            raise ValueError(
                f"malformed address {value!r}: put an IPv6 address in brackets,"
                f" as [{host}]:{port_text}"
            )
        family = socket.AF_UNSPEC
    if not host:
        raise ValueError(
            f"malformed address {value!r}: the host is missing ({expected})"
        )
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"malformed address {value!r}: the port must be 0-65535")
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(
            host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"cannot resolve the host of {value!r}: {e}") from None
    infos = [i for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]
    if not infos:
        raise ValueError(f"cannot resolve the host of {value!r}")
    af, _, _, _, sockaddr = infos[0]
    return TCPAddress(host, port, socket.AddressFamily(af), tuple(sockaddr))


def parse_forwarded_allow_ips(text: str) -> tuple[str, ...]:
    """
    Parse C{--forwarded-allow-ips}: comma-separated addresses, CIDR networks
    or C{*} (empty: no one), checked as the host will read them.

    @raise ValueError: naming the first entry that is none of those.
    """
    from twisted_shim import _core

    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    _core.check_forwarded_allow_ips(list(entries))
    return entries
