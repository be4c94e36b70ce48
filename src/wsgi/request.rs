//! The per-request Python objects: [`Request`] (whose bound methods are
//! `start_response`, `write`, and the pause_output keys of the environ) and
//! [`Resume`], the callable `pause_output()` returns.
//!
//! A pause has one [`Resume`] whose `state` moves only forward:
//!
//! ```text
//! ARMED ──yield──▶ PAUSED ──resume()/timeout──▶ RESUMED
//!   └──resume() before the yield (early)──────▶ RESUMED
//! any ──request over (end, disconnect, abort)──▶ DEAD
//! ```
//!
//! Only the transition into RESUMED (or DEAD) succeeds once; that is how
//! `resume()` returns `True` exactly on the call that changes the state.
//! Leaving PAUSED queues a [`Continuation`] on the loop, which pulls the next item
//! from the application on the reactor thread (never inside `resume()`).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::event_loop::Loop;
use crate::http::service::{ConnInfo, Responder};
use crate::time::{lock, DelayedCall};
use crate::twisted::log_failure;
use crate::wsgi::host::WsgiShared;
use crate::wsgi::respond;

pub const ARMED: u8 = 0;
pub const PAUSED: u8 = 1;
pub const RESUMED: u8 = 2;
pub const DEAD: u8 = 3;

/// Where a request is, on the application's side. Each step of the
/// driver, each environ callable and each continuation checks the stage
/// first, so a call that does not belong (a `write()` from the iterable, a
/// re-entrant pull while `next()` runs, a stale continuation) is refused or
/// ignored by construction.
///
/// ```text
/// Calling ──app returned──▶ Ready ──pull──▶ Pulling ──item──▶ Ready ──end──▶ Finished
///                             │ ▲                     └─yield after pause_output──▶ Paused ──resume──▶ Ready
///                             │ └──── next loop turn ◀── NextTurn ◀── b"" (or pull budget spent)
///                             └─ over the high-water mark ──▶ Draining ──drained──▶ Ready
/// any ──error, client gone, abort──▶ Finished
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The application callable runs: `write()` is allowed.
    Calling,
    /// Between items of the iterable: the driver may pull the next one.
    Ready,
    /// Inside the iterable's `next()`.
    Pulling,
    /// Stopped at a yield after `pause_output()`, until `resume()`.
    Paused,
    /// Yielded `b""` without a pause (or spent its pull budget): goes on at
    /// the next loop turn.
    NextTurn,
    /// The connection's output is above the high-water mark: goes on when
    /// it drains.
    Draining,
    /// The response is finished or aborted; nothing of the application
    /// runs again but its iterable's `close()`, once.
    Finished,
}

/// What the application said of its response.
pub enum Reply {
    /// `start_response()` not called yet.
    Unstarted,
    /// Called; the headers are not out yet, so it may be called again with
    /// `exc_info`.
    Started {
        status: String,
        headers: Vec<(String, String)>,
        /// The application sent `Connection: close`.
        close: bool,
    },
    /// The headers went out (to the HTTP layer).
    Sent,
}

/// One request's WSGI state, and the Python callables of its environ. The
/// HTTP side of the request (framing, what was sent, the access log) is the
/// connection's; this object reaches it only through `responder`.
///
/// Rust code reads and changes it only through [`state`] and [`state_mut`],
/// which turn a re-entrant use (Python code run while the state is borrowed
/// calling back into the request) into a Python exception, never a panic.
#[pyclass(module = "twisted_shim._core")]
pub struct Request {
    pub responder: Responder,
    pub info: Arc<ConnInfo>,
    pub shared: Weak<WsgiShared>,
    pub method: String,
    pub target: String,
    pub stage: Stage,
    pub reply: Reply,
    /// The application's own `Content-Length`, if it gave one.
    pub content_length: Option<u64>,
    /// What the application returned; taken when its `close()` is called.
    pub result: Option<Py<PyAny>>,
    pub iter: Option<Py<PyAny>>,
    pub pause: Option<Py<Resume>>,
    /// The client went away (`x-wsgiorg.client_disconnected()`).
    pub disconnected: bool,
    /// The application sent more than its `Content-Length` (logged once).
    pub overflow_logged: bool,
    /// `wsgi.input` when it reads a spooled body: closed when the request
    /// ends, so the file's descriptor and space do not wait for the
    /// environ to be collected.
    pub input: Option<Py<PyAny>>,
}

fn reentrant() -> PyErr {
    PyRuntimeError::new_err(
        "a WSGI request was called back into while it was busy (re-entrant use from code \
         the request itself was running)",
    )
}

/// The request's state, read-only; a re-entrant use is a Python exception.
pub fn state<'py>(req: &Bound<'py, Request>) -> PyResult<PyRef<'py, Request>> {
    req.try_borrow().map_err(|_| reentrant())
}

/// The request's state, to change; a re-entrant use is a Python exception.
pub fn state_mut<'py>(req: &Bound<'py, Request>) -> PyResult<PyRefMut<'py, Request>> {
    req.try_borrow_mut().map_err(|_| reentrant())
}

impl Request {
    pub fn new(
        responder: Responder,
        info: Arc<ConnInfo>,
        shared: Weak<WsgiShared>,
        method: String,
        target: String,
    ) -> Self {
        Request {
            responder,
            info,
            shared,
            method,
            target,
            stage: Stage::Calling,
            reply: Reply::Unstarted,
            content_length: None,
            result: None,
            iter: None,
            pause: None,
            disconnected: false,
            overflow_logged: false,
            input: None,
        }
    }

    pub fn finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    pub fn headers_sent(&self) -> bool {
        matches!(self.reply, Reply::Sent)
    }

    fn on_reactor_thread(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|s| s.reactor_thread == std::thread::current().id())
    }
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Hop-by-hop headers an application must not send (PEP 3333); the host
/// does the framing.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[pymethods]
impl Request {
    /// PEP 3333 `start_response(status, response_headers, exc_info=None)`.
    #[pyo3(signature = (status, response_headers, exc_info=None))]
    fn start_response<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        response_headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let r = state(slf)?;
            if !matches!(r.reply, Reply::Unstarted) {
                match exc_info {
                    None => {
                        return Err(PyRuntimeError::new_err(
                            "start_response() called again without exc_info",
                        ))
                    }
                    Some(info) if r.headers_sent() => {
                        // PEP 3333: re-raise the original exception.
                        let info = info.cast::<PyTuple>()?;
                        let value = info.get_item(1)?;
                        let tb = info.get_item(2)?;
                        let value = value.call_method1(intern!(py, "with_traceback"), (tb,))?;
                        return Err(PyErr::from_value(value));
                    }
                    Some(_) => {}
                }
            }
        }
        let status: String = status.extract().map_err(|_| {
            PyTypeError::new_err(format!("status must be str, not {}", type_name(status)))
        })?;
        let code = status
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..=999).contains(c));
        if code.is_none() {
            return Err(PyValueError::new_err(format!(
                "invalid status {status:?}: expected e.g. '200 OK'"
            )));
        }
        if status.len() < 5
            || status.as_bytes()[3] != b' '
            || status.contains(['\r', '\n'])
            || !is_latin1(&status)
        {
            return Err(PyValueError::new_err(format!(
                "invalid status {status:?}: expected e.g. '200 OK'"
            )));
        }
        let list = response_headers.cast::<PyList>().map_err(|_| {
            PyTypeError::new_err("response_headers must be a list of (name, value) tuples")
        })?;
        let mut headers = Vec::with_capacity(list.len());
        let mut content_length = None;
        let mut app_close = false;
        for item in list.iter() {
            let pair = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err(format!("response header {item} is not a tuple"))
            })?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(format!(
                    "response header {item} is not a (name, value) pair"
                )));
            }
            let name: String = pair
                .get_item(0)?
                .extract()
                .map_err(|_| PyTypeError::new_err(format!("header name in {item} must be str")))?;
            let value: String = pair
                .get_item(1)?
                .extract()
                .map_err(|_| PyTypeError::new_err(format!("header value in {item} must be str")))?;
            if !valid_token(&name) {
                return Err(PyValueError::new_err(format!(
                    "invalid header name {name:?}"
                )));
            }
            if !is_latin1(&name) || !is_latin1(&value) {
                return Err(PyValueError::new_err(format!(
                    "header {name}: {value:?} is not latin-1 (PEP 3333 headers are native strings)"
                )));
            }
            if value.contains(['\r', '\n', '\0']) {
                return Err(PyValueError::new_err(format!(
                    "header {name} has a line break or NUL in its value"
                )));
            }
            if name.eq_ignore_ascii_case("connection") {
                // Honoured, not forwarded: the host decides the framing.
                app_close |= value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"));
                continue;
            }
            if hop_by_hop(&name) {
                return Err(PyValueError::new_err(format!(
                    "hop-by-hop header {name:?} is not allowed from a WSGI application"
                )));
            }
            if name.eq_ignore_ascii_case("content-length") {
                let v = value.trim();
                content_length = Some(v.parse::<u64>().map_err(|_| {
                    PyValueError::new_err(format!("invalid Content-Length {value:?}"))
                })?);
            }
            headers.push((name, value));
        }
        {
            let mut r = state_mut(slf)?;
            if r.headers_sent() {
                // exc_info was given, but the headers went out meanwhile
                // (the checks above ran Python code): too late to replace.
                return Err(PyRuntimeError::new_err(
                    "start_response() called after the headers were sent",
                ));
            }
            r.reply = Reply::Started {
                status,
                headers,
                close: app_close,
            };
            r.content_length = content_length;
        }
        slf.getattr(intern!(py, "write"))
    }

    /// The `write(data)` callable `start_response` returns.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        {
            let r = state(slf)?;
            if r.stage != Stage::Calling {
                return Err(PyRuntimeError::new_err(
                    "write() may be used only while the application callable runs, \
                     not from its iterable or a callback",
                ));
            }
            if matches!(r.reply, Reply::Unstarted) {
                return Err(PyRuntimeError::new_err(
                    "write() called before start_response()",
                ));
            }
        }
        let bytes = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(data)))
        })?;
        respond::send_body(py, slf, bytes)
    }

    /// `wsgi.pause_output(timeout=None) -> resume`.
    #[pyo3(signature = (timeout=None))]
    fn pause_output(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<Py<Resume>> {
        let py = slf.py();
        let (shared, responder) = {
            let r = state(slf)?;
            if !r.on_reactor_thread() {
                return Err(PyRuntimeError::new_err(
                    "pause_output() must be called on the reactor thread",
                ));
            }
            if r.finished() {
                return Err(PyRuntimeError::new_err(
                    "pause_output() called after the response ended",
                ));
            }
            if !matches!(r.stage, Stage::Calling | Stage::Pulling) {
                return Err(PyRuntimeError::new_err(
                    "pause_output() may be called only while the application or its iterable runs",
                ));
            }
            if r.pause.is_some() {
                return Err(PyRuntimeError::new_err(
                    "pause_output() called while already armed or paused",
                ));
            }
            (r.shared.upgrade(), r.responder.clone())
        };
        let Some(shared) = shared else {
            return Err(PyRuntimeError::new_err("the server is gone"));
        };
        if let Some(t) = timeout {
            if !(t.is_finite() && t >= 0.0) {
                return Err(PyValueError::new_err(format!(
                    "timeout must be a non-negative number of seconds, not {t}"
                )));
            }
        }
        let limit = match (timeout, shared.cfg.max_pause) {
            (Some(t), Some(m)) => Some(t.min(m)),
            (Some(t), None) => Some(t),
            (None, m) => m,
        };
        let resume = Py::new(
            py,
            Resume {
                state: AtomicU8::new(ARMED),
                timed_out: AtomicBool::new(false),
                request: slf.clone().unbind(),
                responder,
                loop_: shared.loop_.clone_ref(py),
                interrupts: Mutex::new(Vec::new()),
                timer: Mutex::new(None),
            },
        )?;
        if let Some(t) = limit {
            let cb = Py::new(
                py,
                PauseTimeout {
                    resume: resume.clone_ref(py),
                },
            )?;
            let lp = shared.loop_.bind(py);
            let dc = lp.call_method1(intern!(py, "call_later"), (t, cb))?;
            *lock(&resume.get().timer) = Some(dc.cast_into::<DelayedCall>()?.unbind());
        }
        state_mut(slf)?.pause = Some(resume.clone_ref(py));
        Ok(resume)
    }

    /// `x-wsgiorg.flush()`: send the status line and headers now.
    fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (responder, ready) = {
            let r = state(slf)?;
            (
                r.responder.clone(),
                matches!(r.reply, Reply::Started { .. }) && !r.finished(),
            )
        };
        if ready && responder.is_open() {
            respond::send_headers(py, slf, false)?;
            responder.flush(py);
        }
        Ok(())
    }

    /// `x-wsgiorg.client_disconnected() -> bool`.
    fn client_disconnected(&self) -> bool {
        self.disconnected
    }

    /// `twisted_shim.wait(awaited, timeout=None) -> Waiter`: `awaited` is a
    /// Deferred or an asyncio awaitable (the `Waiter` tells them apart).
    #[pyo3(signature = (awaited, timeout=None))]
    fn wait(
        slf: &Bound<'_, Self>,
        awaited: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let shared = state(slf)?
            .shared
            .upgrade()
            .ok_or_else(|| PyRuntimeError::new_err("the server is gone"))?;
        let waiter_class = shared.waiter.bind(py);
        let resume = match Request::pause_output(slf, timeout) {
            Ok(resume) => resume,
            Err(e) => {
                // Nothing will run `awaited` now: a coroutine not started is
                // closed, so that it does not warn it was never awaited.
                if let Err(d) = waiter_class.call_method1(intern!(py, "discard"), (awaited,)) {
                    log_failure(py, "while discarding what a refused wait() was given", d);
                }
                return Err(e);
            }
        };
        let made = waiter_class.call1((awaited, resume.clone_ref(py), shared.reactor.bind(py)));
        let waiter = match made {
            Ok(waiter) => waiter,
            Err(e) => {
                // Not something to wait for (a TypeError): the pause is
                // disarmed, so the request goes on as if wait() was never
                // called.
                resume.get().kill(py, false);
                let armed = state_mut(slf).map(|mut r| {
                    if r.pause.as_ref().is_some_and(|p| p.is(&resume)) {
                        r.pause.take()
                    } else {
                        None
                    }
                });
                drop(armed);
                return Err(e);
            }
        };
        resume
            .get()
            .interrupts_push(waiter.getattr(intern!(py, "_interrupt"))?.unbind());
        Ok(waiter.unbind())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(r) = &self.result {
            visit.call(r)?;
        }
        if let Some(i) = &self.iter {
            visit.call(i)?;
        }
        if let Some(p) = &self.pause {
            visit.call(p)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.result = None;
        self.iter = None;
        self.pause = None;
    }
}

/// The `resume` callable of one pause.
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct Resume {
    pub state: AtomicU8,
    timed_out: AtomicBool,
    request: Py<Request>,
    responder: Responder,
    loop_: Py<Loop>,
    interrupts: Mutex<Vec<Py<PyAny>>>,
    timer: Mutex<Option<Py<DelayedCall>>>,
}

impl Resume {
    fn interrupts_push(&self, cb: Py<PyAny>) {
        lock(&self.interrupts).push(cb);
    }

    fn cancel_timer(&self, py: Python<'_>) {
        if let Some(dc) = lock(&self.timer).take() {
            let dc = dc.bind(py);
            if dc.borrow().is_active() {
                if let Err(e) = dc.call_method0(intern!(py, "cancel")) {
                    log_failure(py, "while cancelling a pause timeout", e);
                }
            }
        }
    }

    /// Move to RESUMED from ARMED or PAUSED; returns the previous state.
    fn to_resumed(&self) -> Option<u8> {
        loop {
            let s = self.state.load(Ordering::SeqCst);
            if s != ARMED && s != PAUSED {
                return None;
            }
            if self
                .state
                .compare_exchange(s, RESUMED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Some(s);
            }
        }
    }

    /// The driver reached the yield: suspend unless already resumed.
    pub fn try_suspend(&self) -> bool {
        self.state
            .compare_exchange(ARMED, PAUSED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn schedule(&self, py: Python<'_>) -> PyResult<()> {
        let cont = Py::new(
            py,
            Continuation {
                request: self.request.clone_ref(py),
                responder: self.responder.clone(),
                after_turn: false,
            },
        )?;
        self.loop_.bind(py).get().call_soon(py, cont.into_any())
    }

    /// The pause is over without a resume (end, disconnect, abort). Runs the
    /// interrupt callbacks (cancelling a `wait`'s Deferred) if the pause was
    /// still pending.
    pub fn kill(&self, py: Python<'_>, interrupted: bool) {
        let prev = self.state.swap(DEAD, Ordering::SeqCst);
        self.cancel_timer(py);
        if interrupted && (prev == ARMED || prev == PAUSED) {
            self.run_interrupts(py);
        } else {
            lock(&self.interrupts).clear();
        }
    }

    fn run_interrupts(&self, py: Python<'_>) {
        let cbs = std::mem::take(&mut *lock(&self.interrupts));
        for cb in cbs {
            if let Err(e) = cb.call0(py) {
                log_failure(py, "while interrupting a paused request", e);
            }
        }
    }
}

#[pymethods]
impl Resume {
    /// Resume the request. Returns True only on the call that changed the
    /// state; safe from any thread; never calls into the application.
    fn __call__(&self, py: Python<'_>) -> PyResult<bool> {
        match self.to_resumed() {
            None => Ok(false),
            Some(prev) => {
                self.cancel_timer(py);
                // The interrupt callbacks (a Waiter's) only matter if the
                // pause ends without a resume; dropping them now also breaks
                // the Resume -> Waiter -> Resume cycle, so a request's objects
                // are freed by reference counting, not by the collector.
                lock(&self.interrupts).clear();
                if prev == PAUSED {
                    self.schedule(py)?;
                }
                Ok(true)
            }
        }
    }

    /// True when the pause ended because its timeout expired.
    #[getter]
    fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::SeqCst)
    }

    /// Register a callable run if the pause ends by timeout or disconnect.
    fn _on_interrupt(&self, cb: Py<PyAny>) {
        self.interrupts_push(cb);
    }

    fn __repr__(&self) -> String {
        let state = match self.state.load(Ordering::SeqCst) {
            ARMED => "armed",
            PAUSED => "paused",
            RESUMED => "resumed",
            _ => "over",
        };
        format!(
            "<resume ({state}{})>",
            if self.timed_out() { ", timed out" } else { "" }
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.request)?;
        if let Ok(cbs) = self.interrupts.try_lock() {
            for cb in cbs.iter() {
                visit.call(cb)?;
            }
        }
        Ok(())
    }
}

/// The pause's timeout fired.
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct PauseTimeout {
    resume: Py<Resume>,
}

#[pymethods]
impl PauseTimeout {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let r = self.resume.get();
        lock(&r.timer).take();
        // Only the reactor thread runs this, and it sets the flag before the
        // request can run again (the continuation is queued after).
        if let Some(prev) = r.to_resumed() {
            r.timed_out.store(true, Ordering::SeqCst);
            r.run_interrupts(py);
            if prev == PAUSED {
                r.schedule(py)?;
            }
        }
        Ok(())
    }
}

/// A step of a request queued on the loop: after a resume, or on the next
/// loop turn after `b""` without a pause.
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct Continuation {
    pub request: Py<Request>,
    pub responder: Responder,
    /// What it continues after: the next loop turn (`b""` without a pause,
    /// or a spent pull budget), else a resume.
    pub after_turn: bool,
}

#[pymethods]
impl Continuation {
    fn __call__(&self, py: Python<'_>) {
        if !self.responder.is_open() {
            return;
        }
        let req = self.request.bind(py);
        let go_on = state_mut(req).map(|mut r| {
            if self.after_turn {
                if r.stage != Stage::NextTurn {
                    return (false, None);
                }
            } else {
                let resumed = r
                    .pause
                    .as_ref()
                    .is_some_and(|p| p.get().state.load(Ordering::SeqCst) == RESUMED);
                if r.stage != Stage::Paused || !resumed {
                    return (false, None);
                }
            }
            r.stage = Stage::Ready;
            // Dropped after the borrow ends (dropping runs no Python here,
            // but nothing is dropped under a borrow on principle).
            (
                true,
                if self.after_turn {
                    None
                } else {
                    r.pause.take()
                },
            )
        });
        match go_on {
            Ok((true, pause)) => drop(pause),
            Ok((false, _)) => return,
            Err(e) => {
                log_failure(py, "while resuming a WSGI request", e);
                return;
            }
        }
        respond::produce(py, req);
        self.responder.flush(py);
    }
}
