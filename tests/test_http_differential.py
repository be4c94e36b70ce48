"""
The HTTP server's request framing against h11's, on generated and mutated
requests (hypothesis): where h11, a strict and well-kept parser, refuses a
byte stream, the server must refuse it too (or frame fewer requests from
it), and where both accept it they must frame the same requests: method,
target, version, body, and how many. Being stricter than h11 is allowed.

The server's side is C{twisted_shim._core._frame_requests}, which runs the
same parsing functions a connection runs (head, body, next head) over a
buffer. Requests are built from parts (methods, targets, versions, Host,
Content-Length or chunked bodies with extensions and trailers, pipelining,
Connection: close), then up to three bytes are inserted, replaced or
deleted, drawn from the characters framing bugs are made of.

Known, justified differences (RFC 9112 allows what h11 refuses; each is a
case where we accept and h11 does not):

- whitespace before a chunk extension's ";" and around its "=" (BWS, RFC
  9112 section 7.1.1; h11's chunk-size pattern allows none);
- a chunk size with more than 20 digits of which leading zeros (h11 caps the
  digits, we cap the value at 16 significant hex digits);
- empty lines before a request line (RFC 9112 section 2.2: a server SHOULD
  ignore at least one; h11 refuses them at the start of a connection).

The run is bounded (a fixed number of examples, derandomized so that CI
sees the same ones every time); C{make fuzz} runs a coverage-guided fuzzer
for longer.
"""

from __future__ import annotations

import re
from typing import Any

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_shim import _core

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
EXAMPLES = 1500

# --- the server's framing and h11's ----------------------------------------------

Framed = tuple[str, str, str, bytes]


def ours(data: bytes) -> tuple[list[Framed], bool]:
    """Requests framed by the server, and whether it refused the stream."""
    requests, status = _core._frame_requests(data, MAX_HEAD, MAX_BODY)
    framed = [(m, t, f"1.{minor}", body) for m, t, minor, _, body in requests]
    return framed, status is not None


def theirs(data: bytes) -> tuple[list[Framed], bool]:
    """Requests framed by h11 acting as a server, answering each with an
    empty 200 so the next one can be read; whether it refused the stream."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    out: list[Framed] = []
    current: list[Any] | None = None
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return out, False
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return out, False
            if isinstance(event, h11.Request):
                current = [
                    event.method.decode("latin-1"),
                    event.target.decode("latin-1"),
                    event.http_version.decode(),
                    b"",
                ]
            elif isinstance(event, h11.Data):
                assert current is not None
                current[3] += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                out.append(tuple(current))  # type: ignore[arg-type]
                current = None
                conn.send(
                    h11.Response(status_code=200, headers=[("Content-Length", "0")])
                )
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return out, False
                conn.start_next_cycle()
    except h11.RemoteProtocolError:
        return out, True


# --- requests -----------------------------------------------------------------------

TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'",
    min_size=1,
    max_size=8,
)


@st.composite
def chunked_body(draw: Any) -> tuple[bytes, bytes]:
    """The wire form of a chunked body, and the bytes it decodes to."""
    wire = b""
    plain = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=40))
        size = f"{len(data):x}"
        if draw(st.booleans()):
            size = size.upper()
        if draw(st.integers(0, 4)) == 0:
            size = "0" * draw(st.integers(1, 3)) + size
        ext = ""
        for _ in range(draw(st.integers(0, 2))):
            name = draw(TOKEN)
            value = draw(st.one_of(st.none(), TOKEN, TOKEN.map(lambda t: f'"{t}"')))
            ext += f";{name}" + ("" if value is None else f"={value}")
        wire += f"{size}{ext}\r\n".encode() + data + b"\r\n"
        plain += data
    trailers = b"".join(
        f"{draw(TOKEN)}: {draw(TOKEN)}\r\n".encode()
        for _ in range(draw(st.integers(0, 2)))
    )
    wire += b"0\r\n" + trailers + b"\r\n"
    return wire, plain


@st.composite
def request(draw: Any) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "PATCH"]))
    target = draw(
        st.sampled_from(["/", "/a", "/a/b?c=d&e", "/%20x", "*", "http://h/p?q", "/a;b"])
    )
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    headers: list[tuple[str, str]] = []
    if version == "HTTP/1.1" or draw(st.booleans()):
        headers.append(
            ("Host", draw(st.sampled_from(["h", "h:80", "127.0.0.1", "[::1]:8"])))
        )
    body_kind = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    if body_kind == "length":
        body = draw(st.binary(max_size=60))
        headers.append(("Content-Length", str(len(body))))
    elif body_kind == "chunked" and version == "HTTP/1.1":
        body, _ = draw(chunked_body())
        headers.append(("Transfer-Encoding", "chunked"))
    for _ in range(draw(st.integers(0, 2))):
        headers.append((draw(TOKEN), draw(st.text("abc xyz/=,;:0123", max_size=12))))
    if draw(st.integers(0, 5)) == 0:
        headers.append(("Connection", "close"))
    draw(st.randoms()).shuffle(headers)
    head = f"{method} {target} {version}\r\n" + "".join(
        f"{n}: {v}\r\n" for n, v in headers
    )
    return head.encode("latin-1") + b"\r\n" + body


# What framing bugs are made of.
NASTY = b'\r\n\x00 \t;:="0aA,-/\x7f\xff'


@st.composite
def stream(draw: Any) -> bytes:
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        c = bytes([draw(st.sampled_from(NASTY))])
        if op == "insert":
            data = data[:i] + c + data[i:]
        elif op == "replace":
            data = data[:i] + c + data[i + 1 :]
        else:
            data = data[:i] + data[i + 1 :]
    return data


# --- the comparison -------------------------------------------------------------------

# A chunk line with whitespace before ';' or around '=' (BWS), or a size of
# more than 20 digits with leading zeros: RFC 9112 allows them, h11 does not.
_BWS = re.compile(rb"[0-9A-Fa-f][ \t]+;|;[^\r\n]*[ \t]=|;[^\r\n]*=[ \t]")
_LONG_SIZE = re.compile(rb"0{2,}[0-9A-Fa-f]{18,}")


def _known_difference(data: bytes) -> bool:
    if data.startswith(b"\r\n"):
        return True
    return any(
        _BWS.search(line) or _LONG_SIZE.match(line) for line in data.split(b"\n")
    )


def check(data: bytes) -> None:
    mine, refused = ours(data)
    ref, ref_refused = theirs(data)
    common = min(len(mine), len(ref))
    assert mine[:common] == ref[:common], (data, mine, ref)
    if ref_refused and len(mine) > len(ref) and not _known_difference(data):
        raise AssertionError(
            f"accepted what h11 refuses: {data!r}\n ours: {mine}\n h11: {ref}"
        )
    if not refused and not ref_refused:
        assert len(mine) == len(ref), (data, mine, ref)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream())
def test_framing_agrees_with_h11(data: bytes) -> None:
    check(data)


def test_the_smuggling_cases_are_refused() -> None:
    """The cases a reliability test found: a bare LF in a chunk extension,
    which h11 refuses too, and a NUL, which h11 lets through (its extension
    pattern is ';' and anything to the end of the line) and we refuse."""
    head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    for chunk in [b"2;\nxx\r\n", b"3;a\nbc\r\n", b"3;\n\r\n", b"0;\nx\r\n"]:
        data = head + chunk + b"abc\r\n0\r\n\r\n"
        assert ours(data)[1], data
        assert theirs(data)[1], data
        check(data)
    data = head + b"3;a\x00b\r\nabc\r\n0\r\n\r\n"
    assert ours(data) == ([], True)
    assert theirs(data) == ([("POST", "/", "1.1", b"abc")], False)


def test_well_formed_pipelines_frame_identically() -> None:
    data = (
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
        b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;x=y\r\nhi\r\n0\r\nT: v\r\n\r\n"
    )
    mine, refused = ours(data)
    assert not refused
    assert [r[:2] for r in mine] == [("GET", "/a"), ("POST", "/b"), ("PUT", "/c")]
    assert [r[3] for r in mine] == [b"", b"xyz", b"hi"]
    check(data)
