//! `StreamIO`: the byte-moving half of a stream transport, in Rust, under
//! Twisted's own connection classes.
//!
//! Twisted's `tcp.Connection` (through `abstract.FileDescriptor`) does two
//! things: it keeps a connection's state and callbacks (connected,
//! disconnecting, producers, half-close, TLS, `connectionLost`, logging),
//! and it moves bytes (`doRead`, `write`, `writeSequence`, `doWrite`, the
//! send buffer). A profile of ping-pong on our loop puts the second at a
//! third of the time, in Python frames around `recv` and `send`. This class
//! takes over exactly the second: the transports of [`twisted_shim.tcp`]
//! derive from it *and* from Twisted's classes (`class Server(StreamIO,
//! tcp.Server)`), so every rule of the first stays Twisted's own code.
//!
//! What it replaces, with the same observable behaviour:
//!
//! - `write`/`writeSequence` (`FileDescriptor`'s, and `_newtls`'s TLS
//!   routing in front of them): `TypeError("Data must be bytes")` for
//!   anything else; nothing after the connection ended or the write side
//!   closed; the `bytes` objects are queued, not copied or joined; a
//!   streaming producer is paused when the queue exceeds `bufferSize` (or,
//!   on a UNIX transport, too many descriptors wait: [`super::unix_io`]);
//!   then `startWriting()`.
//! - `doWrite`: `writev` of the queue until it is empty or the socket is
//!   full (Twisted sends one `SEND_LIMIT` slice per call); when empty:
//!   `stopWriting()`, then a producer is resumed, or `_postLoseConnection()`
//!   when disconnecting, or the write side is closed
//!   (`_closeWriteConnection()`), in Twisted's order. A socket error is
//!   `CONNECTION_LOST`, as `tcp.Connection.writeSomeData` returns it.
//! - `doRead`: one `recv` of up to `bufferSize`, then
//!   `protocol.dataReceived(bytes)`: after a read that filled half the
//!   buffer, straight into the `bytes` object (the kernel's copy only, as
//!   `socket.recv`); otherwise into the process's one read buffer and
//!   copied into a small `bytes` object; end of stream is
//!   `CONNECTION_DONE`, an error `CONNECTION_LOST`, `EAGAIN` nothing.
//! - `startReading`/`stopReading`/`startWriting`/`stopWriting`: straight
//!   to the loop of a `RustReactor` (what its `addReader` etc. do), through
//!   the reactor's methods for any other reactor.
//! - `_isSendBufferFull`, and `dataBuffer`/`_tempDataLen`/`_tempDataBuffer`
//!   as read-only views (empty bytes / the queued length / an empty list)
//!   for code that inspects them.
//!
//! Invariants: the queue holds only bytes accepted by `write` while
//! connected; it is dropped when the object is (the socket is Twisted's to
//! close). Everything runs on the reactor thread with the GIL held; the
//! locks only satisfy `Sync` and are never held across a Python call.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::state::{Attr, State};
use super::unix_io;
use crate::event_loop::Loop;
use crate::net::read::{ReadSizing, Received};
use crate::net::write::WriteQueue;
use crate::selectable::{self, ClassFacts, InstanceDict};
use crate::time::lock;
use crate::twisted::api;

/// Twisted's `FileDescriptor.bufferSize` (64 KiB): the read size, and the
/// queue length above which a streaming producer is paused. The instance's
/// own `bufferSize` attribute is read each time, as Twisted does.
const DEFAULT_BUFFER: usize = 65536;

#[pyclass(module = "twisted_shim._core", subclass)]
pub struct StreamIO {
    pub(crate) queue: Mutex<WriteQueue>,
    /// The reactor's Rust loop (`None`: another reactor), once looked up.
    reactor_loop: OnceLock<Option<Py<Loop>>>,
    /// How the next read is made (by the size of the last).
    reads: ReadSizing,
    /// The descriptor the loop checked (its `fileno()`) for the event being
    /// dispatched to this transport, -1 outside one: what `startWriting`
    /// and the like register under while it runs, without asking
    /// `fileno()` again ([`Dispatching`]), as long as the loop has this
    /// transport on it ([`Loop::add_known`]: the dispatch's Python code
    /// may have closed it).
    dispatch_fd: AtomicI32,
}

/// While alive: `io` is being dispatched an event on descriptor `fd`, which
/// the loop has just checked is its `fileno()`. The descriptor of the
/// event before, if any (a transport's callbacks do not nest, but nothing
/// is assumed), is restored on drop.
struct Dispatching<'a> {
    io: &'a StreamIO,
    before: RawFd,
}

impl<'a> Dispatching<'a> {
    fn new(io: &'a StreamIO, fd: RawFd) -> Self {
        let before = io.dispatch_fd.swap(fd, Ordering::Relaxed);
        Dispatching { io, before }
    }
}

impl Drop for Dispatching<'_> {
    fn drop(&mut self) {
        self.io.dispatch_fd.store(self.before, Ordering::Relaxed);
    }
}

/// `StreamIO`'s own `doRead`, `doWrite` and `stopWriting`.
static OWN_METHODS: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

fn own_methods(py: Python<'_>) -> PyResult<&'static [Py<PyAny>; 3]> {
    OWN_METHODS.get_or_try_init(py, || {
        let ty = py.get_type::<StreamIO>();
        Ok([
            ty.getattr(intern!(py, "doRead"))?.unbind(),
            ty.getattr(intern!(py, "doWrite"))?.unbind(),
            ty.getattr(intern!(py, "stopWriting"))?.unbind(),
        ])
    })
}

fn must_be_bytes<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    data.cast::<PyBytes>()
        .cloned()
        .map_err(|_| PyTypeError::new_err("Data must be bytes"))
}

/// `bufferSize`, read through `state`.
fn buffer_size_of(state: &State<'_>) -> usize {
    state
        .get(Attr::BufferSize)
        .and_then(|v| v.extract::<usize>())
        .unwrap_or(DEFAULT_BUFFER)
}

pub(crate) fn buffer_size(obj: &Bound<'_, PyAny>) -> usize {
    obj.getattr(intern!(obj.py(), "bufferSize"))
        .and_then(|v| v.extract::<usize>())
        .unwrap_or(DEFAULT_BUFFER)
}

/// `obj.fileno()`, unchecked (-1 after the connection is lost).
pub(crate) fn fileno(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    obj.call_method0(intern!(obj.py(), "fileno"))?.extract()
}

impl StreamIO {
    /// Queue `chunks` (already checked) and do what `FileDescriptor.write`
    /// does after appending.
    fn queue_and_start(
        slf: &Bound<'_, Self>,
        chunks: &[Bound<'_, PyBytes>],
        state: &State<'_>,
    ) -> PyResult<()> {
        let py = slf.py();
        let obj = slf.as_any();
        let queued = {
            let me = slf.borrow();
            let mut q = lock(&me.queue);
            for c in chunks {
                let len = c.as_bytes().len();
                q.push_py(c.clone().unbind(), 0, len);
            }
            q.bytes
        };
        // _maybePauseProducer (a UNIX transport's buffer is full of
        // descriptors too)
        let producer = state.get(Attr::Producer)?;
        if !producer.is_none()
            && state.is_true(Attr::StreamingProducer)?
            && (queued > buffer_size_of(state) || unix_io::descriptors_full(obj)?)
        {
            obj.setattr(intern!(py, "producerPaused"), true)?;
            producer.call_method0(intern!(py, "pauseProducing"))?;
        }
        Self::watch(slf, false, true)
    }

    /// `startReading`/`startWriting` (`add`) and `stopReading`/
    /// `stopWriting`: the reactor's `addReader` (...) for `self`, called on
    /// its Rust loop directly when it is ours (what `RustReactor.addReader`
    /// does, without its two Python frames); through the reactor's method
    /// otherwise, or when the loop cannot watch the descriptor.
    fn watch(slf: &Bound<'_, Self>, reading: bool, add: bool) -> PyResult<()> {
        let py = slf.py();
        let obj = slf.as_any();
        if let Some(lp) = Self::reactor_loop(slf)? {
            let lp = lp.get();
            // Inside a dispatch to this transport, the descriptor the loop
            // has just checked is its fileno(), while the loop still has
            // this transport on it (the dispatch's Python code may have
            // closed it, and the number may be another's now).
            let known = slf.borrow().dispatch_fd.load(Ordering::Relaxed);
            let fast = match (known >= 0, add) {
                (false, _) => None,
                (true, true) => lp.add_known(py, obj, known, reading)?,
                (true, false) => lp.remove_known(obj, known, reading)?,
            };
            let done = match fast {
                Some(done) => done,
                None if add => lp.add(py, obj, reading)?,
                None => lp.remove(obj, reading)?,
            };
            if done {
                return Ok(());
            }
        }
        let method = match (reading, add) {
            (true, true) => intern!(py, "addReader"),
            (false, true) => intern!(py, "addWriter"),
            (true, false) => intern!(py, "removeReader"),
            (false, false) => intern!(py, "removeWriter"),
        };
        obj.getattr(intern!(py, "reactor"))?
            .call_method1(method, (obj,))?;
        Ok(())
    }

    /// The Rust loop of the transport's reactor when it is a `RustReactor`
    /// (its `_loop`), looked up once: a transport's reactor does not change.
    fn reactor_loop<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, Loop>>> {
        let py = slf.py();
        let me = slf.borrow();
        if let Some(known) = me.reactor_loop.get() {
            return Ok(known.as_ref().map(|lp| lp.bind(py).clone()));
        }
        let reactor = slf.as_any().getattr(intern!(py, "reactor"))?;
        let found = reactor
            .getattr(intern!(py, "_loop"))
            .ok()
            .and_then(|lp| lp.cast_into::<Loop>().ok());
        let _ = me
            .reactor_loop
            .set(found.as_ref().map(|lp| lp.clone().unbind()));
        Ok(found)
    }

    /// Whether `write` should go through the TLS layer (`_newtls`'s
    /// `ConnectionMixin.write`): TLS was started and the connection is up.
    /// `Some(protocol)` to write to.
    fn tls_target<'py>(state: &State<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if !state.is_true(Attr::Tls)? {
            return Ok(None);
        }
        if state.is_true(Attr::Connected)? {
            return Ok(Some(state.get(Attr::Protocol)?));
        }
        Ok(None)
    }

    /// Write the queue to `fd` until it is empty (`Ok(true)`) or the
    /// socket is full (`Ok(false)`).
    fn flush_queue(slf: &Bound<'_, Self>, fd: RawFd) -> io::Result<bool> {
        let me = slf.borrow();
        let mut q = lock(&me.queue);
        q.flush(slf.py(), fd)
    }

    /// `doWrite` on descriptor `fd` (the loop passes the one it checked).
    ///
    /// `native`: the dispatch knows the selectable keeps `StreamIO`'s
    /// `stopWriting` ([`crate::selectable::facts`]: its class, less what
    /// the instance sets); otherwise that is asked here, and an override
    /// (of the class or the instance) is called as Twisted's `doWrite`
    /// calls `self.stopWriting()`.
    pub(crate) fn write_ready(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        native: bool,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let obj = slf.as_any();
        let me = slf.borrow();
        let _dispatching = Dispatching::new(&me, fd);
        let flushed = Self::flush_queue(slf, fd);
        match flushed {
            Err(_) => return Ok(api(py)?.connection_lost.clone_ref(py)),
            Ok(false) => return Ok(py.None()),
            Ok(true) => {}
        }
        // Everything went: what FileDescriptor.doWrite does then.
        if native || Self::keeps_own_stop_writing(obj) {
            Self::watch(slf, false, false)?;
        } else {
            obj.call_method0(intern!(py, "stopWriting"))?;
        }
        let state = State::new(obj);
        let producer = state.get(Attr::Producer)?;
        if !producer.is_none()
            && (!state.is_true(Attr::StreamingProducer)? || state.is_true(Attr::ProducerPaused)?)
        {
            obj.setattr(intern!(py, "producerPaused"), false)?;
            producer.call_method0(intern!(py, "resumeProducing"))?;
        } else if state.is_true(Attr::Disconnecting)? {
            return Ok(obj
                .call_method0(intern!(py, "_postLoseConnection"))?
                .unbind());
        } else if state.is_true(Attr::WriteDisconnecting)? {
            obj.setattr(intern!(py, "_writeDisconnected"), true)?;
            return Ok(obj
                .call_method0(intern!(py, "_closeWriteConnection"))?
                .unbind());
        }
        Ok(py.None())
    }

    /// The part of `doWrite` that needs no Python code and no log context,
    /// for the loop to try first: write the queue; `true` when that was all
    /// `doWrite` had to do (the socket is full, or the queue went and there
    /// is no producer to resume and no close to finish: then writing
    /// stops). `false`: call `doWrite` as usual (what is left of it is
    /// Python code, or the write failed and `doWrite` reports it).
    pub(crate) fn flush_ready(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<bool> {
        let obj = slf.as_any();
        let me = slf.borrow();
        let _dispatching = Dispatching::new(&me, fd);
        let flushed = Self::flush_queue(slf, fd);
        match flushed {
            Err(_) => return Ok(false),
            Ok(false) => return Ok(true),
            Ok(true) => {}
        }
        let state = State::new(obj);
        if !state.get(Attr::Producer)?.is_none()
            || state.is_true(Attr::Disconnecting)?
            || state.is_true(Attr::WriteDisconnecting)?
        {
            return Ok(false);
        }
        Self::watch(slf, false, false)?;
        Ok(true)
    }

    /// `doRead` on descriptor `fd` (the loop passes the one it checked).
    pub(crate) fn read_ready(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let obj = slf.as_any();
        let me = slf.borrow();
        let _dispatching = Dispatching::new(&me, fd);
        let state = State::new(obj);
        let size = buffer_size_of(&state).max(1);
        let data = match me.reads.receive(py, fd, size)? {
            Received::Data(data) => data,
            Received::Again => return Ok(py.None()),
            Received::End => return Ok(api(py)?.connection_done.clone_ref(py)),
            Received::Failed(_) => return Ok(api(py)?.connection_lost.clone_ref(py)),
        };
        let protocol = state.get(Attr::Protocol)?;
        drop(state);
        protocol.call_method1(intern!(py, "dataReceived"), (data,))?;
        Ok(py.None())
    }

    /// Whether `class` (the class of `sel`) is a `StreamIO` subclass whose
    /// `doRead`, `doWrite` and `stopWriting` are this class's own, not
    /// overridden (then `doWrite`'s `stopWriting()` may go to the loop
    /// directly).
    pub(crate) fn class_is_native(sel: &Bound<'_, PyAny>, class: &Bound<'_, PyType>) -> bool {
        let py = sel.py();
        if sel.cast::<Self>().is_err() {
            return false;
        }
        let Ok([read, write, stop_writing]) = own_methods(py) else {
            return false;
        };
        let same = |name, mine: &Py<PyAny>| {
            class
                .getattr(name)
                .map(|m| m.is(mine.bind(py)))
                .unwrap_or(false)
        };
        same(intern!(py, "doRead"), read)
            && same(intern!(py, "doWrite"), write)
            && same(intern!(py, "stopWriting"), stop_writing)
    }

    /// Whether `obj.stopWriting` is this class's own: its class keeps it
    /// and the instance sets none of its own (then `doWrite` may stop
    /// writing on the loop directly rather than through the method).
    fn keeps_own_stop_writing(obj: &Bound<'_, PyAny>) -> bool {
        let py = obj.py();
        let Ok([_, _, mine]) = own_methods(py) else {
            return false;
        };
        let name = intern!(py, "stopWriting");
        let class_keeps = obj
            .get_type()
            .getattr(name)
            .map(|m| m.is(mine.bind(py)))
            .unwrap_or(false);
        class_keeps
            && match selectable::instance_dict(obj) {
                InstanceDict::None => true,
                InstanceDict::Other => false,
                InstanceDict::Dict(d) => !d.contains(name).unwrap_or(true),
            }
    }

    /// `sel` as a `StreamIO` to call directly, given what the dispatch
    /// knows of it ([`crate::selectable::facts`]): its class keeps this
    /// class's `doRead` and `doWrite` and the instance does not override
    /// them (a connecting `tcp.Client` sets both to `doConnect` until the
    /// connection is made; `abortConnection` replaces them).
    pub(crate) fn native<'a, 'py>(
        sel: &'a Bound<'py, PyAny>,
        facts: ClassFacts,
    ) -> Option<&'a Bound<'py, Self>> {
        if !facts.stream_io {
            return None;
        }
        sel.cast::<Self>().ok()
    }

    /// `FileDescriptor.write` without the TLS routing.
    fn raw_write_impl(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        state: &State<'_>,
    ) -> PyResult<()> {
        let data = must_be_bytes(data)?;
        if !state.is_true(Attr::Connected)? || state.is_true(Attr::WriteDisconnected)? {
            return Ok(());
        }
        if data.as_bytes().is_empty() {
            return Ok(());
        }
        Self::queue_and_start(slf, std::slice::from_ref(&data), state)
    }

    /// `FileDescriptor.writeSequence` without the TLS routing.
    fn raw_write_sequence_impl(slf: &Bound<'_, Self>, iovec: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut chunks = Vec::new();
        for item in iovec.try_iter()? {
            chunks.push(must_be_bytes(&item?)?);
        }
        // After the iteration, which may have run Python code.
        let state = State::new(slf.as_any());
        if !state.is_true(Attr::Connected)?
            || chunks.is_empty()
            || state.is_true(Attr::WriteDisconnected)?
        {
            return Ok(());
        }
        chunks.retain(|c| !c.as_bytes().is_empty());
        Self::queue_and_start(slf, &chunks, &state)
    }
}

#[pymethods]
impl StreamIO {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    pub(crate) fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        StreamIO {
            queue: Mutex::new(WriteQueue::default()),
            reactor_loop: OnceLock::new(),
            reads: ReadSizing::default(),
            dispatch_fd: AtomicI32::new(-1),
        }
    }

    /// `ITransport.write`.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let state = State::new(slf.as_any());
        if let Some(protocol) = Self::tls_target(&state)? {
            must_be_bytes(data)?;
            protocol.call_method1(intern!(slf.py(), "write"), (data,))?;
            return Ok(());
        }
        Self::raw_write_impl(slf, data, &state)
    }

    /// `ITransport.writeSequence`.
    #[pyo3(name = "writeSequence")]
    fn write_sequence(slf: &Bound<'_, Self>, iovec: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(protocol) = Self::tls_target(&State::new(slf.as_any()))? {
            protocol.call_method1(intern!(slf.py(), "writeSequence"), (iovec,))?;
            return Ok(());
        }
        Self::raw_write_sequence_impl(slf, iovec)
    }

    /// The transport's own `write`, under any TLS layer (what TLS writes
    /// its records with).
    fn _raw_write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::raw_write_impl(slf, data, &State::new(slf.as_any()))
    }

    fn _raw_write_sequence(slf: &Bound<'_, Self>, iovec: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::raw_write_sequence_impl(slf, iovec)
    }

    /// `FileDescriptor.startReading`.
    #[pyo3(name = "startReading")]
    fn start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::watch(slf, true, true)
    }

    /// `FileDescriptor.stopReading`.
    #[pyo3(name = "stopReading")]
    fn stop_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::watch(slf, true, false)
    }

    /// `FileDescriptor.startWriting`.
    #[pyo3(name = "startWriting")]
    fn start_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::watch(slf, false, true)
    }

    /// `FileDescriptor.stopWriting`.
    #[pyo3(name = "stopWriting")]
    fn stop_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::watch(slf, false, false)
    }

    /// `IWriteDescriptor.doWrite`.
    #[pyo3(name = "doWrite")]
    pub(crate) fn do_write(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::write_ready(slf, fileno(slf.as_any())?, false)
    }

    /// `IReadDescriptor.doRead`, as `tcp.Connection.doRead`.
    #[pyo3(name = "doRead")]
    fn do_read(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::read_ready(slf, fileno(slf.as_any())?)
    }

    #[pyo3(name = "_isSendBufferFull")]
    pub(crate) fn is_send_buffer_full(slf: &Bound<'_, Self>) -> bool {
        let queued = lock(&slf.borrow().queue).bytes;
        queued > buffer_size(slf.as_any())
    }

    /// What `FileDescriptor` keeps in `dataBuffer` plus `_tempDataLen`:
    /// here, all of it is queued (`dataBuffer` reads as empty). Assigning
    /// them (`FileDescriptor.__init__` does) changes nothing: the queue is
    /// the only buffer.
    #[getter(_tempDataLen)]
    fn temp_data_len(&self) -> usize {
        lock(&self.queue).bytes
    }

    #[setter(_tempDataLen)]
    fn set_temp_data_len(&self, _value: &Bound<'_, PyAny>) {}

    /// `FileDescriptor`'s list of writes not yet joined: always empty here
    /// (as it always was under this class); assigning it (as
    /// `FileDescriptor.__init__` does) keeps nothing, so no connection
    /// carries an empty list it never uses.
    #[getter(_tempDataBuffer)]
    fn temp_data_buffer<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        PyList::empty(py)
    }

    #[setter(_tempDataBuffer)]
    fn set_temp_data_buffer(&self, _value: &Bound<'_, PyAny>) {}

    #[getter(dataBuffer)]
    fn data_buffer<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, b"")
    }

    #[setter(dataBuffer)]
    fn set_data_buffer(&self, _value: &Bound<'_, PyAny>) {}

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(Some(lp)) = self.reactor_loop.get() {
            visit.call(lp)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.reactor_loop.take();
    }

    /// Bytes queued and not yet written.
    fn _queued(&self) -> usize {
        lock(&self.queue).bytes
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<StreamIO>()?;
    Ok(())
}
