"""
Client side of the WSGI host tests: HTTP/1.1 over real sockets.

L{ResponseReader} parses responses byte by byte from a raw socket, strictly
(CRLF line endings, exact C{Content-Length}, well-formed chunked framing), and
says whether a body was complete or truncated, so a test can tell a falsely
complete response from an aborted one. L{h11_exchange} sends well-formed
requests through h11, a strict third-party HTTP/1.1 implementation. Every
socket has a timeout: a host that hangs fails a test, it never blocks it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

TIMEOUT = 10.0
HOST = "127.0.0.1"

_STATUS_LINE = re.compile(rb"(HTTP/\d\.\d) (\d{3}) ?([^\r\n]*)")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ProtocolError(AssertionError):
    """The host sent bytes that are not a valid HTTP/1.1 response."""


def connect(
    port: int, *, timeout: float = TIMEOUT, rcvbuf: int | None = None
) -> socket.socket:
    """A TCP connection to the host, with a timeout (and a small receive
    buffer when C{rcvbuf} is given, set before connecting so the advertised
    window is small too)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((HOST, port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close C{sock} with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    sock.close()


def build_request(
    method: str = "GET",
    target: str = "/hello",
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: bool = True,
) -> bytes:
    """
    The bytes of one request. A C{Host} header is added (unless C{host} is
    false or one is given) and a C{Content-Length} when there is a body and no
    framing header was given.
    """
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {target} {version}"]
    if host and "host" not in names:
        lines.append(f"Host: {HOST}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body and not names & {"content-length", "transfer-encoding"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    """A chunked request body made of C{chunks} (empty ones are skipped)."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n" + trailer + b"\r\n"


@dataclass
class Response:
    """
    One parsed response.

    @ivar complete: The body ended where its framing says (all of
        C{Content-Length}, or the terminating zero chunk); false when the
        connection closed first.
    @ivar chunked: The body was sent with chunked transfer coding.
    @ivar raw: Every byte of the response as received.
    """

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw: bytes = b""
    chunked: bool = False
    complete: bool = True
    chunk_sizes: list[int] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The values of header C{name} joined by ", ", or C{None}."""
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_names(self) -> list[str]:
        return [n.lower() for n, _ in self.headers]

    def json(self) -> Any:
        return json.loads(self.body)


class ResponseReader:
    """
    Reads responses from one socket, keeping bytes that arrived beyond the
    current response for the next one (pipelining).

    @ivar eof: The peer closed (FIN or RST).
    @ivar reset: The connection was reset.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def _fill(self) -> bool:
        """Receive more bytes; C{False} at end of stream."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
            self.reset = True
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self, raw: bytearray) -> bytes | None:
        """One CRLF-terminated line (without the CRLF), or C{None} at EOF."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                raw += line
                if not line.endswith(b"\r\n"):
                    raise ProtocolError(f"line not ended by CRLF: {line!r}")
                return line[:-2]
            if not self._fill():
                if self.buf:
                    raw += self.buf
                    self.buf.clear()
                return None

    def _exact(self, n: int, raw: bytearray) -> bytes:
        while len(self.buf) < n and self._fill():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        raw += data
        return data

    def read_head(self, raw: bytearray) -> tuple[str, int, str, list[tuple[str, str]]]:
        line = self._line(raw)
        if line is None:
            raise ProtocolError(
                f"connection closed before a status line (got {bytes(raw)!r}, reset={self.reset})"
            )
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise ProtocolError(f"bad status line {line!r}")
        headers: list[tuple[str, str]] = []
        while True:
            h = self._line(raw)
            if h is None:
                raise ProtocolError(
                    f"connection closed inside the head: {bytes(raw)!r}"
                )
            if h == b"":
                break
            name, sep, value = h.partition(b":")
            if not sep or not _HEADER_NAME.fullmatch(name):
                raise ProtocolError(f"bad header line {h!r}")
            headers.append(
                (name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
            )
        return m[1].decode(), int(m[2]), m[3].decode("latin-1"), headers

    def read_response(self, method: str = "GET", *, interim: bool = False) -> Response:
        """
        The next response. Interim (1xx) responses are skipped unless
        C{interim}, in which case the next one, interim or final, is returned.
        A body cut short by the connection closing gives C{complete=False}.
        """
        while True:
            raw = bytearray()
            version, status, reason, headers = self.read_head(raw)
            resp = Response(version, status, reason, headers)
            if 100 <= status < 200:
                resp.raw = bytes(raw)
                if interim or status == 101:
                    return resp
                continue
            break
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if method == "HEAD" or status in (204, 304):
            pass
        elif te:
            if te != "chunked":
                raise ProtocolError(f"unexpected Transfer-Encoding {te!r}")
            if cl is not None:
                raise ProtocolError(
                    "both Content-Length and Transfer-Encoding in a response"
                )
            resp.chunked = True
            resp.body, resp.complete = self._chunked_body(resp, raw)
        elif cl is not None:
            if not cl.isdigit():
                raise ProtocolError(f"bad Content-Length {cl!r}")
            resp.body = self._exact(int(cl), raw)
            resp.complete = len(resp.body) == int(cl)
        else:
            while self._fill():
                pass
            resp.body = bytes(self.buf)
            raw += self.buf
            self.buf.clear()
        resp.raw = bytes(raw)
        return resp

    def _chunked_body(self, resp: Response, raw: bytearray) -> tuple[bytes, bool]:
        body = bytearray()
        while True:
            line = self._line(raw)
            if line is None:
                return bytes(body), False
            size_text = line.split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]+", size_text):
                raise ProtocolError(f"bad chunk size line {line!r}")
            size = int(size_text, 16)
            if size == 0:
                while True:
                    t = self._line(raw)
                    if t is None:
                        return bytes(body), False
                    if t == b"":
                        return bytes(body), True
                    name, _, value = t.partition(b":")
                    resp.trailers.append(
                        (name.decode("latin-1"), value.strip().decode("latin-1"))
                    )
            data = self._exact(size, raw)
            body += data
            if len(data) < size:
                return bytes(body), False
            resp.chunk_sizes.append(size)
            end = self._exact(2, raw)
            if len(end) < 2:
                return bytes(body), False
            if end != b"\r\n":
                raise ProtocolError(f"chunk data not followed by CRLF: {end!r}")

    def read_chunk(self) -> bytes | None:
        """
        The data of the next chunk of a chunked body being read piecemeal
        (after L{read_head}); C{b""} for the last chunk (trailers consumed);
        C{None} if the connection closed first.
        """
        raw = bytearray()
        line = self._line(raw)
        if line is None:
            return None
        size_text = line.split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9a-fA-F]+", size_text):
            raise ProtocolError(f"bad chunk size line {line!r}")
        size = int(size_text, 16)
        if size == 0:
            while (t := self._line(raw)) != b"":
                if t is None:
                    return None
            return b""
        data = self._exact(size, raw)
        if len(data) < size or len(self._exact(2, raw)) < 2:
            return None
        if not raw.endswith(b"\r\n"):
            raise ProtocolError(f"chunk data not followed by CRLF: {bytes(raw)!r}")
        return data

    def wait_eof(self, timeout: float = TIMEOUT) -> bytes:
        """
        Wait until the peer closes; the bytes that arrived meanwhile
        (normally none). Raises C{TimeoutError} if the connection stays open.
        """
        self.sock.settimeout(timeout)
        start = len(self.buf)
        while self._fill():
            pass
        return bytes(self.buf[start:])

    def nothing_pending(self, wait: float = 0.2) -> bool:
        """No byte arrives within C{wait} seconds and the connection stays open."""
        if self.buf or self.eof:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            self._fill()
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(old)
        return False


def exchange(
    port: int, request: bytes, method: str = "GET", *, timeout: float = TIMEOUT
) -> tuple[Response, ResponseReader]:
    """Send C{request} on a new connection and read one response."""
    sock = connect(port, timeout=timeout)
    sock.sendall(request)
    reader = ResponseReader(sock)
    return reader.read_response(method), reader


def get(port: int, target: str, *, timeout: float = TIMEOUT) -> Response:
    """C{GET target} on a new connection (closed afterwards)."""
    resp, reader = exchange(
        port,
        build_request("GET", target, headers=[("Connection", "close")]),
        timeout=timeout,
    )
    reader.sock.close()
    return resp


def get_json(port: int, target: str, *, timeout: float = TIMEOUT) -> Any:
    resp = get(port, target, timeout=timeout)
    assert resp.status == 200, (target, resp.status, resp.body)
    return resp.json()


_keys = itertools.count()


def unique(prefix: str = "k") -> str:
    """A record key no other request of the session uses."""
    return f"{prefix}-{os.getpid()}-{next(_keys)}"


def wait_until(
    predicate: Any, *, timeout: float = TIMEOUT, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll C{predicate()} until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class H11Result:
    """A response read by h11: its head, body and trailing state."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    their_state: Any
    interim: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return b", ".join(values) if values else None


def h11_exchange(
    port: int,
    requests: Iterable[tuple[str, str, list[tuple[str, str]], bytes]],
    *,
    timeout: float = TIMEOUT,
) -> list[H11Result]:
    """
    Send each C{(method, target, headers, body)} in turn on one persistent
    connection through h11 and return the responses. h11 raises on any
    framing or syntax error in the host's output.
    """
    sock = connect(port, timeout=timeout)
    conn = h11.Connection(our_role=h11.CLIENT)
    results: list[H11Result] = []
    try:
        for method, target, headers, body in requests:
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            hdrs = [("Host", HOST), *headers]
            if body and not any(
                n.lower() in ("content-length", "transfer-encoding") for n, _ in headers
            ):
                hdrs.append(("Content-Length", str(len(body))))
            data = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            sock.sendall(data)
            result: H11Result | None = None
            interim: list[int] = []
            chunks: list[bytes] = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                    continue
                if isinstance(event, h11.InformationalResponse):
                    interim.append(event.status_code)
                elif isinstance(event, h11.Response):
                    result = H11Result(
                        event.status_code, list(event.headers), b"", None, interim
                    )
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ProtocolError("connection closed before the response ended")
            assert result is not None
            result.body = b"".join(chunks)
            result.their_state = conn.their_state
            results.append(result)
        return results
    finally:
        sock.close()


def loopback_tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """
    The kernel's queues of every IPv4 loopback TCP socket, from
    /proc/net/tcp: C{(local port, remote port) -> (send queue, receive
    queue)} in bytes.
    """
    out: dict[tuple[int, int], tuple[int, int]] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, queues = parts[1], parts[2], parts[4]
            if not (local.startswith("0100007F:") and remote.startswith("0100007F:")):
                continue
            txq, rxq = (int(x, 16) for x in queues.split(":"))
            out[(int(local[9:], 16), int(remote[9:], 16))] = (txq, rxq)
    return out


def proc_tcp_queues(server_port: int, client_port: int) -> tuple[int, int]:
    """
    Bytes the kernel holds for one loopback connection: the server socket's
    send queue (written by the host, not yet acknowledged) and the client
    socket's receive queue (arrived, not yet read).
    """
    queues = loopback_tcp_queues()
    tx = queues.get((server_port, client_port), (0, 0))[0]
    rx = queues.get((client_port, server_port), (0, 0))[1]
    return tx, rx
