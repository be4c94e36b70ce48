"""
Test servers for the HTTP client tests: a twisted.web application, a
factory wrapper that counts TCP connections on the server side, and a
self-signed certificate authority with a server certificate it signed.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import random
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

#: The large bodies: 8 MiB of reproducible random bytes.
BIG = random.Random(8).randbytes(8 * 1024 * 1024)
BIG_SHA256 = hashlib.sha256(BIG).hexdigest()


class CountingFactory(WrappingFactory):
    """
    Wraps a server factory and counts the TCP connections it accepted
    (C{opened}) and those that are closed again (C{closed}).
    """

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.opened = 0
        self.closed = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def registerProtocol(self, p: IProtocol) -> None:
        self.opened += 1
        super().registerProtocol(p)

    def unregisterProtocol(self, p: IProtocol) -> None:
        self.closed += 1
        super().unregisterProtocol(p)
        ready = [d for n, d in self._waiters if self.closed >= n]
        self._waiters = [(n, d) for n, d in self._waiters if self.closed < n]
        for d in ready:
            d.callback(None)

    def closedAtLeast(self, n: int) -> Deferred[None]:
        """Fires once at least C{n} accepted connections are closed."""
        d: Deferred[None] = Deferred()
        if self.closed >= n:
            d.callback(None)
        else:
            self._waiters.append((n, d))
        return d

    def allClosed(self) -> Deferred[None]:
        """Fires once every connection accepted so far is closed."""
        return self.closedAtLeast(self.opened)


class App(resource.Resource):
    """
    The server side of the HTTP tests:

    - C{/hello}: C{hello}
    - C{/echo}: JSON with the method, body length and SHA-256, and the
      request's C{Transfer-Encoding}
    - C{/big}: the 8 MiB body
    - C{/peer}: the client's port number (which connection it came on)
    - C{/redirect/N}: 302 to C{/redirect/N-1}; C{/redirect/0} says C{landed}
    - C{/see-other}: 303 to C{/hello}
    - C{/hang}: never answers; C{hangLost} fires when the client gives up
    - C{/stream}: sends C{first:} at once, the rest only once the test fires
      C{streamRelease} (which a client can only do if it saw C{first:}
      before the response was complete)
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[tuple[bytes, bytes]] = []
        self.hangLost: Deferred[None] = Deferred()
        self.streamRelease: Deferred[None] = Deferred()

    def render(self, request: server.Request) -> Any:
        method = request.method
        path = request.path
        self.hits.append((method, path))
        if path == b"/hello":
            return b"hello"
        if path == b"/echo":
            assert request.content is not None
            body = request.content.read()
            request.setHeader(b"content-type", b"application/json")
            te = request.requestHeaders.getRawHeaders(b"transfer-encoding", [])
            return json.dumps(
                {
                    "method": method.decode(),
                    "length": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "transfer-encoding": [v.decode() for v in te],
                }
            ).encode()
        if path == b"/big":
            return BIG
        if path == b"/peer":
            return str(request.getClientAddress().port).encode()  # type: ignore[attr-defined]
        if path.startswith(b"/redirect/"):
            n = int(path.rsplit(b"/", 1)[1])
            if n == 0:
                return b"landed"
            request.redirect(b"/redirect/%d" % (n - 1))
            return b""
        if path == b"/see-other":
            request.setResponseCode(303)
            request.setHeader(b"location", b"/hello")
            return b""
        if path == b"/hang":

            def lost(f: Failure) -> None:
                self.hangLost.callback(None)

            request.notifyFinish().addErrback(lost)
            return server.NOT_DONE_YET
        if path == b"/stream":
            request.setHeader(b"content-type", b"application/octet-stream")
            request.write(b"first:")

            def rest(_: None) -> None:
                for i in range(100):
                    request.write(b"%03d," % i)
                request.finish()

            self.streamRelease.addCallback(rest)
            return server.NOT_DONE_YET
        request.setResponseCode(404)
        return b"not found"


@implementer(IBodyProducer)
class SlowProducer:
    """
    A request body of unknown length (so sent chunked), one piece per
    reactor turn.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, reactor: Any, pieces: list[bytes]) -> None:
        self._reactor = reactor
        self._pieces = list(pieces)
        self._done: Deferred[None] = Deferred()
        self._call: Any = None
        self._consumer: Any = None
        self.written = 0

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._next()
        return self._done

    def _next(self) -> None:
        self._call = None
        if not self._pieces:
            self._done.callback(None)
            return
        self._consumer.write(self._pieces.pop(0))
        self.written += 1
        self._call = self._reactor.callLater(0, self._next)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def make_certificates() -> tuple[bytes, bytes]:
    """
    A throwaway certificate authority and a server certificate it signed,
    for C{localhost} and C{127.0.0.1}.

    @return: (the CA's certificate, the server's certificate and key), PEM.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "twisted_shim test CA")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    server_pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ca_pem, server_pem
