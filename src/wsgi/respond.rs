//! Calling the application and sending its response.
//!
//! [`dispatch`] builds the environ and calls the application (its `write()`
//! may queue output meanwhile); [`drive`] then pulls items from the iterable
//! until it ends, pauses, yields `b""` (next loop turn), or the connection's
//! output passes the high-water mark (resumed when it drains). Headers go
//! out with the first non-empty chunk, on `flush()`, or at the end.
//!
//! Framing: the application's `Content-Length` if it gave one (more bytes
//! than that are dropped and logged; fewer abort the connection), else
//! chunked for HTTP/1.1, else the end of the connection. HEAD, 1xx, 204 and
//! 304 responses carry no body.
//!
//! An error from the application before the headers were sent becomes a
//! 500; after, the connection is reset so the client sees a truncated
//! response. The iterable's `close()` is called exactly once in every case.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator};

use crate::http::conn::Conn;
use crate::http::parse::Head;
use crate::http::server::Shared;
use crate::http::{http_date, log_date};
use crate::time::lock;
use crate::twisted::log_failure;
use crate::wsgi::request::{Continue, Request};
use crate::wsgi::{build_environ, FileWrapper};

/// Items pulled in one go before yielding to other connections.
const PULL_BUDGET: usize = 64;

/// Call the application for a request whose body has been read.
pub fn dispatch(py: Python<'_>, conn: &Arc<Conn>, shared: &Arc<Shared>, head: Head, body: Vec<u8>) {
    let req = Request::new(
        conn.weak(),
        Arc::downgrade(shared),
        head.method.clone(),
        head.target.clone(),
        head.minor,
        head.keep_alive,
    );
    let req = match Py::new(py, req) {
        Ok(r) => r,
        Err(e) => {
            log_failure(py, "while creating a WSGI request", e);
            conn.abort(py);
            return;
        }
    };
    let req = req.bind(py);
    lock(&conn.st).request = Some(req.clone().unbind());
    let environ = match build_environ(py, shared, conn, &head, body, req) {
        Ok(e) => e,
        Err(e) => return app_error(py, conn, shared, req, e),
    };
    let start_response = match req.getattr(intern!(py, "start_response")) {
        Ok(s) => s,
        Err(e) => return app_error(py, conn, shared, req, e),
    };
    req.borrow_mut().in_app_call = true;
    let result = shared.app.bind(py).call1((environ, start_response));
    req.borrow_mut().in_app_call = false;
    let result = match result {
        Ok(r) => r,
        Err(e) => return app_error(py, conn, shared, req, e),
    };
    req.borrow_mut().result = Some(result.clone().unbind());
    if req.borrow().finished {
        // The client went away while the application ran.
        close_iterable(py, req);
        return;
    }
    if let Ok(fw) = result.cast::<FileWrapper>() {
        match send_file(py, conn, shared, req, &fw.borrow()) {
            Ok(true) => return finish(py, conn, shared, req),
            Ok(false) => {}
            Err(e) => return app_error(py, conn, shared, req, e),
        }
    }
    match result.try_iter() {
        Ok(it) => req.borrow_mut().iter = Some(it.into_any().unbind()),
        Err(e) => return app_error(py, conn, shared, req, e),
    }
    drive(py, conn, shared, req);
}

fn schedule_turn(py: Python<'_>, conn: &Arc<Conn>, shared: &Arc<Shared>, req: &Bound<'_, Request>) {
    req.borrow_mut().next_turn = true;
    let cont = Continue {
        request: req.clone().unbind(),
        conn: conn.weak(),
        turn: true,
    };
    let scheduled =
        Py::new(py, cont).and_then(|c| shared.loop_.bind(py).get().call_soon(py, c.into_any()));
    if let Err(e) = scheduled {
        app_error(py, conn, shared, req, e);
    }
}

/// Pull from the application's iterable as far as the rules allow.
pub fn drive(py: Python<'_>, conn: &Arc<Conn>, shared: &Arc<Shared>, req: &Bound<'_, Request>) {
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
        if conn.queued() > shared.cfg.high_water {
            // Backpressure: resumed by `Conn::settle` once the queue drains.
            req.borrow_mut().waiting_drain = true;
            return;
        }
        if pulled == PULL_BUDGET {
            return schedule_turn(py, conn, shared, req);
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
            None => return finish(py, conn, shared, req),
            Some(Err(e)) => return app_error(py, conn, shared, req, e),
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
                return app_error(py, conn, shared, req, PyTypeError::new_err(msg));
            }
        };
        let empty = bytes.as_bytes().is_empty();
        if !empty {
            if let Err(e) = send_body(py, conn, shared, req, &bytes) {
                return app_error(py, conn, shared, req, e);
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
            None if empty => return schedule_turn(py, conn, shared, req),
            None => {}
        }
    }
}

/// Queue body bytes, sending the headers first if they are not out yet.
pub fn send_body(
    py: Python<'_>,
    conn: &Arc<Conn>,
    shared: &Shared,
    req: &Bound<'_, Request>,
    bytes: &Bound<'_, PyBytes>,
) -> PyResult<()> {
    if req.borrow().finished {
        return Ok(());
    }
    if !req.borrow().headers_sent {
        send_headers_at(py, conn, shared, req, false)?;
    }
    let n = bytes.as_bytes().len() as u64;
    let mut r = req.borrow_mut();
    if r.no_body {
        r.body_sent += n;
        return Ok(());
    }
    let mut take = n;
    if let Some(cl) = r.content_length {
        let allowed = cl.saturating_sub(r.body_sent);
        if n > allowed {
            take = allowed;
            if !r.overflow_logged {
                r.overflow_logged = true;
                let msg = format!(
                    "{} {}: the application sent more than its Content-Length ({cl}); the excess is dropped\n",
                    r.method, r.target
                );
                drop(r);
                let _ = shared
                    .errors
                    .bind(py)
                    .call_method1(intern!(py, "write"), (msg,));
                r = req.borrow_mut();
            }
        }
    }
    r.body_sent += take;
    let chunked = r.chunked;
    drop(r);
    if take == 0 {
        return Ok(());
    }
    let mut st = lock(&conn.st);
    if chunked {
        st.out.push_owned(format!("{take:x}\r\n").as_bytes());
        st.out.push_py(bytes.clone().unbind(), 0, take as usize);
        st.out.push_owned(b"\r\n");
    } else {
        st.out.push_py(bytes.clone().unbind(), 0, take as usize);
    }
    Ok(())
}

/// `x-wsgiorg.flush()`: the status line and headers, now.
pub fn send_headers(
    py: Python<'_>,
    conn: &Arc<Conn>,
    shared: &Shared,
    req: &Bound<'_, Request>,
) -> PyResult<()> {
    send_headers_at(py, conn, shared, req, false)
}

/// Queue the status line and headers. `at_end`: the body is complete (and
/// empty), so a length can be given instead of chunking.
fn send_headers_at(
    _py: Python<'_>,
    conn: &Arc<Conn>,
    _shared: &Shared,
    req: &Bound<'_, Request>,
    at_end: bool,
) -> PyResult<()> {
    let mut r = req.borrow_mut();
    if r.headers_sent {
        return Ok(());
    }
    let Some(status) = r.status.clone() else {
        return Err(PyRuntimeError::new_err(
            "the application produced a body before calling start_response()",
        ));
    };
    let no_keepalive = lock(&conn.st).no_keepalive;
    let mut keep_alive = r.keep_alive && !r.app_close && !no_keepalive;
    // Status and header values are latin-1 (checked by start_response);
    // they are written one byte per character.
    let mut head = String::with_capacity(256);
    head.push_str("HTTP/1.1 ");
    head.push_str(&status);
    head.push_str("\r\n");
    let mut has_date = false;
    for (name, value) in r.headers.iter() {
        has_date |= name.eq_ignore_ascii_case("date");
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if !has_date {
        head.push_str("Date: ");
        head.push_str(&http_date());
        head.push_str("\r\n");
    }
    let bodiless_status = r.status_code < 200 || r.status_code == 204 || r.status_code == 304;
    if r.content_length.is_none() && !bodiless_status {
        if at_end && !r.head_request {
            head.push_str("Content-Length: 0\r\n");
        } else if r.minor >= 1 && !r.head_request {
            head.push_str("Transfer-Encoding: chunked\r\n");
            r.chunked = true;
        } else if !r.head_request {
            r.close_delimited = true;
            keep_alive = false;
        }
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    } else if r.minor == 0 {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    r.keep_alive = keep_alive;
    r.headers_sent = true;
    drop(r);
    let bytes: Vec<u8> = if head.is_ascii() {
        head.into_bytes()
    } else {
        head.chars().map(|c| c as u32 as u8).collect()
    };
    conn.push_owned(&bytes);
    Ok(())
}

/// A `wsgi.file_wrapper` over a regular file goes out with `sendfile`.
/// Returns false (iterate instead) for anything else.
fn send_file(
    py: Python<'_>,
    conn: &Arc<Conn>,
    shared: &Shared,
    req: &Bound<'_, Request>,
    fw: &FileWrapper,
) -> PyResult<bool> {
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
    send_headers_at(py, conn, shared, req, false)?;
    let no_body = req.borrow().no_body;
    if !no_body && len > 0 {
        // Our own duplicate, so the application may close its file as soon
        // as we call close() on the wrapper.
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(PyErr::from(std::io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        lock(&conn.st).out.push_file(owned, pos, len);
    }
    req.borrow_mut().body_sent += len;
    Ok(true)
}

/// The iterable ended: finish the response.
fn finish(py: Python<'_>, conn: &Arc<Conn>, shared: &Arc<Shared>, req: &Bound<'_, Request>) {
    if !req.borrow().headers_sent {
        if let Err(e) = send_headers_at(py, conn, shared, req, true) {
            let e = if req.borrow().status.is_none() {
                PyRuntimeError::new_err("the application returned without calling start_response()")
            } else {
                e
            };
            return app_error(py, conn, shared, req, e);
        }
    }
    let (truncated, chunked, keep_alive, cl, sent) = {
        let mut r = req.borrow_mut();
        r.finished = true;
        let truncated = !r.no_body && r.content_length.is_some_and(|cl| r.body_sent < cl);
        (
            truncated,
            r.chunked,
            r.keep_alive,
            r.content_length,
            r.body_sent,
        )
    };
    if chunked {
        conn.push_owned(b"0\r\n\r\n");
    }
    end_pause(py, req, false);
    close_iterable(py, req);
    access_log(py, conn, shared, req);
    if truncated {
        let msg = {
            let r = req.borrow();
            format!(
                "{} {}: the application sent {sent} bytes of its Content-Length {}; connection aborted\n",
                r.method,
                r.target,
                cl.unwrap_or(0)
            )
        };
        let _ = shared
            .errors
            .bind(py)
            .call_method1(intern!(py, "write"), (msg,));
        conn.abort(py);
        return;
    }
    conn.response_done(keep_alive);
}

/// The application raised: a 500 if nothing was sent yet, else a reset.
fn app_error(
    py: Python<'_>,
    conn: &Arc<Conn>,
    shared: &Arc<Shared>,
    req: &Bound<'_, Request>,
    err: PyErr,
) {
    report(py, shared, req, &err);
    let headers_sent = {
        let mut r = req.borrow_mut();
        r.finished = true;
        r.headers_sent
    };
    end_pause(py, req, true);
    close_iterable(py, req);
    if headers_sent {
        conn.abort(py);
        return;
    }
    let body = b"Internal Server Error\n";
    let head = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nDate: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        http_date()
    );
    conn.push_owned(head.as_bytes());
    conn.push_owned(body);
    {
        let mut r = req.borrow_mut();
        r.status_code = 500;
        r.body_sent = body.len() as u64;
    }
    access_log(py, conn, shared, req);
    conn.response_done(false);
}

/// Log an application error, with its traceback, through `wsgi.errors`.
fn report(py: Python<'_>, shared: &Shared, req: &Bound<'_, Request>, err: &PyErr) {
    let what = {
        let r = req.borrow();
        format!(
            "Error in the WSGI application serving {} {}:\n",
            r.method, r.target
        )
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
/// iterable. The caller closes the connection.
pub fn abort(py: Python<'_>, req: &Bound<'_, Request>, disconnected: bool) {
    {
        let mut r = req.borrow_mut();
        r.disconnected |= disconnected;
        if r.finished {
            return;
        }
        r.finished = true;
        if !r.headers_sent {
            // As nginx logs it: the client closed before a response began.
            r.status_code = if disconnected { 499 } else { 503 };
        }
    }
    end_pause(py, req, true);
    close_iterable(py, req);
    let (conn, shared) = {
        let r = req.borrow();
        (r.conn.upgrade(), r.shared.upgrade())
    };
    if let (Some(conn), Some(shared)) = (conn, shared) {
        access_log(py, &conn, &shared, req);
    }
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

fn access_log(py: Python<'_>, conn: &Conn, shared: &Shared, req: &Bound<'_, Request>) {
    let Some(log) = shared.access_log.as_ref() else {
        return;
    };
    let line = {
        let r = req.borrow();
        format!(
            "{} - - [{}] \"{} {} HTTP/1.{}\" {} {} {:.6}",
            if conn.peer.host.is_empty() {
                "-"
            } else {
                &conn.peer.host
            },
            log_date(),
            r.method,
            r.target,
            r.minor,
            r.status_code,
            r.body_sent,
            r.started.elapsed().as_secs_f64()
        )
    };
    if let Err(e) = log.call1(py, (line,)) {
        log_failure(py, "while writing the access log", e);
    }
}
