"""
treq and twisted.web.client.Agent, unmodified, on the reactor trial runs
(C{--reactor=rust} or C{--reactor=epoll}), against twisted.web servers in
the same process over real loopback sockets, plain and TLS.

It proves, on that reactor: GET and POST; 8 MiB bodies both ways (plain and
over TLS); a streamed response whose first bytes reach the client before the
server has written the rest (the server waits for the client to have seen
them), and a request body of unknown length sent chunked over several
reactor turns; redirects followed (and a redirect limit enforced, and a 303
turning a POST into a GET); a request timeout, and a cancelled request, closing their connection on
the server side; connection refused; a persistent
connection pool that reuses connections, counted on the server side (one
TCP connection for sequential requests, one per concurrent request, no new
ones once they are cached); HTTPS verified against a trust root made for
the test, and refused without it. Every test leaves the reactor clean:
trial fails a test that leaves a connection or a timer behind.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import treq
from OpenSSL.SSL import Error as SSLError
from service_identity import VerificationError
from twisted.internet import error, ssl
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    BrowserLikeRedirectAgent,
    FileBodyProducer,
    HTTPConnectionPool,
    RedirectAgent,
    ResponseFailed,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.error import InfiniteRedirection
from twisted.web.iweb import IResponse

from integration._env import check_reactor
from integration._http import (
    BIG,
    BIG_SHA256,
    App,
    CountingFactory,
    SlowProducer,
    make_certificates,
)

reactor: Any = _reactor


class _ServerMixin:
    """A twisted.web server on an ephemeral loopback port, per test."""

    timeout = 60
    tls = False

    app: App
    counter: CountingFactory
    port: Any
    pool: HTTPConnectionPool
    agent: Agent

    def setUp(self) -> None:
        check_reactor(reactor)
        self.app = App()
        self.counter = CountingFactory(server.Site(self.app))
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        if self.tls:
            ca_pem, server_pem = make_certificates()
            options = ssl.PrivateCertificate.loadPEM(server_pem).options()
            self.port = reactor.listenSSL(
                0, self.counter, options, interface="127.0.0.1"
            )
            self.trustRoot = ssl.Certificate.loadPEM(ca_pem)
            policy = BrowserLikePolicyForHTTPS(trustRoot=self.trustRoot)
            self.agent = Agent(reactor, contextFactory=policy, pool=self.pool)
        else:
            self.port = reactor.listenTCP(0, self.counter, interface="127.0.0.1")
            self.agent = Agent(reactor, pool=self.pool)
        self.addCleanup(self._stop)  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        await self.pool.closeCachedConnections()
        await self.port.stopListening()
        await self.counter.allClosed()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port.getHost().port}{path}"

    async def get(self, path: str) -> tuple[IResponse, bytes]:
        response = await self.agent.request(b"GET", self.url(path).encode())
        return response, await readBody(response)


class TreqTests(_ServerMixin, TestCase):
    """treq's API, with the test's connection pool."""

    async def test_get(self) -> None:
        response = await treq.get(self.url("/hello"), pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertEqual(await treq.content(response), b"hello")
        self.assertEqual(self.app.hits, [(b"GET", b"/hello")])

    async def test_post(self) -> None:
        response = await treq.post(self.url("/echo"), data=b"x" * 1000, pool=self.pool)
        echo = await treq.json_content(response)
        self.assertEqual((echo["method"], echo["length"]), ("POST", 1000))

    async def test_post_form_and_json(self) -> None:
        response = await treq.post(
            self.url("/echo"), json={"a": [1, 2]}, pool=self.pool
        )
        self.assertEqual(
            (await treq.json_content(response))["length"], len(b'{"a":[1,2]}')
        )
        response = await treq.put(self.url("/echo"), data={"k": "v"}, pool=self.pool)
        self.assertEqual((await treq.json_content(response))["method"], "PUT")

    async def test_large_download(self) -> None:
        response = await treq.get(self.url("/big"), pool=self.pool)
        body = await treq.content(response)
        self.assertEqual(len(body), len(BIG))
        self.assertEqual(body, BIG)

    async def test_large_upload(self) -> None:
        response = await treq.post(self.url("/echo"), data=BIG, pool=self.pool)
        echo = await treq.json_content(response)
        self.assertEqual((echo["length"], echo["sha256"]), (len(BIG), BIG_SHA256))

    async def test_streamed_response(self) -> None:
        """
        The first bytes of the body are delivered while the server still
        holds the rest back (it releases them only when the client saw
        them, so a client that buffered the whole body would never finish).
        """
        response = await treq.get(self.url("/stream"), pool=self.pool, unbuffered=True)
        pieces: list[bytes] = []

        def collect(data: bytes) -> None:
            if not pieces:
                self.app.streamRelease.callback(None)
            pieces.append(data)

        await treq.collect(response, collect)
        self.assertEqual(pieces[0], b"first:")
        self.assertGreaterEqual(len(pieces), 2)
        expected = b"first:" + b"".join(b"%03d," % i for i in range(100))
        self.assertEqual(b"".join(pieces), expected)

    async def test_redirects(self) -> None:
        response = await treq.get(self.url("/redirect/3"), pool=self.pool)
        self.assertEqual(await treq.content(response), b"landed")
        self.assertEqual(len(response.history()), 3)
        self.assertEqual(
            [p for _, p in self.app.hits],
            [b"/redirect/3", b"/redirect/2", b"/redirect/1", b"/redirect/0"],
        )

    async def test_redirect_not_followed(self) -> None:
        response = await treq.get(
            self.url("/redirect/1"), pool=self.pool, allow_redirects=False
        )
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/redirect/0"])
        await treq.content(response)

    async def test_timeout(self) -> None:
        """
        The request is cancelled after the timeout; the server sees its
        connection go.
        """
        d = treq.get(self.url("/hang"), pool=self.pool, timeout=0.2)
        failure = await self.assertFailure(d, ResponseNeverReceived)
        self.assertTrue(failure.reasons[0].check(CancelledError))
        await self.app.hangLost
        await self.counter.allClosed()
        self.assertEqual((self.counter.opened, self.counter.closed), (1, 1))

    async def test_connection_refused(self) -> None:
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        d = treq.get(f"http://127.0.0.1:{number}/", pool=self.pool)
        await self.assertFailure(d, error.ConnectionRefusedError)


class AgentTests(_ServerMixin, TestCase):
    """twisted.web.client.Agent and its wrappers."""

    async def test_get_and_post(self) -> None:
        response, body = await self.get("/hello")
        self.assertEqual((response.code, body), (200, b"hello"))
        response = await self.agent.request(
            b"POST", self.url("/echo").encode(), bodyProducer=known_length(b"abc")
        )
        echo = json.loads(await readBody(response))
        self.assertEqual((echo["method"], echo["length"]), ("POST", 3))

    async def test_large_bodies(self) -> None:
        response = await self.agent.request(
            b"PUT", self.url("/echo").encode(), bodyProducer=known_length(BIG)
        )
        echo = json.loads(await readBody(response))
        self.assertEqual((echo["length"], echo["sha256"]), (len(BIG), BIG_SHA256))
        _, body = await self.get("/big")
        self.assertEqual(body, BIG)

    async def test_streamed_request_body(self) -> None:
        """A body of unknown length goes out chunked, over many reactor turns."""
        pieces = [bytes([i]) * (1000 + i) for i in range(50)]
        producer = SlowProducer(reactor, pieces)
        response = await self.agent.request(
            b"POST", self.url("/echo").encode(), bodyProducer=producer
        )
        echo = json.loads(await readBody(response))
        whole = b"".join(pieces)
        self.assertEqual(echo["length"], len(whole))
        self.assertEqual(producer.written, 50)
        self.assertEqual(echo["transfer-encoding"], ["chunked"])

    async def test_redirect_agent(self) -> None:
        agent = RedirectAgent(self.agent)
        response = await agent.request(b"GET", self.url("/redirect/2").encode())
        self.assertEqual(await readBody(response), b"landed")
        self.assertEqual(response.previousResponse.previousResponse.code, 302)
        self.assertIsNone(response.previousResponse.previousResponse.previousResponse)

    async def test_redirect_limit(self) -> None:
        agent = RedirectAgent(self.agent, redirectLimit=2)
        d = agent.request(b"GET", self.url("/redirect/5").encode())
        failure = await self.assertFailure(d, ResponseFailed)
        self.assertTrue(failure.reasons[0].check(InfiniteRedirection))
        self.assertEqual(len(self.app.hits), 3)

    async def test_see_other(self) -> None:
        """A 303 after a POST is followed with a GET."""
        agent = BrowserLikeRedirectAgent(self.agent)
        response = await agent.request(
            b"POST", self.url("/see-other").encode(), bodyProducer=known_length(b"x")
        )
        self.assertEqual(await readBody(response), b"hello")
        self.assertEqual(self.app.hits, [(b"POST", b"/see-other"), (b"GET", b"/hello")])

    async def test_cancel(self) -> None:
        """Cancelling the request's Deferred closes its connection."""
        d = self.agent.request(b"GET", self.url("/hang").encode())
        reactor.callLater(0.05, d.cancel)
        failure = await self.assertFailure(d, ResponseNeverReceived)
        self.assertTrue(failure.reasons[0].check(CancelledError))
        await self.app.hangLost
        await self.counter.allClosed()

    async def test_connection_refused(self) -> None:
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        d = self.agent.request(b"GET", f"http://127.0.0.1:{number}/".encode())
        await self.assertFailure(d, error.ConnectionRefusedError)


def known_length(data: bytes) -> FileBodyProducer:
    """A request body of known length."""
    return FileBodyProducer(BytesIO(data))


class PoolTests(_ServerMixin, TestCase):
    """
    A persistent HTTPConnectionPool reuses its connections; counted on the
    server side (connections accepted and closed) and by the client port
    each request arrives from.
    """

    async def test_sequential_requests_share_one_connection(self) -> None:
        ports = set()
        for _ in range(30):
            _, body = await self.get("/peer")
            ports.add(body)
        self.assertEqual(len(ports), 1)
        self.assertEqual((self.counter.opened, self.counter.closed), (1, 0))
        response = await treq.get(self.url("/peer"), pool=self.pool)
        self.assertEqual({await treq.content(response)}, ports)
        self.assertEqual(self.counter.opened, 1)

    async def test_concurrent_requests_then_cached(self) -> None:
        self.pool.maxPersistentPerHost = 3
        await self.get("/hello")
        self.assertEqual(self.counter.opened, 1)

        # 8 at once: the cached connection and 7 new ones.
        results = await gatherResults(
            [Deferred.fromCoroutine(self.get("/peer")) for _ in range(8)]
        )
        self.assertEqual(len({body for _, body in results}), 8)
        self.assertEqual(self.counter.opened, 8)
        # The pool keeps 3 and closes the other 5.
        await self.counter.closedAtLeast(5)
        self.assertEqual(self.counter.closed, 5)

        # Sequential requests, then 3 at once: the 3 cached connections.
        for _ in range(20):
            await self.get("/hello")
        results = await gatherResults(
            [Deferred.fromCoroutine(self.get("/peer")) for _ in range(3)]
        )
        self.assertEqual(len({body for _, body in results}), 3)
        self.assertEqual((self.counter.opened, self.counter.closed), (8, 5))

        await self.pool.closeCachedConnections()
        await self.counter.allClosed()
        self.assertEqual((self.counter.opened, self.counter.closed), (8, 8))

    async def test_non_persistent_pool(self) -> None:
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        for _ in range(5):
            response = await agent.request(b"GET", self.url("/hello").encode())
            await readBody(response)
        await self.counter.closedAtLeast(5)
        self.assertEqual((self.counter.opened, self.counter.closed), (5, 5))


class HTTPSTests(_ServerMixin, TestCase):
    """HTTPS, verified against the test's own certificate authority."""

    tls = True

    async def test_get_by_name_and_by_address(self) -> None:
        for host in ("localhost", "127.0.0.1"):
            response = await treq.get(self.url("/hello", host), agent=self.agent)
            self.assertEqual(await treq.content(response), b"hello")

    async def test_large_bodies(self) -> None:
        response = await treq.post(self.url("/echo"), data=BIG, agent=self.agent)
        echo = await treq.json_content(response)
        self.assertEqual((echo["length"], echo["sha256"]), (len(BIG), BIG_SHA256))
        response = await treq.get(self.url("/big"), agent=self.agent)
        self.assertEqual(await treq.content(response), BIG)

    async def test_persistent(self) -> None:
        ports = set()
        for _ in range(10):
            _, body = await self.get("/peer")
            ports.add(body)
        self.assertEqual(len(ports), 1)
        self.assertEqual(self.counter.opened, 1)

    async def test_untrusted_certificate_refused(self) -> None:
        """Without the test's trust root, verification fails."""
        other = make_certificates()[0]  # a different CA
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(other))
        agent = Agent(reactor, contextFactory=policy, pool=self.pool)
        d = agent.request(b"GET", self.url("/hello").encode())
        failure = await self.assertFailure(d, ResponseNeverReceived)
        self.assertTrue(failure.reasons[0].check(SSLError))
        await self.counter.allClosed()
        self.assertEqual(self.app.hits, [])

    async def test_wrong_host_name_refused(self) -> None:
        """The certificate names localhost and 127.0.0.1, nothing else."""
        policy = BrowserLikePolicyForHTTPS(trustRoot=self.trustRoot)
        creator = policy.creatorForNetloc(b"example.invalid", self.port.getHost().port)
        endpoint = wrapClientTLS(
            creator, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        )
        lost: Deferred[None] = Deferred()
        reasons: list[Failure] = []

        class P(Protocol):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                reasons.append(reason)
                lost.callback(None)

        await endpoint.connect(Factory.forProtocol(P))
        await lost
        self.assertTrue(reasons[0].check(VerificationError), reasons[0])
        await self.counter.allClosed()


class ReactorTests(TestCase):
    def test_reactor_under_test(self) -> None:
        """The module runs on the reactor tests/test_integration.py asked for."""
        check_reactor(reactor)
