//! `HttpServer`: the Python-facing WSGI host of one application.
//!
//! It owns the configuration, the listening sockets' registrations (native
//! handlers that accept), and the table of open connections. Python
//! (`twisted_shim.wsgi.server.WSGIServer`) gives it listening sockets, calls
//! `sweep()` periodically for timeouts, and drives graceful shutdown with
//! `stop_accepting`, `close_idle` and `abort_all`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use slab::Slab;

use crate::event_loop::Loop;
use crate::fdset::{NativeHandler, Readiness, Token};
use crate::http::conn::{Conn, Peer};
use crate::http::forwarded::TrustedProxies;
use crate::time::lock;
use crate::twisted::log_failure;

/// Accept at most this many connections per readiness event.
const ACCEPT_BATCH: usize = 128;

pub struct Config {
    pub max_header: usize,
    pub max_body: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// A response whose client takes nothing for this long is aborted.
    pub send_timeout: Duration,
    pub max_pause: Option<f64>,
    pub high_water: usize,
    pub url_scheme: String,
    pub multithread: bool,
    pub multiprocess: bool,
    pub pause_keys: bool,
    /// Peers whose proxy headers are believed (`--forwarded-allow-ips`).
    pub proxies: TrustedProxies,
}

/// What every connection of one server shares.
pub struct Shared {
    pub cfg: Config,
    pub loop_: Py<Loop>,
    pub reactor: Py<PyAny>,
    pub app: Py<PyAny>,
    pub errors: Py<PyAny>,
    pub waiter: Py<PyAny>,
    pub access_log: Option<Py<PyAny>>,
    pub reactor_thread: ThreadId,
    conns: Mutex<Slab<Arc<Conn>>>,
    listeners: Mutex<Vec<Arc<Listener>>>,
    accepting: AtomicBool,
    /// Accepting paused after running out of descriptors; retried by sweep.
    starved: AtomicBool,
}

impl Shared {
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

    fn register(
        self: &Arc<Self>,
        py: Python<'_>,
        fd: OwnedFd,
        peer: Peer,
        local: Peer,
        unix: bool,
    ) {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let conn = {
            let mut conns = lock(&self.conns);
            let entry = conns.vacant_entry();
            let conn = Conn::new(entry.key(), fd, self, peer, local, unix);
            entry.insert(conn.clone());
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
}

/// A listening socket's native handler: accepts connections.
struct Listener {
    fd: RawFd,
    token: Mutex<Option<Token>>,
    shared: std::sync::Weak<Shared>,
}

fn sockaddr_peer(addr: &libc::sockaddr_storage) -> Peer {
    match addr.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Peer {
                host: ip.to_string(),
                port: u16::from_be(a.sin_port),
            }
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let host = match ip.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => ip.to_string(),
            };
            Peer {
                host,
                port: u16::from_be(a.sin6_port),
            }
        }
        _ => Peer {
            host: String::new(),
            port: 0,
        },
    }
}

fn local_addr(fd: RawFd) -> Peer {
    let mut storage: libc::sockaddr_storage = unsafe_zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into our storage.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Peer {
            host: String::new(),
            port: 0,
        };
    }
    sockaddr_peer(&storage)
}

fn unsafe_zeroed() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

impl Listener {
    /// Accept up to `max` pending connections; returns how many.
    fn accept(&self, py: Python<'_>, max: usize) -> usize {
        let Some(shared) = self.shared.upgrade() else {
            return 0;
        };
        let mut accepted = 0;
        while accepted < max {
            let mut storage = unsafe_zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: accept4 writes the peer address into our storage and
            // returns a new descriptor that we take ownership of below.
            let fd = unsafe {
                libc::accept4(
                    self.fd,
                    (&mut storage as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => continue,
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => {
                        // Out of descriptors: stop watching the listeners
                        // (they would stay readable and spin the loop) until
                        // the sweep finds room again.
                        shared.starved.store(true, Ordering::SeqCst);
                        set_listening(py, &shared, false);
                        log_failure(
                            py,
                            "while accepting a connection (accepting paused)",
                            PyOSError::new_err(e.to_string()),
                        );
                        break;
                    }
                    _ => {
                        log_failure(
                            py,
                            "while accepting a connection",
                            PyOSError::new_err(e.to_string()),
                        );
                        break;
                    }
                }
            }
            // SAFETY: accept4 returned a fresh descriptor nobody else owns.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let unix = storage.ss_family as i32 == libc::AF_UNIX;
            if !unix {
                let one: libc::c_int = 1;
                // SAFETY: setsockopt with an int we own on our new socket.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
            }
            let peer = sockaddr_peer(&storage);
            let local = local_addr(fd);
            shared.register(py, owned, peer, local, unix);
            accepted += 1;
        }
        accepted
    }
}

fn set_listening(py: Python<'_>, shared: &Shared, on: bool) {
    let lp = shared.loop_.bind(py).get();
    for l in lock(&shared.listeners).iter() {
        if let Some(token) = *lock(&l.token) {
            let _ = lp.set_native_interest(token, on, false);
        }
    }
}

impl NativeHandler for Listener {
    fn ready(&self, py: Python<'_>, _token: Token, _r: Readiness) {
        self.accept(py, ACCEPT_BATCH);
    }
}

/// The WSGI host of one application.
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct HttpServer {
    shared: Arc<Shared>,
}

fn duration(secs: f64, what: &str) -> PyResult<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        return Err(PyValueError::new_err(format!(
            "{what} must be a positive number of seconds, not {secs}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[pymethods]
impl HttpServer {
    #[new]
    #[pyo3(signature = (
        loop_, app, reactor, *, max_header, max_body, header_timeout, keepalive_timeout,
        send_timeout,
        max_pause, high_water, access_log, url_scheme, multithread, pause_keys, errors, waiter,
        multiprocess=false, forwarded_allow_ips=Vec::new()
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        loop_: Py<Loop>,
        app: Py<PyAny>,
        reactor: Py<PyAny>,
        max_header: usize,
        max_body: usize,
        header_timeout: f64,
        keepalive_timeout: f64,
        send_timeout: f64,
        max_pause: Option<f64>,
        high_water: usize,
        access_log: Option<Py<PyAny>>,
        url_scheme: String,
        multithread: bool,
        pause_keys: bool,
        errors: Py<PyAny>,
        waiter: Py<PyAny>,
        multiprocess: bool,
        forwarded_allow_ips: Vec<String>,
    ) -> PyResult<Self> {
        let proxies = TrustedProxies::parse(&forwarded_allow_ips).map_err(PyValueError::new_err)?;
        if max_header < 64 {
            return Err(PyValueError::new_err(
                "max_header must be at least 64 bytes",
            ));
        }
        let max_pause = match max_pause {
            Some(p) if p > 0.0 => Some(p),
            Some(0.0) => None,
            Some(p) => {
                return Err(PyValueError::new_err(format!(
                    "max_pause must be positive, not {p}"
                )))
            }
            None => None,
        };
        Ok(HttpServer {
            shared: Arc::new(Shared {
                cfg: Config {
                    max_header,
                    max_body,
                    header_timeout: duration(header_timeout, "header_timeout")?,
                    keepalive_timeout: duration(keepalive_timeout, "keepalive_timeout")?,
                    send_timeout: duration(send_timeout, "send_timeout")?,
                    max_pause,
                    high_water: high_water.max(1),
                    url_scheme,
                    multithread,
                    multiprocess,
                    pause_keys,
                    proxies,
                },
                loop_,
                reactor,
                app,
                errors,
                waiter,
                access_log,
                reactor_thread: std::thread::current().id(),
                conns: Mutex::new(Slab::new()),
                listeners: Mutex::new(Vec::new()),
                accepting: AtomicBool::new(true),
                starved: AtomicBool::new(false),
            }),
        })
    }

    /// Accept connections on `fd`, a listening, non-blocking stream socket
    /// that the caller keeps open.
    fn listen(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let listener = Arc::new(Listener {
            fd,
            token: Mutex::new(None),
            shared: Arc::downgrade(&self.shared),
        });
        let lp = self.shared.loop_.bind(py).get();
        let token = lp
            .add_native(fd, listener.clone(), true, false)
            .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
        *lock(&listener.token) = Some(token);
        lock(&self.shared.listeners).push(listener);
        Ok(())
    }

    /// Accept what is already queued on the listening sockets, then stop
    /// watching them (the caller closes them).
    fn stop_accepting(&self, py: Python<'_>) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        let listeners = std::mem::take(&mut *lock(&self.shared.listeners));
        let lp = self.shared.loop_.bind(py).get();
        for l in listeners {
            l.accept(py, usize::MAX);
            if let Some(token) = lock(&l.token).take() {
                lp.remove_native(token);
            }
        }
    }

    /// Open connections.
    fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Connections with a request arriving or in progress.
    fn active(&self) -> usize {
        self.shared.all().iter().filter(|c| c.is_active()).count()
    }

    /// Close connections between requests; the others close after their
    /// current response.
    fn close_idle(&self, py: Python<'_>) {
        for c in self.shared.all() {
            c.close_if_idle(py);
        }
    }

    /// Abort every connection (end of the shutdown grace period). Returns
    /// how many there were.
    fn abort_all(&self, py: Python<'_>) -> usize {
        let all = self.shared.all();
        let n = all.len();
        for c in all {
            c.abort(py);
        }
        n
    }

    /// Apply timeouts; resume accepting after running out of descriptors.
    fn sweep(&self, py: Python<'_>) {
        let now = Instant::now();
        for c in self.shared.all() {
            c.check_timeouts(py, now, &self.shared);
        }
        if self.shared.accepting.load(Ordering::SeqCst)
            && self.shared.starved.swap(false, Ordering::SeqCst)
        {
            set_listening(py, &self.shared, true);
        }
    }
}

/// Check `--forwarded-allow-ips` entries as `HttpServer` will read them;
/// raises `ValueError` naming the first bad one.
#[pyfunction]
fn check_forwarded_allow_ips(entries: Vec<String>) -> PyResult<()> {
    TrustedProxies::parse(&entries)
        .map(|_| ())
        .map_err(PyValueError::new_err)
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<HttpServer>()?;
    m.add_function(wrap_pyfunction!(check_forwarded_allow_ips, m)?)?;
    Ok(())
}
