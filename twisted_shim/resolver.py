"""
The reactor's default name resolver: IP literals answered on the loop,
every other name by Twisted's own thread-pool resolver.

Twisted's C{GAIResolver} calls C{getaddrinfo} in the reactor's thread pool
for every name, C{"127.0.0.1"} included, so each connection Twisted's
C{HostnameEndpoint} makes (and so each new connection of C{Agent}, treq and
the endpoints parsed from strings) costs a hand-off to a pool thread and a
C{callFromThread} back. For a name that is an IPv4 or IPv6 literal,
C{getaddrinfo} with C{AI_NUMERICHOST} cannot block (it parses; it never
asks DNS), so L{NumericHostResolver} calls it on the loop, and delivers the
same addresses in the same order, with C{resolutionBegan} at once and the
rest on the loop's next pass, as C{GAIResolver} does from its thread.

Invariant: the answers are C{GAIResolver}'s (the same C{getaddrinfo}
arguments, the same address types); only where the call runs differs. A
resolver installed with C{installNameResolver} or C{installResolver}
replaces this one, as on any reactor.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet._resolver import (
    HostResolution,
    _afToType,
    _any,
    _socktypeToType,
    _transportToSocket,
    _typesToAF,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from zope.interface import implementer

__all__ = ["NumericHostResolver", "is_ip_literal"]


def is_ip_literal(name: str) -> bool:
    """Whether C{name} is an IPv4 or IPv6 address (scope id allowed)."""
    return isIPAddress(name) or isIPv6Address(name)


@implementer(IHostnameResolver)
class NumericHostResolver:
    """
    Resolve IP literals with C{getaddrinfo(..., AI_NUMERICHOST)} on the
    reactor's thread; hand every other name to C{fallback}.

    @ivar _reactor: Where the answers are delivered (C{callLater(0, ...)}).
    @ivar _fallback: The resolver of names (Twisted's C{GAIResolver}).
    """

    def __init__(self, reactor: Any, fallback: IHostnameResolver) -> None:
        self._reactor = reactor
        self._fallback = fallback

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        if not isinstance(hostName, str) or not is_ip_literal(hostName):
            return self._fallback.resolveHostName(
                resolutionReceiver,
                hostName,
                portNumber,
                addressTypes,
                transportSemantics,
            )
        family = _typesToAF[_any if addressTypes is None else frozenset(addressTypes)]
        socketType = _transportToSocket[transportSemantics]
        resolution = HostResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        try:
            names = socket.getaddrinfo(
                hostName, portNumber, family, socketType, 0, socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            names = []

        def deliver() -> None:
            for af, socktype, _proto, _canonname, sockaddr in names:
                addrType = _afToType[af]
                resolutionReceiver.addressResolved(
                    addrType(_socktypeToType.get(socktype, "TCP"), *sockaddr)
                )
            resolutionReceiver.resolutionComplete()

        self._reactor.callLater(0, deliver)
        return resolution
