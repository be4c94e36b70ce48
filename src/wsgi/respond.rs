//! Calling the application and sending its response through the request's
//! [`Responder`](crate::http::service::Responder).
//!
//! [`dispatch`] builds the environ and calls the application (its `write()`
//! may queue output meanwhile); [`drive`] then pulls items from the iterable
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

use std::os::fd::{FromRawFd, OwnedFd};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator};

use crate::http::parse::Head;
use crate::twisted::log_failure;
use crate::wsgi::request::{Continue, Request};
use crate::wsgi::{build_environ, FileWrapper};

/// Items pulled in one go before yielding to other connections.
const PULL_BUDGET: usize = 64;

/// Call the application for a request whose body has been read.
pub fn dispatch(py: Python<'_>, req: &Bound<'_, Request>, head: &Head, body: Vec<u8>) {
    let Some(shared) = req.borrow().shared.upgrade() else {
        return;
    };
    let environ = match build_environ(py, &shared, head, body, req) {
        Ok(e) => e,
        Err(e) => return app_error(py, req, e),
    };
    let start_response = match req.getattr(intern!(py, "start_response")) {
        Ok(s) => s,
        Err(e) => return app_error(py, req, e),
    };
    req.borrow_mut().in_app_call = true;
    let result = shared.app.bind(py).call1((environ, start_response));
    req.borrow_mut().in_app_call = false;
    let result = match result {
        Ok(r) => r,
        Err(e) => return app_error(py, req, e),
    };
    req.borrow_mut().result = Some(result.clone().unbind());
    if req.borrow().finished {
        // The client went away while the application ran.
        close_iterable(py, req);
        return;
    }
    if let Ok(fw) = result.cast::<FileWrapper>() {
        match send_file(py, req, &fw.borrow()) {
            Ok(true) => return finish(py, req),
            Ok(false) => {}
            Err(e) => return app_error(py, req, e),
        }
    }
    match result.try_iter() {
        Ok(it) => req.borrow_mut().iter = Some(it.into_any().unbind()),
        Err(e) => return app_error(py, req, e),
    }
    drive(py, req);
}

fn schedule_turn(py: Python<'_>, req: &Bound<'_, Request>) {
    req.borrow_mut().next_turn = true;
    let (responder, shared) = {
        let r = req.borrow();
        (r.responder.clone(), r.shared.upgrade())
    };
    let Some(shared) = shared else { return };
    let cont = Continue {
        request: req.clone().unbind(),
        responder,
        turn: true,
    };
    let scheduled =
        Py::new(py, cont).and_then(|c| shared.loop_.bind(py).get().call_soon(py, c.into_any()));
    if let Err(e) = scheduled {
        app_error(py, req, e);
    }
}

/// Pull from the application's iterable as far as the rules allow.
pub fn drive(py: Python<'_>, req: &Bound<'_, Request>) {
    let responder = req.borrow().responder.clone();
    let mut pulled = 0;
    loop {
        let iter = {
            let r = req.borrow();
            if r.finished || r.suspended || r.next_turn {
                return;
            }
            match r.iter.as_ref() {
                Some(i) => i.clone_ref(py),
                None => return,
            }
        };
        if responder.over_high_water() {
            // Backpressure: the connection calls back once the queue drains.
            responder.wait_for_drain();
            return;
        }
        if pulled == PULL_BUDGET {
            return schedule_turn(py, req);
        }
        pulled += 1;
        req.borrow_mut().in_iter = true;
        let item = match iter.bind(py).cast::<PyIterator>() {
            Ok(it) => it.clone().next(),
            Err(e) => Some(Err(e.into())),
        };
        req.borrow_mut().in_iter = false;
        if req.borrow().finished {
            // Aborted from inside the iterable (client gone meanwhile).
            return;
        }
        let obj = match item {
            None => return finish(py, req),
            Some(Err(e)) => return app_error(py, req, e),
            Some(Ok(obj)) => obj,
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
                return app_error(py, req, PyTypeError::new_err(msg));
            }
        };
        let empty = bytes.as_bytes().is_empty();
        if !empty {
            if let Err(e) = send_body(py, req, &bytes) {
                return app_error(py, req, e);
            }
        }
        let pause = req.borrow().pause.as_ref().map(|p| p.clone_ref(py));
        match pause {
            Some(p) => {
                if p.get().try_suspend() {
                    req.borrow_mut().suspended = true;
                    return;
                }
                // Resumed (or timed out) before the yield: go on (rule 3).
                req.borrow_mut().pause = None;
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
    if req.borrow().finished {
        return Ok(());
    }
    if !req.borrow().headers_sent {
        send_headers(py, req, false)?;
    }
    let responder = req.borrow().responder.clone();
    let dropped = responder.body(bytes);
    if dropped > 0 && !req.borrow().overflow_logged {
        let (msg, shared) = {
            let mut r = req.borrow_mut();
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
    let mut r = req.borrow_mut();
    if r.headers_sent {
        return Ok(());
    }
    let Some(status) = r.status.clone() else {
        return Err(PyRuntimeError::new_err(
            "the application produced a body before calling start_response()",
        ));
    };
    r.headers_sent = true;
    let responder = r.responder.clone();
    let (headers, content_length, close) = (
        std::mem::take(&mut r.headers),
        r.content_length,
        r.app_close,
    );
    drop(r);
    responder.start(&status, &headers, content_length, close, at_end);
    Ok(())
}

/// A `wsgi.file_wrapper` over a regular file goes out with `sendfile`.
/// Returns false (iterate instead) for anything else.
fn send_file(py: Python<'_>, req: &Bound<'_, Request>, fw: &FileWrapper) -> PyResult<bool> {
    let f = fw.filelike.bind(py);
    if req.borrow().status.is_none() || req.borrow().headers_sent {
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
        let mut r = req.borrow_mut();
        match r.content_length {
            Some(cl) => cl.min(remaining),
            None => {
                r.content_length = Some(remaining);
                r.headers
                    .push(("Content-Length".to_owned(), remaining.to_string()));
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
    req.borrow().responder.clone().file(owned, pos, len);
    Ok(true)
}

/// The iterable ended: finish the response.
fn finish(py: Python<'_>, req: &Bound<'_, Request>) {
    if !req.borrow().headers_sent {
        if let Err(e) = send_headers(py, req, true) {
            let e = if req.borrow().status.is_none() {
                PyRuntimeError::new_err("the application returned without calling start_response()")
            } else {
                e
            };
            return app_error(py, req, e);
        }
    }
    let responder = {
        let mut r = req.borrow_mut();
        r.finished = true;
        r.responder.clone()
    };
    end_pause(py, req, false);
    close_iterable(py, req);
    if let Err(t) = responder.finish(py) {
        let (msg, shared) = {
            let r = req.borrow();
            (
                format!(
                    "{} {}: the application sent {} bytes of its Content-Length {}; connection aborted\n",
                    r.method, r.target, t.sent, t.declared
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
        responder.abort(py);
    }
}

/// The application raised: a 500 if nothing was sent yet, else a reset.
fn app_error(py: Python<'_>, req: &Bound<'_, Request>, err: PyErr) {
    report(py, req, &err);
    let responder = {
        let mut r = req.borrow_mut();
        r.finished = true;
        r.responder.clone()
    };
    end_pause(py, req, true);
    close_iterable(py, req);
    responder.fail(py);
}

/// Log an application error, with its traceback, through `wsgi.errors`.
fn report(py: Python<'_>, req: &Bound<'_, Request>, err: &PyErr) {
    let (what, shared) = {
        let r = req.borrow();
        (
            format!(
                "Error in the WSGI application serving {} {}:\n",
                r.method, r.target
            ),
            r.shared.upgrade(),
        )
    };
    let Some(shared) = shared else { return };
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
    {
        let mut r = req.borrow_mut();
        r.disconnected |= disconnected;
        if r.finished {
            return;
        }
        r.finished = true;
    }
    end_pause(py, req, true);
    close_iterable(py, req);
}

fn end_pause(py: Python<'_>, req: &Bound<'_, Request>, interrupted: bool) {
    let pause = req.borrow_mut().pause.take();
    if let Some(p) = pause {
        p.get().kill(py, interrupted);
    }
}

/// Call the iterable's `close()`, exactly once.
fn close_iterable(py: Python<'_>, req: &Bound<'_, Request>) {
    let result = {
        let mut r = req.borrow_mut();
        r.iter = None;
        if r.closed {
            return;
        }
        r.closed = true;
        r.result.take()
    };
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
