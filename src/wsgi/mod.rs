//! The WSGI host: PEP 3333, with the pause_output extension, as one service
//! of the HTTP server ([`crate::http`]), which it reaches only through
//! `crate::http::service`.
//!
//! - this file: the environ and `wsgi.file_wrapper`;
//! - [`host`]: the Python-facing host object, its configuration, and the
//!   service that makes one [`request::Request`] per HTTP request;
//! - [`request`]: the per-request Python object (`start_response`, `write`,
//!   `pause_output`, `flush`, `client_disconnected`, `wait`) and `resume`;
//! - [`respond`]: calling the application, pulling its iterable, handing
//!   its response to the HTTP layer, errors, and aborts.
//!
//! Everything here runs on the reactor thread with the GIL held, except
//! `resume()`, which any thread may call: it only flips an atomic state and
//! queues a continuation on the loop (`docs/pause_output.md`, rule 4).

pub mod host;
pub mod request;
pub mod respond;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::http::body::RequestBody;
use crate::http::forwarded;
use crate::http::parse::{percent_decode, split_target, Head, Reject};
use crate::wsgi::host::WsgiShared;
use crate::wsgi::request::Request;

static IO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// The read buffer of `wsgi.input` over a spooled body.
const INPUT_BUFFER: usize = 64 * 1024;

/// Bytes as a latin-1 `str` (PEP 3333's "native strings").
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    if bytes.is_ascii() {
        // SAFETY-free fast path: ASCII is valid UTF-8.
        PyString::new(py, std::str::from_utf8(bytes).unwrap_or_default())
    } else {
        let s: String = bytes.iter().map(|&b| b as char).collect();
        PyString::new(py, &s)
    }
}

fn cgi_name(name: &str) -> Option<String> {
    // Underscores in header names would collide with '-' after the CGI
    // mapping (a known smuggling trick through proxies): drop such headers.
    if name.contains('_') {
        return None;
    }
    let mut s = String::with_capacity(5 + name.len());
    s.push_str("HTTP_");
    for c in name.chars() {
        s.push(if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        });
    }
    Some(s)
}

/// The environ of one request.
pub fn build_environ<'py>(
    py: Python<'py>,
    shared: &WsgiShared,
    head: &Head,
    body: RequestBody,
    req: &Bound<'py, Request>,
) -> PyResult<Bound<'py, PyDict>> {
    let conn = crate::wsgi::request::state(req)?.info.clone();
    let env = PyDict::new(py);
    let (path, query) = split_target(&head.target)
        .map_err(|r: Reject| pyo3::exceptions::PyValueError::new_err(r.to_string()))?;
    env.set_item(
        intern!(py, "REQUEST_METHOD"),
        PyString::new(py, &head.method),
    )?;
    env.set_item(intern!(py, "SCRIPT_NAME"), intern!(py, ""))?;
    let path_info = if path == "*" {
        Vec::new()
    } else {
        percent_decode(path.as_bytes())
    };
    env.set_item(intern!(py, "PATH_INFO"), latin1(py, &path_info))?;
    env.set_item(intern!(py, "QUERY_STRING"), PyString::new(py, query))?;
    env.set_item(intern!(py, "RAW_URI"), PyString::new(py, &head.target))?;
    env.set_item(
        intern!(py, "SERVER_PROTOCOL"),
        if head.minor == 0 {
            intern!(py, "HTTP/1.0")
        } else {
            intern!(py, "HTTP/1.1")
        },
    )?;
    let mut host_header: Option<Vec<u8>> = None;
    let mut content_length_seen = false;
    // Proxy headers, all occurrences, read only from a trusted peer.
    let proxies = &shared.proxies;
    let trusted = conn.trusted_proxy;
    let mut forwarded_for: Option<String> = None;
    let mut forwarded_proto: Option<String> = None;
    for (name, value) in head.headers.iter() {
        if name.eq_ignore_ascii_case("content-type") {
            env.set_item(intern!(py, "CONTENT_TYPE"), latin1(py, value))?;
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            content_length_seen = true;
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            host_header = Some(value.clone());
        }
        if trusted {
            let slot = if name.eq_ignore_ascii_case("x-forwarded-for") {
                Some(&mut forwarded_for)
            } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
                Some(&mut forwarded_proto)
            } else {
                None
            };
            if let Some(slot) = slot {
                let v = String::from_utf8_lossy(value);
                match slot {
                    Some(prev) => {
                        prev.push(',');
                        prev.push_str(&v);
                    }
                    None => *slot = Some(v.into_owned()),
                }
            }
        }
        let Some(key) = cgi_name(name) else { continue };
        let value = latin1(py, value);
        match env.get_item(&key)? {
            Some(prev) => {
                let sep = if key == "HTTP_COOKIE" { "; " } else { ", " };
                let joined = format!("{}{}{}", prev.extract::<String>()?, sep, value.to_str()?);
                env.set_item(key, joined)?;
            }
            None => env.set_item(key, value)?,
        }
    }
    if content_length_seen || !body.is_empty() {
        env.set_item(intern!(py, "CONTENT_LENGTH"), body.len().to_string())?;
    }
    let scheme = forwarded_proto
        .as_deref()
        .and_then(forwarded::scheme)
        .unwrap_or(&shared.cfg.url_scheme);
    // SERVER_NAME/SERVER_PORT: the address the request came in on; for a
    // UNIX socket, the Host header (or localhost) and the scheme's port.
    let (server_name, server_port) = if conn.unix || conn.local.host.is_empty() {
        let default_port = if scheme == "https" { "443" } else { "80" };
        match host_header
            .as_deref()
            .map(|h| String::from_utf8_lossy(h).into_owned())
        {
            Some(h) if !h.is_empty() => match h.rsplit_once(':') {
                Some((n, p)) if !n.ends_with(']') || n.starts_with('[') => {
                    (n.to_owned(), p.to_owned())
                }
                _ => (h, default_port.to_owned()),
            },
            _ => ("localhost".to_owned(), default_port.to_owned()),
        }
    } else {
        (conn.local.host.clone(), conn.local.port.to_string())
    };
    env.set_item(intern!(py, "SERVER_NAME"), server_name)?;
    env.set_item(intern!(py, "SERVER_PORT"), server_port)?;
    match forwarded_for.as_deref().and_then(|v| proxies.client(v)) {
        Some(client) => {
            env.set_item(intern!(py, "REMOTE_ADDR"), client)?;
            env.set_item(intern!(py, "REMOTE_PORT"), intern!(py, "0"))?;
        }
        None => {
            env.set_item(
                intern!(py, "REMOTE_ADDR"),
                PyString::new(py, &conn.peer.host),
            )?;
            env.set_item(intern!(py, "REMOTE_PORT"), conn.peer.port.to_string())?;
        }
    }

    env.set_item(intern!(py, "wsgi.version"), PyTuple::new(py, [1, 0])?)?;
    env.set_item(intern!(py, "wsgi.url_scheme"), PyString::new(py, scheme))?;
    env.set_item(intern!(py, "wsgi.input"), input_stream(py, body, req)?)?;
    env.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    env.set_item(intern!(py, "wsgi.errors"), shared.errors.bind(py))?;
    env.set_item(intern!(py, "wsgi.multithread"), shared.cfg.multithread)?;
    env.set_item(intern!(py, "wsgi.multiprocess"), shared.cfg.multiprocess)?;
    env.set_item(intern!(py, "wsgi.run_once"), false)?;
    env.set_item(
        intern!(py, "wsgi.file_wrapper"),
        py.get_type::<FileWrapper>(),
    )?;
    if shared.cfg.pause_keys {
        let pause = req.getattr(intern!(py, "pause_output"))?;
        env.set_item(intern!(py, "wsgi.pause_output"), &pause)?;
        env.set_item(intern!(py, "x-wsgiorg.pause_output"), pause)?;
        env.set_item(
            intern!(py, "x-wsgiorg.flush"),
            req.getattr(intern!(py, "flush"))?,
        )?;
        env.set_item(
            intern!(py, "x-wsgiorg.client_disconnected"),
            req.getattr(intern!(py, "client_disconnected"))?,
        )?;
        env.set_item(
            intern!(py, "twisted_shim.wait"),
            req.getattr(intern!(py, "wait"))?,
        )?;
    }
    env.set_item(intern!(py, "twisted_shim.reactor"), shared.reactor.bind(py))?;
    Ok(env)
}

/// `wsgi.input` for a complete body: an `io.BytesIO` over the bytes, or, for
/// a body spooled to a file, a buffered reader of that file, which owns the
/// descriptor (the file has no name: it is gone once closed). The request
/// keeps the reader to close it when it ends.
fn input_stream<'py>(
    py: Python<'py>,
    body: RequestBody,
    req: &Bound<'py, Request>,
) -> PyResult<Bound<'py, PyAny>> {
    let io = IO.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("io")?.into_any().unbind())
    })?;
    let io = io.bind(py);
    match body {
        RequestBody::Memory(bytes) => {
            io.call_method1(intern!(py, "BytesIO"), (PyBytes::new(py, &bytes),))
        }
        RequestBody::File { file, .. } => {
            let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
            let raw = match io.call_method1(intern!(py, "FileIO"), (fd, intern!(py, "rb"), true)) {
                Ok(raw) => raw,
                Err(e) => {
                    // SAFETY: `fd` came from `into_raw_fd` above; a FileIO
                    // that fails to initialise never closes a descriptor it
                    // was given, so it is closed exactly once, here.
                    unsafe { libc::close(fd) };
                    return Err(e);
                }
            };
            // From here the FileIO owns the descriptor.
            let stream = match io.call_method1(intern!(py, "BufferedReader"), (&raw, INPUT_BUFFER))
            {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = raw.call_method0(intern!(py, "close"));
                    return Err(e);
                }
            };
            crate::wsgi::request::state_mut(req)?.input = Some(stream.clone().unbind());
            Ok(stream)
        }
    }
}

/// `wsgi.file_wrapper`: iterates a file-like object in blocks; the host
/// sends a real file with `sendfile` instead of iterating.
#[pyclass(module = "twisted_shim._core")]
pub struct FileWrapper {
    #[pyo3(get)]
    pub filelike: Py<PyAny>,
    #[pyo3(get)]
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(intern!(py, "read"), (self.blksize,))?;
        if data.len()? == 0 {
            return Ok(None);
        }
        Ok(Some(data.unbind()))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(intern!(py, "close"))? {
            f.call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.filelike)
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    host::init_pymodule(m)?;
    m.add_class::<FileWrapper>()?;
    m.add_class::<request::Request>()?;
    m.add_class::<request::Resume>()?;
    Ok(())
}
