"""
PEP 3333 as the WSGI host implements it: the environ (complete, correctly
typed), wsgi.input and wsgi.errors, the start_response rules for exc_info,
the write() callable, close() called exactly once, and wsgi.file_wrapper
over real files (sendfile) and other objects.

The applications are in C{wsgi_apps}; the conformant ones run under
C{wsgiref.validate}, whose warnings and assertion failures fail the test
(see C{conftest}).
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import INTENTIONAL, Server, StartServer, bad_output
from wsgi_client import (
    ProtocolError,
    ResponseReader,
    build_request,
    chunked,
    connect,
    exchange,
    get,
    get_json,
    unique,
    wait_until,
)

# --- environ ----------------------------------------------------------------------------

REQUIRED_STR = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
]


def _environ(server: Server, raw: bytes) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Send C{raw} to /environ; the environ dump, the extras and the
    client's port."""
    sock = connect(server.port)
    client_port = sock.getsockname()[1]
    sock.sendall(raw)
    resp = ResponseReader(sock).read_response()
    sock.close()
    assert resp.status == 200, resp.raw
    data = resp.json()
    return data["environ"], data["extra"], client_port


def test_environ_complete_and_typed(server: Server) -> None:
    """
    A POST with a body, a query, percent-encoded UTF-8 in the path and
    custom and repeated headers gives every CGI key as a str with the right
    value, the HTTP_* keys, and the wsgi.* keys with their types.
    """
    raw = build_request(
        "POST",
        "/environ/caf%C3%A9%20x%2Fy?a=1&b=%20c",
        headers=[
            ("Host", f"127.0.0.1:{server.port}"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Custom-Thing", "custom value"),
            ("X-Rep", "one"),
            ("X-Rep", "two"),
        ],
        body=b"hello body",
    )
    env, extra, client_port = _environ(server, raw)
    values = {k: v.get("value") for k, v in env.items()}
    for key in REQUIRED_STR + ["CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_HOST"]:
        assert env[key]["type"] == "str", key
    for key, entry in env.items():
        if "." not in key:
            assert entry["type"] == "str", key
    assert values["REQUEST_METHOD"] == "POST"
    assert values["SCRIPT_NAME"] == ""
    # Percent-decoded bytes, as latin-1 (PEP 3333's "bytes as str").
    assert values["PATH_INFO"] == "/environ/café x/y".encode().decode("latin-1")
    assert values["QUERY_STRING"] == "a=1&b=%20c"
    assert values["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert values["CONTENT_LENGTH"] == "10"
    assert values["SERVER_NAME"]
    assert values["SERVER_PORT"] == str(server.port)
    assert values["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert values["REMOTE_ADDR"] == "127.0.0.1"
    assert values["REMOTE_PORT"] == str(client_port)
    assert values["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert values["HTTP_X_CUSTOM_THING"] == "custom value"
    assert values["HTTP_X_REP"] == "one, two"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env

    assert env["wsgi.version"] == {"type": "tuple", "value": [1, 0]}
    assert values["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] == {"type": "bool", "value": True}
    assert env["wsgi.multithread"] == {"type": "bool", "value": False}
    assert env["wsgi.multiprocess"]["type"] == "bool"
    assert env["wsgi.run_once"] == {"type": "bool", "value": False}
    assert "wsgi.errors" in env and "wsgi.input" in env
    assert "wsgi.file_wrapper" in extra["callable"]
    assert extra["body"] == "hello body"


def test_environ_without_body(server: Server) -> None:
    """A GET without a body has no CONTENT_TYPE/CONTENT_LENGTH (or empty
    ones), an empty QUERY_STRING, and PATH_INFO "/environ"."""
    env, extra, _ = _environ(server, build_request("GET", "/environ"))
    values = {k: v.get("value") for k, v in env.items()}
    assert values.get("CONTENT_TYPE", "") == ""
    assert values.get("CONTENT_LENGTH", "") in ("", "0")
    assert values["QUERY_STRING"] == ""
    assert values["PATH_INFO"] == "/environ"
    assert extra["body"] == ""


def test_environ_http10(server: Server) -> None:
    """SERVER_PROTOCOL is the request's version."""
    env, _, _ = _environ(server, build_request("GET", "/environ", version="HTTP/1.0"))
    assert env["SERVER_PROTOCOL"]["value"] == "HTTP/1.0"


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/environ/a%2Fb", "/environ/a/b"),
        ("/environ/100%25", "/environ/100%"),
        ("/environ/%7Euser", "/environ/~user"),
        ("/environ/%E2%82%AC", "/environ/\xe2\x82\xac"),
        ("/environ/a+b", "/environ/a+b"),
    ],
)
def test_path_info_percent_decoded_latin1(
    server: Server, target: str, path: str
) -> None:
    """PATH_INFO is the percent-decoded path, each byte one latin-1 char
    ('+' is not a space in a path)."""
    env, _, _ = _environ(server, build_request("GET", target))
    assert env["PATH_INFO"]["value"] == path


def test_environ_pause_keys(server: Server) -> None:
    """On the reactor thread the environ has the pause_output extension:
    wsgi.pause_output and x-wsgiorg.pause_output (the same callable),
    x-wsgiorg.flush, x-wsgiorg.client_disconnected, twisted_shim.wait and
    twisted_shim.reactor (the running reactor)."""
    _, extra, _ = _environ(server, build_request("GET", "/environ"))
    for key in (
        "wsgi.pause_output",
        "x-wsgiorg.pause_output",
        "x-wsgiorg.flush",
        "x-wsgiorg.client_disconnected",
        "twisted_shim.wait",
    ):
        assert key in extra["callable"], key
    assert extra["pause_same"] is True
    assert extra["reactor_is_global"] is True


# --- wsgi.input ---------------------------------------------------------------------------

BODY = b"line one\nline two\n\nthree"


@pytest.mark.parametrize(
    ("mode", "pieces"),
    [
        ("read", [BODY]),
        ("read-1", [BODY]),
        ("read3", [BODY[i : i + 3] for i in range(0, len(BODY), 3)]),
        ("readline", [b"line one\n", b"line two\n", b"\n", b"three"]),
        (
            "readline4",
            [b"line", b" one", b"\n", b"line", b" two", b"\n", b"\n", b"thre", b"e"],
        ),
        ("readlines", [b"line one\n", b"line two\n", b"\n", b"three"]),
        ("iter", [b"line one\n", b"line two\n", b"\n", b"three"]),
    ],
)
@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("where", ["memory", "spooled"])
def test_wsgi_input_methods(
    wsgi_server: StartServer, mode: str, pieces: list[bytes], framing: str, where: str
) -> None:
    """read(), read(n), readline(), readline(n), readlines() and iteration
    give the body (de-chunked when it was chunked), then b"" at the end;
    the same whether the body stayed in memory or was spooled to a file
    (a C{--body-buffer} shorter than it)."""
    server = wsgi_server() if where == "memory" else wsgi_server(body_buffer=8)
    if framing == "length":
        raw = build_request("POST", f"/input?mode={mode}", body=BODY)
    else:
        raw = build_request(
            "POST", f"/input?mode={mode}", headers=[("Transfer-Encoding", "chunked")]
        ) + chunked(BODY[:5], BODY[5:13], BODY[13:])
    resp, reader = exchange(server.port, raw)
    reader.sock.close()
    assert resp.status == 200
    assert [p.encode("latin-1") for p in resp.json()] == [*pieces, b""]


# --- wsgi.errors -----------------------------------------------------------------------


def test_wsgi_errors_reach_the_log(server: Server) -> None:
    """Lines written to wsgi.errors by write(), writelines() and a flushed
    partial line all appear in the server's log (twisted.logger, here on
    stderr), and writing them breaks nothing."""
    marker = unique(INTENTIONAL)
    resp = get(server.port, f"/errors?marker={marker}")
    assert (resp.status, resp.body) == (200, b"logged")
    for text in ("by write", "by writelines 1", "by writelines 2", "flushed"):
        server.wait_for_log(f"{marker} {text}")


# --- start_response ---------------------------------------------------------------------


def test_start_response_twice_without_exc_info_raises(server: Server) -> None:
    """A second start_response without exc_info raises (the application
    catches it); the first status stands."""
    resp = get(server.port, "/sr/twice")
    assert resp.status == 200
    assert resp.body.startswith(b"raised ")


def test_start_response_exc_info_before_headers_replaces(server: Server) -> None:
    """start_response with exc_info before anything was sent replaces the
    status and the headers."""
    resp = get(server.port, "/sr/replace")
    assert resp.status == 503
    assert resp.header("X-Second") == "1"
    assert resp.header("X-First") is None
    assert resp.body == b"replaced"


def test_start_response_exc_info_after_headers_reraises(
    wsgi_server: StartServer,
) -> None:
    """start_response with exc_info after the headers went out re-raises
    the exception (the application sees it raised); close() ran once and
    the error is logged."""
    srv = wsgi_server(expect_errors=True)
    key = unique()
    sock = connect(srv.port)
    sock.sendall(build_request("GET", f"/sr/after-headers?key={key}"))
    ResponseReader(sock).wait_eof()
    sock.close()
    state = wait_until(
        lambda: (s := srv.state(key)).get("close_calls") and s, what="close"
    )
    assert state["reraised"] is True
    assert state["close_calls"] == 1
    srv.wait_for_log("after-headers on purpose")


def test_start_response_exc_info_after_headers_truncates(
    wsgi_server: StartServer,
) -> None:
    """When start_response re-raises after the headers went out, the client
    sees a truncated response: the status line and the chunk yielded before,
    and no terminating chunk (never a complete response, never nothing)."""
    srv = wsgi_server(expect_errors=True)
    resp, reader = exchange(
        srv.port, build_request("GET", f"/sr/after-headers?key={unique()}")
    )
    reader.sock.close()
    assert resp.status == 200
    assert resp.chunked and not resp.complete
    assert resp.body == b"partial"


# --- write() ---------------------------------------------------------------------------


def test_write_callable(server: Server) -> None:
    """Data given to write() comes before the iterable's, in order."""
    resp = get(server.port, "/write")
    assert (resp.status, resp.body) == (200, b"hello world!")
    assert resp.complete


def test_write_callable_with_content_length(server: Server) -> None:
    """write() with the application's Content-Length: sent as is."""
    resp = get(server.port, "/write?cl=1")
    assert resp.header("Content-Length") == "12"
    assert resp.body == b"hello world!"
    assert not resp.chunked


# --- close() --------------------------------------------------------------------------------


def _close_calls(server: Server, key: str) -> int:
    # A round trip first, so that a late second close() would be seen.
    get(server.port, "/hello")
    return int(server.state(key).get("close_calls", 0))


def test_close_called_once(server: Server) -> None:
    """close() of the application's iterable runs exactly once after a
    normal response."""
    key = unique()
    assert get(server.port, f"/close?key={key}").body == b"one two"
    wait_until(lambda: _close_calls(server, key) >= 1, what="close()")
    assert _close_calls(server, key) == 1


def test_close_called_once_on_head(server: Server) -> None:
    """close() runs exactly once for a HEAD request."""
    key = unique()
    resp, reader = exchange(
        server.port, build_request("HEAD", f"/close?key={key}"), "HEAD"
    )
    reader.sock.close()
    assert resp.status == 200 and resp.body == b""
    wait_until(lambda: _close_calls(server, key) >= 1, what="close()")
    assert _close_calls(server, key) == 1


def test_close_called_once_on_error(wsgi_server: StartServer) -> None:
    """An iterable that raises after its first chunk: close() runs exactly
    once, and the error is logged. (What the client sees is the next
    test's.)"""
    srv = wsgi_server(expect_errors=True)
    key = unique()
    sock = connect(srv.port)
    sock.sendall(build_request("GET", f"/close?key={key}&mode=raise"))
    ResponseReader(sock).wait_eof()
    sock.close()
    wait_until(lambda: _close_calls(srv, key) >= 1, what="close()")
    assert _close_calls(srv, key) == 1
    srv.wait_for_log("close-count error on purpose")


def test_error_after_first_chunk_client_sees_truncated_body(
    wsgi_server: StartServer,
) -> None:
    """An iterable that raises after its first chunk: the chunk already
    yielded reaches the client (PEP 3333: a yielded block is transmitted),
    then the connection ends without the terminating chunk: a truncated
    response, not a complete one and not nothing."""
    srv = wsgi_server(expect_errors=True)
    resp, reader = exchange(
        srv.port, build_request("GET", f"/close?key={unique()}&mode=raise")
    )
    reader.sock.close()
    assert resp.status == 200 and resp.chunked
    assert resp.body == b"before the error" and not resp.complete


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_close_called_once_on_client_disconnect(server: Server, how: str) -> None:
    """A client that goes away in the middle of a long streamed response:
    the host stops iterating and calls close() exactly once."""
    key = unique()
    sock = connect(server.port)
    sock.sendall(build_request("GET", f"/close?key={key}&mode=stream&n=100000"))
    reader = ResponseReader(sock)
    reader.read_head(bytearray())
    assert reader.read_chunk()
    if how == "rst":
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
    sock.close()
    wait_until(lambda: _close_calls(server, key) >= 1, what="close()")
    assert _close_calls(server, key) == 1
    state = server.state(key)
    assert "finished" not in state
    assert state["yielded"] < 100000


# --- wsgi.file_wrapper -------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A 5 MiB + 123 bytes file of random bytes."""
    data = os.urandom(5 * 1024 * 1024 + 123)
    path = tmp_path_factory.mktemp("files") / "big.bin"
    path.write_bytes(data)
    return path, data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("cl", ["1", "0"], ids=["content-length", "chunked"])
def test_file_wrapper_real_file_byte_exact(
    server: Server, big_file: tuple[Path, bytes], cl: str
) -> None:
    """A multi-MiB regular file through wsgi.file_wrapper (sendfile) arrives
    byte-exact, with the application's Content-Length or, when it gave none,
    one the host took from the file's size (PEP 3333 lets the server supply
    it); the connection stays in sync (a pipelined request after it is
    answered) and the file is closed afterwards."""
    path, data = big_file
    key = unique()
    sock = connect(server.port)
    sock.sendall(
        build_request("GET", f"/file?key={key}&path={path}&size={len(data)}&cl={cl}")
        + build_request("GET", "/hello")
    )
    reader = ResponseReader(sock)
    resp = reader.read_response()
    assert resp.status == 200 and resp.complete
    assert len(resp.body) == len(data)
    assert _sha(resp.body) == _sha(data)
    assert not resp.chunked
    assert resp.header("Content-Length") == str(len(data))
    assert reader.read_response().body == b"hello\n"
    sock.close()
    assert get_json(server.port, f"/file-closed?key={key}") == [True]


def test_file_wrapper_from_current_position(
    server: Server, big_file: tuple[Path, bytes]
) -> None:
    """The file is sent from its current position (the application seeked),
    not from offset 0."""
    path, data = big_file
    resp = get(server.port, f"/file?path={path}&size={len(data)}&offset=1000")
    assert resp.complete and _sha(resp.body) == _sha(data[1000:])


def test_file_wrapper_limited_by_content_length(
    server: Server, big_file: tuple[Path, bytes]
) -> None:
    """With a Content-Length shorter than the file, exactly that many bytes
    are sent (PEP 3333: not more than Content-Length), so the next response
    on the connection is read correctly."""
    path, data = big_file
    sock = connect(server.port)
    sock.sendall(
        build_request("GET", f"/file?path={path}&size={len(data)}&offset=10&limit=1000")
        + build_request("GET", "/hello")
    )
    reader = ResponseReader(sock)
    resp = reader.read_response()
    assert resp.body == data[10:1010]
    after = reader.read_response()
    assert (after.status, after.body) == (200, b"hello\n")
    sock.close()


def test_file_wrapper_blksize_and_http10(
    server: Server, big_file: tuple[Path, bytes]
) -> None:
    """With a block size and over HTTP/1.0 without Content-Length the file
    still arrives byte-exact (framed by the length the host took from the
    file), and the connection is closed after it (no keep-alive asked)."""
    path, data = big_file
    resp, reader = exchange(
        server.port,
        build_request(
            "GET",
            f"/file?path={path}&size={len(data)}&cl=0&blksize=4096",
            version="HTTP/1.0",
        ),
    )
    assert _sha(resp.body) == _sha(data)
    assert resp.header("Content-Length") == str(len(data))
    assert resp.header("Connection") == "close"


def test_file_wrapper_head(server: Server, big_file: tuple[Path, bytes]) -> None:
    """HEAD of a file response: headers only, the connection stays usable."""
    path, data = big_file
    sock = connect(server.port)
    sock.sendall(
        build_request("HEAD", f"/file?path={path}&size={len(data)}")
        + build_request("GET", "/hello")
    )
    reader = ResponseReader(sock)
    head = reader.read_response("HEAD")
    assert head.header("Content-Length") == str(len(data))
    assert reader.read_response().body == b"hello\n"
    sock.close()


@pytest.mark.parametrize("kind", ["bytesio", "readonly"])
def test_file_wrapper_non_file_object(server: Server, kind: str) -> None:
    """wsgi.file_wrapper over something that is not a regular file (a
    BytesIO, an object with only read() and close()) still works, and the
    object is closed."""
    key = unique()
    size = 300_000
    resp = get(server.port, f"/file-object?key={key}&kind={kind}&size={size}")
    assert resp.status == 200 and resp.complete
    assert resp.body == bytes(i % 251 for i in range(size))
    assert get_json(server.port, f"/file-closed?key={key}") == [True]


# --- applications that break the rules ------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["crlf-header", "non-latin1-header", "str-body", "no-start-response"]
)
def test_invalid_response_gives_500(wsgi_server: StartServer, kind: str) -> None:
    """A response the host cannot send as it is (a header value with CRLF,
    which would split the response; a header that is not latin-1; a str
    instead of bytes; no start_response at all) is an application error
    before anything was sent: 500, and nothing of it reaches the wire."""
    srv = wsgi_server(expect_errors=True)
    resp, reader = exchange(srv.port, build_request("GET", f"/misbehave?kind={kind}"))
    reader.sock.close()
    assert resp.status == 500, resp.raw
    assert b"X-Injected" not in resp.raw
    assert b"body" not in resp.body and b"text" not in resp.body


def test_body_shorter_than_content_length_aborts(wsgi_server: StartServer) -> None:
    """An iterable that ends before the Content-Length it declared: the host
    cannot complete the response, so it ends the connection (the client sees
    fewer bytes, then EOF) instead of leaving the client waiting for bytes
    that the next response would provide."""
    srv = wsgi_server(expect_errors=True)
    sock = connect(srv.port)
    sock.sendall(
        build_request("GET", "/misbehave?kind=short") + build_request("GET", "/hello")
    )
    reader = ResponseReader(sock)
    try:
        resp = reader.read_response()
    except ProtocolError:
        # Reset before the head arrived: not what a client should see (see
        # the truncation tests), but not a desynchronised connection.
        assert reader.eof
    else:
        assert b"12345".startswith(resp.body) and not resp.complete
        assert reader.eof
    sock.close()


def test_body_longer_than_content_length_not_sent(wsgi_server: StartServer) -> None:
    """An iterable that yields more than its Content-Length: no byte past it
    is sent (PEP 3333), so the connection either carries the next response
    intact or is closed, never garbage. (The host may log the error.)"""
    srv = wsgi_server(expect_errors=True)
    sock = connect(srv.port)
    sock.sendall(
        build_request("GET", "/misbehave?kind=long") + build_request("GET", "/hello")
    )
    reader = ResponseReader(sock)
    resp = reader.read_response()
    assert resp.body == b"12345"
    try:
        after = reader.read_response()
    except ProtocolError as e:
        assert "closed before a status line (got b''" in str(e), e
    else:
        assert after.body == b"hello\n"
    sock.close()


# --- the validator -------------------------------------------------------------------------


def test_validator_reports_nothing(wsgi_server: StartServer) -> None:
    """Every conformant application, run under wsgiref.validate on a fresh
    server, leaves no validator warning and no traceback in the log."""
    srv = wsgi_server(fresh=True)
    key = unique()
    for target in (
        "/hello",
        "/environ/x?y=1",
        "/chunks",
        "/length?size=3000",
        "/status?code=204",
        "/status?code=304",
        "/status?code=404",
        f"/errors?marker={INTENTIONAL}",
        "/sr/twice",
        "/sr/replace",
        "/write",
        f"/close?key={key}",
        f"/state?key={key}",
    ):
        assert get(srv.port, target).status < 600
    post, reader = exchange(srv.port, build_request("POST", "/echo", body=b"x" * 1000))
    reader.sock.close()
    assert post.status == 200
    assert bad_output(srv.log()) == []
