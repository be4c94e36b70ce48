//! The boundary between the HTTP server and whatever serves its requests.
//!
//! The HTTP layer parses, frames, times out, keeps alive and writes; a
//! [`Service`] decides what to answer. For each request whose head and body
//! have arrived, the connection asks the service for an [`Exchange`] (the
//! service's state for that request), keeps it until the response is over,
//! and starts it. The service answers through the [`Responder`] it was given,
//! now or later (a paused request answers from a later loop turn):
//!
//! ```text
//! connection ──exchange(head, info, responder)──▶ service
//!            ──start(head, body)──────────────▶ exchange ──responder.start/body/file/finish──▶ connection
//!            ──drained() / aborted(disconnected)──▶ exchange
//! ```
//!
//! The responder is the only way back in: the service never sees the
//! connection, its buffers or its socket, and the HTTP layer chooses the
//! framing (`Content-Length`, chunked, or close-delimited for HTTP/1.0),
//! adds `Date` and `Connection`, drops a body where none is allowed (HEAD,
//! 1xx, 204, 304), enforces the service's own `Content-Length`, writes the
//! access log, and sends the 500 page or the reset when the service fails.
//!
//! Everything runs on the reactor thread with the GIL held. A responder
//! whose connection is gone does nothing (each call says so where it
//! matters), so a service may hold on to one past the connection's end.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::http::body::RequestBody;
use crate::http::conn::Conn;
use crate::http::parse::Head;
use crate::net::socket::Peer;

/// What the HTTP layer knows of a connection, for the service.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Peer,
    pub local: Peer,
    /// A UNIX-socket connection (`peer` and `local` are then empty).
    pub unix: bool,
    /// The peer is a trusted proxy (`--forwarded-allow-ips`), decided once
    /// at accept: its `X-Forwarded-*` headers may be believed.
    pub trusted_proxy: bool,
}

/// Serves the requests of every connection of one server.
pub trait Service: Send + Sync {
    /// A request's head and whole body have arrived: make its exchange (the
    /// connection then keeps it and starts it). An error is logged and the
    /// connection aborted.
    fn exchange(
        &self,
        py: Python<'_>,
        head: &Head,
        info: &Arc<ConnInfo>,
        responder: Responder,
    ) -> PyResult<Arc<dyn Exchange>>;
}

/// One request's life on the service side.
pub trait Exchange: Send + Sync {
    /// Serve the request: answer through the responder, now or later.
    /// The body is complete: in memory, or spooled to a file
    /// ([`crate::http::body`]).
    fn start(&self, py: Python<'_>, head: Head, body: RequestBody);
    /// The output the service queued drained below the high-water mark
    /// after it called [`Responder::wait_for_drain`]: produce more.
    fn drained(&self, py: Python<'_>);
    /// The request is over without a finished response: the client went
    /// away (`disconnected`), or the server aborts it (shutdown, a send
    /// timeout). Called at most once; the connection is closing.
    fn aborted(&self, py: Python<'_>, disconnected: bool);
}

/// Why [`Responder::finish`] did not complete the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub sent: u64,
    pub declared: u64,
}

/// The way a service answers one request; cheap to clone.
#[derive(Clone)]
pub struct Responder {
    pub(crate) conn: Weak<Conn>,
}

impl Responder {
    fn conn(&self) -> Option<Arc<Conn>> {
        self.conn.upgrade()
    }

    /// Whether the connection is still there to answer on.
    pub fn is_open(&self) -> bool {
        self.conn().is_some_and(|c| !c.is_closed())
    }

    /// Queue the status line and headers. `status` is e.g. `"200 OK"` and,
    /// like the headers, latin-1 text already checked by the service;
    /// `content_length` is the service's own `Content-Length` header, if it
    /// gave one (it is among `headers`). `close` asks for the connection to
    /// close after the response; `complete` says the body is known to be
    /// empty, so `Content-Length: 0` can be sent instead of chunking. Does
    /// nothing if the headers are out already or the connection is gone.
    pub fn start(
        &self,
        status: &str,
        headers: &[(String, String)],
        content_length: Option<u64>,
        close: bool,
        complete: bool,
    ) {
        if let Some(c) = self.conn() {
            c.start_response(status, headers, content_length, close, complete);
        }
    }

    /// Whether the status line and headers were queued.
    pub fn headers_sent(&self) -> bool {
        self.conn().is_some_and(|c| c.headers_sent())
    }

    /// Queue body bytes (all of `bytes[..]`), pointed at, not copied. Bytes
    /// past the service's `Content-Length` are dropped: returns how many
    /// were (the service may log it). The headers must be out.
    pub fn body(&self, bytes: &Bound<'_, PyBytes>) -> u64 {
        self.conn().map_or(0, |c| c.send_body(bytes))
    }

    /// Queue `len` bytes of a regular file from `offset`, sent with
    /// `sendfile`; the descriptor is the responder's to close. The headers
    /// must be out.
    pub fn file(&self, fd: OwnedFd, offset: i64, len: u64) {
        if let Some(c) = self.conn() {
            c.send_file(fd, offset, len);
        }
    }

    /// The body is complete. If it is shorter than its `Content-Length`,
    /// nothing is completed and the service should log it and
    /// [`abort`](Responder::abort).
    pub fn finish(&self, py: Python<'_>) -> Result<(), Truncated> {
        match self.conn() {
            Some(c) => c.finish_response(py),
            None => Ok(()),
        }
    }

    /// The service failed: a 500 page if no headers went out, else the
    /// connection is reset so the client sees a truncated response.
    pub fn fail(&self, py: Python<'_>) {
        if let Some(c) = self.conn() {
            c.fail_response(py);
        }
    }

    /// Abort: what was queued goes out as far as the socket takes it now,
    /// then the connection is reset. The exchange is told
    /// ([`Exchange::aborted`]) unless its response was finished.
    pub fn abort(&self, py: Python<'_>) {
        if let Some(c) = self.conn() {
            c.abort(py);
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.conn().map_or(0, |c| c.queued())
    }

    /// Whether the queue is above the server's high-water mark.
    pub fn over_high_water(&self) -> bool {
        self.conn().is_some_and(|c| c.over_high_water())
    }

    /// Ask to be told ([`Exchange::drained`]) when the queue drains to the
    /// high-water mark.
    pub fn wait_for_drain(&self) {
        if let Some(c) = self.conn() {
            c.wait_for_drain();
        }
    }

    /// Write what is queued now, as far as the socket takes it, and carry on
    /// with the connection (pipelined requests, interest in the poller).
    pub fn flush(&self, py: Python<'_>) {
        if let Some(c) = self.conn() {
            c.advance(py);
        }
    }
}
