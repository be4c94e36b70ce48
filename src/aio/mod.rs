//! The asyncio face of the loop: what `twisted_shim.aio.RustEventLoop` (an
//! `asyncio.AbstractEventLoop`) needs from the Rust core.
//!
//! There is one loop. The reactor's [`Loop`] owns the asyncio ready queue
//! ([`ready::ReadyQueue`]) and runs a pass of it in every `runUntilCurrent`,
//! after the reactor's timed calls; asyncio's timers are the reactor's timed
//! calls (a due `TimerHandle` is pushed onto the ready queue); asyncio's
//! readers and writers are native handlers in the reactor's FD set
//! ([`AioFd`]), beside Twisted's selectables. [`AioCore`] is the face's handle
//! on all of it: `call_soon` pushes, `call_soon_threadsafe` pushes and wakes
//! the loop, `add_reader`/`add_writer` register.
//!
//! Readiness: a descriptor has at most one registration in the FD set. An
//! asyncio descriptor is one [`AioFd`] with a reader handle, a writer handle,
//! or both, and the interest that follows from them. When it is ready the
//! handler pushes the reader's handle (readable, hang-up or error), then the
//! writer's (writable, hang-up or error), as asyncio's `_process_events`
//! does with a selector; a handle found cancelled there is removed instead,
//! so a level-triggered descriptor cannot spin the loop. A descriptor that
//! Twisted watches cannot be watched by asyncio too, nor the reverse: the
//! second registration fails with `FileExistsError` (asyncio) or `OSError`
//! (Twisted's `addReader`), loudly, rather than one silently replacing the
//! other.
//!
//! Invariants: `fds[fd]` exists exactly when the FD set holds an [`AioFd`]
//! for `fd` under `token`, with interest `(reader.is_some(),
//! writer.is_some())`, and at least one of them is set. Handles are moved
//! out of the table before they are dropped or returned, so no Python code
//! runs while its lock is held (the lock order is this table, then the FD
//! set's).

pub mod handle;
pub mod ready;
pub mod transport;

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::event_loop::Loop;
use crate::fdset::{NativeHandler, Readiness, Token};
use crate::time::{lock, DelayedCall};
use ready::ReadyQueue;

/// One asyncio descriptor's callbacks (asyncio `Handle` objects).
struct Watch {
    token: Token,
    reader: Option<Py<PyAny>>,
    writer: Option<Py<PyAny>>,
}

struct Shared {
    /// This table's own weak handle, given to each [`AioFd`].
    me: Weak<Shared>,
    loop_: Py<Loop>,
    ready: Arc<ReadyQueue>,
    fds: Mutex<HashMap<RawFd, Watch>>,
    /// Set by `close`: pushes are dropped from then on (a timer of a closed
    /// face may still fire on the reactor's heap; it must not run).
    closed: AtomicBool,
}

/// The native handler of one asyncio descriptor. It holds the table weakly:
/// the FD set (inside the loop) must not keep the face's table alive.
struct AioFd {
    fd: RawFd,
    shared: Weak<Shared>,
}

impl NativeHandler for AioFd {
    fn ready(&self, py: Python<'_>, token: Token, r: Readiness) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let (reader, writer) = {
            let fds = lock(&shared.fds);
            match fds.get(&self.fd) {
                Some(w) if w.token == token => (
                    w.reader.as_ref().map(|h| h.clone_ref(py)),
                    w.writer.as_ref().map(|h| h.clone_ref(py)),
                ),
                _ => return,
            }
        };
        let readable = r.readable || r.hangup || r.error;
        let writable = r.writable || r.hangup || r.error;
        if let (true, Some(h)) = (readable, reader) {
            shared.deliver(py, self.fd, h, true);
        }
        if let (true, Some(h)) = (writable, writer) {
            shared.deliver(py, self.fd, h, false);
        }
    }
}

fn cancelled(py: Python<'_>, handle: &Py<PyAny>) -> bool {
    handle::cancelled(py, handle.bind(py)).unwrap_or(false)
}

impl Shared {
    fn lp(&self) -> &Loop {
        self.loop_.get()
    }

    /// Queue a ready descriptor's handle, or forget it if it was cancelled.
    fn deliver(&self, py: Python<'_>, fd: RawFd, handle: Py<PyAny>, read: bool) {
        if !cancelled(py, &handle) {
            if !self.closed.load(Ordering::Acquire) {
                self.ready.push(handle);
            }
            return;
        }
        // Only if it is still the registered one (the reader may have been
        // replaced by a handle pushed earlier in this dispatch).
        let current = {
            let fds = lock(&self.fds);
            fds.get(&fd)
                .and_then(|w| if read { &w.reader } else { &w.writer }.as_ref())
                .is_some_and(|h| h.is(&handle))
        };
        if current {
            drop(self.remove(fd, read));
        }
    }

    fn add(&self, fd: RawFd, handle: Py<PyAny>, read: bool) -> PyResult<Option<Py<PyAny>>> {
        let lp = self.lp();
        let mut fds = lock(&self.fds);
        if let Some(w) = fds.get_mut(&fd) {
            let slot = if read { &mut w.reader } else { &mut w.writer };
            let was_set = slot.is_some();
            let old = slot.replace(handle);
            if !was_set {
                let (reading, writing) = (w.reader.is_some(), w.writer.is_some());
                if let Err(e) = lp.set_native_interest(w.token, reading, writing) {
                    // Undo, so the table still says what the FD set does.
                    let slot = if read { &mut w.reader } else { &mut w.writer };
                    let new = slot.take();
                    drop(fds);
                    drop(new);
                    return Err(e.into());
                }
            }
            return Ok(old);
        }
        let handler = Arc::new(AioFd {
            fd,
            shared: self.weak(),
        });
        let token = lp.add_native(fd, handler, read, !read).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                PyErr::from(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("file descriptor {fd} is watched by the reactor (a Twisted selectable or a native handler)"),
                ))
            } else {
                PyErr::from(e)
            }
        })?;
        let (reader, writer) = if read {
            (Some(handle), None)
        } else {
            (None, Some(handle))
        };
        fds.insert(
            fd,
            Watch {
                token,
                reader,
                writer,
            },
        );
        Ok(None)
    }

    /// Stop calling `fd`'s reader (`read`) or writer; returns its handle.
    fn remove(&self, fd: RawFd, read: bool) -> Option<Py<PyAny>> {
        let lp = self.lp();
        let mut fds = lock(&self.fds);
        let w = fds.get_mut(&fd)?;
        let old = if read {
            w.reader.take()
        } else {
            w.writer.take()
        };
        old.as_ref()?;
        let (reading, writing) = (w.reader.is_some(), w.writer.is_some());
        if !reading && !writing {
            let token = w.token;
            fds.remove(&fd);
            lp.remove_native(token);
        } else if lp.set_native_interest(w.token, reading, writing).is_err() {
            // The descriptor is gone from the poller (closed underneath us):
            // nothing can be ready on it; drop the registration altogether.
            let w = fds.remove(&fd);
            if let Some(w) = &w {
                lp.remove_native(w.token);
            }
            drop(fds);
            drop(w);
        }
        old
    }

    fn weak(&self) -> Weak<Shared> {
        self.me.clone()
    }

    /// Every registration, removed from the FD set; the handles are given
    /// back to be dropped after the lock is released.
    fn drain(&self) -> Vec<Watch> {
        let lp = self.lp();
        let drained: Vec<Watch> = lock(&self.fds).drain().map(|(_, w)| w).collect();
        for w in &drained {
            lp.remove_native(w.token);
        }
        drained
    }
}

/// The face's handle on the loop's asyncio half (see the module's docs).
/// One per loop: `twisted_shim.aio` makes it with the reactor's face.
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct AioCore {
    shared: Arc<Shared>,
    /// The face this core serves (`bind`), for the handles made here.
    face: Mutex<Option<handle::Face>>,
}

/// A timer's time; NaN would never be due (the heap orders it last).
fn not_nan(when: f64) -> PyResult<f64> {
    if when.is_nan() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "a timer's time cannot be NaN",
        ));
    }
    Ok(when)
}

fn no_face() -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err("no face bound")
}

fn closed_error() -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err("Event loop is closed")
}

impl AioCore {
    fn face(&self, py: Python<'_>) -> PyResult<handle::Face> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        lock(&self.face)
            .as_ref()
            .map(|f| f.clone_ref(py))
            .ok_or_else(no_face)
    }

    /// The face object alone (a handle's `_loop`): what `call_soon` needs.
    fn face_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        lock(&self.face)
            .as_ref()
            .map(|f| f.face.bind(py).clone())
            .ok_or_else(no_face)
    }

    fn timer(
        &self,
        py: Python<'_>,
        when: f64,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let face = self.face(py)?;
        let when = not_nan(when)?;
        let (timer, copied) = handle::timer(py, &face, when, callback, args, context)?;
        // The timer and its context are the call's alone while it waits:
        // the heap holds them out of the collector's lists with it.
        let context = if copied {
            handle::context_of(py, &timer)
        } else {
            None
        };
        let call = self.shared.lp().timer_queue().call_at_holding(
            py,
            when,
            face.push.clone_ref(py),
            PyTuple::new(py, [&timer])?.unbind(),
            None,
            [Some(timer.clone()), context],
        )?;
        // SAFETY: `timer` is an instance of the face's timer class, whose
        // `_call` slot `Face::new` found; the slot takes the new reference.
        unsafe { face.timer_call.set(timer.as_ptr(), call.into_ptr()) };
        Ok(timer.unbind())
    }
}

fn to_fd(fd: i64) -> PyResult<RawFd> {
    RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("Invalid file descriptor: {fd}"))
        })
}

#[pymethods]
impl AioCore {
    #[new]
    fn new(py: Python<'_>, loop_: Py<Loop>) -> Self {
        let ready = loop_.bind(py).get().ready_queue().clone();
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            loop_,
            ready,
            fds: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        AioCore {
            shared,
            face: Mutex::new(None),
        }
    }

    /// Serve `face`: handles made by `call_soon` and friends name it as
    /// their loop; timers are instances of `timer_class`.
    fn bind(slf: &Bound<'_, Self>, face: Py<PyAny>, timer_class: Py<PyType>) -> PyResult<()> {
        let py = slf.py();
        let push = slf.getattr(intern!(py, "push"))?.unbind();
        let new = Some(handle::Face::new(py, face, timer_class, push)?);
        // The old face is dropped after the lock is released (dropping it
        // may run Python code).
        let old = std::mem::replace(&mut *lock(&slf.get().face), new);
        drop(old);
        Ok(())
    }

    /// The face's `call_soon` outside debug mode: a new `asyncio.Handle`,
    /// queued.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let face = self.face_object(py)?;
        let (h, copied) = handle::handle(py, &face, callback, args, context)?;
        let context = if copied {
            handle::context_of(py, &h)
        } else {
            None
        };
        self.shared.ready.push_made(h.clone(), context);
        Ok(h.unbind())
    }

    /// The face's `call_soon_threadsafe` outside debug mode: queued, and the
    /// loop woken (any thread).
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let h = self.call_soon(py, callback, args, context)?;
        self.shared.lp().notify()?;
        Ok(h)
    }

    /// The face's `call_later` outside debug mode: a `TimerHandle` pushed
    /// by a timed call on the reactor's heap `delay` seconds from now.
    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        &self,
        py: Python<'_>,
        delay: Option<f64>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let delay = delay
            .ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("delay must not be None"))?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        let when = self.shared.lp().timer_queue().now(py)? + delay;
        self.timer(py, when, callback, args, context)
    }

    /// The face's `call_at` outside debug mode (`when` on the reactor's
    /// clock).
    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        &self,
        py: Python<'_>,
        when: Option<f64>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let when =
            when.ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("when cannot be None"))?;
        self.timer(py, when, callback, args, context)
    }

    /// `call_soon`: queue `handle` for the next pass (loop thread).
    fn push(&self, handle: Py<PyAny>) {
        if !self.shared.closed.load(Ordering::Acquire) {
            self.shared.ready.push(handle);
        }
    }

    /// `call_soon_threadsafe`: queue `handle` and wake the loop (any thread).
    fn push_threadsafe(&self, handle: Py<PyAny>) -> PyResult<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.shared.ready.push(handle);
        self.shared.lp().notify()
    }

    /// Wake the loop (any thread).
    fn wake(&self) -> PyResult<()> {
        self.shared.lp().notify()
    }

    /// `func(*args)` at `when` on the reactor's clock, as a timed call on
    /// the reactor's heap (the face's debug-mode `call_at` passes its push
    /// and a `TimerHandle`).
    #[pyo3(signature = (when, func, *args))]
    fn schedule_at(
        &self,
        py: Python<'_>,
        when: f64,
        func: Py<PyAny>,
        args: Py<PyTuple>,
    ) -> PyResult<Py<DelayedCall>> {
        self.shared
            .lp()
            .timer_queue()
            .call_at(py, not_nan(when)?, func, args, None)
    }

    /// How many handles are queued.
    fn ready_len(&self) -> usize {
        self.shared.ready.len()
    }

    /// Drop every queued handle.
    fn clear_ready(&self) {
        self.shared.ready.clear();
    }

    /// Debug mode: `runner(handle)` runs each handle instead of
    /// `handle._run()`; `None` restores the direct call.
    fn set_runner(&self, runner: Option<Py<PyAny>>) {
        drop(self.shared.ready.set_runner(runner));
    }

    /// Call `handle` when `fd` is readable; returns the reader it replaces.
    fn add_reader(&self, fd: i64, handle: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        self.shared.add(to_fd(fd)?, handle, true)
    }

    fn add_writer(&self, fd: i64, handle: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        self.shared.add(to_fd(fd)?, handle, false)
    }

    /// Stop watching `fd` for input; returns the reader's handle, if any.
    fn remove_reader(&self, fd: i64) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.shared.remove(to_fd(fd)?, true))
    }

    fn remove_writer(&self, fd: i64) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.shared.remove(to_fd(fd)?, false))
    }

    /// `(reader, writer)` handles of `fd`, or `None` if it is not watched.
    #[allow(clippy::type_complexity)]
    fn get(
        &self,
        py: Python<'_>,
        fd: i64,
    ) -> PyResult<Option<(Option<Py<PyAny>>, Option<Py<PyAny>>)>> {
        let fd = to_fd(fd)?;
        let fds = lock(&self.shared.fds);
        Ok(fds.get(&fd).map(|w| {
            (
                w.reader.as_ref().map(|h| h.clone_ref(py)),
                w.writer.as_ref().map(|h| h.clone_ref(py)),
            )
        }))
    }

    /// The descriptors watched, in no order.
    fn fds(&self) -> Vec<RawFd> {
        lock(&self.shared.fds).keys().copied().collect()
    }

    /// Remove every registration and drop the queued handles.
    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let drained = self.shared.drain();
        drop(drained);
        self.shared.ready.clear();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.shared.loop_)?;
        if let Ok(face) = self.face.try_lock() {
            if let Some(f) = face.as_ref() {
                f.traverse(&visit)?;
            }
        }
        if let Ok(fds) = self.shared.fds.try_lock() {
            for w in fds.values() {
                for h in [&w.reader, &w.writer].into_iter().flatten() {
                    visit.call(h)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let face = lock(&self.face).take();
        drop(face);
        drop(self.shared.drain());
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AioCore>()?;
    transport::init_pymodule(m)
}
