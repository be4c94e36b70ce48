"""
The WSGI applications the host tests run, served by C{tests/wsgi_harness.py}
as C{wsgi_apps:app}.

C{app} routes by C{PATH_INFO} to one small application per behaviour under
test. Every application that is PEP 3333-conformant is wrapped in
C{wsgiref.validate.validator}; the ones that are not, on purpose, say why
(C{start_response} after a pause, C{read()} without a size, a
C{wsgi.file_wrapper} the validator would hide from the host).

The applications record what they observe (close calls, pauses, resume()
results, cancelled Deferreds, bytes yielded) in L{RECORDS}, a dict of plain
dicts keyed by a test-chosen C{key}; a test reads them back over HTTP with
C{GET /state?key=K}. Tests assert on these counts, not on timings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

from twisted.internet import reactor as _installed_reactor
from twisted.internet.defer import Deferred, succeed

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

TEXT = [("Content-Type", "text/plain")]

#: What the applications observed, per test key.
RECORDS: dict[str, dict[str, Any]] = {}
#: The resume callables of raw-form pauses not yet released, per key.
RESUMES: dict[str, list[Callable[[], bool]]] = {}
#: Released resume callables, kept to call them again (stale calls).
RELEASED: dict[str, list[Callable[[], bool]]] = {}
#: The Deferreds of wait-form pauses not yet fired, per key.
DEFERREDS: dict[str, list[Deferred[Any]]] = {}
#: The asyncio futures the coro, future and task forms wait on, per key.
FUTURES: dict[str, list[asyncio.Future[Any]]] = {}
#: C{x-wsgiorg.client_disconnected} of the last request with a key.
DISCONNECTED: dict[str, Callable[[], bool]] = {}
#: A C{pause_output} kept past the end of its request.
STALE_PAUSE: dict[str, Callable[..., Any]] = {}
#: The server, set by the harness (L{harness_started}).
SERVER: Any = None

#: The running reactor (installed by the harness before this import).
reactor: Any = _installed_reactor

_ROUTES: dict[str, WSGIApp] = {}


def harness_started(server: Any) -> None:
    """Called by the harness with the L{WSGIServer} once it listens."""
    global SERVER
    SERVER = server


def route(path: str, *, validate: bool = True) -> Callable[[WSGIApp], WSGIApp]:
    """Serve the decorated application at C{path}, validated unless told not."""

    def register(fn: WSGIApp) -> WSGIApp:
        _ROUTES[path] = validator(fn) if validate else fn
        return fn

    return register


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Route by C{PATH_INFO}; the routed application's iterable is returned
    as it is, so the host sees its type (file wrappers) and close()."""
    path = environ.get("PATH_INFO", "")
    target = _ROUTES.get(path)
    if target is None and path.startswith("/environ/"):
        target = _ROUTES["/environ"]
    if target is None:
        start_response(
            "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")]
        )
        return [b"not found\n"]
    return target(environ, start_response)


# --- helpers -----------------------------------------------------------------


def query(environ: Environ) -> dict[str, str]:
    return {
        k: v[-1]
        for k, v in parse_qs(
            environ.get("QUERY_STRING", ""), keep_blank_values=True
        ).items()
    }


def record(key: str) -> dict[str, Any]:
    return RECORDS.setdefault(key, {})


def bump(rec: dict[str, Any], name: str, n: int = 1) -> None:
    rec[name] = rec.get(name, 0) + n


def read_body(stream: Any) -> bytes:
    """The whole of C{wsgi.input}, read with sizes (as the validator wants)."""
    parts: list[bytes] = []
    while True:
        data = stream.read(65536)
        if not data:
            return b"".join(parts)
        parts.append(data)


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, default=repr).encode()


def respond_json(
    start_response: StartResponse, obj: Any, status: str = "200 OK"
) -> list[bytes]:
    body = json_body(obj)
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class Counted:
    """
    An iterable that counts the host's calls to its C{close()} in
    C{rec["close_calls"]} and passes them on to the wrapped iterator (a
    generator then sees C{GeneratorExit} where it is suspended).
    """

    def __init__(
        self,
        it: Iterable[bytes],
        rec: dict[str, Any],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._it: Iterator[bytes] = iter(it)
        self._rec = rec
        self._on_close = on_close

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> bytes:
        return next(self._it)

    def close(self) -> None:
        bump(self._rec, "close_calls")
        if self._on_close is not None:
            self._on_close()
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


# --- state -------------------------------------------------------------------


@route("/state")
def state(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """C{RECORDS[key]}, with C{client_disconnected_now}: what the last
    request's C{x-wsgiorg.client_disconnected()} says at this moment."""
    key = query(environ)["key"]
    out = dict(RECORDS.get(key, {}))
    if key in DISCONNECTED:
        out["client_disconnected_now"] = DISCONNECTED[key]()
    out["pending_resumes"] = len(RESUMES.get(key, []))
    out["pending_deferreds"] = len(DEFERREDS.get(key, []))
    out["pending_futures"] = len(FUTURES.get(key, []))
    # asyncio tasks not done on the reactor's face (all keys).
    out["tasks"] = len(asyncio.all_tasks(asyncio.get_running_loop()))
    return respond_json(start_response, out)


@route("/server")
def server_state(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The server's open connections and requests in flight."""
    return respond_json(
        start_response,
        {
            "connections": SERVER.connections,
            "active": SERVER.active,
            "heap_trims": SERVER.heap_trims,
        },
    )


# --- HTTP and PEP 3333 ---------------------------------------------------------


@route("/hello")
def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [*TEXT, ("Content-Length", "6")])
    return [b"hello\n"]


@route("/echo")
def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The request body, back, with what the host said about it."""
    body = read_body(environ["wsgi.input"])
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("X-Method", environ["REQUEST_METHOD"]),
            ("X-Content-Length", environ.get("CONTENT_LENGTH", "<absent>")),
            ("X-Remote-Port", environ["REMOTE_PORT"]),
        ],
    )
    return [body]


@route("/environ")
def environ_dump(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    The environ as JSON: every key with its type name and, for plain values,
    its value; the body read from C{wsgi.input}; and the pause keys' types.
    """
    out: dict[str, Any] = {}
    for key, value in environ.items():
        entry: dict[str, Any] = {"type": type(value).__name__}
        if isinstance(value, str | bool | int | float) or value is None:
            entry["value"] = value
        elif isinstance(value, tuple):
            entry["value"] = list(value)
        out[key] = entry
    body = read_body(environ["wsgi.input"])
    extra = {
        "body": body.decode("latin-1"),
        "callable": sorted(k for k, v in environ.items() if callable(v)),
        "pause_same": environ.get("wsgi.pause_output") is not None
        and environ.get("wsgi.pause_output") == environ.get("x-wsgiorg.pause_output"),
        "reactor_is_global": environ.get("twisted_shim.reactor") is reactor,
    }
    return respond_json(start_response, {"environ": out, "extra": extra})


@route("/digest", validate=False)
def digest(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    The request body's length and SHA-256, read in 64 KiB pieces, and the
    type of C{wsgi.input} (not validated: the validator would wrap it), so a
    test sees whether the body was spooled (a buffered file reader) or kept
    in memory (C{BytesIO}).
    """
    stream = environ["wsgi.input"]
    h = hashlib.sha256()
    n = 0
    while data := stream.read(65536):
        h.update(data)
        n += len(data)
    return respond_json(
        start_response,
        {
            "length": n,
            "sha256": h.hexdigest(),
            "input": type(stream).__name__,
            "content_length": environ.get("CONTENT_LENGTH"),
        },
    )


#: Request bodies' input streams kept past their request (L{keep_input}).
KEPT_INPUTS: list[Any] = []


@route("/keep-input", validate=False)
def keep_input(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Read one byte of C{wsgi.input} and keep the stream (as an application
    caching its environ would): the host must still close a spooled body's
    file when the request ends."""
    stream = environ["wsgi.input"]
    stream.read(1)
    KEPT_INPUTS.append(stream)
    return respond_json(start_response, {"input": type(stream).__name__})


@route("/input", validate=False)
def input_modes(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    Reads C{wsgi.input} one way (C{mode}) and returns the pieces. Not
    validated: the validator forbids C{read()} without a size, which a
    C{wsgi.input_terminated} stream allows.
    """
    mode = query(environ).get("mode", "read")
    stream = environ["wsgi.input"]
    pieces: list[bytes]
    if mode == "read":
        pieces = [stream.read()]
    elif mode == "read-1":
        pieces = [stream.read(-1)]
    elif mode == "read3":
        pieces = list(iter(lambda: stream.read(3), b""))
    elif mode == "readline":
        pieces = list(iter(stream.readline, b""))
    elif mode == "readline4":
        pieces = list(iter(lambda: stream.readline(4), b""))
    elif mode == "readlines":
        pieces = stream.readlines()
    elif mode == "iter":
        pieces = list(stream)
    else:
        raise ValueError(mode)
    pieces.append(stream.read(10))  # at the end: b""
    return respond_json(start_response, [p.decode("latin-1") for p in pieces])


@route("/chunks")
def chunks(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """C{n} chunks of C{size} bytes and no Content-Length (chunked in HTTP/1.1)."""
    o = query(environ)
    n, size = int(o.get("n", "3")), int(o.get("size", "5"))
    start_response("200 OK", list(TEXT))
    return [bytes([97 + i % 26]) * size for i in range(n)]


@route("/length")
def length(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A body of C{size} bytes, in chunks of 1000, with its Content-Length."""
    size = int(query(environ).get("size", "100"))
    start_response(
        "200 OK", [*TEXT, ("Content-Length", str(size)), ("X-Extra", "same")]
    )
    return [b"x" * min(1000, size - i) for i in range(0, size, 1000)]


@route("/status")
def status(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A response with status C{code}; 204 and 304 carry no body."""
    code = int(query(environ)["code"])
    if code in (204, 304):
        start_response(f"{code} No Body", [("X-Code", str(code))])
        return []
    start_response(f"{code} Some Status", list(TEXT))
    return [b"status body"]


@route("/cookies")
def cookies(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Repeated response headers and a custom reason phrase."""
    start_response(
        "299 Custom Reason Phrase",
        [
            *TEXT,
            ("Set-Cookie", "a=1; Path=/"),
            ("Set-Cookie", "b=2; Path=/"),
            ("Content-Length", "0"),
        ],
    )
    return []


@route("/errors")
def errors(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Writes C{marker} lines to C{wsgi.errors} by write, writelines and a
    flushed partial line."""
    marker = query(environ)["marker"]
    err = environ["wsgi.errors"]
    err.write(f"{marker} by write\n")
    err.writelines([f"{marker} by writelines 1\n", f"{marker} by writelines 2\n"])
    err.write(f"{marker} flushed")
    err.flush()
    start_response("200 OK", [*TEXT, ("Content-Length", "6")])
    return [b"logged"]


@route("/sr/twice")
def sr_twice(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """start_response called a second time without exc_info: that must raise."""
    start_response("200 OK", list(TEXT))
    try:
        start_response("201 Created", list(TEXT))
    except Exception as e:
        return [f"raised {type(e).__name__}".encode()]
    return [b"did not raise"]


@route("/sr/replace")
def sr_replace(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """exc_info before the headers are sent: the new status replaces the old."""
    start_response("200 OK", [*TEXT, ("X-First", "1")])
    try:
        raise ValueError("replaced on purpose")
    except ValueError:
        start_response(
            "503 Service Unavailable", [*TEXT, ("X-Second", "1")], sys.exc_info()
        )
    return [b"replaced"]


@route("/sr/after-headers")
def sr_after_headers(
    environ: Environ, start_response: StartResponse
) -> Iterable[bytes]:
    """exc_info after the headers went out: start_response re-raises it."""
    rec = record(query(environ)["key"])
    start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        yield b"partial"
        try:
            raise ValueError("after-headers on purpose")
        except ValueError:
            try:
                start_response("500 Internal Server Error", list(TEXT), sys.exc_info())
            except ValueError:
                rec["reraised"] = True
                raise
            rec["reraised"] = False
        yield b"NOT REACHED"

    return Counted(body(), rec)


@route("/write")
def write_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The write() callable, then an iterable; with C{cl=1} a Content-Length."""
    headers = list(TEXT)
    if query(environ).get("cl") == "1":
        headers.append(("Content-Length", "12"))
    write = start_response("200 OK", headers)
    write(b"hello ")
    write(b"world")
    return [b"!"]


@route("/write-big")
def write_big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """write() of C{size} bytes at once: it queues and returns (rule 10)."""
    o = query(environ)
    rec = record(o["key"])
    size = int(o["size"])
    write = start_response("200 OK", [*TEXT, ("Content-Length", str(size))])
    write(b"w" * size)
    rec["returned"] = True
    return []


@route("/close")
def close_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    An iterable counting close() calls. C{mode}: C{normal} (two chunks),
    C{raise} (fails after the first chunk), C{stream} (C{n} chunks of 64 KiB,
    for a client that goes away).
    """
    o = query(environ)
    rec = record(o["key"])
    mode = o.get("mode", "normal")
    start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        bump(rec, "started")
        if mode == "normal":
            yield b"one "
            yield b"two"
        elif mode == "raise":
            yield b"before the error"
            raise RuntimeError("close-count error on purpose")
        elif mode == "stream":
            for _ in range(int(o.get("n", "100000"))):
                bump(rec, "yielded")
                yield b"s" * 65536
        bump(rec, "finished")

    return Counted(body(), rec)


@route("/file", validate=False)
def file_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    C{wsgi.file_wrapper} over a real file (C{path}), from C{offset}, with a
    Content-Length unless C{cl=0} (C{limit} bytes when given). Not validated:
    the validator would wrap the file wrapper, hiding it from the host's
    sendfile path.
    """
    o = query(environ)
    rec = record(o.get("key", "file"))
    f = open(o["path"], "rb")  # noqa: SIM115 - closed by the file wrapper
    rec["files"] = rec.get("files", 0) + 1
    FILES.setdefault(o.get("key", "file"), []).append(f)
    f.seek(int(o.get("offset", "0")))
    size = int(o["limit"]) if "limit" in o else int(o["size"]) - f.tell()
    headers = [("Content-Type", "application/octet-stream")]
    if o.get("cl", "1") == "1":
        headers.append(("Content-Length", str(size)))
    start_response("200 OK", headers)
    wrapper = environ["wsgi.file_wrapper"]
    if "blksize" in o:
        return wrapper(f, int(o["blksize"]))
    return wrapper(f)


#: Files opened by /file, to check they were closed.
FILES: dict[str, list[Any]] = {}


@route("/file-closed")
def file_closed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    files = FILES.get(query(environ)["key"], [])
    return respond_json(start_response, [f.closed for f in files])


class ReadOnly:
    """A file-like object with read() and close() only, no fileno()."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        return self._data.read(n)

    def close(self) -> None:
        self.closed = True


@route("/file-object", validate=False)
def file_object(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """C{wsgi.file_wrapper} over an object that is not a file: a BytesIO
    (C{kind=bytesio}) or an object with read() only (C{kind=readonly})."""
    o = query(environ)
    size = int(o["size"])
    data = bytes(i % 251 for i in range(size))
    obj: Any = io.BytesIO(data) if o.get("kind") == "bytesio" else ReadOnly(data)
    FILES.setdefault(o["key"], []).append(obj)
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
    )
    return environ["wsgi.file_wrapper"](obj, 8192)


@route("/misbehave", validate=False)
def misbehave(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    Applications that break PEP 3333 on purpose (C{kind}), so not validated:
    a header value with CRLF (response splitting), a non-latin-1 header, a
    str body, no start_response at all, fewer or more bytes than the
    Content-Length they declared.
    """
    kind = query(environ)["kind"]
    if kind == "crlf-header":
        start_response("200 OK", [*TEXT, ("X-A", "a\r\nX-Injected: yes")])
        return [b"body"]
    if kind == "non-latin1-header":
        start_response("200 OK", [*TEXT, ("X-A", "\u20ac")])
        return [b"body"]
    if kind == "str-body":
        start_response("200 OK", list(TEXT))
        return ["text"]  # type: ignore[list-item]
    if kind == "no-start-response":
        return [b"body"]
    if kind == "short":
        start_response("200 OK", [*TEXT, ("Content-Length", "10")])
        return [b"12345"]
    if kind == "long":
        start_response("200 OK", [*TEXT, ("Content-Length", "5")])
        return [b"12345", b"EXTRA BYTES"]
    raise ValueError(kind)


# --- pause_output ----------------------------------------------------------------


def _hold(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    The controllable paused request. Query options:

      - C{key}: where it records (C{armed}, C{paused_now}, C{exits},
        C{cancels}, C{resumed}, C{timed_out}, C{result}, C{close_calls}).
      - C{form}: C{raw} (C{wsgi.pause_output}), C{wait} (C{twisted_shim.wait}
        on a Deferred whose canceller counts C{cancels}), or, waiting on an
        asyncio future of the running loop (L{_asyncio_awaitable}), C{coro}
        (a coroutine awaiting it), C{task} (that coroutine in a task the
        application made) or C{future} (the future itself); C{cancels}
        counts the coroutine's C{CancelledError}, or the future's
        cancellation.
      - C{sr}: C{before} the pause or C{after} the resume.
      - C{flush=1}: C{x-wsgiorg.flush()} after start_response.
      - C{first}: what to yield at the pause (default C{b""}).
      - C{timeout}: the per-call timeout.
      - C{cl}: a Content-Length for the response.
      - C{then}: C{ok}, or C{error} to raise after the resume.
      - C{arm=callable}: arm (after start_response) in the application
        callable, not in the iterable.

    C{/p/release?key=K} resumes it (raw) or fires its Deferred or future.
    """
    o = query(environ)
    key = o["key"]
    rec = record(key)
    bump(rec, "calls")
    headers = list(TEXT)
    if "cl" in o:
        headers.append(("Content-Length", o["cl"]))
    timeout = float(o["timeout"]) if "timeout" in o else None
    form = o.get("form", "raw")
    DISCONNECTED[key] = environ["x-wsgiorg.client_disconnected"]

    def arm() -> tuple[Any, Deferred[Any] | asyncio.Future[Any] | None, Any]:
        """Arm the pause: (resume, None, None) or (None, what fires, waiter)."""
        if form == "raw":
            pause = environ["wsgi.pause_output"]
            resume = pause() if timeout is None else pause(timeout=timeout)
            RESUMES.setdefault(key, []).append(resume)
            return resume, None, None
        if form == "wait":
            deferred: Deferred[Any] = Deferred(lambda d: bump(rec, "cancels"))
            DEFERREDS.setdefault(key, []).append(deferred)
            waiter = environ["twisted_shim.wait"](deferred, timeout=timeout)
            return None, deferred, waiter
        future, awaited = _asyncio_awaitable(form, rec)
        FUTURES.setdefault(key, []).append(future)
        return None, future, environ["twisted_shim.wait"](awaited, timeout=timeout)

    def forget(fires: Deferred[Any] | asyncio.Future[Any] | None) -> None:
        for pending in (DEFERREDS, FUTURES):
            if fires in pending.get(key, []):
                pending[key].remove(fires)  # type: ignore[arg-type]

    in_callable = o.get("arm") == "callable"
    if in_callable:
        start_response("200 OK", headers)
        armed = arm()

    def body() -> Iterator[bytes]:
        if o.get("sr", "before") == "before" and not in_callable:
            start_response("200 OK", headers)
        if o.get("flush") == "1":
            environ["x-wsgiorg.flush"]()
        resume, deferred, waiter = armed if in_callable else arm()
        bump(rec, "armed")
        bump(rec, "paused_now")
        try:
            yield o.get("first", "").encode()
        except GeneratorExit:
            bump(rec, "exits")
            rec["disconnected_at_exit"] = environ["x-wsgiorg.client_disconnected"]()
            if resume is not None and resume in RESUMES.get(key, []):
                RESUMES[key].remove(resume)
            forget(deferred)
            raise
        finally:
            bump(rec, "paused_now", -1)
        bump(rec, "resumed")
        if resume is not None:
            rec["timed_out"] = bool(resume.timed_out)
        else:
            rec["timed_out"] = bool(waiter.timed_out)
            try:
                rec["result"] = waiter.result()
            except BaseException as e:
                rec["result"] = f"raised {type(e).__name__}"
            forget(deferred)
        if o.get("then") == "error":
            raise ValueError(f"error after resume on purpose ({key})")
        if o.get("sr", "before") == "after":
            start_response("200 OK", headers)
        yield b"resumed"

    return Counted(body(), rec)


def _asyncio_awaitable(
    form: str, rec: dict[str, Any]
) -> tuple[asyncio.Future[Any], Any]:
    """
    A future of the running asyncio loop (the reactor's face), and what
    C{form} waits on: C{coro}, a coroutine that awaits it; C{task}, that
    coroutine as a task; C{future}, the future. C{cancels} counts the
    coroutine's C{CancelledError} at its C{await} (the future's
    cancellation, for C{future}); C{coro_finally} its C{finally} block.
    """
    future = asyncio.get_running_loop().create_future()
    if form == "future":
        future.add_done_callback(lambda f: f.cancelled() and bump(rec, "cancels"))
        return future, future

    async def waiting() -> Any:
        try:
            return await future
        except asyncio.CancelledError:
            bump(rec, "cancels")
            raise
        finally:
            bump(rec, "coro_finally")

    if form == "coro":
        return future, waiting()
    if form == "task":
        return future, asyncio.ensure_future(waiting())
    raise ValueError(f"unknown form {form!r}")


_hold_validated = validator(_hold)


@route("/p/hold", validate=False)
def hold(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """L{_hold}, validated when it calls start_response before pausing (the
    validator wants start_response before the first item, even C{b""})."""
    if query(environ).get("sr", "before") == "before":
        return _hold_validated(environ, start_response)
    return _hold(environ, start_response)


@route("/p/release")
def release(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    Resume every raw pause held under C{key} and fire every Deferred and
    asyncio future held under it (with C{value}, or a LookupError if
    C{fail=1}); with C{again=1}, call the already released resume callables
    again. Returns what resume() returned.
    """
    o = query(environ)
    key = o["key"]
    returned: list[Any] = []
    if o.get("again") == "1":
        returned = [r() for r in RELEASED.get(key, [])]
    else:
        for r in RESUMES.pop(key, []):
            returned.append(r())
            RELEASED.setdefault(key, []).append(r)
        for d in DEFERREDS.pop(key, []):
            if d.called:
                returned.append("already fired")
            elif o.get("fail") == "1":
                d.errback(LookupError("the Deferred failed on purpose"))
                returned.append("failed")
            else:
                d.callback(o.get("value", "fired"))
                returned.append("fired")
        for f in FUTURES.pop(key, []):
            if f.done():
                returned.append("already fired")
            elif o.get("fail") == "1":
                f.set_exception(LookupError("the future failed on purpose"))
                returned.append("failed")
            else:
                f.set_result(o.get("value", "fired"))
                returned.append("fired")
    return respond_json(start_response, {"returned": returned})


@route("/p/arm")
def arm_rules(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    Rule 1 in the application callable: pause_output() from another thread
    raises; a second arming raises. The pause is then resumed early so the
    response is not suspended.
    """
    pause = environ["wsgi.pause_output"]
    out: dict[str, Any] = {}
    box: list[str] = []

    def from_thread() -> None:
        try:
            r = pause()
        except RuntimeError:
            box.append("RuntimeError")
        except Exception as e:
            box.append(f"raised {type(e).__name__}")
        else:
            box.append("armed")
            r()

    t = threading.Thread(target=from_thread)
    t.start()
    t.join(5)
    out["from_thread"] = box[0] if box else "thread hung"
    resume = pause()
    try:
        pause()
        out["second"] = "no error"
    except RuntimeError:
        out["second"] = "RuntimeError"
    out["resume"] = resume()
    return respond_json(start_response, out)


@route("/p/arm-in-callback")
def arm_in_callback(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 1: a callback running while the request is paused cannot arm."""
    pause = environ["wsgi.pause_output"]
    start_response("200 OK", list(TEXT))
    out: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        resume = pause()

        def cb() -> None:
            try:
                pause()
                out["in_callback"] = "no error"
            except RuntimeError:
                out["in_callback"] = "RuntimeError"
            out["resume"] = resume()

        reactor.callLater(0, cb)
        yield b""
        yield json_body(out)

    return body()


@route("/p/arm-after-end")
def arm_after_end(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Keeps this request's pause_output for /p/arm-stale."""
    STALE_PAUSE[query(environ)["key"]] = environ["wsgi.pause_output"]
    start_response("200 OK", [*TEXT, ("Content-Length", "4")])
    return [b"done"]


@route("/p/arm-stale")
def arm_stale(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 1: the pause_output of a finished request cannot arm."""
    try:
        STALE_PAUSE[query(environ)["key"]]()
        result = "no error"
    except RuntimeError:
        result = "RuntimeError"
    return respond_json(start_response, {"stale": result})


@route("/p/end-armed")
def end_armed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    Rule 2: the end of iteration cancels an armed pause. C{how=empty}: armed
    in the callable, empty iterable; C{how=after-chunk}: armed after the last
    chunk, then the generator returns. The resume is kept under C{key}.
    """
    o = query(environ)
    key = o["key"]
    pause = environ["wsgi.pause_output"]
    if o.get("how") == "empty":
        start_response("200 OK", [*TEXT, ("Content-Length", "0")])
        RESUMES.setdefault(key, []).append(pause())
        return []
    start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        yield b"body"
        RESUMES.setdefault(key, []).append(pause())

    return body()


@route("/p/early")
def early(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 3: resumed before the yield (raw), or waiting on a Deferred that
    has already fired (wait): the yield does not suspend. With C{future} (a
    future already done) or C{coro} (a coroutine that returns at once),
    C{done} says whether the outcome was in at the yield (it is not: asyncio
    runs done callbacks from the loop)."""
    form = query(environ).get("form", "raw")
    start_response("200 OK", list(TEXT))

    async def answer() -> int:
        return 42

    def body() -> Iterator[bytes]:
        out: dict[str, Any] = {}
        if form == "raw":
            resume = environ["wsgi.pause_output"]()
            out["first"] = resume()
            yield b""
            out["after"] = resume()
        else:
            if form == "wait":
                awaited: Any = succeed(42)
            elif form == "future":
                awaited = asyncio.get_running_loop().create_future()
                awaited.set_result(42)
            else:
                awaited = answer()
            w = environ["twisted_shim.wait"](awaited)
            if form != "wait":
                out["done_at_yield"] = w.done()
            yield b""
            out["done"] = w.done()
            out["result"] = w.result()
            out["timed_out"] = w.timed_out
        yield json_body(out)

    return body()


class _Ending:
    """An iterable whose close() schedules C{after_end} on the reactor."""

    def __init__(self, it: Iterator[bytes], after_end: Callable[[], None]) -> None:
        self._it = it
        self._after_end = after_end

    def __iter__(self) -> _Ending:
        return self

    def __next__(self) -> bytes:
        return next(self._it)

    def close(self) -> None:
        reactor.callLater(0, self._after_end)


@route("/p/resume-semantics")
def resume_semantics(
    environ: Environ, start_response: StartResponse
) -> Iterable[bytes]:
    """
    Rule 4, in one request. A callback resumes pause 1 twice (True, then
    False) and logs an event after resume() returned, before the step (so
    resume() did not call into the application). During pause 2, the stale
    resume of pause 1 returns False and does not resume; pause 2's own
    resume does, 0.1 s later. After the end, resume() returns False
    (recorded under C{key} once the host closed the iterable).
    """
    key = query(environ)["key"]
    rec = record(key)
    pause = environ["wsgi.pause_output"]
    start_response("200 OK", list(TEXT))
    out: dict[str, Any] = {"events": []}
    events: list[str] = out["events"]
    holder: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        r1 = pause()

        def first() -> None:
            out["r1_first"] = r1()
            events.append("callback after resume()")
            out["r1_repeat"] = r1()

        reactor.callLater(0, first)
        yield b""
        events.append("step after pause 1")
        r2 = pause()
        holder["r2"] = r2
        flag: dict[str, bool] = {}

        def second() -> None:
            out["r1_stale"] = r1()

            def third() -> None:
                flag["released"] = True
                out["r2_first"] = r2()

            reactor.callLater(0.1, third)

        reactor.callLater(0, second)
        yield b""
        out["step2_after_own_resume"] = flag.get("released", False)
        yield json_body(out)

    def after_end() -> None:
        rec["r2_after_end"] = holder["r2"]()

    return _Ending(body(), after_end)


@route("/p/thread-resume")
def thread_resume(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 4: resume() from another thread, while the loop sleeps, wakes the
    request; the step's delay after resume() is reported."""
    delay = float(query(environ).get("delay", "0.2"))
    start_response("200 OK", list(TEXT))
    out: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        resume = environ["wsgi.pause_output"]()

        def later() -> None:
            time.sleep(delay)
            out["at"] = time.monotonic()
            out["returned"] = resume()
            out["thread"] = threading.current_thread() is not threading.main_thread()

        threading.Thread(target=later, daemon=True).start()
        yield b""
        out["latency"] = time.monotonic() - out.get("at", 0.0)
        yield json_body(out)

    return body()


@route("/p/spin-timer")
def spin_timer(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    Rule 5: C{b""} without a pause, between data chunks, until a
    C{callLater(0)} set before the first one has run. A host that looped on
    C{b""} without turning the loop would never let it run (the app gives up
    after 10 s and says so).
    """
    start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        flag: list[int] = []
        reactor.callLater(0, flag.append, 1)
        spins = 0
        deadline = time.monotonic() + 10
        yield b"a"
        while not flag and time.monotonic() < deadline:
            spins += 1
            yield b""
        for _ in range(20):
            yield b""
        yield b"b"
        yield b""
        yield json_body({"timer_ran": bool(flag), "spins": spins})

    return body()


@route("/p/spin-until")
def spin_until(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 5: C{b""} without a pause until another request (/p/set-flag)
    set C{key}'s flag: the loop serves others between the steps."""
    key = query(environ)["key"]
    rec = record(key)
    start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        deadline = time.monotonic() + 10
        spins = 0
        rec["spinning"] = True
        while not rec.get("flag") and time.monotonic() < deadline:
            spins += 1
            yield b""
        yield json_body({"flag_seen": bool(rec.get("flag")), "spins": spins})

    return body()


@route("/p/set-flag")
def set_flag(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    record(query(environ)["key"])["flag"] = True
    return respond_json(start_response, {"set": True})


@route("/p/flush-early")
def flush_early(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 6: flush() before start_response has nothing to send; it must
    not fail, and the response still goes out normally."""
    environ["x-wsgiorg.flush"]()
    start_response("200 OK", [*TEXT, ("Content-Length", "2")])
    return [b"ok"]


@route("/p/write-in-iter")
def write_in_iter(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 10: write() from the iterable raises RuntimeError."""
    write = start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        try:
            write(b"from the iterable")
            result = "no error"
        except RuntimeError:
            result = "RuntimeError"
        yield json_body({"write_in_iter": result})

    return body()


@route("/p/write-in-callback")
def write_in_callback(
    environ: Environ, start_response: StartResponse
) -> Iterable[bytes]:
    """Rule 10: write() from a callback during a pause raises RuntimeError."""
    write = start_response("200 OK", list(TEXT))
    out: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        resume = environ["wsgi.pause_output"]()

        def cb() -> None:
            try:
                write(b"from a callback")
                out["write_in_callback"] = "no error"
            except RuntimeError:
                out["write_in_callback"] = "RuntimeError"
            resume()

        reactor.callLater(0, cb)
        yield b""
        yield json_body(out)

    return body()


@route("/p/reentrant", validate=False)
def reentrant(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    (Not validated: it calls start_response and write where PEP 3333 says
    not to, on purpose, and the validator would raise before the host.)

    Calls back into its own request from callbacks the request triggers:
    the Deferred it waits on (fired by the reactor while the request is
    paused) and the iterable's next() and close(), which the host's driver
    runs. Each call gets its answer (a value, or the RuntimeError the
    contract says) and the response completes; records under C{key}.
    """
    key = query(environ)["key"]
    rec = record(key)
    flush = environ["x-wsgiorg.flush"]
    disconnected = environ["x-wsgiorg.client_disconnected"]
    pause = environ["wsgi.pause_output"]

    def attempt(name: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
            rec[name] = "ok" if result is None else repr(result)
        except RuntimeError:
            rec[name] = "RuntimeError"

    write = start_response("200 OK", list(TEXT))

    def in_wait(value: str) -> str:
        attempt("flush_in_wait", flush)
        attempt("disconnected_in_wait", disconnected)
        attempt("pause_in_wait", pause)
        attempt("write_in_wait", lambda: write(b"from a callback"))
        attempt("start_response_in_wait", lambda: start_response("500 No", []))
        return value

    fired: Deferred[str] = Deferred()
    fired.addCallback(in_wait)
    waiter = environ["twisted_shim.wait"](fired)
    reactor.callLater(0, fired.callback, "fired")

    class Body:
        def __init__(self) -> None:
            self.items = 0

        def __iter__(self) -> Body:
            return self

        def __next__(self) -> bytes:
            self.items += 1
            if self.items == 1:
                return b""  # the yield after the pause
            if self.items == 2:
                attempt("result", waiter.result)
                attempt("flush_in_next", flush)
                attempt("write_in_next", lambda: write(b"x"))
                return json_body({"items": self.items})
            raise StopIteration

        def close(self) -> None:
            attempt("write_in_close", lambda: write(b"x"))
            attempt("pause_in_close", pause)
            attempt("flush_in_close", flush)
            attempt("disconnected_in_close", disconnected)

    return Body()


@route("/p/input")
def paused_input(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 11: counts its calls under C{key}; reads wsgi.input after a pause
    (self-resumed) and reports its length and SHA-256."""
    key = query(environ)["key"]
    bump(record(key), "calls")
    start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        resume = environ["wsgi.pause_output"]()
        reactor.callLater(0, resume)
        yield b""
        data = read_body(environ["wsgi.input"])
        yield json_body(
            {
                "len": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "terminated": environ.get("wsgi.input_terminated"),
            }
        )

    return body()


@route("/p/count")
def count(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Counts its calls under C{key} (a pipelined request's dispatch)."""
    rec = record(query(environ)["key"])
    bump(rec, "calls")
    return respond_json(start_response, {"calls": rec["calls"]})


@route("/p/big")
def big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Rule 12: C{size} bytes in chunks of C{chunk} (chunk i filled with byte
    i % 256), with a Content-Length; C{yielded} counts bytes handed over."""
    o = query(environ)
    rec = record(o["key"])
    size, chunk = int(o["size"]), int(o["chunk"])
    rec["yielded"] = 0
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
    )

    def body() -> Iterator[bytes]:
        try:
            for i, start in enumerate(range(0, size, chunk)):
                data = bytes([i % 256]) * min(chunk, size - start)
                rec["yielded"] += len(data)
                yield data
        finally:
            rec["closed"] = True

    return body()


GATHER: dict[str, dict[str, Any]] = {}


@route("/p/gather")
def gather(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    C{n} requests paused at once. Each arms a pause (C{form=raw}) or waits on
    its own Deferred (C{form=wait}) or asyncio future (C{coro}, C{task},
    C{future}: L{_asyncio_awaitable}) and counts itself as paused; the request
    that brings the count to C{n} releases them all. Each then reports
    whether the release came before it continued (it must: it was
    suspended) and the peak count.
    """
    o = query(environ)
    n = int(o["n"])
    g = GATHER.setdefault(
        o["key"], {"paused": 0, "peak": 0, "release": [], "released": False}
    )
    start_response("200 OK", list(TEXT))

    def body() -> Iterator[bytes]:
        w: Any = None
        if o["form"] == "raw":
            resume = environ["wsgi.pause_output"]()
            g["release"].append(lambda: resume())
        elif o["form"] == "wait":
            d: Deferred[Any] = Deferred()
            g["release"].append(lambda: d.callback("released"))
            w = environ["twisted_shim.wait"](d)
        else:
            f, awaited = _asyncio_awaitable(o["form"], record(o["key"]))
            g["release"].append(lambda: f.set_result("released"))
            w = environ["twisted_shim.wait"](awaited)
        g["paused"] += 1
        g["peak"] = max(g["peak"], g["paused"])
        if g["paused"] == n:
            g["released"] = True
            for fire in g["release"]:
                fire()
            g["release"].clear()
        yield b""
        released = g["released"]
        g["paused"] -= 1
        out = {"released_first": released, "peak": g["peak"], "form": o["form"]}
        if w is not None:
            out["result"] = w.result()
        yield json_body(out)

    return body()


@route("/p/wait-refused")
def wait_refused(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    What wait() cannot wait for: it raises, leaving no pause armed (the next
    wait() works), and a coroutine it was given while a pause was armed is
    closed, not left to warn that it was never awaited. A coroutine that
    awaits an unfired Deferred in its task fails with asyncio's "bad yield".
    """
    start_response("200 OK", list(TEXT))
    wait = environ["twisted_shim.wait"]

    async def never() -> None:
        await asyncio.sleep(3600)

    async def awaits_a_deferred() -> Any:
        return await Deferred()

    def body() -> Iterator[bytes]:
        out: dict[str, Any] = {}
        other = asyncio.new_event_loop()
        given: dict[str, Callable[[], Any]] = {
            "int": lambda: 42,
            "concurrent": concurrent.futures.Future,
            "other_loop": other.create_future,
            "coroutine_function": lambda: never,
        }
        try:
            for name, make in given.items():
                try:
                    wait(make())
                    out[name] = "accepted"
                except Exception as e:
                    out[name] = f"{type(e).__name__}: {e}"
        finally:
            other.close()
        resume = environ["wsgi.pause_output"]()
        coro = never()
        try:
            wait(coro)
            out["while_armed"] = "accepted"
        except RuntimeError:
            out["while_armed"] = "RuntimeError"
        out["coro_state"] = inspect.getcoroutinestate(coro)
        resume()
        yield b""
        w = wait(asyncio.sleep(0, "slept"))
        yield b""
        out["after"] = w.result()
        w = wait(awaits_a_deferred())
        yield b""
        try:
            out["awaits_a_deferred"] = w.result()
        except RuntimeError as e:
            out["awaits_a_deferred"] = f"RuntimeError: {e}"
        yield json_body(out)

    return body()


@route("/p/wait-face")
def wait_face(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """
    Where wait() runs a coroutine: the loop it sees is the reactor's asyncio
    face (the running loop of the application too), in a task; asyncio's
    own timers work there.
    """
    from twisted_shim import aio

    start_response("200 OK", list(TEXT))
    face = aio.loop_of(environ["twisted_shim.reactor"])

    async def where() -> dict[str, Any]:
        slept = await asyncio.sleep(0.01, "slept")
        return {
            "loop_is_face": asyncio.get_running_loop() is face,
            "in_task": asyncio.current_task() is not None,
            "slept": slept,
        }

    def body() -> Iterator[bytes]:
        app_loop_is_face = asyncio.get_running_loop() is face
        w = environ["twisted_shim.wait"](where(), timeout=10)
        yield b""
        yield json_body({"app_loop_is_face": app_loop_is_face, **w.result()})

    return body()
