"""
Tests for L{twisted_shim.resolver}: the reactor's default name resolver
answers IP literals on the loop, with exactly what Twisted's GAIResolver
answers, and hands every other name to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet._resolver import GAIResolver
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_shim.reactor import RustReactor
from twisted_shim.resolver import NumericHostResolver, is_ip_literal

MAX_ITERATIONS = 500


@pytest.fixture
def reactor() -> Iterator[RustReactor]:
    r = RustReactor()
    yield r
    if r.threadpool is not None:
        r.threadpool.stop()


@implementer(IResolutionReceiver)
class Receiver:
    def __init__(self) -> None:
        self.began = False
        self.addresses: list[Any] = []
        self.complete = False

    def resolutionBegan(self, resolution: Any) -> None:
        self.began = True

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.complete = True


def resolve(reactor: RustReactor, resolver: Any, *args: Any, **kwargs: Any) -> Receiver:
    receiver = Receiver()
    resolver.resolveHostName(receiver, *args, **kwargs)
    # The pool starts with the reactor, which these tests only iterate.
    pool = reactor.threadpool
    if pool is not None and not pool.started:
        pool.start()
    for _ in range(MAX_ITERATIONS):
        if receiver.complete:
            return receiver
        reactor.iterate(0.01)
    raise AssertionError(f"no answer for {args}")


def test_default_and_interface(reactor: RustReactor) -> None:
    assert isinstance(reactor.nameResolver, NumericHostResolver)
    verifyObject(IHostnameResolver, reactor.nameResolver)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("127.0.0.1", {}),
        ("127.0.0.1", {"portNumber": 8080}),
        ("127.0.0.1", {"transportSemantics": "UDP"}),
        ("127.0.0.1", {"addressTypes": [IPv6Address]}),
        ("::1", {"portNumber": 443}),
        ("::1", {"addressTypes": [IPv4Address]}),
        ("0.0.0.0", {"addressTypes": [IPv4Address]}),
        ("localhost", {"portNumber": 80}),
        ("no-such-host.invalid", {}),
    ],
)
def test_same_answers_as_gairesolver(
    reactor: RustReactor, name: str, kwargs: dict[str, Any]
) -> None:
    """Literals and names alike: the addresses (types, order, ports) are
    those Twisted's GAIResolver gives."""
    ours = resolve(reactor, reactor.nameResolver, name, **kwargs)
    theirs = resolve(
        reactor, GAIResolver(reactor, reactor.getThreadPool), name, **kwargs
    )
    assert ours.began and theirs.began
    assert ours.addresses == theirs.addresses


def test_literals_use_no_thread_and_answer_on_the_next_pass(
    reactor: RustReactor,
) -> None:
    """An IP literal is resolved without the thread pool (it is never
    made); resolutionBegan comes at once, the addresses on the loop's next
    pass (as GAIResolver's come later, from its thread)."""
    receiver = Receiver()
    reactor.nameResolver.resolveHostName(receiver, "127.0.0.1", 80)
    assert receiver.began and not receiver.addresses and not receiver.complete
    reactor.iterate(0)
    assert receiver.complete
    assert receiver.addresses == [IPv4Address("TCP", "127.0.0.1", 80)]
    assert reactor.threadpool is None


def test_names_go_to_the_fallback(reactor: RustReactor) -> None:
    """A name that is not a literal is the thread-pool resolver's."""
    resolve(reactor, reactor.nameResolver, "localhost", 80)
    assert reactor.threadpool is not None


@pytest.mark.parametrize(
    ("name", "literal"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("fe80::1%1", True),
        ("localhost", False),
        ("1.2.3", False),
        ("", False),
    ],
)
def test_is_ip_literal(name: str, literal: bool) -> None:
    assert is_ip_literal(name) is literal
