"""
The pause_output extension, rule by rule (C{docs/pause_output.md}):
each numbered rule has tests named C{test_ruleN_...}. Then the load cases:
400 requests paused at once on one server, 1,000 clients killed while
paused without leaking descriptors or memory.

A paused request is released by another request (C{/p/release}), and what
the application saw is read back from C{/state}: the tests count, they do not
time, except where a timeout itself is under test (small values, generous
margins).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import Any

import pytest
from conftest import LIMITS, Server, StartServer
from wsgi_client import (
    ResponseReader,
    build_request,
    chunked,
    connect,
    exchange,
    get,
    get_json,
    proc_tcp_queues,
    reset,
    unique,
    wait_until,
)

#: The C{twisted_shim.wait} forms of C{/p/hold} that wait on asyncio: a
#: coroutine (run as a task on the reactor's face), a task the application
#: made, a future.
ASYNCIO_FORMS = ["coro", "task", "future"]
#: Every C{twisted_shim.wait} form: a Deferred, and the asyncio ones.
WAIT_FORMS = ["wait", *ASYNCIO_FORMS]


def _hold(
    server: Server, key: str, **options: str
) -> tuple[socket.socket, ResponseReader]:
    """Start C{/p/hold} on a new connection and wait until it is paused."""
    params = "&".join(f"{k}={v}" for k, v in {"key": key, **options}.items())
    sock = connect(server.port)
    sock.sendall(build_request("GET", f"/p/hold?{params}"))
    wait_until(lambda: server.state(key).get("paused_now") == 1, what=f"{key} paused")
    return sock, ResponseReader(sock)


def _release(server: Server, key: str, again: bool = False) -> list[Any]:
    suffix = "&again=1" if again else ""
    return get_json(server.port, f"/p/release?key={key}{suffix}")["returned"]


def _state_when(
    server: Server, key: str, name: str, value: Any = None
) -> dict[str, Any]:
    """C{/state} once C{name} is recorded (and equals C{value}, if given)."""

    def check() -> dict[str, Any] | None:
        state = server.state(key)
        if name in state and (value is None or state[name] == value):
            return state
        return None

    return wait_until(check, what=f"{key}: {name}")


# --- rule 1: arming ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["raw", *WAIT_FORMS])
def test_rule1_arming_in_the_application_callable(server: Server, form: str) -> None:
    """Arming in the application callable itself (before it returns its
    iterable) is allowed: the first C{yield b""} then suspends."""
    key = unique()
    sock, reader = _hold(server, key, arm="callable", form=form)
    assert reader.nothing_pending(0.2)
    _release(server, key)
    assert reader.read_response().body == b"resumed"
    assert server.state(key)["resumed"] == 1
    sock.close()


def test_rule1_arming_twice_raises(server: Server) -> None:
    """Arming while already armed raises RuntimeError."""
    out = get_json(server.port, "/p/arm")
    assert out["second"] == "RuntimeError"
    assert out["resume"] is True


def test_rule1_arming_from_another_thread_raises(server: Server) -> None:
    """pause_output() called from a thread that is not the reactor's raises
    RuntimeError."""
    assert get_json(server.port, "/p/arm")["from_thread"] == "RuntimeError"


def test_rule1_arming_from_a_callback_while_paused_raises(server: Server) -> None:
    """A callback running while the request is paused (neither the
    application nor its iterable is running) cannot arm: RuntimeError."""
    resp = get(server.port, "/p/arm-in-callback")
    out = resp.json()
    assert out == {"in_callback": "RuntimeError", "resume": True}


def test_rule1_arming_after_the_request_ended_raises(server: Server) -> None:
    """The pause_output of a finished request cannot arm: RuntimeError."""
    key = unique()
    assert get(server.port, f"/p/arm-after-end?key={key}").body == b"done"
    assert get_json(server.port, f"/p/arm-stale?key={key}") == {"stale": "RuntimeError"}


# --- rule 2: effect ---------------------------------------------------------------------


def test_rule2_effect_empty_chunk_suspends(server: Server) -> None:
    """After arming, C{yield b""} suspends: nothing is sent and the
    iteration does not continue until resume()."""
    key = unique()
    sock, reader = _hold(server, key)
    assert server.state(key).get("resumed") is None
    assert reader.nothing_pending(0.2)
    assert server.state(key).get("resumed") is None
    assert _release(server, key) == [True]
    resp = reader.read_response()
    assert (resp.status, resp.body, resp.complete) == (200, b"resumed", True)
    assert server.state(key)["resumed"] == 1
    sock.close()


def test_rule2_effect_nonempty_chunk_sent_then_suspends(server: Server) -> None:
    """After arming, a non-empty chunk is sent (with the headers), then the
    request suspends."""
    key = unique()
    sock, reader = _hold(server, key, first="hello")
    reader.read_head(bytearray())
    assert reader.read_chunk() == b"hello"
    assert server.state(key).get("resumed") is None
    assert reader.nothing_pending(0.2)
    assert _release(server, key) == [True]
    assert reader.read_chunk() == b"resumed"
    assert reader.read_chunk() == b""
    sock.close()


@pytest.mark.parametrize("how", ["empty", "after-chunk"])
def test_rule2_effect_end_of_iteration_cancels_the_pause(
    server: Server, how: str
) -> None:
    """An armed pause followed by the end of the iteration (an empty
    iterable; a generator that arms after its last chunk and returns) does
    not suspend: the response completes, and a later resume() is False."""
    key = unique()
    resp = get(server.port, f"/p/end-armed?key={key}&how={how}")
    assert resp.status == 200 and resp.complete
    assert resp.body == (b"" if how == "empty" else b"body")
    assert _release(server, key) == [False]


# --- rule 3: early resume ------------------------------------------------------------------


def test_rule3_early_resume_raw(server: Server) -> None:
    """resume() before the yield: True, and the yield does not suspend (the
    response completes with nobody else resuming it)."""
    out = get(server.port, "/p/early?form=raw", timeout=5).json()
    assert out == {"first": True, "after": False}


def test_rule3_early_resume_fired_deferred(server: Server) -> None:
    """wait() on a Deferred that has already fired does not suspend; the
    result is there."""
    out = get(server.port, "/p/early?form=wait", timeout=5).json()
    assert out == {"done": True, "result": 42, "timed_out": False}


# --- rule 4: resume() -----------------------------------------------------------------------


def test_rule4_resume_true_only_on_change(server: Server) -> None:
    """resume() is True on the call that resumes; repeated, stale (a
    previous pause's resume during a new pause, which it does not resume) and
    after-the-end calls are False."""
    key = unique()
    out = get(server.port, f"/p/resume-semantics?key={key}").json()
    assert out["r1_first"] is True
    assert out["r1_repeat"] is False
    assert out["r1_stale"] is False
    assert out["r2_first"] is True
    assert out["step2_after_own_resume"] is True
    assert _state_when(server, key, "r2_after_end")["r2_after_end"] is False


def test_rule4_resume_does_not_call_into_the_application(server: Server) -> None:
    """resume() only schedules the next step: code after resume() in the
    callback runs before the resumed iteration step."""
    out = get(server.port, f"/p/resume-semantics?key={unique()}").json()
    assert out["events"] == ["callback after resume()", "step after pause 1"]


def test_rule4_resume_from_another_request(server: Server) -> None:
    """A pause resumed from another request's code: True once, then False."""
    key = unique()
    sock, reader = _hold(server, key)
    assert _release(server, key) == [True]
    assert reader.read_response().body == b"resumed"
    assert _release(server, key, again=True) == [False]
    sock.close()


def test_rule4_resume_from_another_thread_wakes_the_loop(server: Server) -> None:
    """resume() from a threading.Thread, while the loop sleeps, returns True
    and wakes the loop: the request continues at once, not at the next
    timer."""
    for _ in range(3):
        out = get(server.port, "/p/thread-resume?delay=0.2").json()
        assert out["returned"] is True and out["thread"] is True
        # Without a wake-up the loop would sleep until its next timer (the
        # timeout sweep, up to 1 s away).
        assert out["latency"] < 0.25


# --- rule 5: b"" without a pause ---------------------------------------------------------------


def test_rule5_empty_chunk_without_pause_turns_the_loop(server: Server) -> None:
    """C{b""} without a pause continues on the next loop turn (a
    callLater(0) gets to run between the steps) and puts no zero-length
    chunk on the wire: the chunked body is intact and nothing follows it."""
    sock = connect(server.port)
    sock.sendall(build_request("GET", "/p/spin-timer"))
    reader = ResponseReader(sock)
    resp = reader.read_response()
    assert resp.complete and resp.chunked
    assert 0 not in resp.chunk_sizes
    assert resp.body.startswith(b"ab{")
    out = json.loads(resp.body[2:])
    assert out["timer_ran"] is True
    assert reader.nothing_pending(0.2)
    sock.close()


def test_rule5_other_requests_served_between_empty_chunks(server: Server) -> None:
    """While a request yields C{b""} without pausing, the host serves
    another connection: the request that sets the flag it spins on."""
    key = unique()
    sock = connect(server.port)
    sock.sendall(build_request("GET", f"/p/spin-until?key={key}"))
    wait_until(lambda: server.state(key).get("spinning"), what="spinning")
    assert get_json(server.port, f"/p/set-flag?key={key}") == {"set": True}
    resp = ResponseReader(sock).read_response()
    assert resp.complete
    assert resp.json()["flag_seen"] is True
    sock.close()


# --- rule 6: headers ------------------------------------------------------------------------------


def test_rule6_headers_not_sent_while_paused_before_first_chunk(server: Server) -> None:
    """start_response was called, but no non-empty chunk yet: no status line
    is sent while the request is paused."""
    key = unique()
    sock, reader = _hold(server, key, sr="before")
    assert reader.nothing_pending(0.3)
    _release(server, key)
    assert reader.read_response().status == 200
    sock.close()


def test_rule6_start_response_after_resume(server: Server) -> None:
    """start_response may come after the resume (not called before the
    pause): the response carries its status and body."""
    key = unique()
    sock, reader = _hold(server, key, sr="after")
    assert _release(server, key) == [True]
    resp = reader.read_response()
    assert (resp.status, resp.body, resp.complete) == (200, b"resumed", True)
    sock.close()


def test_rule6_flush_sends_headers_while_paused(server: Server) -> None:
    """x-wsgiorg.flush() sends the status line and headers at once: the
    client has them while the request is paused, the body after."""
    key = unique()
    sock, reader = _hold(server, key, flush="1")
    _, status, _, headers = reader.read_head(bytearray())
    assert status == 200
    assert ("Transfer-Encoding", "chunked") in headers
    assert server.state(key).get("resumed") is None
    _release(server, key)
    assert reader.read_chunk() == b"resumed"
    assert reader.read_chunk() == b""
    sock.close()


def test_rule6_flush_before_start_response_is_harmless(server: Server) -> None:
    """flush() before start_response has nothing to send and breaks
    nothing."""
    resp = get(server.port, "/p/flush-early")
    assert (resp.status, resp.body) == (200, b"ok")


# --- rule 7: timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", WAIT_FORMS)
def test_wait_result_raises_the_failure(server: Server, form: str) -> None:
    """wait() on a Deferred that fails (a coroutine that raises, a future
    with an exception): the request resumes and result() raises the
    exception."""
    key = unique()
    sock, reader = _hold(server, key, form=form)
    assert get_json(server.port, f"/p/release?key={key}&fail=1")["returned"] == [
        "failed"
    ]
    assert reader.read_response().body == b"resumed"
    state = server.state(key)
    assert state["result"] == "raised LookupError"
    assert state["timed_out"] is False and "cancels" not in state
    sock.close()


def test_rule7_per_call_timeout_raw(server: Server) -> None:
    """pause_output(timeout=0.3): the request resumes by itself with
    resume.timed_out true; a later resume() is False."""
    key = unique()
    start = time.monotonic()
    resp, reader = exchange(
        server.port, build_request("GET", f"/p/hold?key={key}&timeout=0.3")
    )
    elapsed = time.monotonic() - start
    reader.sock.close()
    assert (resp.status, resp.body) == (200, b"resumed")
    assert 0.2 < elapsed < 5
    assert server.state(key)["timed_out"] is True
    assert _release(server, key) == [False]


@pytest.mark.parametrize("form", WAIT_FORMS)
def test_rule7_per_call_timeout_wait(server: Server, form: str) -> None:
    """wait(d, timeout=0.3): on expiry the Deferred is cancelled (its
    canceller ran; a coroutine gets CancelledError at its await, a future
    is cancelled), Waiter.timed_out is true and result() raises
    TimeoutError."""
    key = unique()
    resp, reader = exchange(
        server.port,
        build_request("GET", f"/p/hold?key={key}&form={form}&timeout=0.3"),
    )
    reader.sock.close()
    assert resp.body == b"resumed"
    state = _state_when(server, key, "cancels")
    assert state["timed_out"] is True
    assert state["result"] == "raised TimeoutError"
    assert state["cancels"] == 1
    if form in ("coro", "task"):
        assert _state_when(server, key, "coro_finally")["coro_finally"] == 1


def test_rule7_no_timeout_when_resumed_in_time(server: Server) -> None:
    """A pause resumed before its timeout is not timed out, and a wait gets
    its value."""
    for form in ("raw", *WAIT_FORMS):
        key = unique()
        sock, reader = _hold(server, key, form=form, timeout="30")
        _release(server, key)
        assert reader.read_response().body == b"resumed"
        state = server.state(key)
        assert state["timed_out"] is False
        if form != "raw":
            assert state["result"] == "fired" and "cancels" not in state
        sock.close()


@pytest.fixture
def capped(wsgi_server: StartServer) -> Server:
    """A server whose --max-pause is 0.5 s."""
    return wsgi_server(max_pause=0.5)


@pytest.mark.parametrize("form", ["raw", *WAIT_FORMS])
def test_rule7_server_max_pause(capped: Server, form: str) -> None:
    """A pause without a timeout ends at --max-pause (0.5 s): timed_out,
    TimeoutError and a cancelled Deferred for wait, resume() False later."""
    key = unique()
    start = time.monotonic()
    resp, reader = exchange(
        capped.port, build_request("GET", f"/p/hold?key={key}&form={form}")
    )
    reader.sock.close()
    assert resp.body == b"resumed"
    assert 0.35 < time.monotonic() - start < 5
    state = capped.state(key) if form == "raw" else _state_when(capped, key, "cancels")
    assert state["timed_out"] is True
    if form == "raw":
        assert _release(capped, key) == [False]
    else:
        assert state["result"] == "raised TimeoutError"
        assert state["cancels"] == 1


def test_rule7_per_call_timeout_capped_by_max_pause(capped: Server) -> None:
    """A per-call timeout longer than --max-pause is capped by it."""
    key = unique()
    start = time.monotonic()
    resp, reader = exchange(
        capped.port, build_request("GET", f"/p/hold?key={key}&timeout=60")
    )
    reader.sock.close()
    assert resp.body == b"resumed"
    assert time.monotonic() - start < 5
    assert capped.state(key)["timed_out"] is True


# --- rule 8: client disconnect while paused ------------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("form", ["raw", *WAIT_FORMS])
def test_rule8_disconnect_closes_the_iterable_at_once(
    server: Server, form: str, how: str
) -> None:
    """A client that closes (FIN or RST) while its request is paused: the
    host calls close() at once (the generator sees GeneratorExit at its
    C{yield b""}; it is not resumed), wait cancels its Deferred (the task:
    its coroutine gets CancelledError at its await and runs its finally
    block; the future), and client_disconnected() becomes true (it was
    false before). No task is left on the loop."""
    key = unique()
    sock, _ = _hold(server, key, form=form)
    assert server.state(key)["client_disconnected_now"] is False
    if how == "rst":
        reset(sock)
    else:
        sock.close()
    state = _state_when(server, key, "exits")
    assert state["exits"] == 1
    assert state["close_calls"] == 1
    assert "resumed" not in state
    assert state["paused_now"] == 0
    assert state["client_disconnected_now"] is True
    if form != "raw":
        state = _state_when(server, key, "cancels")
        assert state["cancels"] == 1
        assert state["pending_deferreds"] == state["pending_futures"] == 0
    if form in ("coro", "task"):
        assert _state_when(server, key, "coro_finally")["coro_finally"] == 1
        assert wait_until(lambda: server.state(key)["tasks"] == 0, what="no task left")
    # After the exit, a resume of the dead request is False.
    if form == "raw":
        assert _release(server, key) == []


@pytest.mark.parametrize("form", WAIT_FORMS)
def test_rule8_disconnect_after_headers_sent(server: Server, form: str) -> None:
    """The same when the headers and a first chunk were already sent."""
    key = unique()
    sock, reader = _hold(server, key, first="x", form=form)
    reader.read_head(bytearray())
    assert reader.read_chunk() == b"x"
    sock.close()
    _state_when(server, key, "exits")
    state = _state_when(server, key, "cancels")
    assert (state["exits"], state["close_calls"], state["cancels"]) == (1, 1, 1)


def test_rule8_disconnect_kills_1000_paused_requests_without_leaks(
    wsgi_server: StartServer,
) -> None:
    """
    1,000 clients killed while their request is paused at C{yield b""} (a
    quarter each raw, waiting on a Deferred, on a coroutine, on a future;
    half FIN, half RST), 100 at a time: every iterable is closed once
    (GeneratorExit at the yield, never resumed), every Deferred, task and
    future cancelled, no task left on the loop, and the server's
    descriptors come back to their count before, its memory grows by less
    than 20 MiB, and it still serves.
    """
    forms = ["raw", "wait", "coro", "future"]
    srv = wsgi_server(fresh=True)
    key = unique()
    batch = 100

    def run_batch(n_done: int) -> int:
        socks = []
        for i in range(batch):
            form = forms[i % len(forms)]
            s = connect(srv.port)
            s.sendall(build_request("GET", f"/p/hold?key={key}&form={form}"))
            socks.append(s)
        wait_until(
            lambda: srv.state(key).get("paused_now") == batch, what=f"{batch} paused"
        )
        for i, s in enumerate(socks):
            if (i // len(forms)) % 2:
                reset(s)
            else:
                s.close()
        done = n_done + batch
        wait_until(lambda: srv.state(key).get("exits", 0) >= done, what=f"{done} exits")
        cancelled = done * 3 // len(forms)
        wait_until(
            lambda: srv.state(key).get("cancels", 0) >= cancelled,
            what=f"{cancelled} cancelled",
        )
        return done

    done = run_batch(0)  # warm-up
    wait_until(
        lambda: get_json(srv.port, "/server")["connections"] <= 1, what="connections"
    )
    fds, rss = srv.fd_count(), srv.rss_kib()
    for _ in range(10):
        done = run_batch(done)
    state = srv.state(key)
    assert state["exits"] == state["close_calls"] == state["armed"] == done == 1100
    assert state["cancels"] == done * 3 // len(forms)
    assert state["coro_finally"] == done // len(forms)
    assert state["paused_now"] == 0 and "resumed" not in state
    assert state["pending_resumes"] == state["pending_deferreds"] == 0
    assert state["pending_futures"] == state["tasks"] == 0
    wait_until(
        lambda: get_json(srv.port, "/server")["connections"] <= 1, what="connections"
    )
    assert wait_until(
        lambda: srv.fd_count() <= fds, timeout=10, what=f"fds back to {fds}"
    )
    assert srv.rss_kib() - rss < 20 * 1024
    assert get(srv.port, "/hello").body == b"hello\n"


# --- rule 9: errors after a resume ------------------------------------------------------------


def test_rule9_error_before_headers_gives_500(wsgi_server: StartServer) -> None:
    """An exception after a resume, before any header was sent: 500, the
    error in the log (wsgi.errors), close() called once."""
    srv = wsgi_server(expect_errors=True)
    key = unique()
    sock, reader = _hold(srv, key, sr="after", then="error")
    _release(srv, key)
    resp = reader.read_response()
    assert resp.status == 500 and resp.complete
    srv.wait_for_log(f"error after resume on purpose ({key})")
    assert _state_when(srv, key, "close_calls")["close_calls"] == 1
    sock.close()


def test_rule9_error_logged_with_its_traceback(wsgi_server: StartServer) -> None:
    """The logged error says where it was raised: the traceback, down to the
    application's own frame, not only the exception's message."""
    srv = wsgi_server(expect_errors=True)
    key = unique()
    sock, reader = _hold(srv, key, sr="after", then="error")
    _release(srv, key)
    assert reader.read_response().status == 500
    log = srv.wait_for_log(f"error after resume on purpose ({key})")
    assert "Traceback (most recent call last)" in log, log
    assert "wsgi_apps.py" in log, log
    sock.close()


def test_rule9_error_after_headers_aborts_chunked(wsgi_server: StartServer) -> None:
    """An exception after a resume, once headers and a chunk were sent: the
    connection is aborted and the client sees a chunked body without its
    terminating chunk; close() called once."""
    srv = wsgi_server(expect_errors=True)
    key = unique()
    sock, reader = _hold(srv, key, first="partial", then="error")
    _release(srv, key)
    resp = reader.read_response()
    assert resp.status == 200 and resp.chunked
    assert resp.body == b"partial" and not resp.complete
    assert _state_when(srv, key, "close_calls")["close_calls"] == 1
    srv.wait_for_log(f"error after resume on purpose ({key})")
    sock.close()


def test_rule9_error_after_headers_aborts_content_length(
    wsgi_server: StartServer,
) -> None:
    """The same with a Content-Length: fewer bytes than it says, then the
    connection ends."""
    srv = wsgi_server(expect_errors=True)
    key = unique()
    sock, reader = _hold(srv, key, first="0123456789", cl="100", then="error")
    _release(srv, key)
    resp = reader.read_response()
    assert resp.header("Content-Length") == "100"
    assert resp.body == b"0123456789" and not resp.complete
    assert _state_when(srv, key, "close_calls")["close_calls"] == 1
    sock.close()


def test_rule9_error_after_flush_aborts(wsgi_server: StartServer) -> None:
    """Headers sent by flush() count as sent: an error after the resume
    aborts the connection (no 500 after a 200)."""
    srv = wsgi_server(expect_errors=True)
    key = unique()
    sock, reader = _hold(srv, key, flush="1", then="error")
    _, status, _, _ = reader.read_head(bytearray())
    assert status == 200
    _release(srv, key)
    assert reader.read_chunk() is None
    assert _state_when(srv, key, "close_calls")["close_calls"] == 1
    sock.close()


# --- rule 10: write() ---------------------------------------------------------------------------


def test_rule10_write_in_the_application_does_not_block(server: Server) -> None:
    """write() of 8 MiB from the application callable, to a client that
    does not read yet, queues and returns (the loop keeps serving /state);
    then the client gets every byte."""
    key = unique()
    size = 8 * 1024 * 1024
    sock = connect(server.port)
    sock.sendall(build_request("GET", f"/write-big?key={key}&size={size}"))
    assert _state_when(server, key, "returned")["returned"] is True
    resp = ResponseReader(sock).read_response()
    assert resp.complete and resp.body == b"w" * size
    sock.close()


def test_rule10_write_from_the_iterable_raises(server: Server) -> None:
    """write() called from the iterable raises RuntimeError."""
    assert get(server.port, "/p/write-in-iter").json() == {
        "write_in_iter": "RuntimeError"
    }


def test_rule10_write_from_a_callback_during_a_pause_raises(server: Server) -> None:
    """write() called from a callback while the request is paused raises
    RuntimeError."""
    assert get(server.port, "/p/write-in-callback").json() == {
        "write_in_callback": "RuntimeError"
    }


def test_callbacks_into_the_request_from_its_own_callbacks(server: Server) -> None:
    """
    An application that calls back into its request from callbacks the
    request itself runs (inside wait(), next() and close()) gets the
    answers the contract gives, and the response completes: no crash, no
    hang, nothing in the server's log.
    """
    key = unique()
    resp = get(server.port, f"/p/reentrant?key={key}")
    assert resp.status == 200
    assert resp.body == json.dumps({"items": 2}).encode()
    assert get(server.port, f"/state?key={key}").json() == {
        "flush_in_wait": "ok",
        "disconnected_in_wait": "False",
        "pause_in_wait": "RuntimeError",
        "write_in_wait": "RuntimeError",
        "start_response_in_wait": "RuntimeError",
        "result": "'fired'",
        "flush_in_next": "ok",
        "write_in_next": "RuntimeError",
        "write_in_close": "RuntimeError",
        "pause_in_close": "RuntimeError",
        "flush_in_close": "ok",
        "disconnected_in_close": "False",
        "pending_resumes": 0,
        "pending_deferreds": 0,
        "pending_futures": 0,
        "tasks": 0,
    }


# --- rule 11: wsgi.input ---------------------------------------------------------------------------


def test_rule11_body_read_before_the_application_is_called(server: Server) -> None:
    """The application is not called while the body is still arriving; it
    then reads the whole body, after a pause, without blocking."""
    key = unique()
    data = os.urandom(200_000)
    sock = connect(server.port)
    sock.sendall(
        build_request(
            "POST", f"/p/input?key={key}", headers=[("Content-Length", str(len(data)))]
        )
    )
    sock.sendall(data[:100_000])
    get(server.port, "/hello")  # a round trip on the same loop
    assert "calls" not in server.state(key)
    sock.sendall(data[100_000:])
    out = ResponseReader(sock).read_response().json()
    assert out == {
        "len": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "terminated": True,
    }
    assert server.state(key)["calls"] == 1
    sock.close()


def test_rule11_chunked_body_dechunked(server: Server) -> None:
    """A chunked body is de-chunked into wsgi.input, whole."""
    key = unique()
    data = os.urandom(100_000)
    body = chunked(*(data[i : i + 7000] for i in range(0, len(data), 7000)))
    resp, reader = exchange(
        server.port,
        build_request(
            "POST", f"/p/input?key={key}", headers=[("Transfer-Encoding", "chunked")]
        )
        + body,
    )
    reader.sock.close()
    assert resp.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_rule11_100_continue_sent_at_once(server: Server) -> None:
    """With Expect: 100-continue the 100 comes before the body is sent and
    before the application runs."""
    key = unique()
    sock = connect(server.port)
    sock.sendall(
        build_request(
            "POST",
            f"/p/input?key={key}",
            headers=[("Expect", "100-continue"), ("Content-Length", "5")],
        )
    )
    reader = ResponseReader(sock)
    assert reader.read_response(interim=True).status == 100
    assert "calls" not in server.state(key)
    sock.sendall(b"hello")
    assert reader.read_response().json()["len"] == 5
    sock.close()


def test_rule11_body_over_max_body_413(limited: Server) -> None:
    """A body over --max-body: 413, and the application is never called."""
    key = unique()
    size = LIMITS["max_body"] + 1
    resp, reader = exchange(
        limited.port, build_request("POST", f"/p/input?key={key}", body=b"x" * size)
    )
    reader.sock.close()
    assert resp.status == 413
    assert "calls" not in limited.state(key)


# --- rule 12: backpressure ---------------------------------------------------------------------


def test_rule12_backpressure_bounds_what_the_host_pulls(
    wsgi_server: StartServer,
) -> None:
    """
    A 32 MiB response streamed to a client that stops reading: the host stops
    pulling from the iterable once its queue passes --high-water (64 KiB).
    At rest, bytes yielded minus bytes the client read, minus what the kernel
    holds in between (server send queue, client receive queue), is at most
    high-water + one chunk. The whole body then arrives intact.
    """
    high_water, chunk, size = 65536, 16384, 32 * 1024 * 1024
    srv = wsgi_server(high_water=high_water)
    key = unique()
    sock = connect(srv.port, rcvbuf=16384)
    client_port = sock.getsockname()[1]
    sock.sendall(build_request("GET", f"/p/big?key={key}&size={size}&chunk={chunk}"))
    reader = ResponseReader(sock)
    raw = bytearray()
    reader.read_head(raw)
    head_len = len(raw)
    body = bytearray(reader.buf)
    reader.buf.clear()

    def snapshot() -> tuple[int, int, int]:
        yielded = srv.state(key)["yielded"]
        tx, rx = proc_tcp_queues(srv.port, client_port)
        return yielded, tx, rx

    for target in (1 << 20, 4 << 20, 12 << 20):
        while len(body) < target:
            body += sock.recv(65536)
        # Wait until nothing moves any more: the host is blocked on the
        # client, not between two writes.
        previous = None
        for _ in range(100):
            current = snapshot()
            if current == previous:
                break
            previous = current
            time.sleep(0.05)
        yielded, tx, rx = current
        host_queue = yielded + head_len - len(body) - tx - rx
        assert yielded < size, "the host pulled the whole response"
        assert host_queue <= high_water + chunk + 4096, (yielded, len(body), tx, rx)
    while len(body) < size:
        data = sock.recv(1 << 20)
        assert data
        body += data
    assert len(body) == size
    expected = b"".join(bytes([i % 256]) * chunk for i in range(size // chunk))
    assert body == expected
    sock.close()


def test_rule12_send_timeout_cuts_off_a_client_that_reads_nothing(
    wsgi_server: StartServer,
) -> None:
    """
    Backpressure does not hold a request forever: a client that takes none
    of a large response for --send-timeout is cut off. The iterable is closed
    (its generator sees GeneratorExit), the client gets fewer bytes than the
    Content-Length, and no descriptor is left behind in the server.
    """
    size = 32 * 1024 * 1024
    srv = wsgi_server(
        send_timeout=0.5, header_timeout=1.0, keepalive_timeout=1.0, high_water=65536
    )
    before = srv.fd_count()
    fds_before = srv.fds()
    key = unique()
    sock = connect(srv.port, rcvbuf=16384)
    sock.sendall(build_request("GET", f"/p/big?key={key}&size={size}&chunk=16384"))
    deadline = time.monotonic() + 20
    while not srv.state(key).get("closed"):
        assert time.monotonic() < deadline, srv.state(key)
        time.sleep(0.05)
    received = 0
    sock.settimeout(10)
    try:
        while data := sock.recv(1 << 20):
            received += len(data)
    except ConnectionResetError:
        pass
    sock.close()
    assert received < size
    assert srv.state(key)["yielded"] < size
    # At most what it had: the server is shared, and connections an earlier
    # test left lingering may close meanwhile (waiting for the count to equal
    # the first reading could then wait forever).
    while srv.fd_count() > before:
        assert time.monotonic() < deadline, {
            k: v for k, v in srv.fds().items() if fds_before.get(k) != v
        }
        time.sleep(0.05)


def test_rule12_pipelined_request_waits_for_the_response(server: Server) -> None:
    """A request pipelined behind a paused one is not dispatched before the
    paused response is complete; then it is, and both are answered in
    order."""
    key, count_key = unique(), unique()
    sock = connect(server.port)
    sock.sendall(
        build_request("GET", f"/p/hold?key={key}")
        + build_request("GET", f"/p/count?key={count_key}")
    )
    wait_until(lambda: server.state(key).get("paused_now") == 1, what="paused")
    get(server.port, "/hello")
    assert "calls" not in server.state(count_key)
    _release(server, key)
    reader = ResponseReader(sock)
    assert reader.read_response().body == b"resumed"
    assert reader.read_response().json() == {"calls": 1}
    sock.close()


# --- rule 13: what wait takes ------------------------------------------------------------


def test_rule13_a_coroutine_runs_as_a_task_on_the_reactors_loop(server: Server) -> None:
    """wait(coroutine) runs it as a task on the reactor's asyncio face,
    which is also the running loop of the application; asyncio.sleep works
    there."""
    assert get_json(server.port, "/p/wait-face") == {
        "app_loop_is_face": True,
        "loop_is_face": True,
        "in_task": True,
        "slept": "slept",
    }


def test_rule13_wait_refuses_what_it_cannot_wait_for(server: Server) -> None:
    """wait() given what is neither a Deferred nor an asyncio awaitable
    raises TypeError (with a hint for a concurrent.futures.Future), given a
    future of another event loop ValueError, and leaves no pause armed: the
    next wait() works. A coroutine given while a pause is armed is refused
    (RuntimeError) and closed, so it does not warn that it was never
    awaited (the fixture fails the test on such a warning in the log). A
    coroutine that awaits an unfired Deferred in its task fails with
    asyncio's "bad yield" RuntimeError, which result() raises."""
    out = get_json(server.port, "/p/wait-refused")
    prefix = "TypeError: twisted_shim.wait() takes a Deferred, a coroutine or an asyncio future, not"
    assert out["int"] == f"{prefix} int"
    assert out["coroutine_function"] == f"{prefix} function"
    assert out["concurrent"].startswith(f"{prefix} Future (a concurrent.futures")
    assert out["other_loop"].startswith(
        "ValueError: twisted_shim.wait() was given a future of"
    )
    assert out["while_armed"] == "RuntimeError"
    assert out["coro_state"] == "CORO_CLOSED"
    assert out["after"] == "slept"
    assert out["awaits_a_deferred"].startswith(
        "RuntimeError: Task got bad yield: <Deferred"
    )
    assert "never awaited" not in server.log()


@pytest.mark.parametrize("form", ["future", "coro"])
def test_rule13_done_future_resumes_on_the_next_pass(server: Server, form: str) -> None:
    """wait() on a future already done, or on a coroutine that returns
    without awaiting: asyncio runs done callbacks from the loop, never at
    once, so the outcome is not in at the yield; the request suspends and
    is resumed by the loop's next pass, with the result."""
    out = get(server.port, f"/p/early?form={form}", timeout=5).json()
    assert out == {
        "done_at_yield": False,
        "done": True,
        "result": 42,
        "timed_out": False,
    }


# --- limits do not cut paused requests --------------------------------------------------------


def test_paused_request_outlives_header_and_keepalive_timeouts(limited: Server) -> None:
    """A request paused for longer than --header-timeout and
    --keepalive-timeout (0.5 s each) is not cut by them."""
    key = unique()
    sock, reader = _hold(limited, key)
    time.sleep(1.2)
    assert limited.state(key)["paused_now"] == 1
    assert _release(limited, key) == [True]
    resp = reader.read_response()
    assert (resp.status, resp.body) == (200, b"resumed")
    sock.close()


# --- 400 at once -----------------------------------------------------------------------------------


def test_400_requests_paused_at_once(wsgi_server: StartServer) -> None:
    """
    400 requests on one server, a quarter each with the raw
    wsgi.pause_output form, twisted_shim.wait on a Deferred, on a coroutine
    and on a task: each counts itself as paused, and only the 400th
    releases them all. Every request reports that it was released
    before it continued (it was suspended) and a peak of 400 paused at once;
    all 400 responses are complete.
    """
    srv = wsgi_server()
    key = unique()
    n = 400
    socks = []
    forms = ["raw", "wait", "coro", "task"]
    for i in range(n):
        form = forms[i % len(forms)]
        s = connect(srv.port, timeout=30)
        s.sendall(build_request("GET", f"/p/gather?key={key}&n={n}&form={form}"))
        socks.append((form, s))
    outs = []
    for form, s in socks:
        resp = ResponseReader(s).read_response()
        assert resp.status == 200 and resp.complete
        outs.append((form, resp.json()))
        s.close()
    for form, out in outs:
        assert out["released_first"] is True
        assert out["peak"] == n
        assert out["form"] == form
        if form != "raw":
            assert out["result"] == "released"
