//! Calling the application and sending its response through the request's
//! [`Responder`](crate::http::service::Responder).
//!
//! [`dispatch`] builds the environ and calls the application (its `write()`
//! may queue output meanwhile); [`produce`] then pulls items from the iterable
//! until it ends, pauses, yields `b""` (next loop turn), or the connection's
//! output passes the high-water mark (resumed when it drains). Headers go
//! out with the first non-empty chunk, on `flush()`, or at the end.
//!
//! The HTTP layer frames the response (the application's `Content-Length`,
//! else chunked for HTTP/1.1, else the end of the connection; no body for
//! HEAD, 1xx, 204 and 304) and enforces its `Content-Length`: bytes past it
//! are dropped and logged here; fewer abort the connection.
//!
//! An error from the application before the headers were sent becomes a
//! 500; after, the connection is reset so the client sees a truncated
//! response. The iterable's `close()` is called exactly once in every case.
//!
//! Each entry point ([`dispatch`], [`produce`], [`abort`]) checks the
//! request's [`Stage`] and moves it; the request's state is borrowed only
//! through `state`/`state_mut` and never while Python code runs, and should
//! a borrow fail all the same, the failure is an error of the request (its
//! 500 or reset), not a panic.

use std::os::fd::{FromRawFd, OwnedFd};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator};

use crate::http::body::RequestBody;
use crate::http::parse::Head;
use crate::twisted::log_failure;
use crate::wsgi::request::{state, state_mut, Continuation, Reply, Request, Stage};
use crate::wsgi::{build_environ, FileWrapper};

/// Items pulled in one go before yielding to other connections.
const PULL_BUDGET: usize = 64;

/// Call the application for a request whose body has been read.
pub fn dispatch(py: Python<'_>, req: &Bound<'_, Request>, head: &Head, body: RequestBody) {
    if let Err(e) = call_app(py, req, head, body) {
        app_error(py, req, e);
    }
}

fn call_app(
    py: Python<'_>,
    req: &Bound<'_, Request>,
    head: &Head,
    body: RequestBody,
) -> PyResult<()> {
    let Some(shared) = state(req)?.shared.upgrade() else {
        return Ok(());
    };
    let environ = build_environ(py, &shared, head, body, req)?;
    let start_response = req.getattr(intern!(py, "start_response"))?;
    let result = shared.app.bind(py).call1((environ, start_response))?;
    {
        let mut r = state_mut(req)?;
        r.result = Some(result.clone().unbind());
        if r.finished() {
            // The client went away while the application ran.
            drop(r);
            close_iterable(py, req);
            return Ok(());
        }
        r.stage = Stage::Ready;
    }
    if let Ok(fw) = result.cast::<FileWrapper>() {
        if send_file(py, req, &fw.borrow())? {
            finish(py, req);
            return Ok(());
        }
    }
    let it = result.try_iter()?;
    state_mut(req)?.iter = Some(it.into_any().unbind());
    produce(py, req);
    Ok(())
}

fn schedule_turn(py: Python<'_>, req: &Bound<'_, Request>) -> PyResult<()> {
    let (responder, shared) = {
        let mut r = state_mut(req)?;
        r.stage = Stage::NextTurn;
        (r.responder.clone(), r.shared.upgrade())
    };
    let Some(shared) = shared else { return Ok(()) };
    let cont = Continuation {
        request: req.clone().unbind(),
        responder,
        after_turn: true,
    };
    let cont = Py::new(py, cont)?;
    shared.loop_.bind(py).get().call_soon(py, cont.into_any())
}

/// Pull from the application's iterable as far as the rules allow: only
/// from `Ready` (or `Draining`, when the connection says it drained).
pub fn produce(py: Python<'_>, req: &Bound<'_, Request>) {
    if let Err(e) = pull(py, req) {
        app_error(py, req, e);
    }
}

fn pull(py: Python<'_>, req: &Bound<'_, Request>) -> PyResult<()> {
    let responder = {
        let mut r = state_mut(req)?;
        match r.stage {
            Stage::Ready => {}
            Stage::Draining => r.stage = Stage::Ready,
            // Finished, paused, waiting for its turn, or already running
            // (a re-entrant call while `next()` runs): not now.
            _ => return Ok(()),
        }
        r.responder.clone()
    };
    let mut pulled = 0;
    loop {
        let iter = {
            let r = state(req)?;
            if r.stage != Stage::Ready {
                return Ok(());
            }
            match r.iter.as_ref() {
                Some(i) => i.clone_ref(py),
                None => return Ok(()),
            }
        };
        if responder.over_high_water() {
            // Backpressure: the connection calls back once the queue drains.
            state_mut(req)?.stage = Stage::Draining;
            responder.wait_for_drain();
            return Ok(());
        }
        if pulled == PULL_BUDGET {
            return schedule_turn(py, req);
        }
        pulled += 1;
        state_mut(req)?.stage = Stage::Pulling;
        let item = match iter.bind(py).cast::<PyIterator>() {
            Ok(it) => it.clone().next(),
            Err(e) => Some(Err(e.into())),
        };
        {
            let mut r = state_mut(req)?;
            if r.finished() {
                // Aborted from inside the iterable (client gone meanwhile).
                return Ok(());
            }
            r.stage = Stage::Ready;
        }
        let obj = match item {
            None => {
                finish(py, req);
                return Ok(());
            }
            Some(item) => item?,
        };
        let bytes = match obj.cast_into::<PyBytes>() {
            Ok(b) => b,
            Err(e) => {
                let msg = format!(
                    "the application's iterable must yield bytes, not {}",
                    e.into_inner()
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                );
                return Err(PyTypeError::new_err(msg));
            }
        };
        let empty = bytes.as_bytes().is_empty();
        if !empty {
            send_body(py, req, &bytes)?;
        }
        let pause = state(req)?.pause.as_ref().map(|p| p.clone_ref(py));
        match pause {
            Some(p) => {
                if p.get().try_suspend() {
                    state_mut(req)?.stage = Stage::Paused;
                    return Ok(());
                }
                // Resumed (or timed out) before the yield: go on (rule 3).
                let done = state_mut(req)?.pause.take();
                drop(done);
            }
            None if empty => return schedule_turn(py, req),
            None => {}
        }
    }
}

/// Queue body bytes, sending the headers first if they are not out yet.
pub fn send_body(
    py: Python<'_>,
    req: &Bound<'_, Request>,
    bytes: &Bound<'_, PyBytes>,
) -> PyResult<()> {
    let (finished, sent) = {
        let r = state(req)?;
        (r.finished(), r.headers_sent())
    };
    if finished {
        return Ok(());
    }
    if !sent {
        send_headers(py, req, false)?;
    }
    let responder = state(req)?.responder.clone();
    let dropped = responder.body(bytes);
    if dropped > 0 {
        let (msg, shared) = {
            let mut r = state_mut(req)?;
            if r.overflow_logged {
                return Ok(());
            }
            r.overflow_logged = true;
            (
                format!(
                    "{} {}: the application sent more than its Content-Length ({}); the excess is dropped\n",
                    r.method,
                    r.target,
                    r.content_length.unwrap_or(0)
                ),
                r.shared.upgrade(),
            )
        };
        if let Some(shared) = shared {
            let _ = shared
                .errors
                .bind(py)
                .call_method1(intern!(py, "write"), (msg,));
        }
    }
    Ok(())
}

/// Queue the status line and headers (`x-wsgiorg.flush()`, the first body
/// bytes, or the end). `at_end`: the body is complete (and empty), so a
/// length can be given instead of chunking.
pub fn send_headers(_py: Python<'_>, req: &Bound<'_, Request>, at_end: bool) -> PyResult<()> {
    let (status, headers, close, content_length, responder) = {
        let mut r = state_mut(req)?;
        match std::mem::replace(&mut r.reply, Reply::Sent) {
            Reply::Sent => return Ok(()),
            Reply::Unstarted => {
                r.reply = Reply::Unstarted;
                return Err(PyRuntimeError::new_err(
                    "the application produced a body before calling start_response()",
                ));
            }
            Reply::Started {
                status,
                headers,
                close,
            } => (
                status,
                headers,
                close,
                r.content_length,
                r.responder.clone(),
            ),
        }
    };
    responder.start(&status, &headers, content_length, close, at_end);
    Ok(())
}

/// A `wsgi.file_wrapper` over a regular file goes out with `sendfile`.
/// Returns false (iterate instead) for anything else.
fn send_file(py: Python<'_>, req: &Bound<'_, Request>, fw: &FileWrapper) -> PyResult<bool> {
    let f = fw.filelike.bind(py);
    if !matches!(state(req)?.reply, Reply::Started { .. }) {
        return Ok(false);
    }
    let Ok(fd) = f
        .call_method0(intern!(py, "fileno"))
        .and_then(|n| n.extract::<i32>())
    else {
        return Ok(false);
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into our buffer; a bad fd fails cleanly.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Ok(false);
    }
    // SAFETY: fstat succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(false);
    }
    let pos: i64 = match f
        .call_method0(intern!(py, "tell"))
        .and_then(|p| p.extract())
    {
        Ok(p) => p,
        Err(_) => return Ok(false),
    };
    let remaining = (st.st_size - pos).max(0) as u64;
    let len = {
        let mut r = state_mut(req)?;
        match r.content_length {
            Some(cl) => cl.min(remaining),
            None => {
                r.content_length = Some(remaining);
                if let Reply::Started { headers, .. } = &mut r.reply {
                    headers.push(("Content-Length".to_owned(), remaining.to_string()));
                }
                remaining
            }
        }
    };
    send_headers(py, req, false)?;
    // Our own duplicate, so the application may close its file as soon as
    // we call close() on the wrapper.
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(PyErr::from(std::io::Error::last_os_error()));
    }
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    state(req)?.responder.clone().file(owned, pos, len);
    Ok(true)
}

/// The iterable ended: finish the response.
fn finish(py: Python<'_>, req: &Bound<'_, Request>) {
    let started = match state(req) {
        Ok(r) => !matches!(r.reply, Reply::Unstarted),
        Err(e) => return app_error(py, req, e),
    };
    if let Err(e) = send_headers(py, req, true) {
        let e = if started {
            e
        } else {
            PyRuntimeError::new_err("the application returned without calling start_response()")
        };
        return app_error(py, req, e);
    }
    let responder = match state_mut(req) {
        Ok(mut r) => {
            r.stage = Stage::Finished;
            r.responder.clone()
        }
        Err(e) => return app_error(py, req, e),
    };
    end_pause(py, req, false);
    close_iterable(py, req);
    if let Err(t) = responder.finish(py) {
        let (msg, shared) = match state(req) {
            Ok(r) => (
                format!(
                    "{} {}: the application sent {} bytes of its Content-Length {}; connection aborted\n",
                    r.method, r.target, t.sent, t.declared
                ),
                r.shared.upgrade(),
            ),
            Err(_) => (String::new(), None),
        };
        if let Some(shared) = shared {
            let _ = shared
                .errors
                .bind(py)
                .call_method1(intern!(py, "write"), (msg,));
        }
        responder.abort(py);
    }
}

/// The application raised: a 500 if nothing was sent yet, else a reset.
fn app_error(py: Python<'_>, req: &Bound<'_, Request>, err: PyErr) {
    report(py, req, &err);
    let responder = match state_mut(req) {
        Ok(mut r) => {
            r.stage = Stage::Finished;
            r.responder.clone()
        }
        Err(e) => {
            // Still in use up the stack: that code finds the response
            // failed when it looks again.
            log_failure(py, "while failing a WSGI request", e);
            return;
        }
    };
    end_pause(py, req, true);
    close_iterable(py, req);
    responder.fail(py);
}

/// Log an application error, with its traceback, through `wsgi.errors`.
fn report(py: Python<'_>, req: &Bound<'_, Request>, err: &PyErr) {
    let (what, shared) = match state(req) {
        Ok(r) => (
            format!(
                "Error in the WSGI application serving {} {}:\n",
                r.method, r.target
            ),
            r.shared.upgrade(),
        ),
        Err(_) => ("Error in the WSGI application:\n".to_owned(), None),
    };
    let text = py
        .import("traceback")
        .and_then(|tb| {
            tb.call_method1(
                "format_exception",
                (err.get_type(py), err.value(py), err.traceback(py)),
            )
        })
        .and_then(|lines| lines.extract::<Vec<String>>())
        .map(|lines| lines.concat())
        .unwrap_or_else(|_| format!("{err}\n"));
    let Some(shared) = shared else {
        log_failure(py, &what, err.clone_ref(py));
        return;
    };
    let errors = shared.errors.bind(py);
    let logged = errors
        .call_method1(intern!(py, "write"), (what + &text,))
        .and_then(|_| errors.call_method0(intern!(py, "flush")));
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}

/// The request is over without finishing (client gone, shutdown abort):
/// end a pending pause (cancelling a `wait`'s Deferred) and close the
/// iterable. The connection closes itself.
pub fn abort(py: Python<'_>, req: &Bound<'_, Request>, disconnected: bool) {
    match state_mut(req) {
        Ok(mut r) => {
            r.disconnected |= disconnected;
            if r.finished() {
                return;
            }
            r.stage = Stage::Finished;
        }
        Err(e) => {
            log_failure(py, "while aborting a WSGI request", e);
            return;
        }
    }
    end_pause(py, req, true);
    close_iterable(py, req);
}

fn end_pause(py: Python<'_>, req: &Bound<'_, Request>, interrupted: bool) {
    let pause = state_mut(req).ok().and_then(|mut r| r.pause.take());
    if let Some(p) = pause {
        p.get().kill(py, interrupted);
    }
}

/// Call the iterable's `close()`, exactly once (whoever takes `result`).
fn close_iterable(py: Python<'_>, req: &Bound<'_, Request>) {
    let taken = state_mut(req).map(|mut r| (r.iter.take(), r.result.take(), r.input.take()));
    let (iter, result, input) = match taken {
        Ok(t) => t,
        Err(e) => {
            log_failure(py, "while closing a WSGI application's iterable", e);
            return;
        }
    };
    // Dropped with no borrow held: a generator's finalizer runs Python.
    drop(iter);
    // A spooled body's file: its descriptor and space go now.
    if let Some(input) = input {
        if let Err(e) = input.bind(py).call_method0(intern!(py, "close")) {
            log_failure(py, "while closing a request body's file", e);
        }
    }
    let Some(result) = result else { return };
    let result = result.bind(py);
    match result.hasattr(intern!(py, "close")) {
        Ok(true) => {
            if let Err(e) = result.call_method0(intern!(py, "close")) {
                log_failure(py, "while closing a WSGI application's iterable", e);
            }
        }
        Ok(false) => {}
        Err(e) => log_failure(py, "while closing a WSGI application's iterable", e),
    }
}
