//! `AioStream`: the byte-moving half of the asyncio face's socket transport
//! (`twisted_shim.aio_socket.SocketTransport`), in Rust.
//!
//! CPython's `_SelectorSocketTransport` moves bytes in Python frames around
//! `recv` and `send`, and reaches its protocol through the ready queue: a
//! readable socket queues the transport's reader handle, whose pass calls
//! `_read_ready`, which calls `data_received`. Here the socket is a native
//! handler in the loop's FD set, and its readiness calls the protocol in
//! the dispatch (as uvloop's transports do from libuv's callbacks): one
//! `recv` of up to `max_size` bytes into a `bytes` object
//! ([`crate::net::read`]), then `protocol.data_received(data)`; or, for a
//! `BufferedProtocol`, `get_buffer(-1)`, a `recv` into it, `buffer_updated(n)`.
//! `write` sends at once when nothing is queued (one `send`), else queues
//! ([`crate::net::write::WriteQueue`]: `bytes` are pointed at, other
//! buffers copied) and the socket is watched for writability, then written
//! with `writev`.
//!
//! Everything else (`close`, `abort`, `_fatal_error`, `connection_lost`,
//! end of stream and `eof_received`, flow control's calls of
//! `pause_writing`/`resume_writing`, sendfile's empty waiter, extra info) is
//! the Python class's, in CPython's words; this object keeps the state
//! those rules read (closing, end of stream written, connection lost,
//! paused, the queue) and calls the class back where CPython's transport
//! would run them: `_fatal_error(exc, message)` with CPython's messages,
//! `_read_ready__on_eof()`, `_maybe_pause_protocol()` once the queue is
//! above the high-water mark, `_maybe_resume_protocol()` once a write leaves
//! it at or below the low one, `_write_drained()` when the queue empties and
//! sendfile, a close or a `write_eof` waits for it, `_write_failed(exc)`.
//!
//! Protocol callbacks run in the context the transport was made in (the
//! one CPython's reader handle copies), entered around each. `SystemExit`
//! and `KeyboardInterrupt` propagate out of the loop's iteration, as out of
//! CPython's handles; any other exception a callback raises goes where
//! CPython sends it (`_fatal_error`), and one out of the class's own
//! methods to the loop's exception handler, as `Handle._run` would.
//!
//! Invariants: the FD set holds a registration for the socket exactly when
//! the reader or the writer is on, with that interest (a transport neither
//! reading nor writing is not in the FD set, so `sock_sendfile` can watch
//! its socket, and an abandoned one can be collected); the writer is on
//! exactly when the queue is not empty and the connection is not lost; the
//! reader is on only while reading was started and is neither paused nor
//! closing. The state lock is never held across Python code.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::Loop;
use crate::fdset::{NativeHandler, Readiness, Token};
use crate::net::read::{ReadSizing, Received};
use crate::net::socket::shutdown;
use crate::net::write::WriteQueue;
use crate::time::lock;

/// `_SelectorTransport.max_size`: the most one `recv` asks for.
const MAX_SIZE: usize = 256 * 1024;

/// `asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

struct State {
    /// The registration in the loop's FD set, while the reader or the
    /// writer is on.
    token: Option<Token>,
    /// The interest the registration has: (reader, writer).
    registered: (bool, bool),
    reader_on: bool,
    writer_on: bool,
    paused: bool,
    closing: bool,
    eof: bool,
    conn_lost: u32,
    /// The protocol is a `BufferedProtocol`.
    buffered: bool,
    /// An empty waiter (sendfile) exists: `write` refuses, a drained queue
    /// is reported.
    sendfile: bool,
    high_water: usize,
    low_water: usize,
    queue: WriteQueue,
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    context: Option<Py<PyAny>>,
}

/// The socket's I/O and the transport state it needs (see the module docs).
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct AioStream {
    loop_: Py<Loop>,
    fd: RawFd,
    state: Mutex<State>,
    reads: ReadSizing,
}

/// The transport, its protocol and context, for a read.
struct Refs {
    transport: Py<PyAny>,
    protocol: Py<PyAny>,
    context: Option<Py<PyAny>>,
    buffered: bool,
}

/// The FD set's handler for one transport's socket.
struct Watch {
    io: Py<AioStream>,
}

impl NativeHandler for Watch {
    fn ready(&self, py: Python<'_>, token: Token, readiness: Readiness) {
        if let Err(e) = self.dispatch(py, token, readiness) {
            e.restore(py);
            // SAFETY: an exception was just set; printing it clears it.
            unsafe { ffi::PyErr_WriteUnraisable(self.io.as_ptr()) };
        }
    }

    fn dispatch(&self, py: Python<'_>, _token: Token, r: Readiness) -> PyResult<()> {
        AioStream::ready(self.io.bind(py), r)
    }
}

fn is_exit(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// An `OSError` for `e` as CPython's socket module raises it
/// (`OSError(errno, strerror)`, which is the errno's subclass, e.g.
/// `ConnectionResetError`).
fn os_error<'py>(py: Python<'py>, e: &io::Error) -> Bound<'py, PyAny> {
    let code = e.raw_os_error().unwrap_or(0);
    // SAFETY: strerror returns a pointer to a NUL-terminated message that
    // stays valid until the next call on this thread; it is copied at once.
    let message = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
        .to_string_lossy()
        .into_owned();
    PyOSError::new_err((code, message))
        .into_value(py)
        .into_bound(py)
        .into_any()
}

/// `asyncio.log.logger`.
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The bytes to send of what `write` was given: a `bytes` object (queued
/// as it is) or another buffer (copied when queued, as CPython copies it
/// into its buffer).
enum Data<'py> {
    Bytes(Bound<'py, PyBytes>),
    Buffer(pyo3::buffer::PyBuffer<u8>),
}

impl Data<'_> {
    fn slice(&self) -> &[u8] {
        match self {
            Data::Bytes(b) => b.as_bytes(),
            // SAFETY: a C-contiguous buffer of `len_bytes()` bytes, alive
            // (and, with the GIL held and no Python code run while the
            // slice is used, unchanged) for as long as `self`.
            Data::Buffer(b) => unsafe {
                std::slice::from_raw_parts(b.buf_ptr().cast::<u8>(), b.len_bytes())
            },
        }
    }
}

fn data_of<'py>(data: &Bound<'py, PyAny>) -> PyResult<Data<'py>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(Data::Bytes(b.clone()));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        let buf = pyo3::buffer::PyBuffer::<u8>::get(data).or_else(|_| {
            // A buffer whose items are not bytes (a memoryview of an
            // array of ints): its bytes, as `socket.send` takes them.
            let cast = data.call_method1(intern!(data.py(), "cast"), ("B",))?;
            pyo3::buffer::PyBuffer::<u8>::get(&cast)
        })?;
        if !buf.is_c_contiguous() {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "memoryview: underlying buffer is not C-contiguous",
            ));
        }
        return Ok(Data::Buffer(buf));
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not {}",
        data.get_type().name()?.repr()?
    )))
}

/// One `send` of `data` without blocking: how much went (0 when the
/// socket is full), or the error.
fn send_now(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: sends from a slice that lives across the call.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

impl AioStream {
    fn lp(&self) -> &Loop {
        self.loop_.get()
    }

    /// Make the FD set's registration say what `reader_on` and `writer_on`
    /// say (see the module's invariants).
    fn sync(slf: &Bound<'_, Self>, st: &mut State) -> PyResult<()> {
        let me = slf.get();
        let want = (st.reader_on, st.writer_on);
        if want == st.registered && (st.token.is_some() || want == (false, false)) {
            return Ok(());
        }
        match st.token {
            None => {
                let handler = Arc::new(Watch {
                    io: slf.clone().unbind(),
                });
                st.token = Some(me.lp().add_native(me.fd, handler, want.0, want.1)?);
            }
            Some(token) if want == (false, false) => {
                me.lp().remove_native(token);
                st.token = None;
            }
            Some(token) => me.lp().set_native_interest(token, want.0, want.1)?,
        }
        st.registered = want;
        Ok(())
    }

    /// What a read needs, taken out of the state (none once detached).
    fn refs(&self, py: Python<'_>) -> Option<Refs> {
        let st = lock(&self.state);
        Some(Refs {
            transport: st.transport.as_ref()?.clone_ref(py),
            protocol: st.protocol.as_ref()?.clone_ref(py),
            context: st.context.as_ref().map(|c| c.clone_ref(py)),
            buffered: st.buffered,
        })
    }

    /// The socket is ready: the reader's work, then the writer's, as
    /// asyncio runs a ready descriptor's reader handle, then its writer's.
    fn ready(slf: &Bound<'_, Self>, r: Readiness) -> PyResult<()> {
        let me = slf.get();
        if (r.readable || r.hangup || r.error) && lock(&me.state).reader_on {
            Self::read_ready(slf)?;
        }
        if (r.writable || r.hangup || r.error) && lock(&me.state).writer_on {
            Self::write_ready(slf)?;
        }
        Ok(())
    }

    /// Run `f` in the transport's context; an exception out of it (not
    /// `SystemExit`, `KeyboardInterrupt`) goes to the loop's exception
    /// handler, as one out of a handle would.
    fn in_context(
        py: Python<'_>,
        transport: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
        what: &str,
        f: impl FnOnce() -> PyResult<()>,
    ) -> PyResult<()> {
        if let Some(c) = context {
            // SAFETY: a live context object; a failure enters nothing.
            if unsafe { ffi::PyContext_Enter(c.as_ptr()) } < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        let result = f();
        if let Some(c) = context {
            // SAFETY: the context entered above, exited on every path.
            if unsafe { ffi::PyContext_Exit(c.as_ptr()) } < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        match result {
            Err(e) if !is_exit(py, &e) => {
                let context = PyDict::new(py);
                context.set_item(
                    "message",
                    format!("Exception in callback {}.{what}()", transport.repr()?),
                )?;
                context.set_item("exception", e.into_value(py))?;
                context.set_item("transport", transport)?;
                let lp = transport.getattr(intern!(py, "_loop"))?;
                if !lp.is_none() {
                    lp.call_method1(intern!(py, "call_exception_handler"), (context,))?;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// `_read_ready`: one read, handed to the protocol.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if lock(&me.state).conn_lost > 0 {
            return Ok(());
        }
        let Some(Refs {
            transport,
            protocol,
            context,
            buffered,
        }) = me.refs(py)
        else {
            return Ok(());
        };
        let transport = transport.bind(py);
        let protocol = protocol.bind(py);
        Self::in_context(
            py,
            transport,
            context.as_ref().map(|c| c.bind(py)),
            "_read_ready",
            || {
                if buffered {
                    me.read_into_buffer(transport, protocol)
                } else {
                    me.read_data(transport, protocol)
                }
            },
        )
    }

    /// `_fatal_error(exc, message)` on the transport.
    fn fatal(transport: &Bound<'_, PyAny>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        transport.call_method1(intern!(transport.py(), "_fatal_error"), (exc, message))?;
        Ok(())
    }

    /// A protocol callback's outcome: `SystemExit` and `KeyboardInterrupt`
    /// propagate, anything else is fatal to the transport.
    fn callback_outcome(
        transport: &Bound<'_, PyAny>,
        outcome: PyResult<Bound<'_, PyAny>>,
        message: &str,
    ) -> PyResult<()> {
        let py = transport.py();
        match outcome {
            Ok(_) => Ok(()),
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => Self::fatal(
                transport,
                e.into_value(py).into_bound(py).into_any(),
                message,
            ),
        }
    }

    fn on_received(
        transport: &Bound<'_, PyAny>,
        received: Received<'_>,
        deliver: impl FnOnce() -> PyResult<()>,
    ) -> PyResult<()> {
        let py = transport.py();
        match received {
            Received::Data(_) => deliver(),
            Received::Again => Ok(()),
            Received::End => {
                transport.call_method0(intern!(py, "_read_ready__on_eof"))?;
                Ok(())
            }
            Received::Failed(e) => Self::fatal(
                transport,
                os_error(py, &e),
                "Fatal read error on socket transport",
            ),
        }
    }

    /// `_read_ready__data_received`.
    fn read_data(&self, transport: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = transport.py();
        let received = self.reads.receive(py, self.fd, MAX_SIZE)?;
        let data = match &received {
            Received::Data(d) => Some(d.clone()),
            _ => None,
        };
        Self::on_received(transport, received, || {
            let outcome = protocol.call_method1(intern!(py, "data_received"), (data,));
            Self::callback_outcome(
                transport,
                outcome,
                "Fatal error: protocol.data_received() call failed.",
            )
        })
    }

    /// `_read_ready__get_buffer`.
    fn read_into_buffer(
        &self,
        transport: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = transport.py();
        const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
        let buf = match protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|b| {
                if b.len()? == 0 {
                    return Err(PyRuntimeError::new_err(
                        "get_buffer() returned an empty buffer",
                    ));
                }
                Ok(b)
            }) {
            Ok(b) => b,
            Err(e) => {
                return Self::callback_outcome(
                    transport,
                    Err::<Bound<'_, PyAny>, _>(e),
                    GET_BUFFER_FAILED,
                )
            }
        };
        let received = match recv_into(py, self.fd, &buf) {
            Ok(r) => r,
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => {
                return Self::fatal(
                    transport,
                    e.into_value(py).into_bound(py).into_any(),
                    "Fatal read error on socket transport",
                )
            }
        };
        let n = match received {
            Recv::Bytes(n) => n,
            Recv::Other(other) => return Self::on_received(transport, other, || Ok(())),
        };
        let outcome = protocol.call_method1(intern!(py, "buffer_updated"), (n,));
        Self::callback_outcome(
            transport,
            outcome,
            "Fatal error: protocol.buffer_updated() call failed.",
        )
    }

    /// `_write_ready`: write what is queued; what follows when it is all
    /// gone or the socket failed.
    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let (flushed, transport) = {
            let mut st = lock(&me.state);
            if st.conn_lost > 0 {
                return Ok(());
            }
            let flushed = st.queue.flush(py, me.fd);
            (flushed, st.transport.as_ref().map(|t| t.clone_ref(py)))
        };
        let Some(transport) = transport else {
            return Ok(());
        };
        let transport = transport.bind(py);
        let context = lock(&me.state).context.as_ref().map(|c| c.clone_ref(py));
        Self::in_context(
            py,
            transport,
            context.as_ref().map(|c| c.bind(py)),
            "_write_ready",
            || {
                if let Err(e) = flushed {
                    {
                        let mut st = lock(&me.state);
                        st.queue.clear();
                        st.writer_on = false;
                        Self::sync(slf, &mut st)?;
                    }
                    transport.call_method1(intern!(py, "_write_failed"), (os_error(py, &e),))?;
                    return Ok(());
                }
                let low = {
                    let st = lock(&me.state);
                    st.queue.bytes <= st.low_water
                };
                if low {
                    // May write more (a protocol resumed).
                    transport.call_method0(intern!(py, "_maybe_resume_protocol"))?;
                }
                let drained = {
                    let mut st = lock(&me.state);
                    if !st.queue.is_empty() {
                        return Ok(());
                    }
                    st.writer_on = false;
                    Self::sync(slf, &mut st)?;
                    st.sendfile || st.closing || st.eof
                };
                if drained {
                    transport.call_method0(intern!(py, "_write_drained"))?;
                }
                Ok(())
            },
        )
    }

    /// After bytes were queued: the writer on, and the protocol told if the
    /// queue is above the high-water mark.
    fn queued(slf: &Bound<'_, Self>, mut st: std::sync::MutexGuard<'_, State>) -> PyResult<()> {
        let py = slf.py();
        st.writer_on = true;
        Self::sync(slf, &mut st)?;
        let above = st.queue.bytes > st.high_water;
        let transport = st.transport.as_ref().map(|t| t.clone_ref(py));
        drop(st);
        if let (true, Some(t)) = (above, transport) {
            t.call_method0(py, intern!(py, "_maybe_pause_protocol"))?;
        }
        Ok(())
    }

    /// A write after the connection was lost: counted (`Some`), and
    /// `Some(true)` past asyncio's threshold, where it is logged.
    fn lost_write(st: &mut State) -> Option<bool> {
        if st.conn_lost == 0 {
            return None;
        }
        let log = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
        st.conn_lost += 1;
        Some(log)
    }

    /// What CPython logs for a write past the threshold (no lock held).
    fn log_lost_write(py: Python<'_>, log: bool) -> PyResult<()> {
        if log {
            let logger = LOGGER.get_or_try_init(py, || {
                PyResult::Ok(py.import("asyncio.log")?.getattr("logger")?.unbind())
            })?;
            logger.call_method1(
                py,
                intern!(py, "warning"),
                ("socket.send() raised exception.",),
            )?;
        }
        Ok(())
    }
}

/// What a `recv` into a protocol's buffer gave.
enum Recv<'py> {
    Bytes(usize),
    Other(Received<'py>),
}

/// One `recv` into `buf`, a writable buffer (`socket.recv_into`).
fn recv_into<'py>(py: Python<'py>, fd: RawFd, buf: &Bound<'py, PyAny>) -> PyResult<Recv<'py>> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: PyObject_GetBuffer fills `view` on success (released below on
    // every path) or sets an exception; the recv writes at most `len` bytes
    // into the buffer it describes, which stays valid until the release.
    unsafe {
        if ffi::PyObject_GetBuffer(buf.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) < 0 {
            return Err(PyErr::fetch(py));
        }
        let mut view = view.assume_init();
        let got = loop {
            let n = libc::recv(fd, view.buf, view.len as usize, 0);
            if n > 0 {
                break Recv::Bytes(n as usize);
            }
            if n == 0 {
                break Recv::Other(Received::End);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break Recv::Other(Received::Again),
                _ => break Recv::Other(Received::Failed(e)),
            }
        };
        ffi::PyBuffer_Release(&mut view);
        Ok(got)
    }
}

#[pymethods]
impl AioStream {
    /// The I/O of `transport`'s socket `fd` on `loop` (the face's reactor's
    /// Rust loop); protocol callbacks run in `context`.
    #[new]
    fn new(loop_: Py<Loop>, fd: RawFd, transport: Py<PyAny>, context: Option<Py<PyAny>>) -> Self {
        AioStream {
            loop_,
            fd,
            state: Mutex::new(State {
                token: None,
                registered: (false, false),
                reader_on: false,
                writer_on: false,
                paused: false,
                closing: false,
                eof: false,
                conn_lost: 0,
                buffered: false,
                sendfile: false,
                high_water: 64 * 1024,
                low_water: 16 * 1024,
                queue: WriteQueue::default(),
                transport: Some(transport),
                protocol: None,
                context,
            }),
            reads: ReadSizing::default(),
        }
    }

    /// The protocol the reads go to; `buffered`: it is a `BufferedProtocol`.
    fn set_protocol(&self, protocol: Py<PyAny>, buffered: bool) {
        let old = {
            let mut st = lock(&self.state);
            st.buffered = buffered;
            st.protocol.replace(protocol)
        };
        drop(old);
    }

    /// The flow-control marks, in bytes (`set_write_buffer_limits`).
    fn set_water(&self, high: usize, low: usize) {
        let mut st = lock(&self.state);
        st.high_water = high;
        st.low_water = low;
    }

    /// Whether an empty waiter (sendfile) exists.
    fn set_sendfile(&self, on: bool) {
        lock(&self.state).sendfile = on;
    }

    /// Start reading (the transport's first read, after `connection_made`),
    /// unless paused or closing.
    fn start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut st = lock(&slf.get().state);
        if st.paused || st.closing {
            return Ok(());
        }
        st.reader_on = true;
        Self::sync(slf, &mut st)
    }

    /// Stop reading without pausing (end of stream, the protocol keeping
    /// the connection open).
    fn stop_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut st = lock(&slf.get().state);
        st.reader_on = false;
        Self::sync(slf, &mut st)
    }

    fn is_reading(&self) -> bool {
        let st = lock(&self.state);
        !st.paused && !st.closing
    }

    /// `pause_reading`; whether it paused (it was reading).
    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let mut st = lock(&slf.get().state);
        if st.paused || st.closing {
            return Ok(false);
        }
        st.paused = true;
        st.reader_on = false;
        Self::sync(slf, &mut st)?;
        Ok(true)
    }

    /// `resume_reading`; whether it resumed (it was paused).
    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let mut st = lock(&slf.get().state);
        if st.closing || !st.paused {
            return Ok(false);
        }
        st.paused = false;
        st.reader_on = true;
        Self::sync(slf, &mut st)?;
        Ok(true)
    }

    /// `close`'s state change: closing, the reader off; `True` when nothing
    /// is left to write (then the connection is lost, the writer off, and
    /// the caller schedules `connection_lost`).
    fn close(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let mut st = lock(&slf.get().state);
        if st.closing {
            return Ok(false);
        }
        st.closing = true;
        st.reader_on = false;
        let empty = st.queue.is_empty();
        if empty {
            st.conn_lost += 1;
            st.writer_on = false;
        }
        Self::sync(slf, &mut st)?;
        Ok(empty)
    }

    /// `_force_close`'s state change: the queue dropped, closing, the
    /// connection lost; `False` if it was lost already (nothing to do).
    fn force_close(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let dropped;
        {
            let mut st = lock(&slf.get().state);
            if st.conn_lost > 0 {
                return Ok(false);
            }
            dropped = std::mem::take(&mut st.queue);
            st.writer_on = false;
            st.closing = true;
            st.reader_on = false;
            st.conn_lost += 1;
            Self::sync(slf, &mut st)?;
        }
        drop(dropped);
        Ok(true)
    }

    /// Out of the FD set for good, and the references to the transport,
    /// protocol and context dropped (`_call_connection_lost`, before the
    /// socket is closed; `__del__`; a closed loop).
    fn detach(&self) {
        let (token, refs) = {
            let mut st = lock(&self.state);
            st.reader_on = false;
            st.writer_on = false;
            st.registered = (false, false);
            let refs = (st.transport.take(), st.protocol.take(), st.context.take());
            (st.token.take(), refs)
        };
        if let Some(token) = token {
            self.lp().remove_native(token);
        }
        drop(refs);
    }

    /// `WriteTransport.write` (see the module's docs).
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let data = data_of(data)?;
        let bytes = data.slice();
        let mut st = lock(&me.state);
        if st.eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call write() after write_eof()",
            ));
        }
        if st.sendfile {
            return Err(PyRuntimeError::new_err(
                "unable to write; sendfile is in progress",
            ));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if let Some(log) = Self::lost_write(&mut st) {
            drop(st);
            return Self::log_lost_write(py, log);
        }
        let mut sent = 0;
        if st.queue.is_empty() {
            match send_now(me.fd, bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => sent = n,
                Err(e) => {
                    let transport = st.transport.as_ref().map(|t| t.clone_ref(py));
                    drop(st);
                    if let Some(t) = transport {
                        Self::fatal(
                            t.bind(py),
                            os_error(py, &e),
                            "Fatal write error on socket transport",
                        )?;
                    }
                    return Ok(());
                }
            }
        }
        match &data {
            Data::Bytes(b) => st
                .queue
                .push_py(b.clone().unbind(), sent, bytes.len() - sent),
            Data::Buffer(_) => st.queue.push_owned(&bytes[sent..]),
        }
        Self::queued(slf, st)
    }

    /// `WriteTransport.writelines`: every item queued, then as much
    /// written as the socket takes.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let mut items = Vec::new();
        for item in list_of_data.try_iter()? {
            items.push(data_of(&item?)?);
        }
        let mut st = lock(&me.state);
        if st.eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call writelines() after write_eof()",
            ));
        }
        if st.sendfile {
            return Err(PyRuntimeError::new_err(
                "unable to writelines; sendfile is in progress",
            ));
        }
        if items.iter().all(|d| d.slice().is_empty()) {
            return Ok(());
        }
        if let Some(log) = Self::lost_write(&mut st) {
            drop(st);
            return Self::log_lost_write(py, log);
        }
        let was_empty = st.queue.is_empty();
        for d in &items {
            let len = d.slice().len();
            match d {
                Data::Bytes(b) => st.queue.push_py(b.clone().unbind(), 0, len),
                Data::Buffer(_) => st.queue.push_owned(d.slice()),
            }
        }
        drop(items);
        if was_empty {
            if let Err(e) = st.queue.flush(py, me.fd) {
                st.queue.clear();
                let transport = st.transport.as_ref().map(|t| t.clone_ref(py));
                drop(st);
                if let Some(t) = transport {
                    Self::fatal(
                        t.bind(py),
                        os_error(py, &e),
                        "Fatal write error on socket transport",
                    )?;
                }
                return Ok(());
            }
            if st.queue.is_empty() {
                return Ok(());
            }
        }
        Self::queued(slf, st)
    }

    /// `write_eof`'s state change; the write side is shut down now if
    /// nothing is queued, else once the queue is written.
    fn write_eof(&self) {
        let mut st = lock(&self.state);
        if st.closing || st.eof {
            return;
        }
        st.eof = true;
        if st.queue.is_empty() {
            shutdown(self.fd, libc::SHUT_WR);
        }
    }

    fn get_write_buffer_size(&self) -> usize {
        lock(&self.state).queue.bytes
    }

    #[getter]
    fn closing(&self) -> bool {
        lock(&self.state).closing
    }

    #[getter]
    fn eof(&self) -> bool {
        lock(&self.state).eof
    }

    #[getter]
    fn paused(&self) -> bool {
        lock(&self.state).paused
    }

    #[getter]
    fn conn_lost(&self) -> u32 {
        lock(&self.state).conn_lost
    }

    /// Whether the FD set watches the socket for reading, for writing.
    fn polling(&self) -> (bool, bool) {
        lock(&self.state).registered
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(st) = self.state.try_lock() {
            for obj in [&st.transport, &st.protocol, &st.context]
                .into_iter()
                .flatten()
            {
                visit.call(obj)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.detach();
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AioStream>()?;
    Ok(())
}
