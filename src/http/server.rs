//! [`Server`]: one HTTP/1.1 server on the loop, serving one [`Service`].
//!
//! It owns the configuration, the listening sockets' registrations (native
//! handlers that accept), and the table of open connections. Its owner (the
//! code that made it for its service) gives it listening sockets, calls
//! [`Server::sweep`] periodically for timeouts, and drives graceful shutdown
//! with [`Server::stop_accepting`], [`Server::drain`] and
//! [`Server::abort_all`].
//!
//! Stopping loses no connection the kernel completed: the first call of
//! [`Server::stop_accepting`] has the kernel drop new SYNs on each TCP
//! listener ([`socket::drop_syns`]), so only handshakes already under way
//! still complete; the listeners stay watched, and everything queued is
//! accepted (and drained like any other connection) until none has come
//! for [`STOP_SETTLE`]. Only then are they let go, for the owner to close:
//! a close with connections still queued would reset them. Clients whose
//! SYN was dropped retransmit it and reach another socket of the port's
//! `SO_REUSEPORT` group, or are refused once none is left: a connect
//! error, never a lost request.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use slab::Slab;

use crate::event_loop::Loop;
use crate::fdset::{NativeHandler, Readiness, Token};
use crate::http::body::SpoolConfig;
use crate::http::conn::Conn;
use crate::http::forwarded::TrustedProxies;
use crate::http::service::{ConnInfo, Service};
use crate::net::socket::{self, AcceptError};
use crate::time::lock;
use crate::twisted::log_failure;

/// Accept at most this many connections per readiness event.
const ACCEPT_BATCH: usize = 128;

/// While stopping, how long the TCP listeners must have had nothing to
/// accept before they are let go. Once new SYNs are dropped, what can
/// still arrive is the final ACK of a handshake whose SYN-ACK went out
/// before: one round trip later. 500 ms is above the round trip of any
/// client this server should face directly (a proxy or a LAN: under
/// 10 ms; across continents: about 300 ms) and is paid once per stop,
/// while connections drain anyway.
pub const STOP_SETTLE: Duration = Duration::from_millis(500);

/// While stopping, the listeners are let go after this long even if
/// connections keep coming: then they are not handshakes finishing but a
/// UNIX socket still reachable by its path (shared with other workers,
/// which keep accepting on it, or not ours to unlink), or a client's ACK
/// retransmitted after the queue overflowed.
pub const STOP_LIMIT: Duration = Duration::from_secs(5);

/// After a burst of at least this many connections has shrunk to a quarter,
/// the sweep hands the memory freed meanwhile back to the system.
const TRIM_AFTER: usize = 256;

/// Give freed heap memory back to the system. glibc keeps what a burst of
/// connections freed (their buffers, their Python objects' small blocks)
/// for reuse, so without this a server's resident size stays at its
/// highest burst (about 40 MB more per burst of 10,000 connections).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and is safe to call from any
    // thread at any time; it only releases free memory at the heap's top
    // and in free pages of its arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the HTTP layer is told. It has no defaults of its own: whoever
/// makes the server fills every field (the defaults live in one place, the
/// Python configuration of the host).
pub struct Config {
    /// Largest request line plus headers, in bytes (larger: 431).
    pub max_header: usize,
    /// Largest request body, in bytes, de-chunked (larger: 413).
    pub max_body: usize,
    /// Where bodies longer than their in-memory buffer are spooled.
    pub spool: Arc<SpoolConfig>,
    /// How long a request head may take to arrive, from its first byte (on
    /// a new connection, from the connection): longer is 408.
    pub header_timeout: Duration,
    /// How long a request body may go without a byte arriving (longer: 408).
    pub body_timeout: Duration,
    /// Bytes per second a body must average past its first `body_timeout`:
    /// its budget is `body_timeout` plus one second per `min_body_rate`
    /// bytes received (slower: 408). 0: no minimum.
    pub min_body_rate: u64,
    /// How long an idle persistent connection is kept between requests.
    pub keepalive_timeout: Duration,
    /// A response whose client takes nothing for this long is aborted.
    pub send_timeout: Duration,
    /// Bytes queued for a connection above which the service is asked to
    /// wait ([`crate::http::service::Responder::over_high_water`]).
    pub high_water: usize,
    /// Peers whose proxy headers are believed (`--forwarded-allow-ips`).
    pub proxies: Arc<TrustedProxies>,
    /// Called with one line (common log format plus the request's
    /// duration) per request, or `None`.
    pub access_log: Option<Py<PyAny>>,
}

/// One server: its configuration, service, listeners and connections.
pub struct Server {
    pub cfg: Config,
    pub loop_: Py<Loop>,
    pub service: Arc<dyn Service>,
    conns: Mutex<Slab<Arc<Conn>>>,
    listeners: Mutex<Vec<Arc<Listener>>>,
    /// Set by the first [`Server::stop_accepting`].
    stopping: Mutex<Option<Stopping>>,
    /// Accepting paused after running out of descriptors; retried by sweep.
    starved: AtomicBool,
    /// The most connections open at once since the heap was last trimmed.
    peak: AtomicUsize,
    /// How many times the heap was trimmed (for tests and diagnostics).
    trims: AtomicUsize,
}

impl Server {
    pub fn new(loop_: Py<Loop>, cfg: Config, service: Arc<dyn Service>) -> Arc<Server> {
        Arc::new(Server {
            cfg,
            loop_,
            service,
            conns: Mutex::new(Slab::new()),
            listeners: Mutex::new(Vec::new()),
            stopping: Mutex::new(None),
            starved: AtomicBool::new(false),
            peak: AtomicUsize::new(0),
            trims: AtomicUsize::new(0),
        })
    }

    /// Drop a closed connection from the table.
    pub fn forget(&self, key: usize) {
        let mut conns = lock(&self.conns);
        if conns.contains(key) {
            let conn = conns.remove(key);
            drop(conns);
            drop(conn);
        }
    }

    fn all(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).iter().map(|(_, c)| c.clone()).collect()
    }

    fn register(self: &Arc<Self>, py: Python<'_>, fd: OwnedFd, info: ConnInfo) {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let conn = {
            let mut conns = lock(&self.conns);
            let entry = conns.vacant_entry();
            let conn = Conn::new(entry.key(), fd, self, info);
            entry.insert(conn.clone());
            self.peak.fetch_max(conns.len(), Ordering::Relaxed);
            conn
        };
        let lp = self.loop_.bind(py).get();
        match lp.add_native(raw, conn.clone(), true, false) {
            Ok(token) => {
                *lock(&conn.token) = Some(token);
            }
            Err(e) => {
                self.forget(conn.key);
                log_failure(
                    py,
                    "while registering a connection",
                    PyOSError::new_err(e.to_string()),
                );
            }
        }
    }

    /// Accept connections on `fd`, a listening, non-blocking stream socket
    /// that the caller keeps open until [`Server::stop_accepting`] returned
    /// true.
    pub fn listen(self: &Arc<Self>, py: Python<'_>, fd: RawFd) -> io::Result<()> {
        let listener = Arc::new(Listener {
            fd,
            tcp: socket::is_tcp(fd),
            token: Mutex::new(None),
            server: Arc::downgrade(self),
        });
        let lp = self.loop_.bind(py).get();
        let token = lp.add_native(fd, listener.clone(), true, false)?;
        *lock(&listener.token) = Some(token);
        lock(&self.listeners).push(listener);
        Ok(())
    }

    /// Stop accepting without losing a connection the kernel completed
    /// (call it until it returns true; the module's opening tells how):
    /// the first call drops new SYNs on the TCP listeners; each call
    /// accepts what is queued; once the TCP listeners have had nothing to
    /// accept for [`STOP_SETTLE`] (or [`STOP_LIMIT`] has passed, or `now`),
    /// the listeners are no longer watched, and it returns true: the
    /// caller may close them.
    pub fn stop_accepting(&self, py: Python<'_>, now: bool) -> bool {
        let started = Instant::now();
        let first = {
            let mut stopping = lock(&self.stopping);
            let first = stopping.is_none();
            stopping.get_or_insert(Stopping {
                since: started,
                last_tcp_accept: started,
            });
            first
        };
        let listeners: Vec<Arc<Listener>> = lock(&self.listeners).clone();
        if first {
            for l in listeners.iter().filter(|l| l.tcp) {
                if let Err(e) = socket::drop_syns(l.fd) {
                    // Not fatal: the queue is still drained, but a
                    // handshake completing after the close is reset.
                    log_failure(
                        py,
                        "while closing a listening socket to new connections",
                        PyOSError::new_err(e.to_string()),
                    );
                }
            }
        }
        if !self.starved.load(Ordering::SeqCst) {
            for l in &listeners {
                l.accept(py, usize::MAX);
            }
        }
        let settled = match *lock(&self.stopping) {
            Some(ref s) => {
                s.last_tcp_accept.elapsed() >= STOP_SETTLE || s.since.elapsed() >= STOP_LIMIT
            }
            None => true,
        };
        if !(now || settled) {
            return false;
        }
        let listeners = std::mem::take(&mut *lock(&self.listeners));
        let lp = self.loop_.bind(py).get();
        for l in listeners {
            if let Some(token) = lock(&l.token).take() {
                lp.remove_native(token);
            }
        }
        true
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        lock(&self.conns).len()
    }

    /// How many times the heap was given back to the system after a burst.
    pub fn heap_trims(&self) -> usize {
        self.trims.load(Ordering::Relaxed)
    }

    /// Connections with a request arriving or in progress.
    pub fn active(&self) -> usize {
        self.all().iter().filter(|c| c.is_active()).count()
    }

    /// Drain every connection for a graceful shutdown (call it until none
    /// is left): requests received or arriving are answered, the last with
    /// `Connection: close`; connections quiet between requests close.
    pub fn drain(&self, py: Python<'_>) {
        for c in self.all() {
            c.drain(py);
        }
    }

    /// Abort every connection (end of the shutdown grace period). Returns
    /// how many there were.
    pub fn abort_all(&self, py: Python<'_>) -> usize {
        let all = self.all();
        let n = all.len();
        for c in all {
            c.abort(py);
        }
        n
    }

    /// Apply timeouts; resume accepting after running out of descriptors.
    pub fn sweep(&self, py: Python<'_>) {
        let now = Instant::now();
        for c in self.all() {
            c.check_timeouts(py, now, self);
        }
        let open = self.connections();
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= TRIM_AFTER && open * 4 <= peak {
            self.peak.store(open, Ordering::Relaxed);
            self.trims.fetch_add(1, Ordering::Relaxed);
            trim_heap();
        }
        // (Listeners let go by a stop are no longer in the list.)
        if self.starved.swap(false, Ordering::SeqCst) {
            self.set_listening(py, true);
        }
    }

    fn set_listening(&self, py: Python<'_>, on: bool) {
        let lp = self.loop_.bind(py).get();
        for l in lock(&self.listeners).iter() {
            if let Some(token) = *lock(&l.token) {
                let _ = lp.set_native_interest(token, on, false);
            }
        }
    }
}

/// Since when a server stops accepting ([`Server::stop_accepting`]).
struct Stopping {
    since: Instant,
    /// When a TCP listener last had a connection to accept (or `since`).
    last_tcp_accept: Instant,
}

/// A listening socket's native handler: accepts connections.
struct Listener {
    fd: RawFd,
    /// TCP (else UNIX): new connections can be refused with a SYN filter.
    tcp: bool,
    token: Mutex<Option<Token>>,
    server: Weak<Server>,
}

impl Listener {
    /// Accept up to `max` pending connections; returns how many.
    fn accept(&self, py: Python<'_>, max: usize) -> usize {
        let Some(server) = self.server.upgrade() else {
            return 0;
        };
        let mut accepted = 0;
        while accepted < max {
            let a = match socket::accept(self.fd) {
                Ok(a) => a,
                Err(AcceptError::WouldBlock) => break,
                Err(AcceptError::Exhausted(e)) => {
                    // Out of descriptors: stop watching the listeners (they
                    // would stay readable and spin the loop) until the sweep
                    // finds room again.
                    server.starved.store(true, Ordering::SeqCst);
                    server.set_listening(py, false);
                    log_failure(
                        py,
                        "while accepting a connection (accepting paused)",
                        PyOSError::new_err(e.to_string()),
                    );
                    break;
                }
                Err(AcceptError::Other(e)) => {
                    log_failure(
                        py,
                        "while accepting a connection",
                        PyOSError::new_err(e.to_string()),
                    );
                    break;
                }
            };
            let proxies = &server.cfg.proxies;
            let trusted_proxy = !proxies.is_empty() && proxies.trusts_peer(a.unix, &a.peer.host);
            let info = ConnInfo {
                peer: a.peer,
                local: a.local,
                unix: a.unix,
                trusted_proxy,
            };
            server.register(py, a.fd, info);
            accepted += 1;
        }
        if accepted > 0 && self.tcp {
            if let Some(s) = lock(&server.stopping).as_mut() {
                s.last_tcp_accept = Instant::now();
            }
        }
        accepted
    }
}

impl NativeHandler for Listener {
    fn ready(&self, py: Python<'_>, _token: Token, _r: Readiness) {
        self.accept(py, ACCEPT_BATCH);
    }
}
