//! One HTTP/1.1 connection: a native handler on the loop.
//!
//! A connection moves through phases:
//!
//! ```text
//! Idle ──bytes──▶ Head ──head──▶ Body ──body──▶ Busy ──response done──▶ Idle (keep-alive)
//!   │               │              │              │                     └─▶ Closing ─▶ Lingering ─▶ closed
//!   └─ timeouts, bad input, EOF ───┴──────────────┴─ client gone: the request is aborted
//! ```
//!
//! - `Idle`: between requests (or fresh); closed after the keep-alive (or
//!   header) timeout.
//! - `Head`/`Body`: a request is arriving; 408 if it stalls past the header
//!   timeout, 400/413/431 if it is bad, and the connection closes.
//! - `Busy`: the application has the request. The socket is still read, so
//!   a client that goes away is noticed while the request is paused; input is
//!   kept (pipelining) up to a cap, then reading stops until the response is
//!   done. The next pipelined request is parsed only after that.
//! - `Closing`: the last response is flushed, then writes are shut down and
//!   input is discarded for a moment (`Lingering`) so the client reads the
//!   response before the socket is closed, rather than a reset.
//!
//! Locks: `st` is held only for short, Python-free sections; every call into
//! Python (the application, logging) happens with it released.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::event_loop::Loop;
use crate::fdset::{NativeHandler, Readiness, Token};
use crate::http::parse::{parse_head, BodyKind, ChunkedDecoder, Head, Reject};
use crate::http::server::Shared;
use crate::http::write::WriteQueue;
use crate::time::lock;
use crate::wsgi::request::Request;
use crate::wsgi::respond;

/// Input kept while a response is in progress (pipelined requests).
const BUSY_READ_CAP: usize = 256 * 1024;
/// Read at most this much per readiness event, for fairness.
const READ_BUDGET: usize = 256 * 1024;
/// How long a closing connection waits for the client to read and close.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct Peer {
    pub host: String,
    pub port: u16,
}

pub enum Phase {
    Idle,
    Head,
    Body {
        head: Head,
        body: Vec<u8>,
        chunked: Option<ChunkedDecoder>,
        remaining: u64,
    },
    Busy,
    Closing,
    Lingering,
}

pub struct ConnState {
    pub rbuf: Vec<u8>,
    pub phase: Phase,
    pub out: WriteQueue,
    /// The request whose response is in progress.
    pub request: Option<Py<Request>>,
    /// When the current phase started (or input last arrived, in `Body`).
    pub since: Instant,
    pub eof: bool,
    pub closed: bool,
    /// New input or a new phase since `process` last looked.
    pub input_dirty: bool,
    /// Close once the current response is done (shutdown, `Connection: close`).
    pub no_keepalive: bool,
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
    pub shared: Weak<Shared>,
    pub peer: Peer,
    pub local: Peer,
    pub unix: bool,
    /// The peer is one of `--forwarded-allow-ips`: its proxy headers are
    /// believed (decided once, at accept).
    pub trusted_proxy: bool,
    pub st: Mutex<ConnState>,
}

enum Action {
    Wait,
    Dispatch(Head, Vec<u8>),
    Reject(Reject),
    Close,
    ClientGone,
}

fn set_linger_zero(fd: i32) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a plain setsockopt with a struct we own, on our socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

impl Conn {
    pub fn new(
        key: usize,
        fd: OwnedFd,
        shared: &Arc<Shared>,
        peer: Peer,
        local: Peer,
        unix: bool,
    ) -> Arc<Conn> {
        let proxies = &shared.cfg.proxies;
        let trusted_proxy = !proxies.is_empty() && proxies.trusts_peer(unix, &peer.host);
        Arc::new_cyclic(|me| Conn {
            me: me.clone(),
            key,
            fd,
            token: Mutex::new(None),
            shared: Arc::downgrade(shared),
            peer,
            local,
            unix,
            trusted_proxy,
            st: Mutex::new(ConnState {
                rbuf: Vec::new(),
                phase: Phase::Idle,
                out: WriteQueue::default(),
                request: None,
                since: Instant::now(),
                eof: false,
                closed: false,
                input_dirty: false,
                no_keepalive: false,
                served: 0,
                last_sent: Instant::now(),
                interest: (true, false),
            }),
        })
    }

    pub fn arc(&self) -> Option<Arc<Conn>> {
        self.me.upgrade()
    }

    pub fn weak(&self) -> Weak<Conn> {
        self.me.clone()
    }

    fn with_loop<R>(&self, py: Python<'_>, f: impl FnOnce(&Loop) -> R) -> Option<R> {
        let shared = self.shared.upgrade()?;
        let lp = shared.loop_.bind(py).get();
        Some(f(lp))
    }

    /// Read what the socket has (within the budget). Sets `eof` on end of
    /// stream or a reset.
    fn read_input(&self, st: &mut ConnState) {
        let mut budget = READ_BUDGET;
        while budget > 0 && !st.eof {
            if matches!(st.phase, Phase::Busy) && st.rbuf.len() >= BUSY_READ_CAP {
                break;
            }
            st.rbuf.reserve(65536);
            let spare = st.rbuf.capacity() - st.rbuf.len();
            let want = spare.min(budget);
            // SAFETY: reads into the vector's spare capacity, which we own;
            // `set_len` below covers exactly the bytes read.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    st.rbuf.as_mut_ptr().add(st.rbuf.len()).cast(),
                    want,
                )
            };
            if n > 0 {
                let n = n as usize;
                // SAFETY: the kernel wrote `n` bytes after the old length.
                unsafe { st.rbuf.set_len(st.rbuf.len() + n) };
                budget -= n;
                st.input_dirty = true;
                if let Phase::Body { .. } = st.phase {
                    st.since = Instant::now();
                }
                if n < want {
                    // A short read emptied the socket: another read would
                    // only return EAGAIN. The poller is level-triggered, so
                    // what arrives meanwhile (end of stream too) is reported
                    // by the next wait.
                    break;
                }
                continue;
            }
            if n == 0 {
                st.eof = true;
                st.input_dirty = true;
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => break,
                std::io::ErrorKind::Interrupted => continue,
                _ => {
                    st.eof = true;
                    st.input_dirty = true;
                    break;
                }
            }
        }
    }

    fn next_action(&self, st: &mut ConnState, shared: &Shared) -> Action {
        st.input_dirty = false;
        loop {
            if st.closed {
                return Action::Wait;
            }
            match &mut st.phase {
                Phase::Busy => {
                    return if st.eof {
                        Action::ClientGone
                    } else {
                        Action::Wait
                    }
                }
                Phase::Closing => {
                    st.rbuf.clear();
                    return Action::Wait;
                }
                Phase::Lingering => {
                    st.rbuf.clear();
                    return if st.eof { Action::Close } else { Action::Wait };
                }
                Phase::Idle | Phase::Head => {
                    if st.rbuf.is_empty() {
                        return if st.eof { Action::Close } else { Action::Wait };
                    }
                    if let Phase::Idle = st.phase {
                        st.phase = Phase::Head;
                        st.since = Instant::now();
                    }
                    let head = match parse_head(&st.rbuf, shared.cfg.max_header) {
                        Err(r) => return Action::Reject(r),
                        Ok(None) => {
                            return if st.eof { Action::Close } else { Action::Wait };
                        }
                        Ok(Some(h)) => h,
                    };
                    st.rbuf.drain(..head.len);
                    let remaining = match head.body {
                        BodyKind::Length(n) if n > shared.cfg.max_body as u64 => {
                            return Action::Reject(Reject::BodyTooLarge)
                        }
                        BodyKind::None => return Action::Dispatch(head, Vec::new()),
                        BodyKind::Length(n) => n,
                        BodyKind::Chunked => 0,
                    };
                    if head.expect_continue {
                        st.out.push_owned(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    let chunked =
                        matches!(head.body, BodyKind::Chunked).then(ChunkedDecoder::default);
                    let capacity = (remaining as usize).min(shared.cfg.max_body).min(1 << 20);
                    st.phase = Phase::Body {
                        head,
                        body: Vec::with_capacity(capacity),
                        chunked,
                        remaining,
                    };
                    st.since = Instant::now();
                }
                Phase::Body {
                    body,
                    chunked,
                    remaining,
                    ..
                } => {
                    let done = match chunked {
                        Some(dec) => {
                            match dec.decode(&st.rbuf, body, shared.cfg.max_body as u64) {
                                Err(r) => return Action::Reject(r),
                                Ok(used) => {
                                    st.rbuf.drain(..used);
                                }
                            }
                            dec.is_done()
                        }
                        None => {
                            let take = (*remaining).min(st.rbuf.len() as u64) as usize;
                            body.extend_from_slice(&st.rbuf[..take]);
                            st.rbuf.drain(..take);
                            *remaining -= take as u64;
                            *remaining == 0
                        }
                    };
                    if !done {
                        return if st.eof { Action::Close } else { Action::Wait };
                    }
                    let phase = std::mem::replace(&mut st.phase, Phase::Busy);
                    if let Phase::Body { head, body, .. } = phase {
                        return Action::Dispatch(head, body);
                    }
                    return Action::Wait;
                }
            }
        }
    }

    /// Parse and dispatch what input there is, as long as there is progress.
    pub fn process(self: &Arc<Self>, py: Python<'_>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        loop {
            let action = {
                let mut st = lock(&self.st);
                self.next_action(&mut st, &shared)
            };
            match action {
                Action::Wait => return,
                Action::Dispatch(head, body) => {
                    {
                        let mut st = lock(&self.st);
                        st.phase = Phase::Busy;
                        st.since = Instant::now();
                    }
                    respond::dispatch(py, self, &shared, head, body);
                }
                Action::Reject(r) => {
                    self.reject(&r);
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

    /// Answer a bad request with its status and close.
    fn reject(&self, r: &Reject) {
        let body = format!("{r}\n");
        let mut st = lock(&self.st);
        if st.closed {
            return;
        }
        let head = format!(
            "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            r.status(),
            body.len()
        );
        st.out.push_owned(head.as_bytes());
        st.out.push_owned(body.as_bytes());
        st.phase = Phase::Closing;
        st.since = Instant::now();
        st.rbuf.clear();
    }

    /// Flush output, drive a response waiting for the queue to drain, parse
    /// pipelined input, and set the poller's interest to match.
    pub fn settle(self: &Arc<Self>, py: Python<'_>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for _ in 0..1024 {
            let mut drive: Option<Py<Request>> = None;
            let mut process = false;
            let mut failed = false;
            {
                let mut st = lock(&self.st);
                if st.closed {
                    return;
                }
                let flushed = st.out.flush(py, self.fd.as_raw_fd());
                if st.out.take_progress() || st.out.is_empty() {
                    st.last_sent = Instant::now();
                }
                match flushed {
                    Err(_) => failed = true,
                    Ok(drained) => {
                        if drained && matches!(st.phase, Phase::Closing) {
                            // SAFETY: shutting down writes on our own socket.
                            unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
                            st.phase = Phase::Lingering;
                            st.since = Instant::now();
                            st.input_dirty = true;
                        }
                        if st.out.bytes <= shared.cfg.high_water {
                            if let Some(req) = st.request.as_ref() {
                                let mut r = req.bind(py).borrow_mut();
                                if r.waiting_drain {
                                    r.waiting_drain = false;
                                    drive = Some(req.clone_ref(py));
                                }
                            }
                        }
                        if drive.is_none() && st.input_dirty {
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
            if let Some(req) = drive {
                respond::drive(py, self, &shared, req.bind(py));
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
            let mut st = lock(&self.st);
            if st.closed {
                return;
            }
            let read =
                !(st.eof || (matches!(st.phase, Phase::Busy) && st.rbuf.len() >= BUSY_READ_CAP));
            let write = !st.out.is_empty();
            if st.interest == (read, write) {
                return;
            }
            st.interest = (read, write);
            (st.interest, *lock(&self.token))
        };
        if let Some(token) = token {
            self.with_loop(py, |lp| lp.set_native_interest(token, want.0, want.1));
        }
    }

    /// Queue response bytes made by the host.
    pub fn push_owned(&self, data: &[u8]) {
        lock(&self.st).out.push_owned(data);
    }

    pub fn push_py(&self, obj: Py<PyBytes>, start: usize, len: usize) {
        lock(&self.st).out.push_py(obj, start, len);
    }

    pub fn queued(&self) -> usize {
        lock(&self.st).out.bytes
    }

    /// The response to the current request is complete: keep the
    /// connection for the next request, or close it.
    pub fn response_done(&self, keep_alive: bool) {
        let mut st = lock(&self.st);
        st.request = None;
        st.served += 1;
        if keep_alive && !st.no_keepalive && !st.eof {
            st.phase = Phase::Idle;
            st.input_dirty = true;
        } else {
            st.phase = Phase::Closing;
        }
        st.since = Instant::now();
    }

    /// The client went away (EOF, reset, write error): abort the request in
    /// flight, if any, and close.
    pub fn client_gone(self: &Arc<Self>, py: Python<'_>) {
        let req = lock(&self.st).request.take();
        if let Some(req) = req {
            respond::abort(py, req.bind(py), true);
        }
        self.close(py, false);
    }

    /// Abort the connection: the request in flight (if any) is aborted and
    /// the client sees a reset, never a falsely complete response.
    pub fn abort(self: &Arc<Self>, py: Python<'_>) {
        let req = {
            let mut st = lock(&self.st);
            // What the application already produced goes out first (as far
            // as the socket takes it now): the client sees the response
            // truncated after it, then the reset.
            let _ = st.out.flush(py, self.fd.as_raw_fd());
            st.request.take()
        };
        if let Some(req) = req {
            respond::abort(py, req.bind(py), false);
        }
        self.close(py, true);
    }

    /// Close the connection now (with a reset if `reset`).
    pub fn close(&self, py: Python<'_>, reset: bool) {
        let (token, req) = {
            let mut st = lock(&self.st);
            if st.closed {
                return;
            }
            st.closed = true;
            st.out.clear();
            st.rbuf = Vec::new();
            (lock(&self.token).take(), st.request.take())
        };
        if let Some(req) = req {
            respond::abort(py, req.bind(py), true);
        }
        if reset {
            set_linger_zero(self.fd.as_raw_fd());
        }
        if let Some(token) = token {
            self.with_loop(py, |lp| lp.remove_native(token));
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.forget(self.key);
        }
        // The descriptor closes when the last reference is dropped, which is
        // now or when the caller returns. A reset needs that close (a
        // shutdown would send a FIN); otherwise shut down at once.
        if !reset {
            // SAFETY: shutting down our own socket; it stays open until dropped.
            unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Apply the header, keep-alive and linger timeouts.
    pub fn check_timeouts(self: &Arc<Self>, py: Python<'_>, now: Instant, shared: &Shared) {
        enum Due {
            Nothing,
            Close,
            Timeout,
            Abort,
        }
        let due = {
            let st = lock(&self.st);
            let age = now.saturating_duration_since(st.since);
            match st.phase {
                Phase::Idle if st.served > 0 && age >= shared.cfg.keepalive_timeout => Due::Close,
                Phase::Idle if st.served == 0 && age >= shared.cfg.header_timeout => Due::Close,
                Phase::Head | Phase::Body { .. } if age >= shared.cfg.header_timeout => {
                    Due::Timeout
                }
                Phase::Lingering if age >= LINGER => Due::Close,
                // The client takes none of its response: cut it off rather
                // than hold the request (and its application) forever.
                Phase::Busy | Phase::Closing
                    if !st.out.is_empty()
                        && now.saturating_duration_since(st.last_sent)
                            >= shared.cfg.send_timeout =>
                {
                    Due::Abort
                }
                Phase::Closing if age >= shared.cfg.keepalive_timeout.max(LINGER) * 6 => {
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
                self.settle(py);
            }
        }
    }

    /// For graceful shutdown: close now if between requests, else after the
    /// response in progress.
    pub fn close_if_idle(self: &Arc<Self>, py: Python<'_>) {
        let idle = {
            let mut st = lock(&self.st);
            st.no_keepalive = true;
            matches!(st.phase, Phase::Idle | Phase::Lingering) && st.out.is_empty()
        };
        if idle {
            self.close(py, false);
        }
    }

    pub fn is_active(&self) -> bool {
        let st = lock(&self.st);
        !st.closed && matches!(st.phase, Phase::Busy | Phase::Head | Phase::Body { .. })
    }
}

impl NativeHandler for Conn {
    fn ready(&self, py: Python<'_>, _token: Token, r: Readiness) {
        let Some(me) = self.arc() else { return };
        if r.readable || r.hangup || r.error {
            let mut st = lock(&me.st);
            if !st.closed {
                me.read_input(&mut st);
            }
        }
        me.settle(py);
    }
}
