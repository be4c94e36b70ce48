//! One HTTP/1.1 connection: a native handler on the loop.
//!
//! A connection moves through phases:
//!
//! ```text
//! Idle ──bytes──▶ Head ──head──▶ Body ──body──▶ Busy ──response done──▶ Idle (keep-alive)
//!   │               │              │              │                     └─▶ Closing ─▶ Lingering ─▶ closed
//!   └─ timeouts, bad input, EOF ───┴──────────────┴─ client gone: the exchange is aborted
//! ```
//!
//! - `Idle`: between requests (or fresh); closed after the keep-alive (or
//!   header) timeout.
//! - `Head`/`Body`: a request is arriving; 400/413/431 if it is bad, and
//!   408 if it is too slow: a head past the header timeout from its first
//!   byte (on a new connection, from the connection); a body that goes
//!   `body_timeout` without a byte, or averages less than `min_body_rate`
//!   past its first `body_timeout`. Then the connection closes.
//! - `Busy`: the service has the request (its [`Exchange`]). The socket is
//!   still read, so a client that goes away is noticed while the request
//!   waits; input is kept (pipelining) up to a cap, then reading stops until
//!   the response is done. The next pipelined request is parsed only after.
//! - `Closing`: the last response is flushed, then writes are shut down and
//!   input is discarded for a moment (`Lingering`) so the client reads the
//!   response before the socket is closed, rather than a reset.
//!
//! The response to the request in `Busy` is framed here ([`Response`]): the
//! service gives a status, headers and body through its
//! [`Responder`](crate::http::service::Responder), and the connection
//! chooses `Content-Length`, chunked or close-delimited, adds `Date` and
//! `Connection`, and logs the request when it ends.
//!
//! Locks: `state` is held only for short sections that call no Python and no
//! service; every call into the service or Python (logging) happens with it
//! released.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::event_loop::Loop;
use crate::fdset::{NativeHandler, Readiness, Token};
use crate::http::body::{BodySink, RequestBody, SpoolError};
use crate::http::parse::{parse_head, BodyKind, ChunkedDecoder, Head, Reject};
use crate::http::server::Server;
use crate::http::service::{ConnInfo, Exchange, Responder, Truncated};
use crate::http::{http_date, log_date};
use crate::net::socket::{self, read_into};
use crate::net::write::WriteQueue;
use crate::time::lock;
use crate::twisted::{log_error, log_failure};

/// Input kept while a response is in progress (pipelined requests).
const BUSY_READ_CAP: usize = 256 * 1024;
/// Read at most this much per readiness event, for fairness.
const READ_BUDGET: usize = 256 * 1024;
/// How long a closing connection waits for the client to read and close.
const LINGER: Duration = Duration::from_secs(2);
/// While the server drains, how long a connection must have been idle
/// before it is closed: a client that just got its response is likely
/// sending its next request, which is answered (with `Connection: close`)
/// rather than lost to a close racing it.
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// Capacity of the read buffer above which a connection going idle frees it
/// (twice the reservation of one read, see `read_into`).
const IDLE_READ_BUFFER: usize = 128 * 1024;
/// The body of the page sent when a service fails before its headers.
const ERROR_PAGE: &[u8] = b"Internal Server Error\n";

pub enum Phase {
    Idle,
    Head,
    Body {
        head: Head,
        /// Boxed: a sink is large, and most requests have no body.
        body: Box<BodySink>,
        chunked: Option<ChunkedDecoder>,
        remaining: u64,
    },
    Busy,
    Closing,
    Lingering,
}

/// The response to the request in progress, as the connection frames it.
pub struct Response {
    /// The request line's method and target, for the access log (empty
    /// when there is none).
    method: String,
    target: String,
    minor: u8,
    head_request: bool,
    /// The request allows the connection to stay open; after the headers,
    /// whether it will.
    keep_alive: bool,
    /// 0 until the service starts the response.
    status_code: u16,
    headers_sent: bool,
    content_length: Option<u64>,
    /// Body bytes accepted from the service (framing excluded).
    body_sent: u64,
    chunked: bool,
    /// The status or method allows no body: what the service sends is
    /// counted and dropped.
    no_body: bool,
    /// The request was logged (it ended).
    logged: bool,
    started: Instant,
}

impl Response {
    fn new(head: &Head, logging: bool) -> Response {
        let head_request = head.method == "HEAD";
        let (method, target) = if logging {
            (head.method.clone(), head.target.clone())
        } else {
            (String::new(), String::new())
        };
        Response {
            method,
            target,
            minor: head.minor,
            head_request,
            keep_alive: head.keep_alive,
            status_code: 0,
            headers_sent: false,
            content_length: None,
            body_sent: 0,
            chunked: false,
            no_body: head_request,
            logged: false,
            started: Instant::now(),
        }
    }
}

pub struct ConnState {
    pub rbuf: Vec<u8>,
    pub phase: Phase,
    pub out: WriteQueue,
    /// The service's exchange for the request in `Busy`.
    exchange: Option<Arc<dyn Exchange>>,
    /// Its response.
    response: Option<Response>,
    /// The exchange asked to be told when `out` drains to the high-water mark.
    waiting_drain: bool,
    /// When the current phase started (or input last arrived, in `Body`).
    pub since: Instant,
    /// When the body of the request arriving started, and how many bytes of
    /// it (framing included) have been taken: its rate is checked with them.
    body_started: Instant,
    body_received: u64,
    pub eof: bool,
    pub closed: bool,
    /// New input or a new phase since `process` last looked.
    pub input_dirty: bool,
    /// The server is shutting down gracefully: every request already
    /// received or arriving is answered, the last one the connection has with
    /// `Connection: close`; then the connection closes.
    draining: bool,
    pub served: u64,
    /// When output last went out, or the queue was last empty.
    pub last_sent: Instant,
    interest: (bool, bool),
}

pub struct Conn {
    me: Weak<Conn>,
    pub key: usize,
    pub fd: OwnedFd,
    pub token: Mutex<Option<Token>>,
    pub server: Weak<Server>,
    pub info: Arc<ConnInfo>,
    /// The server's high-water mark, copied: checked once per item a
    /// service produces.
    high_water: usize,
    /// Whether the server writes an access log (the request line is kept
    /// for it only then).
    logging: bool,
    pub state: Mutex<ConnState>,
}

enum Action {
    Wait,
    Dispatch(Head, RequestBody),
    Reject(Reject),
    SpoolFailed(SpoolError),
    Close,
    ClientGone,
}

impl Conn {
    pub fn new(key: usize, fd: OwnedFd, server: &Arc<Server>, info: ConnInfo) -> Arc<Conn> {
        Arc::new_cyclic(|me| Conn {
            me: me.clone(),
            key,
            fd,
            token: Mutex::new(None),
            server: Arc::downgrade(server),
            info: Arc::new(info),
            high_water: server.cfg.high_water,
            logging: server.cfg.access_log.is_some(),
            state: Mutex::new(ConnState {
                rbuf: Vec::new(),
                phase: Phase::Idle,
                out: WriteQueue::default(),
                exchange: None,
                response: None,
                waiting_drain: false,
                since: Instant::now(),
                body_started: Instant::now(),
                body_received: 0,
                eof: false,
                closed: false,
                input_dirty: false,
                draining: false,
                served: 0,
                last_sent: Instant::now(),
                interest: (true, false),
            }),
        })
    }

    pub fn arc(&self) -> Option<Arc<Conn>> {
        self.me.upgrade()
    }

    fn with_loop<R>(&self, py: Python<'_>, f: impl FnOnce(&Loop) -> R) -> Option<R> {
        let server = self.server.upgrade()?;
        let lp = server.loop_.bind(py).get();
        Some(f(lp))
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Read what the socket has (within the budget). Sets `eof` on end of
    /// stream or a reset.
    fn read_input(&self, state: &mut ConnState) {
        if state.eof {
            return;
        }
        let busy = matches!(state.phase, Phase::Busy);
        let got = read_into(self.fd.as_raw_fd(), &mut state.rbuf, READ_BUDGET, |len| {
            busy && len >= BUSY_READ_CAP
        });
        if got.bytes > 0 {
            state.input_dirty = true;
            if let Phase::Body { .. } = state.phase {
                state.since = Instant::now();
            }
        }
        if got.eof {
            state.eof = true;
            state.input_dirty = true;
        }
    }

    fn next_action(&self, state: &mut ConnState, server: &Server) -> Action {
        state.input_dirty = false;
        loop {
            if state.closed {
                return Action::Wait;
            }
            match &mut state.phase {
                Phase::Busy => {
                    return if state.eof {
                        Action::ClientGone
                    } else {
                        Action::Wait
                    }
                }
                Phase::Closing => {
                    state.rbuf.clear();
                    return Action::Wait;
                }
                Phase::Lingering => {
                    state.rbuf.clear();
                    return if state.eof {
                        Action::Close
                    } else {
                        Action::Wait
                    };
                }
                Phase::Idle | Phase::Head => {
                    if state.rbuf.is_empty() {
                        return if state.eof {
                            Action::Close
                        } else {
                            Action::Wait
                        };
                    }
                    if let Phase::Idle = state.phase {
                        state.phase = Phase::Head;
                        // A new connection's first head is timed from the
                        // connection, so waiting before the first byte does
                        // not buy a second header timeout; later heads from
                        // their first byte.
                        if state.served > 0 {
                            state.since = Instant::now();
                        }
                    }
                    let head = match parse_head(&state.rbuf, server.cfg.max_header) {
                        Err(r) => return Action::Reject(r),
                        Ok(None) => {
                            return if state.eof {
                                Action::Close
                            } else {
                                Action::Wait
                            };
                        }
                        Ok(Some(h)) => h,
                    };
                    state.rbuf.drain(..head.len);
                    let remaining = match head.body {
                        BodyKind::Length(n) if n > server.cfg.max_body as u64 => {
                            return Action::Reject(Reject::BodyTooLarge)
                        }
                        BodyKind::None => return Action::Dispatch(head, RequestBody::empty()),
                        BodyKind::Length(n) => n,
                        BodyKind::Chunked => 0,
                    };
                    // A body that will be spooled gets its file before the
                    // client is told to send it: if the file cannot be
                    // made, the answer comes before the upload, not after.
                    let mut sink = Box::new(BodySink::new(&server.cfg.spool, remaining));
                    if let Err(e) = sink.prepare() {
                        return Action::SpoolFailed(e);
                    }
                    if head.expect_continue {
                        state.out.push_owned(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    let chunked =
                        matches!(head.body, BodyKind::Chunked).then(ChunkedDecoder::default);
                    state.phase = Phase::Body {
                        head,
                        body: sink,
                        chunked,
                        remaining,
                    };
                    state.since = Instant::now();
                    state.body_started = state.since;
                    state.body_received = 0;
                }
                Phase::Body {
                    body,
                    chunked,
                    remaining,
                    ..
                } => {
                    let done = match chunked {
                        Some(dec) => {
                            let before = body.scratch().len();
                            let decoded =
                                dec.decode(&state.rbuf, body.scratch(), server.cfg.max_body as u64);
                            let appended = body.scratch().len() - before;
                            match decoded {
                                Err(r) => return Action::Reject(r),
                                Ok(used) => {
                                    state.rbuf.drain(..used);
                                    state.body_received += used as u64;
                                }
                            }
                            if let Err(e) = body.settle(appended) {
                                return Action::SpoolFailed(e);
                            }
                            dec.is_done()
                        }
                        None => {
                            let take = (*remaining).min(state.rbuf.len() as u64) as usize;
                            if let Err(e) = body.write(&state.rbuf[..take]) {
                                return Action::SpoolFailed(e);
                            }
                            state.rbuf.drain(..take);
                            state.body_received += take as u64;
                            *remaining -= take as u64;
                            *remaining == 0
                        }
                    };
                    if !done {
                        return if state.eof {
                            Action::Close
                        } else {
                            Action::Wait
                        };
                    }
                    let phase = std::mem::replace(&mut state.phase, Phase::Busy);
                    if let Phase::Body { head, body, .. } = phase {
                        return match body.finish() {
                            Ok(body) => Action::Dispatch(head, body),
                            Err(e) => Action::SpoolFailed(e),
                        };
                    }
                    return Action::Wait;
                }
            }
        }
    }

    /// Parse and dispatch what input there is, as long as there is progress.
    pub fn process(self: &Arc<Self>, py: Python<'_>) {
        let Some(server) = self.server.upgrade() else {
            return;
        };
        loop {
            let action = {
                let mut state = lock(&self.state);
                self.next_action(&mut state, &server)
            };
            match action {
                Action::Wait => return,
                Action::Dispatch(head, body) => self.dispatch(py, &server, head, body),
                Action::Reject(r) => {
                    self.reject(&r);
                    return;
                }
                Action::SpoolFailed(e) => {
                    log_error(py, &format!("request refused: {e}"));
                    self.refuse(e.status(), "the request body could not be stored");
                    return;
                }
                Action::Close => {
                    self.close(py, false);
                    return;
                }
                Action::ClientGone => {
                    self.client_gone(py);
                    return;
                }
            }
        }
    }

    /// Hand a request that arrived whole to the service.
    fn dispatch(self: &Arc<Self>, py: Python<'_>, server: &Server, head: Head, body: RequestBody) {
        {
            let mut state = lock(&self.state);
            state.phase = Phase::Busy;
            state.since = Instant::now();
            state.response = Some(Response::new(&head, self.logging));
        }
        let responder = Responder {
            conn: self.me.clone(),
        };
        let exchange = match server.service.exchange(py, &head, &self.info, responder) {
            Ok(ex) => ex,
            Err(e) => {
                log_failure(py, "while starting to serve a request", e);
                self.abort(py);
                return;
            }
        };
        lock(&self.state).exchange = Some(exchange.clone());
        exchange.start(py, head, body);
    }

    /// Answer a bad request with its status and close.
    fn reject(&self, r: &Reject) {
        self.refuse(r.status(), &r.to_string());
    }

    /// Answer the request arriving with `status` and a one-line page, then
    /// close (its input is not read further).
    fn refuse(&self, status: &str, why: &str) {
        let body = format!("{why}\n");
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        let head = format!(
            "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            status,
            body.len()
        );
        state.out.push_owned(head.as_bytes());
        state.out.push_owned(body.as_bytes());
        state.phase = Phase::Closing;
        state.since = Instant::now();
        state.rbuf.clear();
    }

    /// Flush output, tell an exchange waiting for the queue to drain, parse
    /// pipelined input, and set the poller's interest to match.
    pub fn advance(self: &Arc<Self>, py: Python<'_>) {
        if self.server.strong_count() == 0 {
            return;
        }
        for _ in 0..1024 {
            let mut drained: Option<Arc<dyn Exchange>> = None;
            let mut process = false;
            let mut failed = false;
            {
                let mut state = lock(&self.state);
                if state.closed {
                    return;
                }
                let flushed = state.out.flush(py, self.fd.as_raw_fd());
                if state.out.take_progress() || state.out.is_empty() {
                    state.last_sent = Instant::now();
                }
                match flushed {
                    Err(_) => failed = true,
                    Ok(done) => {
                        if done && matches!(state.phase, Phase::Closing) {
                            socket::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR);
                            state.phase = Phase::Lingering;
                            state.since = Instant::now();
                            state.input_dirty = true;
                        }
                        if state.waiting_drain && state.out.bytes <= self.high_water {
                            state.waiting_drain = false;
                            drained = state.exchange.clone();
                        }
                        if drained.is_none() && state.input_dirty {
                            process = true;
                        }
                    }
                }
            }
            if failed {
                // The client is gone (reset, broken pipe).
                self.client_gone(py);
                return;
            }
            if let Some(ex) = drained {
                ex.drained(py);
                continue;
            }
            if process {
                self.process(py);
                continue;
            }
            break;
        }
        self.update_interest(py);
    }

    fn update_interest(&self, py: Python<'_>) {
        let (want, token) = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            let read = !(state.eof
                || (matches!(state.phase, Phase::Busy) && state.rbuf.len() >= BUSY_READ_CAP));
            let write = !state.out.is_empty();
            if state.interest == (read, write) {
                return;
            }
            state.interest = (read, write);
            (state.interest, *lock(&self.token))
        };
        if let Some(token) = token {
            self.with_loop(py, |lp| lp.set_native_interest(token, want.0, want.1));
        }
    }

    // --- the response, for the Responder -------------------------------------

    /// See [`Responder::start`].
    pub fn start_response(
        &self,
        status: &str,
        headers: &[(String, String)],
        content_length: Option<u64>,
        close: bool,
        complete: bool,
    ) {
        let mut state = lock(&self.state);
        // Draining, this is the last response unless more input is waiting
        // (pipelined requests are answered too, each in turn).
        let last = state.draining && state.rbuf.is_empty();
        let Some(r) = state.response.as_mut() else {
            return;
        };
        if r.headers_sent {
            return;
        }
        let code = status
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(500);
        let bodiless_status = code < 200 || code == 204 || code == 304;
        r.status_code = code;
        r.content_length = content_length;
        r.no_body = r.head_request || bodiless_status;
        let mut keep_alive = r.keep_alive && !close && !last;
        // Status and header values are latin-1 (the service checked): they
        // are written one byte per character.
        let mut head = String::with_capacity(256);
        head.push_str("HTTP/1.1 ");
        head.push_str(status);
        head.push_str("\r\n");
        let mut has_date = false;
        for (name, value) in headers {
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
        if content_length.is_none() && !bodiless_status && !r.head_request {
            if complete {
                head.push_str("Content-Length: 0\r\n");
            } else if r.minor >= 1 {
                head.push_str("Transfer-Encoding: chunked\r\n");
                r.chunked = true;
            } else {
                // HTTP/1.0 without a length: the body ends with the connection.
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
        if head.is_ascii() {
            state.out.push_owned(head.as_bytes());
        } else {
            let bytes: Vec<u8> = head.chars().map(|c| c as u32 as u8).collect();
            state.out.push_owned(&bytes);
        }
    }

    pub fn headers_sent(&self) -> bool {
        lock(&self.state)
            .response
            .as_ref()
            .is_some_and(|r| r.headers_sent)
    }

    /// See [`Responder::body`].
    pub fn send_body(&self, bytes: &Bound<'_, PyBytes>) -> u64 {
        let n = bytes.as_bytes().len() as u64;
        let mut state = lock(&self.state);
        let Some(r) = state.response.as_mut().filter(|r| r.headers_sent) else {
            return 0;
        };
        if r.no_body {
            r.body_sent += n;
            return 0;
        }
        let take = match r.content_length {
            Some(cl) => n.min(cl.saturating_sub(r.body_sent)),
            None => n,
        };
        r.body_sent += take;
        let chunked = r.chunked;
        if take > 0 {
            if chunked {
                state.out.push_owned(format!("{take:x}\r\n").as_bytes());
                state.out.push_py(bytes.clone().unbind(), 0, take as usize);
                state.out.push_owned(b"\r\n");
            } else {
                state.out.push_py(bytes.clone().unbind(), 0, take as usize);
            }
        }
        n - take
    }

    /// See [`Responder::file`].
    pub fn send_file(&self, fd: OwnedFd, offset: i64, len: u64) {
        let mut state = lock(&self.state);
        let Some(r) = state.response.as_mut().filter(|r| r.headers_sent) else {
            return;
        };
        r.body_sent += len;
        if !r.no_body && len > 0 {
            state.out.push_file(fd, offset, len);
        }
    }

    /// See [`Responder::finish`].
    pub fn finish_response(&self, py: Python<'_>) -> Result<(), Truncated> {
        let (truncated, keep_alive) = {
            let mut state = lock(&self.state);
            let Some(r) = state.response.as_ref() else {
                return Ok(());
            };
            let truncated = match r.content_length {
                Some(cl) if !r.no_body && r.body_sent < cl => Some(Truncated {
                    sent: r.body_sent,
                    declared: cl,
                }),
                _ => None,
            };
            let (chunked, keep_alive) = (r.chunked, r.keep_alive);
            if chunked {
                state.out.push_owned(b"0\r\n\r\n");
            }
            (truncated, keep_alive)
        };
        self.log_request(py);
        if let Some(t) = truncated {
            return Err(t);
        }
        self.response_done(keep_alive);
        Ok(())
    }

    /// See [`Responder::fail`].
    pub fn fail_response(self: &Arc<Self>, py: Python<'_>) {
        let headers_sent = {
            let mut state = lock(&self.state);
            let Some(r) = state.response.as_mut() else {
                return;
            };
            if !r.headers_sent {
                r.status_code = 500;
                r.body_sent = ERROR_PAGE.len() as u64;
                r.headers_sent = true;
                let head = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nDate: {}\r\nConnection: close\r\n\r\n",
                    ERROR_PAGE.len(),
                    http_date()
                );
                state.out.push_owned(head.as_bytes());
                state.out.push_owned(ERROR_PAGE);
                false
            } else {
                true
            }
        };
        if headers_sent {
            self.log_request(py);
            self.abort(py);
            return;
        }
        self.log_request(py);
        self.response_done(false);
    }

    pub fn queued(&self) -> usize {
        lock(&self.state).out.bytes
    }

    pub fn over_high_water(&self) -> bool {
        lock(&self.state).out.bytes > self.high_water
    }

    pub fn wait_for_drain(&self) {
        lock(&self.state).waiting_drain = true;
    }

    /// Write the access-log line of the request in progress, once.
    fn log_request(&self, py: Python<'_>) {
        if !self.logging {
            return;
        }
        let Some(server) = self.server.upgrade() else {
            return;
        };
        let line = {
            let mut state = lock(&self.state);
            let Some(r) = state.response.as_mut() else {
                return;
            };
            if r.logged {
                return;
            }
            r.logged = true;
            if server.cfg.access_log.is_none() {
                return;
            }
            format!(
                "{} - - [{}] \"{} {} HTTP/1.{}\" {} {} {:.6}",
                if self.info.peer.host.is_empty() {
                    "-"
                } else {
                    &self.info.peer.host
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
        if let Some(log) = server.cfg.access_log.as_ref() {
            if let Err(e) = log.call1(py, (line,)) {
                log_failure(py, "while writing the access log", e);
            }
        }
    }

    /// The response to the current request is complete: keep the
    /// connection for the next request, or close it.
    fn response_done(&self, keep_alive: bool) {
        let exchange = {
            let mut state = lock(&self.state);
            state.response = None;
            state.waiting_drain = false;
            state.served += 1;
            if keep_alive && !state.eof {
                state.phase = Phase::Idle;
                state.input_dirty = true;
                // A body read through it grew the read buffer (up to the
                // read budget, every page touched): give that back rather
                // than keep it for the life of an idle keep-alive client.
                // One read's reservation stays (mostly untouched pages).
                if state.rbuf.is_empty() && state.rbuf.capacity() > IDLE_READ_BUFFER {
                    state.rbuf = Vec::new();
                }
            } else {
                state.phase = Phase::Closing;
            }
            state.since = Instant::now();
            state.exchange.take()
        };
        // Dropped with the lock released: it may hold Python objects.
        drop(exchange);
    }

    /// The request in progress is over without a finished response: tell
    /// the exchange and log it (499 if the client left before a response
    /// began, as nginx logs it; 503 if the server gave up on it).
    fn end_exchange(&self, py: Python<'_>, disconnected: bool) {
        let exchange = {
            let mut state = lock(&self.state);
            if let Some(r) = state.response.as_mut() {
                if !r.headers_sent && !r.logged {
                    r.status_code = if disconnected { 499 } else { 503 };
                }
            }
            state.waiting_drain = false;
            state.exchange.take()
        };
        if let Some(ex) = exchange {
            ex.aborted(py, disconnected);
        }
        self.log_request(py);
    }

    /// The client went away (EOF, reset, write error): abort the request in
    /// flight, if any, and close.
    pub fn client_gone(self: &Arc<Self>, py: Python<'_>) {
        self.end_exchange(py, true);
        self.close(py, false);
    }

    /// Abort the connection: the request in flight (if any) is aborted and
    /// the client sees a reset, never a falsely complete response.
    pub fn abort(self: &Arc<Self>, py: Python<'_>) {
        {
            let mut state = lock(&self.state);
            // What was already produced goes out first (as far as the socket
            // takes it now): the client sees the response truncated after
            // it, then the reset.
            let _ = state.out.flush(py, self.fd.as_raw_fd());
        }
        self.end_exchange(py, false);
        self.close(py, true);
    }

    /// Close the connection now (with a reset if `reset`).
    pub fn close(&self, py: Python<'_>, reset: bool) {
        let token = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            state.closed = true;
            state.out.clear();
            state.rbuf = Vec::new();
            lock(&self.token).take()
        };
        // A request still in progress: its client is gone.
        self.end_exchange(py, true);
        if reset {
            socket::set_linger_zero(self.fd.as_raw_fd());
        }
        if let Some(token) = token {
            self.with_loop(py, |lp| lp.remove_native(token));
        }
        if let Some(server) = self.server.upgrade() {
            server.forget(self.key);
        }
        // The descriptor closes when the last reference is dropped, which is
        // now or when the caller returns. A reset needs that close (a
        // shutdown would send a FIN); otherwise shut down at once.
        if !reset {
            socket::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }

    /// Apply the header, keep-alive, send and linger timeouts.
    pub fn check_timeouts(self: &Arc<Self>, py: Python<'_>, now: Instant, server: &Server) {
        enum Due {
            Nothing,
            Close,
            Timeout,
            Abort,
        }
        let cfg = &server.cfg;
        let due = {
            let state = lock(&self.state);
            let age = now.saturating_duration_since(state.since);
            match state.phase {
                Phase::Idle if state.served > 0 && age >= cfg.keepalive_timeout => Due::Close,
                Phase::Idle if state.served == 0 && age >= cfg.header_timeout => Due::Close,
                Phase::Head if age >= cfg.header_timeout => Due::Timeout,
                // A body that stalls, or trickles below the minimum rate.
                Phase::Body { .. } if age >= cfg.body_timeout => Due::Timeout,
                Phase::Body { .. }
                    if cfg.min_body_rate > 0
                        && now.saturating_duration_since(state.body_started)
                            >= cfg.body_timeout
                                + Duration::from_secs_f64(
                                    state.body_received as f64 / cfg.min_body_rate as f64,
                                ) =>
                {
                    Due::Timeout
                }
                Phase::Lingering if age >= LINGER => Due::Close,
                // The client takes none of its response: cut it off rather
                // than hold the request (and its service) forever.
                Phase::Busy | Phase::Closing
                    if !state.out.is_empty()
                        && now.saturating_duration_since(state.last_sent) >= cfg.send_timeout =>
                {
                    Due::Abort
                }
                Phase::Closing if age >= cfg.keepalive_timeout.max(LINGER) * 6 => {
                    // The client does not read its last response.
                    Due::Close
                }
                _ => Due::Nothing,
            }
        };
        match due {
            Due::Nothing => {}
            Due::Close => self.close(py, false),
            Due::Abort => self.abort(py),
            Due::Timeout => {
                self.reject(&Reject::Timeout);
                self.advance(py);
            }
        }
    }

    /// For graceful shutdown (called repeatedly until the connection is
    /// gone): answer what the client has sent or is sending, closing with
    /// the last response; close a connection between requests once it has
    /// been quiet for [`DRAIN_QUIET`], after looking for a request already
    /// in its socket.
    pub fn drain(self: &Arc<Self>, py: Python<'_>) {
        enum Next {
            Nothing,
            Advance,
            Close,
        }
        let next = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            state.draining = true;
            match state.phase {
                Phase::Lingering if state.out.is_empty() => Next::Close,
                Phase::Idle if state.out.is_empty() => {
                    self.read_input(&mut state);
                    if !state.rbuf.is_empty() || state.eof {
                        Next::Advance
                    } else if state.since.elapsed() >= DRAIN_QUIET {
                        Next::Close
                    } else {
                        Next::Nothing
                    }
                }
                _ => Next::Nothing,
            }
        };
        match next {
            Next::Nothing => {}
            Next::Advance => self.advance(py),
            Next::Close => self.close(py, false),
        }
    }

    pub fn is_active(&self) -> bool {
        let state = lock(&self.state);
        !state.closed && matches!(state.phase, Phase::Busy | Phase::Head | Phase::Body { .. })
    }
}

impl NativeHandler for Conn {
    fn ready(&self, py: Python<'_>, _token: Token, r: Readiness) {
        let Some(me) = self.arc() else { return };
        if r.readable || r.hangup || r.error {
            let mut state = lock(&me.state);
            if !state.closed {
                me.read_input(&mut state);
            }
        }
        me.advance(py);
    }
}
