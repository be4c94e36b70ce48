//! The WSGI host: one WSGI application served by an [`http::server::Server`]
//! as its [`Service`], and the Python object that configures and drives it.
//!
//! [`WsgiHost`] (`twisted_shim._core.WsgiHost`) is what
//! `twisted_shim.wsgi.server.WSGIServer` holds. It builds the HTTP layer's [`http::server::Config`] and the host's own
//! [`WsgiConfig`] from its keyword arguments, and forwards listening sockets,
//! the timeout sweep and graceful shutdown to the server.
//!
//! [`WsgiService`] makes one [`Request`] per HTTP request (the per-request
//! Python object whose bound methods are `start_response`, `write` and the
//! pause_output keys) and wraps it as the request's [`Exchange`].

use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::event_loop::Loop;
use crate::http;
use crate::http::body::{RequestBody, SpoolConfig};
use crate::http::forwarded::TrustedProxies;
use crate::http::parse::Head;
use crate::http::service::{ConnInfo, Exchange, Responder, Service};
use crate::wsgi::request::Request;
use crate::wsgi::respond;

/// What the WSGI layer itself is configured with (the HTTP limits are in
/// [`http::server::Config`]).
pub struct WsgiConfig {
    /// Server-wide cap, in seconds, on one pause of a request's output
    /// (`None`: no cap); a per-call timeout is capped by it.
    pub max_pause: Option<f64>,
    /// `wsgi.url_scheme`, unless a trusted proxy says otherwise.
    pub url_scheme: String,
    /// `wsgi.multithread` (thread-pool mode).
    pub multithread: bool,
    /// `wsgi.multiprocess` (several workers).
    pub multiprocess: bool,
    /// Whether environ gets the pause_output keys (not in thread-pool mode,
    /// where a thread may simply block).
    pub pause_keys: bool,
}

/// What every request of one host shares.
pub struct WsgiShared {
    pub cfg: WsgiConfig,
    /// The same trusted proxies the HTTP layer decided `trusted_proxy` with:
    /// which `X-Forwarded-For` hop is the client.
    pub proxies: Arc<TrustedProxies>,
    pub loop_: Py<Loop>,
    pub reactor: Py<PyAny>,
    pub app: Py<PyAny>,
    /// `wsgi.errors`.
    pub errors: Py<PyAny>,
    /// `twisted_shim.wsgi._wait.Waiter`, what `twisted_shim.wait` returns:
    /// called as `Waiter(awaited, resume, reactor)`; `Waiter.discard(awaited)`
    /// when the pause could not be armed.
    pub waiter: Py<PyAny>,
    /// The thread the host was made on (the reactor's): `pause_output` is
    /// refused elsewhere.
    pub reactor_thread: ThreadId,
}

/// The WSGI application as the HTTP server's service.
pub struct WsgiService {
    shared: Arc<WsgiShared>,
}

impl Service for WsgiService {
    fn exchange(
        &self,
        py: Python<'_>,
        head: &Head,
        info: &Arc<ConnInfo>,
        responder: Responder,
    ) -> PyResult<Arc<dyn Exchange>> {
        let req = Request::new(
            responder,
            info.clone(),
            Arc::downgrade(&self.shared),
            head.method.clone(),
            head.target.clone(),
        );
        Ok(Arc::new(WsgiExchange {
            request: Py::new(py, req)?,
        }))
    }
}

/// One request of the WSGI application, as the connection keeps it.
struct WsgiExchange {
    request: Py<Request>,
}

impl Exchange for WsgiExchange {
    fn start(&self, py: Python<'_>, head: Head, body: RequestBody) {
        respond::dispatch(py, self.request.bind(py), &head, body);
    }

    fn drained(&self, py: Python<'_>) {
        respond::produce(py, self.request.bind(py));
    }

    fn aborted(&self, py: Python<'_>, disconnected: bool) {
        respond::abort(py, self.request.bind(py), disconnected);
    }
}

/// The WSGI host of one application.
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct WsgiHost {
    server: Arc<http::server::Server>,
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
impl WsgiHost {
    #[new]
    #[pyo3(signature = (
        loop_, app, reactor, *, max_header, max_body, body_buffer, body_dir, header_timeout,
        keepalive_timeout,
        send_timeout, body_timeout, min_body_rate,
        max_pause, high_water, access_log, url_scheme, multithread, pause_keys, errors, waiter,
        multiprocess=false, forwarded_allow_ips=Vec::new()
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        loop_: Py<Loop>,
        app: Py<PyAny>,
        reactor: Py<PyAny>,
        max_header: usize,
        max_body: usize,
        body_buffer: usize,
        body_dir: std::path::PathBuf,
        header_timeout: f64,
        keepalive_timeout: f64,
        send_timeout: f64,
        body_timeout: f64,
        min_body_rate: u64,
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
        let proxies =
            Arc::new(TrustedProxies::parse(&forwarded_allow_ips).map_err(PyValueError::new_err)?);
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
        let http_cfg = http::server::Config {
            max_header,
            max_body,
            spool: Arc::new(SpoolConfig {
                buffer: body_buffer,
                dir: body_dir,
            }),
            header_timeout: duration(header_timeout, "header_timeout")?,
            keepalive_timeout: duration(keepalive_timeout, "keepalive_timeout")?,
            send_timeout: duration(send_timeout, "send_timeout")?,
            body_timeout: duration(body_timeout, "body_timeout")?,
            min_body_rate,
            high_water: high_water.max(1),
            proxies: proxies.clone(),
            access_log,
        };
        let shared = Arc::new(WsgiShared {
            cfg: WsgiConfig {
                max_pause,
                url_scheme,
                multithread,
                multiprocess,
                pause_keys,
            },
            proxies,
            loop_: loop_.clone_ref(py),
            reactor,
            app,
            errors,
            waiter,
            reactor_thread: std::thread::current().id(),
        });
        let service = Arc::new(WsgiService { shared });
        Ok(WsgiHost {
            server: http::server::Server::new(loop_, http_cfg, service),
        })
    }

    /// Accept connections on `fd`, a listening, non-blocking stream socket
    /// that the caller keeps open.
    fn listen(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        self.server
            .listen(py, fd)
            .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))
    }

    /// Stop accepting without losing a connection (call it until it returns
    /// true, then close the listening sockets): new SYNs are dropped, what
    /// is queued is accepted until the queue stayed empty for a moment;
    /// `now` lets the listeners go at once.
    #[pyo3(signature = (now = false))]
    fn stop_accepting(&self, py: Python<'_>, now: bool) -> bool {
        self.server.stop_accepting(py, now)
    }

    /// Open connections.
    fn connections(&self) -> usize {
        self.server.connections()
    }

    /// How many times the heap was given back to the system after a burst
    /// of connections.
    fn heap_trims(&self) -> usize {
        self.server.heap_trims()
    }

    /// Connections with a request arriving or in progress.
    fn active(&self) -> usize {
        self.server.active()
    }

    /// Drain connections for a graceful shutdown (call it until
    /// `connections()` is 0): requests received or arriving are answered,
    /// the last with `Connection: close`; quiet connections close.
    fn drain(&self, py: Python<'_>) {
        self.server.drain(py);
    }

    /// Abort every connection (end of the shutdown grace period). Returns
    /// how many there were.
    fn abort_all(&self, py: Python<'_>) -> usize {
        self.server.abort_all(py)
    }

    /// Apply timeouts; resume accepting after running out of descriptors.
    fn sweep(&self, py: Python<'_>) {
        self.server.sweep(py);
    }
}

/// Check `--forwarded-allow-ips` entries as the host will read them;
/// raises `ValueError` naming the first bad one.
#[pyfunction]
fn check_forwarded_allow_ips(entries: Vec<String>) -> PyResult<()> {
    TrustedProxies::parse(&entries)
        .map(|_| ())
        .map_err(PyValueError::new_err)
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<WsgiHost>()?;
    m.add_function(wrap_pyfunction!(check_forwarded_allow_ips, m)?)?;
    Ok(())
}
