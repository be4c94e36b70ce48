//! The loop: what a Python reactor runs to serve IReactorCore, IReactorFDSet
//! and IReactorTime.
//!
//! A `twisted_shim.reactor.RustReactor` owns one [`Loop`] and forwards its
//! hot methods here. One iteration is Twisted's: `runUntilCurrent` (calls from
//! threads, then due timed calls, then the pending shutdown event), then
//! `doIteration(timeout)`: wait for readiness with the GIL released, and
//! dispatch each event to its Python selectable or native handler.
//!
//! The loop never holds one of its locks while Python code runs: a callback
//! may add or remove descriptors, schedule calls, or even iterate the reactor
//! again (Twisted allows `reactor.iterate()` from a callback).
//!
//! The loop decides how long to sleep only after the last Python code before
//! its wait has run, so whatever that code scheduled is seen by the wait, as
//! in Twisted's `mainLoop` (`timeout()` right before `doIteration`). The one
//! Python code between `runUntilCurrent` and the wait is the optimistic flush
//! ([`Loop::flush_optimistic`]); the timeout is computed after it, and a
//! caller's `doIteration(delay)` whose flush served a writer does not sleep,
//! as epoll's wait would not have with that writer ready. Calls queued from
//! any thread, and writers queued by the flush, make the wait a poll.
//!
//! Descriptors closed underneath their registration are found when the loop
//! has been idle for a second ([`LOST_FD_SWEEP`]): each is disconnected with
//! `ConnectionFdescWentAway`, as Twisted's poll reactor does when `fileno()`
//! returns -1.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use polling::Poller;
use pyo3::exceptions::{PyAssertionError, PyKeyboardInterrupt, PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::aio::ready::ReadyQueue;
use crate::calls::ThreadCalls;
use crate::fdset::{
    readiness_now, FdSet, NativeHandler, Readiness, Registration, Snapshot, Target, Token,
};
use crate::selectable::{self, ClassFacts};
use crate::time::{lock, DelayedCall, TimerQueue};
use crate::transport::stream_io::{self, StreamIO};
use crate::twisted::{api, log_err, log_failure, LogContext};
use crate::wait::{self, EventBuf, Waker};

/// How long the loop must have been idle before it checks its descriptors
/// for ones closed underneath their registration.
pub const LOST_FD_SWEEP: Duration = Duration::from_secs(1);

const EVENTS_CAPACITY: usize = 1024;

/// Consecutive waits with events for no registration before the poller is
/// rebuilt.
const STALE_WAITS: usize = 3;

/// A poller key and what it said.
type Ready = (usize, Readiness);

/// One wait, as `record_waits` keeps it: the timeout it was given in seconds
/// (`None`: no limit) and how many events the kernel reported, a wake-up
/// from another thread included (0: it slept to its timeout, or a signal
/// interrupted it).
type WaitRecord = (Option<f64>, usize);

/// Event bits handed to Python's `_doReadOrWrite` (epoll's values).
pub const POLL_IN: u32 = 0x001;
pub const POLL_OUT: u32 = 0x004;
pub const POLL_ERR: u32 = 0x008;
pub const POLL_HUP: u32 = 0x010;

/// The Rust event loop of one reactor.
#[pyclass(module = "twisted_shim._core", frozen)]
pub struct Loop {
    /// The poller; replaced (see `rebuild_poller`) when entries that cannot
    /// be deleted keep reporting events.
    poller: RwLock<Arc<Poller>>,
    /// Consecutive waits that returned events for no registration.
    stale_streak: AtomicUsize,
    /// How many times the poller was rebuilt (for tests and diagnostics).
    rebuilds: AtomicUsize,
    /// How many waits the loop has made: tests count iterations with it.
    waits: AtomicUsize,
    /// Each wait's timeout and how many events it returned, while tests ask
    /// for it (`record_waits`); `None` the rest of the time.
    wait_log: Mutex<Option<Vec<WaitRecord>>>,
    fds: Mutex<FdSet>,
    timers: Arc<TimerQueue>,
    calls: ThreadCalls,
    /// asyncio's ready queue (`crate::aio`): a pass runs in every
    /// `runUntilCurrent`, and a non-empty queue makes the wait a poll.
    ready: Arc<ReadyQueue>,
    /// Ends a wait when another thread queued work (see `wait`).
    waker: Waker,
    /// A reusable event buffer; taken out while a wait is under way.
    events: Mutex<Option<EventBuf>>,
    /// When the last lost-descriptor sweep ran (or the loop last saw events).
    last_sweep: Mutex<Instant>,
    /// The pipe given to `signal.set_wakeup_fd`, made on first request.
    signal_pipe: Mutex<Option<SignalPipe>>,
}

/// A non-blocking pipe whose read end is drained by a native handler: Python's
/// C-level signal handler writes to it, which ends the wait so the loop can run
/// the Python-level handler.
struct SignalPipe {
    write: OwnedFd,
    _read: Arc<SignalDrain>,
}

struct SignalDrain {
    read: OwnedFd,
}

impl NativeHandler for SignalDrain {
    fn ready(&self, _py: Python<'_>, _token: Token, _r: Readiness) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reads into a buffer we own, from a descriptor we own.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

fn nonblocking_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn os_error(e: std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// What `sel.fileno()` says, as Twisted reads it: `None` for -1.
fn fileno_of(sel: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let fd: i64 = sel.call_method0(intern!(sel.py(), "fileno"))?.extract()?;
    if fd == -1 {
        return Ok(None);
    }
    if fd < 0 || fd > i64::from(i32::MAX) {
        return Err(PyOSError::new_err((
            libc::EBADF,
            format!(
                "{} returned an invalid file descriptor: {fd}",
                describe(sel)
            ),
        )));
    }
    Ok(Some(fd as RawFd))
}

fn describe(sel: &Bound<'_, PyAny>) -> String {
    sel.repr()
        .map(|r| format!("{r}.fileno()"))
        .unwrap_or_else(|_| "fileno()".to_owned())
}

impl Loop {
    /// Register a native handler. Rust callers (the WSGI host) use this.
    pub fn add_native(
        &self,
        fd: RawFd,
        handler: Arc<dyn NativeHandler>,
        reading: bool,
        writing: bool,
    ) -> std::io::Result<Token> {
        lock(&self.fds).add_native(&self.poller(), fd, handler, reading, writing)
    }

    pub fn set_native_interest(
        &self,
        token: Token,
        reading: bool,
        writing: bool,
    ) -> std::io::Result<()> {
        lock(&self.fds).set_native_interest(&self.poller(), token, reading, writing)
    }

    /// Remove a native handler; dropping it happens after the lock is released.
    pub fn remove_native(&self, token: Token) -> bool {
        let reg = lock(&self.fds).remove_native(&self.poller(), token);
        reg.is_some()
    }

    fn poller(&self) -> Arc<Poller> {
        self.poller
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the poller with a new one watching the live registrations.
    ///
    /// epoll keys its entries by open file description: a descriptor closed
    /// without being removed, while a duplicate keeps its file open, leaves
    /// an entry no `epoll_ctl` can reach any more (the fd number is gone).
    /// If it stays ready, every wait returns it at once and the loop would
    /// spin. A fresh epoll instance holds only what the table holds.
    fn rebuild_poller(&self) -> std::io::Result<()> {
        let fresh = Arc::new(Poller::new()?);
        // Lock order everywhere: the table, then the poller.
        let fds = lock(&self.fds);
        let mut slot = self.poller.write().unwrap_or_else(|p| p.into_inner());
        fds.rearm_all(&fresh);
        // The eventfd keeps its count across pollers: a wake-up sent to the
        // old one is seen by the new one.
        self.waker.register(&fresh)?;
        *slot = fresh;
        drop(slot);
        drop(fds);
        self.rebuilds.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Run `callable()` on the reactor thread at the next iteration (as
    /// `callFromThread`; usable from any thread).
    pub fn call_soon(&self, py: Python<'_>, callable: Py<PyAny>) -> PyResult<()> {
        self.calls.push(callable, PyTuple::empty(py).unbind(), None);
        self.notify()
    }

    /// The timer heap, for the asyncio face's `call_at` (`crate::aio`).
    pub(crate) fn timer_queue(&self) -> &Arc<TimerQueue> {
        &self.timers
    }

    /// The asyncio ready queue, for the asyncio face (`crate::aio`).
    pub(crate) fn ready_queue(&self) -> &Arc<ReadyQueue> {
        &self.ready
    }

    pub fn notify(&self) -> PyResult<()> {
        self.waker.wake().map_err(os_error)
    }

    pub(crate) fn add(&self, py: Python<'_>, sel: &Bound<'_, PyAny>, read: bool) -> PyResult<bool> {
        let fd = match fileno_of(sel)? {
            Some(fd) => fd,
            None => {
                return Err(PyOSError::new_err((
                    libc::EBADF,
                    format!(
                        "{} returned -1: it has no file descriptor to watch",
                        describe(sel)
                    ),
                )))
            }
        };
        self.add_in(&mut lock(&self.fds), py, sel, fd, read)
    }

    /// `add` of `sel` on `fd`, in the table `fds` (locked by the caller).
    fn add_in(
        &self,
        fds: &mut FdSet,
        py: Python<'_>,
        sel: &Bound<'_, PyAny>,
        fd: RawFd,
        read: bool,
    ) -> PyResult<bool> {
        match fds.add_python(py, &self.poller(), fd, sel, read) {
            Ok(()) => Ok(true),
            // epoll cannot watch regular files; the caller polls them
            // continuously instead, as epollreactor does.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
            Err(e) => Err(os_error(e)),
        }
    }

    /// [`Loop::add`] for a selectable whose `fileno()` was `fd` when the
    /// dispatch under way checked it (a native transport's), without asking
    /// again: only while what is registered on `fd` is `sel` itself. Python
    /// code the dispatch ran may have closed the descriptor (`fileno()` is
    /// -1 then) and its number may be another's now. `None`: not known to be
    /// `sel`'s; the caller asks `fileno()`.
    pub(crate) fn add_known(
        &self,
        py: Python<'_>,
        sel: &Bound<'_, PyAny>,
        fd: RawFd,
        read: bool,
    ) -> PyResult<Option<bool>> {
        let mut fds = lock(&self.fds);
        if !fds.holds_python(fd, sel) {
            return Ok(None);
        }
        self.add_in(&mut fds, py, sel, fd, read).map(Some)
    }

    pub(crate) fn remove(&self, sel: &Bound<'_, PyAny>, read: bool) -> PyResult<bool> {
        // A selectable whose fileno() fails is looked up by identity.
        let fd = fileno_of(sel).unwrap_or(None);
        lock(&self.fds)
            .remove_python(&self.poller(), fd, sel, read)
            .map_err(os_error)
    }

    /// [`Loop::remove`] for a selectable whose `fileno()` was `fd` when the
    /// dispatch under way checked it, on the terms of [`Loop::add_known`].
    pub(crate) fn remove_known(
        &self,
        sel: &Bound<'_, PyAny>,
        fd: RawFd,
        read: bool,
    ) -> PyResult<Option<bool>> {
        let mut fds = lock(&self.fds);
        if !fds.holds_python(fd, sel) {
            return Ok(None);
        }
        fds.remove_python(&self.poller(), Some(fd), sel, read)
            .map(Some)
            .map_err(os_error)
    }

    /// Wait for readiness; returns the ready keys, and the registrations found
    /// lost by an idle-time sweep.
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
    ) -> PyResult<(Vec<Ready>, Vec<Registration>)> {
        // Work already queued makes the wait a poll: calls from threads,
        // writers queued by the optimistic flush itself (they go out next
        // turn), selectables evicted for a reused descriptor (told next).
        // With Python selectables registered, the loop wakes up after an
        // idle second to look for descriptors closed underneath them.
        let (queued, sweep_due) = {
            let fds = lock(&self.fds);
            (fds.has_optimistic() || fds.has_evicted(), !fds.is_empty())
        };
        let timeout = match timeout {
            _ if queued || !self.calls.is_empty() || !self.ready.is_empty() => Some(Duration::ZERO),
            Some(t) if t.is_nan() || t <= 0.0 => Some(Duration::ZERO),
            Some(t) => Some(Duration::from_secs_f64(t.min(crate::time::LONGEST_TIMEOUT))),
            None => None,
        };
        let timeout = if sweep_due {
            Some(timeout.map_or(LOST_FD_SWEEP, |t| t.min(LOST_FD_SWEEP)))
        } else {
            timeout
        };
        let mut events = lock(&self.events)
            .take()
            .unwrap_or_else(|| EventBuf::with_capacity(EVENTS_CAPACITY));
        let poller = self.poller();
        let poller = &*poller;
        let waker = &self.waker;
        let mut ready: Vec<Ready> = Vec::new();
        self.waits.fetch_add(1, Ordering::Relaxed);
        let result = py.detach(|| wait::wait(poller, waker, &mut events, timeout, &mut ready));
        *lock(&self.events) = Some(events);
        let reported = result.map_err(os_error)?;
        if let Some(log) = lock(&self.wait_log).as_mut() {
            log.push((timeout.map(|t| t.as_secs_f64()), reported));
        }
        // Run Python's signal handlers now (a KeyboardInterrupt propagates).
        py.check_signals()?;
        let now = Instant::now();
        // Evicted registrations made this wait a poll (`queued`) and are
        // taken now; one evicted since (by a signal handler just run) makes
        // the next wait a poll and is taken then. No lock on the usual path.
        let mut lost = if queued {
            lock(&self.fds).take_evicted()
        } else {
            Vec::new()
        };
        if !ready.is_empty() {
            *lock(&self.last_sweep) = now;
        } else if sweep_due {
            let mut last = lock(&self.last_sweep);
            if now.duration_since(*last) >= LOST_FD_SWEEP {
                *last = now;
                drop(last);
                lost.extend(lock(&self.fds).lost());
            }
        }
        Ok((ready, lost))
    }

    /// Call `doWrite` on readers that started writing since the last wait,
    /// as if the poller had said they are writable (it would: a connected
    /// socket nearly always is, and `doWrite` copes with EAGAIN). Those with
    /// data left are then watched for writability. This saves two
    /// `epoll_ctl` calls and a wait per response in request/response traffic.
    ///
    /// Returns whether it called any: if so, Python code ran after the
    /// caller computed its timeout, and that timeout may be stale.
    fn flush_optimistic(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<bool> {
        let keys = lock(&self.fds).take_optimistic();
        if keys.is_empty() {
            return Ok(false);
        }
        let writable = Readiness {
            readable: false,
            writable: true,
            hangup: false,
            error: false,
        };
        let mut ready = Vec::with_capacity(keys.len());
        {
            let fds = lock(&self.fds);
            for &key in keys.iter() {
                if fds.is_optimistic(key) {
                    ready.push((key, writable));
                }
            }
        }
        let flushed = !ready.is_empty();
        // The writers are armed even when the dispatch failed part-way, so
        // none is left waiting for an EPOLLOUT it never asked for.
        let dispatched = self.dispatch(py, reactor, ready);
        let mut fds = lock(&self.fds);
        for key in keys {
            fds.arm_if_writing(&self.poller(), key).map_err(os_error)?;
        }
        drop(fds);
        dispatched?;
        Ok(flushed)
    }

    /// Wait at most `delay` seconds, then dispatch what is ready and
    /// disconnect what the idle sweep found lost.
    fn wait_and_dispatch(
        &self,
        py: Python<'_>,
        reactor: &Bound<'_, PyAny>,
        delay: Option<f64>,
    ) -> PyResult<()> {
        let (ready, lost) = self.wait(py, delay)?;
        self.dispatch(py, reactor, ready)?;
        self.disconnect_lost(py, reactor, lost)
    }

    /// One pass of `mainLoop` after `runUntilCurrent`: the optimistic flush,
    /// then the wait, with its timeout computed after the flush.
    ///
    /// The flush runs Python code (`doWrite`, `doConnect`, and through them
    /// `connectionMade`, `clientConnectionFailed`, a retry's `callLater(0)`,
    /// `reactor.stop()`), so the timeout must be computed after it, as
    /// Twisted's `mainLoop` computes `timeout()` right before `doIteration`,
    /// after all the Python code of the pass. A timeout computed before it
    /// would let the wait sleep over what that code scheduled, until the
    /// next event or the idle sweep a second later.
    fn iterate_main(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<()> {
        let flushed = self.flush_optimistic(py, reactor)?;
        // A stop() from the flush is acted on by the next runUntilCurrent
        // (on epoll, the wait returns at once with the writer it flushed);
        // crash() clears `running`. A stop() elsewhere is acted on before
        // the wait: timed calls by runUntilCurrent itself, callbacks of the
        // wait's dispatch by the runUntilCurrent that follows it.
        let delay = if !reactor.getattr(intern!(py, "running"))?.is_truthy()?
            || (flushed && reactor.getattr(intern!(py, "_justStopped"))?.is_truthy()?)
        {
            Some(0.0)
        } else {
            self.timers.timeout(py)?
        };
        self.wait_and_dispatch(py, reactor, delay)
    }

    /// Disconnect selectables whose descriptor went away underneath them,
    /// with `ConnectionFdescWentAway`, in their log context.
    fn disconnect_lost(
        &self,
        py: Python<'_>,
        reactor: &Bound<'_, PyAny>,
        lost: Vec<Registration>,
    ) -> PyResult<()> {
        if lost.is_empty() {
            return Ok(());
        }
        let contexts = LogContext::stack(py)?;
        let api = api(py)?;
        for reg in lost {
            if let Target::Python(sel) = &reg.target {
                let sel = sel.bind(py);
                let _ctx = log_context(py, &contexts, sel, selectable::facts(sel))?;
                let why = api.no_filedesc.bind(py);
                if let Err(e) = reactor.call_method1(
                    intern!(py, "_disconnectSelectable"),
                    (sel, why, reg.reading),
                ) {
                    log_err(py, &e, None);
                }
            }
        }
        Ok(())
    }

    fn dispatch(
        &self,
        py: Python<'_>,
        reactor: &Bound<'_, PyAny>,
        ready: Vec<Ready>,
    ) -> PyResult<()> {
        let mut stale = false;
        let result = self.dispatch_events(py, reactor, ready, &mut stale);
        // An event for no registration happens once when a callback removed
        // a descriptor whose event was already in the batch; the same thing
        // wait after wait is an entry we cannot delete (see rebuild_poller).
        if stale {
            if self.stale_streak.fetch_add(1, Ordering::SeqCst) + 1 >= STALE_WAITS {
                self.stale_streak.store(0, Ordering::SeqCst);
                self.rebuild_poller().map_err(os_error)?;
            }
        } else {
            self.stale_streak.store(0, Ordering::SeqCst);
        }
        result
    }

    fn dispatch_events(
        &self,
        py: Python<'_>,
        reactor: &Bound<'_, PyAny>,
        ready: Vec<Ready>,
        stale: &mut bool,
    ) -> PyResult<()> {
        let mut contexts: Option<Bound<'_, PyList>> = None;
        for (key, r) in ready {
            let snap: Option<Snapshot> = lock(&self.fds).snapshot(py, key);
            let Some(snap) = snap else {
                *stale = true;
                continue;
            };
            match &snap.target {
                Target::Native(h) => h.dispatch(py, Token(key as u64), r)?,
                Target::Python(sel) => {
                    if contexts.is_none() {
                        contexts = Some(LogContext::stack(py)?);
                    }
                    let contexts = contexts
                        .as_ref()
                        .ok_or_else(|| PyTypeError::new_err("no log context"))?;
                    dispatch_python(py, reactor, contexts, sel.bind(py), &snap, r)?;
                }
            }
        }
        Ok(())
    }
}

fn log_context<'py>(
    py: Python<'py>,
    contexts: &Bound<'py, PyList>,
    sel: &Bound<'py, PyAny>,
    facts: ClassFacts,
) -> PyResult<LogContext<'py>> {
    let prefix = match log_prefix(py, sel, facts) {
        Ok(p) => p,
        // callWithLogger lets a KeyboardInterrupt go on up.
        Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => return Err(e),
        Err(e) => {
            let buggy = pyo3::types::PyString::new(py, "(buggy logPrefix method)").into_any();
            log_err(py, &e, Some(&buggy));
            buggy
        }
    };
    LogContext::push(py, contexts, &prefix)
}

/// `sel.logPrefix()`; for a class that keeps `tcp.Connection.logPrefix`
/// (which returns `self.logstr`), `sel.logstr` without the Python frame.
fn log_prefix<'py>(
    py: Python<'py>,
    sel: &Bound<'py, PyAny>,
    facts: ClassFacts,
) -> PyResult<Bound<'py, PyAny>> {
    if facts.logstr_prefix {
        return sel.getattr(intern!(py, "logstr"));
    }
    sel.call_method0(intern!(py, "logPrefix"))
}

/// Twisted's `callWithLogger(sel, _doReadOrWrite, sel, fd, event)`, natively.
///
/// A native stream transport ([`StreamIO`] with its own `doRead` and
/// `doWrite`) is called directly, with the descriptor already checked; its
/// write events first try [`StreamIO::flush_ready`], the part of `doWrite`
/// that runs no Python code and so needs no log context.
fn dispatch_python(
    py: Python<'_>,
    reactor: &Bound<'_, PyAny>,
    contexts: &Bound<'_, PyList>,
    sel: &Bound<'_, PyAny>,
    snap: &Snapshot,
    r: Readiness,
) -> PyResult<()> {
    // polling reports hang-up and error as both readable and writable; ask
    // for the exact flags then, so the choice below is epoll's.
    let r = if r.hangup || r.error {
        readiness_now(snap.fd).unwrap_or(r)
    } else {
        r
    };
    let disconnected = r.hangup || r.error;
    let readable = snap.reading && r.readable;
    let writable = snap.writing && r.writable;
    let facts = selectable::facts(sel);
    let native = StreamIO::native(sel, facts);
    if let Some(io) = native {
        if writable && !readable && !disconnected {
            if let Ok(Some(fd)) = fileno_of(sel) {
                // An error here is met again, and reported, by doWrite below.
                if let Ok(true) = StreamIO::flush_ready(io, fd) {
                    return Ok(());
                }
            }
        }
    }
    let _ctx = log_context(py, contexts, sel, facts)?;
    let api = api(py)?;
    let mut in_read = false;
    let why: Bound<'_, PyAny> = if disconnected && !readable {
        // Hang-up with no input left: a clean close if we were reading.
        in_read = snap.reading;
        if snap.reading {
            api.connection_done.bind(py).clone()
        } else {
            api.connection_lost.bind(py).clone()
        }
    } else {
        let attempt = (|| -> PyResult<Bound<'_, PyAny>> {
            let Some(fd) = fileno_of(sel)? else {
                in_read = false;
                return Ok(api.no_filedesc.bind(py).clone());
            };
            let mut why = py.None().into_bound(py);
            if readable {
                why = match native {
                    Some(io) => StreamIO::read_ready(io, fd)?.into_bound(py),
                    None => sel.call_method0(intern!(py, "doRead"))?,
                };
                in_read = true;
            }
            if !why.is_truthy()? && writable {
                // doRead ran Python code, which may have closed the
                // descriptor or replaced doWrite on the instance (as
                // abortConnection does): ask both again.
                let native = if readable {
                    StreamIO::native(sel, selectable::facts(sel))
                } else {
                    native
                };
                why = match native {
                    Some(io) if readable => {
                        StreamIO::write_ready(io, stream_io::fileno(sel)?, true)?.into_bound(py)
                    }
                    Some(io) => StreamIO::write_ready(io, fd, true)?.into_bound(py),
                    None => sel.call_method0(intern!(py, "doWrite"))?,
                };
                in_read = false;
            }
            Ok(why)
        })();
        match attempt {
            Ok(why) => why,
            Err(e) => {
                // Application errors are logged and disconnect the selectable.
                log_err(py, &e, None);
                e.value(py).clone().into_any()
            }
        }
    };
    if why.is_truthy().unwrap_or(true) {
        if let Err(e) =
            reactor.call_method1(intern!(py, "_disconnectSelectable"), (sel, &why, in_read))
        {
            log_err(py, &e, None);
        }
    }
    Ok(())
}

#[pymethods]
impl Loop {
    #[new]
    fn new() -> PyResult<Self> {
        let poller = Poller::new().map_err(os_error)?;
        let waker = Waker::new().map_err(os_error)?;
        waker.register(&poller).map_err(os_error)?;
        Ok(Loop {
            poller: RwLock::new(Arc::new(poller)),
            waker,
            stale_streak: AtomicUsize::new(0),
            rebuilds: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
            wait_log: Mutex::new(None),
            fds: Mutex::new(FdSet::default()),
            timers: Arc::new(TimerQueue::default()),
            calls: ThreadCalls::default(),
            ready: Arc::new(ReadyQueue::default()),
            events: Mutex::new(None),
            last_sweep: Mutex::new(Instant::now()),
            signal_pipe: Mutex::new(None),
        })
    }

    // --- IReactorTime -----------------------------------------------------

    /// `callLater(delay, callable, *args, **kw)`.
    #[pyo3(signature = (delay, callable, *args, **kw))]
    fn call_later(
        &self,
        py: Python<'_>,
        delay: f64,
        callable: Py<PyAny>,
        args: Py<PyTuple>,
        kw: Option<Py<PyDict>>,
    ) -> PyResult<Py<DelayedCall>> {
        self.timers.call_later(py, delay, callable, args, kw)
    }

    /// `seconds()`: the wall clock, unless `set_clock` replaced it.
    fn seconds(&self, py: Python<'_>) -> PyResult<f64> {
        self.timers.now(py)
    }

    /// Replace the clock (`reactor.seconds = f`), or restore it with `None`.
    fn set_clock(&self, clock: Option<Py<PyAny>>) {
        self.timers.set_clock(clock);
    }

    fn get_clock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.timers.clock(py)
    }

    fn get_delayed_calls(&self, py: Python<'_>) -> Vec<Py<DelayedCall>> {
        self.timers.pending(py)
    }

    /// Seconds until the next timed call, or `None`.
    fn timeout(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        self.timers.timeout(py)
    }

    // --- IReactorThreads ---------------------------------------------------

    /// `callFromThread(f, *args, **kw)`: safe from any thread; wakes the loop.
    #[pyo3(signature = (f, *args, **kw))]
    fn call_from_thread(
        &self,
        f: &Bound<'_, PyAny>,
        args: Py<PyTuple>,
        kw: Option<Py<PyDict>>,
    ) -> PyResult<()> {
        if !f.is_callable() {
            return Err(PyAssertionError::new_err(format!("{f} is not callable")));
        }
        self.calls.push(f.clone().unbind(), args, kw);
        self.notify()
    }

    /// Wake the loop from any thread.
    fn wake(&self) -> PyResult<()> {
        self.notify()
    }

    /// A descriptor for `signal.set_wakeup_fd`: a byte written to it wakes the
    /// loop, which then runs Python's signal handlers.
    fn signal_fd(&self) -> PyResult<RawFd> {
        let mut pipe = lock(&self.signal_pipe);
        if let Some(p) = pipe.as_ref() {
            return Ok(p.write.as_raw_fd());
        }
        let (read, write) = nonblocking_pipe().map_err(os_error)?;
        let drain = Arc::new(SignalDrain { read });
        self.add_native(drain.read.as_raw_fd(), drain.clone(), true, false)
            .map_err(os_error)?;
        let fd = write.as_raw_fd();
        *pipe = Some(SignalPipe {
            write,
            _read: drain,
        });
        Ok(fd)
    }

    // --- IReactorFDSet -----------------------------------------------------

    /// Watch `reader` for input. Returns False if epoll cannot watch its
    /// descriptor (a regular file): the reactor then polls it continuously.
    fn add_reader(&self, py: Python<'_>, reader: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.add(py, reader, true)
    }

    fn add_writer(&self, py: Python<'_>, writer: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.add(py, writer, false)
    }

    /// Returns whether `reader` was being watched for input.
    fn remove_reader(&self, reader: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove(reader, true)
    }

    fn remove_writer(&self, writer: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove(writer, false)
    }

    fn readers(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        lock(&self.fds).python_targets(py, true)
    }

    fn writers(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        lock(&self.fds).python_targets(py, false)
    }

    /// How many times the poller was rebuilt to drop unreachable entries.
    fn poller_rebuilds(&self) -> usize {
        self.rebuilds.load(Ordering::SeqCst)
    }

    /// How many waits (one per `doIteration`) the loop has made so far:
    /// tests measure "within the next iteration" with it, not with a clock.
    fn waits(&self) -> usize {
        self.waits.load(Ordering::Relaxed)
    }

    /// Start (`True`) or stop keeping a record of every wait; starting
    /// clears the record.
    fn record_waits(&self, on: bool) {
        *lock(&self.wait_log) = on.then(Vec::new);
    }

    /// The waits recorded since `record_waits(True)`, oldest first: each is
    /// `(timeout, events)`, the timeout in seconds (`None`: no limit) after
    /// the loop's own adjustments, and the number of events the kernel
    /// reported (a wake-up included; 0: it timed out or was interrupted).
    fn recorded_waits(&self) -> Vec<WaitRecord> {
        lock(&self.wait_log).clone().unwrap_or_default()
    }

    /// How many descriptors are registered (Python and native).
    fn registered(&self) -> usize {
        lock(&self.fds).len()
    }

    // --- IReactorCore --------------------------------------------------------

    /// Twisted's `runUntilCurrent`.
    fn run_until_current(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<()> {
        self.calls.run(py);
        self.timers.insert_fresh(py);
        let now = self.timers.now(py)?;
        self.timers.run_due(py, now);
        // asyncio's pass: what call_soon, asyncio readiness and the due
        // TimerHandles just above queued (see crate::aio::ready).
        self.ready.run_pass(py)?;
        if reactor.getattr(intern!(py, "_justStopped"))?.is_truthy()? {
            reactor.setattr(intern!(py, "_justStopped"), false)?;
            reactor.call_method1(intern!(py, "fireSystemEvent"), (intern!(py, "shutdown"),))?;
        }
        Ok(())
    }

    /// Twisted's `doIteration(delay)`: wait at most `delay` seconds (`None`:
    /// until something happens) and dispatch what is ready.
    #[pyo3(signature = (reactor, delay=None))]
    fn do_iteration(
        &self,
        py: Python<'_>,
        reactor: &Bound<'_, PyAny>,
        delay: Option<f64>,
    ) -> PyResult<()> {
        // The writers the flush served are what epoll's wait would have
        // reported at once, so that wait would not have slept: neither does
        // this one, which only collects whatever else is ready. (`delay` was
        // computed before the flush and cannot know what it scheduled.)
        let delay = if self.flush_optimistic(py, reactor)? {
            Some(0.0)
        } else {
            delay
        };
        self.wait_and_dispatch(py, reactor, delay)
    }

    /// The asyncio face's `run_forever` (`twisted_shim.aio`): iterations
    /// as its `_run_once` makes them (the wait, a poll once `face._stopping`
    /// is set, and its dispatch; then `runUntilCurrent`), until
    /// `face._stopping` is true after one. An exception propagates, as out
    /// of asyncio's `run_forever`.
    fn run_face(
        &self,
        py: Python<'_>,
        reactor: &Bound<'_, PyAny>,
        face: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let stopping = intern!(py, "_stopping");
        // Nothing runs between the end of one iteration and the start of the
        // next, so the flag read after one holds for the next one's timeout.
        let mut stop = face.getattr(stopping)?.is_truthy()?;
        loop {
            let delay = if stop {
                Some(0.0)
            } else {
                self.timers.timeout(py)?
            };
            self.do_iteration(py, reactor, delay)?;
            self.run_until_current(py, reactor)?;
            stop = face.getattr(stopping)?.is_truthy()?;
            if stop {
                return Ok(());
            }
        }
    }

    /// Twisted's `mainLoop`: iterate while the reactor is started. An
    /// unexpected error is logged and the loop goes on.
    fn run(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<()> {
        while reactor.getattr(intern!(py, "_started"))?.is_truthy()? {
            let step = (|| -> PyResult<()> {
                self.run_until_current(py, reactor)?;
                self.iterate_main(py, reactor)
            })();
            if let Err(e) = step {
                log_failure(py, "Unexpected error in main loop", e);
            }
        }
        Ok(())
    }

    /// Drop every registration, timer and queued call (used when a reactor is
    /// discarded, and by the garbage collector).
    fn close(&self) {
        self.__clear__();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(fds) = self.fds.try_lock() {
            for o in fds.python_objects() {
                visit.call(o)?;
            }
        }
        self.timers.traverse(&visit)?;
        self.calls.traverse(&visit)?;
        self.ready.traverse(&visit)?;
        Ok(())
    }

    fn __clear__(&self) {
        let regs = lock(&self.fds).drain(&self.poller());
        drop(regs);
        lock(&self.signal_pipe).take();
        self.timers.clear();
        self.calls.clear();
        self.ready.clear();
    }
}

#[cfg(test)]
impl Loop {
    /// A loop for Rust tests of native handlers.
    pub(crate) fn for_tests() -> Loop {
        Loop::new().expect("a new loop")
    }

    /// Wait at most `timeout` seconds and dispatch what is ready to native
    /// handlers (no reactor: Rust tests register no Python selectables).
    pub(crate) fn poll_native(&self, py: Python<'_>, timeout: f64) {
        let (ready, _) = self.wait(py, Some(timeout)).expect("wait");
        let none = py.None().into_bound(py);
        self.dispatch(py, &none, ready).expect("dispatch");
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Loop>()?;
    m.add("POLL_IN", POLL_IN)?;
    m.add("POLL_OUT", POLL_OUT)?;
    m.add("POLL_ERR", POLL_ERR)?;
    m.add("POLL_HUP", POLL_HUP)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A native handler that drains a pipe and counts what it saw.
    struct Counter {
        fd: RawFd,
        bytes: AtomicUsize,
        calls: AtomicUsize,
    }

    impl NativeHandler for Counter {
        fn ready(&self, _py: Python<'_>, _token: Token, r: Readiness) {
            assert!(r.readable);
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 64];
            // SAFETY: reads into our own buffer from the test's pipe.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.bytes.fetch_add(n as usize, Ordering::SeqCst);
            }
        }
    }

    fn write_all(fd: &OwnedFd, data: &[u8]) {
        // SAFETY: writes from a slice we own to the test's pipe.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(n as usize, data.len());
    }

    #[test]
    fn native_handler_is_dispatched_and_can_be_removed() {
        Python::initialize();
        Python::attach(|py| {
            let lp = Loop::new().unwrap();
            let (r, w) = nonblocking_pipe().unwrap();
            let h = Arc::new(Counter {
                fd: r.as_raw_fd(),
                bytes: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
            });
            let token = lp
                .add_native(r.as_raw_fd(), h.clone(), true, false)
                .unwrap();
            // Registering the same descriptor twice is refused.
            assert!(lp
                .add_native(r.as_raw_fd(), h.clone(), true, false)
                .is_err());

            write_all(&w, b"hello");
            let reactor = py.None().into_bound(py);
            let (ready, lost) = lp.wait(py, Some(1.0)).unwrap();
            assert!(lost.is_empty());
            assert_eq!(ready.len(), 1);
            lp.dispatch(py, &reactor, ready).unwrap();
            assert_eq!(h.bytes.load(Ordering::SeqCst), 5);
            assert_eq!(h.calls.load(Ordering::SeqCst), 1);

            // Silenced: data waits, the handler is not called.
            lp.set_native_interest(token, false, false).unwrap();
            write_all(&w, b"again");
            let (ready, _) = lp.wait(py, Some(0.0)).unwrap();
            assert!(ready.is_empty());

            assert!(lp.remove_native(token));
            assert!(!lp.remove_native(token), "a stale token removes nothing");
            assert_eq!(lp.registered(), 0);
        });
    }

    #[test]
    fn notify_wakes_a_wait_at_once() {
        Python::initialize();
        Python::attach(|py| {
            let lp = Arc::new(Loop::new().unwrap());
            let waker = lp.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                waker.notify().unwrap();
            });
            let start = Instant::now();
            let (ready, _) = lp.wait(py, None).unwrap();
            assert!(ready.is_empty());
            assert!(start.elapsed() < Duration::from_secs(5));
            t.join().unwrap();
        });
    }
}
