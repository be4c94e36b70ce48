//! Timed calls: the heap behind `IReactorTime.callLater` and the `DelayedCall`
//! objects it returns.
//!
//! Semantics follow `twisted.internet.base.ReactorBase` exactly:
//!
//! - a new call goes to `fresh` and joins the heap only at the next
//!   `insert_fresh` (start of `runUntilCurrent`, or `timeout()`), so a call
//!   scheduled by a timed call never runs in the same pass;
//! - `reset` to a later time and `delay` only add to `delayed_time`; the entry
//!   is pushed again with its new time when it reaches the top of the heap;
//! - `reset` to an earlier time moves the call: the old heap entry becomes
//!   stale (its `gen` no longer matches the call's) and a new one is pushed.
//!
//! Invariant: every live (neither called nor cancelled) call has exactly one
//! heap entry whose `gen` equals the call's `gen`, or sits in `fresh`. Stale and
//! cancelled entries are dropped lazily, and the heap is rebuilt when they
//! outnumber the live ones, as Twisted does with `_cancellations`.
//!
//! Ties fire in the order the calls were scheduled (a sequence number breaks
//! them), which Twisted's heap does not promise but never contradicts.
//!
//! While the queue holds a call (in `fresh` or the heap, until it runs, is
//! cancelled or is dropped), the call and its arguments tuple, and what a
//! caller asks it to hold (the asyncio face's `TimerHandle` and its
//! context), are out of the cycle collector's lists ([`crate::collector`]);
//! they go back when the call runs or is cancelled, or its entry leaves the
//! queue, whichever comes first.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyAssertionError, PyAttributeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::collector::{retrack, untrack};
use crate::twisted::{api, log_failure};

/// The longest sleep the loop computes, as Twisted's `timeout()` clamps it:
/// 2**31 milliseconds, what `epoll_wait` accepts.
pub const LONGEST_TIMEOUT: f64 = 2147483.0;

/// Lock a mutex whose data stays consistent even if a holder panicked: every
/// critical section here only moves whole values.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seconds since the epoch, as `time.time()` (Twisted's `runtimeSeconds`).
pub fn wall_clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Entry {
    time: f64,
    seq: u64,
    gen: u32,
    call: Py<DelayedCall>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so `BinaryHeap` (a max-heap) pops the earliest entry.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .time
            .total_cmp(&self.time)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct TimerState {
    heap: BinaryHeap<Entry>,
    fresh: Vec<Py<DelayedCall>>,
    seq: u64,
    /// Heap entries that will be discarded when popped (cancelled or moved).
    stale: usize,
}

impl Drop for TimerState {
    /// The calls still queued leave the queue: what it untracked goes back
    /// to the collector (with the GIL, if it can be had).
    fn drop(&mut self) {
        if self.heap.is_empty() && self.fresh.is_empty() {
            return;
        }
        let _ = Python::try_attach(|py| {
            for e in self.heap.iter() {
                DelayedCall::restore_of(e.call.bind(py));
            }
            for c in self.fresh.iter() {
                DelayedCall::restore_of(c.bind(py));
            }
        });
    }
}

impl TimerState {
    fn push(&mut self, time: f64, gen: u32, call: Py<DelayedCall>) {
        self.seq += 1;
        self.heap.push(Entry {
            time,
            seq: self.seq,
            gen,
            call,
        });
    }
}

/// The timer queue of one loop, shared (weakly) with its `DelayedCall`s so
/// that `cancel` and `reset` can reach it.
#[derive(Default)]
pub struct TimerQueue {
    state: Mutex<TimerState>,
    /// A replacement for the wall clock: `reactor.seconds` assigned by user
    /// code (Twisted's own tests do this).
    clock: Mutex<Option<Py<PyAny>>>,
}

impl TimerQueue {
    /// The reactor's notion of now.
    pub fn now(&self, py: Python<'_>) -> PyResult<f64> {
        let clock = lock(&self.clock).as_ref().map(|c| c.clone_ref(py));
        match clock {
            None => Ok(wall_clock()),
            Some(c) => c.call0(py)?.extract(py),
        }
    }

    pub fn set_clock(&self, clock: Option<Py<PyAny>>) {
        *lock(&self.clock) = clock;
    }

    pub fn clock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.clock).as_ref().map(|c| c.clone_ref(py))
    }

    /// Schedule `func(*args, **kw)` `delay` seconds from now.
    pub fn call_later(
        self: &Arc<Self>,
        py: Python<'_>,
        delay: f64,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kw: Option<Py<PyDict>>,
    ) -> PyResult<Py<DelayedCall>> {
        // Twisted asserts; keep its exception type and message. NaN fails too.
        if delay.is_nan() || delay < 0.0 {
            return Err(PyAssertionError::new_err(format!(
                "{delay} is not greater than or equal to 0 seconds"
            )));
        }
        let time = self.now(py)? + delay;
        self.call_at(py, time, func, args, kw)
    }

    /// Schedule `func(*args, **kw)` at `time` on this queue's clock (the
    /// asyncio face's `call_at`; `call_later` is this at now + delay). A
    /// time in the past is due at the next pass. `time` must not be NaN:
    /// callers check (`call_later` its delay, the asyncio face its `when`).
    #[inline]
    pub fn call_at(
        self: &Arc<Self>,
        py: Python<'_>,
        time: f64,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kw: Option<Py<PyDict>>,
    ) -> PyResult<Py<DelayedCall>> {
        self.call_at_holding(py, time, func, args, kw, [None, None])
    }

    /// [`TimerQueue::call_at`], the queue holding `held` too (out of the
    /// collector's lists while it holds the call; see the module's docs):
    /// objects made for this call alone, referred to by its arguments. Such
    /// a call lets go of its arguments once it has run (they are then the
    /// empty tuple): the asyncio face's `TimerHandle` refers to its call,
    /// and a call that kept it would make every fired timer a reference
    /// cycle, garbage only the collector can free.
    #[inline]
    pub fn call_at_holding(
        self: &Arc<Self>,
        py: Python<'_>,
        time: f64,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kw: Option<Py<PyDict>>,
        held: [Option<Bound<'_, PyAny>>; 2],
    ) -> PyResult<Py<DelayedCall>> {
        // The caller's stack, as Twisted's DelayedCall records it in debug
        // mode (its `[:-2]` drops callLater and __init__, which are not
        // Python frames here).
        let creator = if debug_mode(py)? {
            Some(api(py)?.format_stack.call0(py)?)
        } else {
            None
        };
        let call = Py::new(
            py,
            DelayedCall {
                time,
                delayed_time: 0.0,
                func: Some(func),
                args: Some(args),
                kw,
                called: false,
                cancelled: false,
                gen: 0,
                queue: Arc::downgrade(self),
                creator,
                frozen_repr: None,
                untracked: Untracked::default(),
                release_args: held.iter().any(Option::is_some),
            },
        )?;
        {
            let bound = call.bind(py);
            let mut c = bound.borrow_mut();
            c.untracked.call = untrack(bound.as_any());
            c.untracked.args = c
                .args
                .as_ref()
                .is_some_and(|a| untrack(a.bind(py).as_any()));
            for (slot, obj) in c.untracked.held.iter_mut().zip(held) {
                *slot = obj.filter(untrack).map(Bound::unbind);
            }
        }
        lock(&self.state).fresh.push(call.clone_ref(py));
        Ok(call)
    }

    /// Move calls scheduled since the last pass into the heap.
    pub fn insert_fresh(&self, py: Python<'_>) {
        let mut st = lock(&self.state);
        if st.fresh.is_empty() {
            return;
        }
        for call in std::mem::take(&mut st.fresh) {
            let bound = call.bind(py);
            let mut c = bound.borrow_mut();
            if c.cancelled {
                c.restore(bound);
                st.stale = st.stale.saturating_sub(1);
                continue;
            }
            c.activate_delay();
            let (time, gen) = (c.time, c.gen);
            drop(c);
            st.push(time, gen, call);
        }
    }

    /// Seconds until the earliest call is due (never negative, at most
    /// [`LONGEST_TIMEOUT`]), or `None` when nothing is scheduled.
    pub fn timeout(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        self.insert_fresh(py);
        let first = {
            let mut st = lock(&self.state);
            // Drop cancelled or moved entries on top: they would only wake
            // the loop early for nothing.
            while let Some(e) = st.heap.peek() {
                let c = e.call.bind(py).borrow();
                if !(c.cancelled || c.called || c.gen != e.gen) {
                    break;
                }
                drop(c);
                if let Some(e) = st.heap.pop() {
                    DelayedCall::restore_of(e.call.bind(py));
                }
                st.stale = st.stale.saturating_sub(1);
            }
            st.heap.peek().map(|e| e.time)
        };
        match first {
            None => Ok(None),
            Some(t) => Ok(Some((t - self.now(py)?).clamp(0.0, LONGEST_TIMEOUT))),
        }
    }

    /// Run every call due at `now`. Exceptions are logged, as Twisted does.
    pub fn run_due(&self, py: Python<'_>, now: f64) {
        loop {
            let entry = {
                let mut st = lock(&self.state);
                match st.heap.peek() {
                    Some(e) if e.time <= now => st.heap.pop(),
                    _ => None,
                }
            };
            let Some(entry) = entry else { break };
            let bound = entry.call.bind(py);
            let mut c = bound.borrow_mut();
            if c.cancelled || c.called || c.gen != entry.gen {
                c.restore(bound);
                let mut st = lock(&self.state);
                st.stale = st.stale.saturating_sub(1);
                continue;
            }
            if c.delayed_time > 0.0 {
                c.activate_delay();
                let (time, gen) = (c.time, c.gen);
                drop(c);
                lock(&self.state).push(time, gen, entry.call);
                continue;
            }
            c.called = true;
            c.restore(bound);
            let func = c.func.as_ref().map(|f| f.clone_ref(py));
            let args = if c.release_args {
                c.args.replace(PyTuple::empty(py).unbind())
            } else {
                c.args.as_ref().map(|a| a.clone_ref(py))
            };
            let kw = c.kw.as_ref().map(|k| k.clone_ref(py));
            drop(c);
            if let (Some(func), Some(args)) = (func, args) {
                if let Err(e) = func.call(py, args.bind(py), kw.as_ref().map(|k| k.bind(py))) {
                    log_failure(py, "while handling timed call", e);
                }
            }
        }
        self.compact(py);
    }

    /// Rebuild the heap without stale entries once they are the majority.
    fn compact(&self, py: Python<'_>) {
        let mut st = lock(&self.state);
        if st.stale > 50 && st.stale > st.heap.len() >> 1 {
            let entries = std::mem::take(&mut st.heap).into_vec();
            let (live, stale): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| {
                let c = e.call.bind(py).borrow();
                !c.cancelled && !c.called && c.gen == e.gen
            });
            st.heap = live.into();
            st.stale = 0;
            drop(st);
            for e in stale {
                DelayedCall::restore_of(e.call.bind(py));
            }
        }
    }

    /// Every pending call, as `getDelayedCalls()` returns them.
    pub fn pending(&self, py: Python<'_>) -> Vec<Py<DelayedCall>> {
        let st = lock(&self.state);
        st.heap
            .iter()
            .filter(|e| {
                let c = e.call.bind(py).borrow();
                !c.cancelled && !c.called && c.gen == e.gen
            })
            .map(|e| e.call.clone_ref(py))
            .chain(
                st.fresh
                    .iter()
                    .filter(|c| !c.bind(py).borrow().cancelled)
                    .map(|c| c.clone_ref(py)),
            )
            .collect()
    }

    fn note_cancelled(&self) {
        lock(&self.state).stale += 1;
    }

    /// A call's time moved earlier: push a new entry; the old one is stale.
    fn moved_sooner(&self, call: &Bound<'_, DelayedCall>, time: f64, gen: u32) {
        let mut st = lock(&self.state);
        if st.fresh.iter().any(|c| c.is(call)) {
            // Still in `fresh`: it joins the heap with its new time anyway.
            return;
        }
        st.stale += 1;
        st.push(time, gen, call.clone().unbind());
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(st) = self.state.try_lock() {
            for e in st.heap.iter() {
                visit.call(&e.call)?;
            }
            for c in st.fresh.iter() {
                visit.call(c)?;
            }
        }
        if let Ok(clock) = self.clock.try_lock() {
            if let Some(c) = clock.as_ref() {
                visit.call(c)?;
            }
        }
        Ok(())
    }

    pub fn clear(&self) {
        let taken = std::mem::take(&mut *lock(&self.state));
        drop(taken);
        *lock(&self.clock) = None;
    }
}

/// A call scheduled with `callLater`; provides `IDelayedCall`.
///
/// Mirrors `twisted.internet.base.DelayedCall`: `time` is the scheduled time
/// without `delayed_time`; `getTime()` is their sum. `func`, `args` and `kw`
/// are gone once the call is cancelled.
#[pyclass(module = "twisted_shim._core", weakref)]
pub struct DelayedCall {
    time: f64,
    delayed_time: f64,
    func: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    kw: Option<Py<PyDict>>,
    called: bool,
    cancelled: bool,
    /// Bumped whenever the call is moved in the heap; see the module docs.
    gen: u32,
    queue: Weak<TimerQueue>,
    /// In debug mode, the stack (a list of strings) that scheduled the call.
    creator: Option<Py<PyAny>>,
    /// In debug mode, the repr taken when the call was cancelled (before its
    /// function and arguments were dropped), as Twisted's `_repr`.
    frozen_repr: Option<String>,
    /// What the queue took out of the collector's lists (module docs).
    untracked: Untracked,
    /// Whether the arguments are dropped once the call has run (see
    /// [`TimerQueue::call_at_holding`]).
    release_args: bool,
}

/// What the timer queue untracked for one call while it holds it.
#[derive(Default)]
struct Untracked {
    /// The call itself.
    call: bool,
    /// Its arguments tuple.
    args: bool,
    /// Objects the scheduler asked the queue to hold.
    held: [Option<Py<PyAny>>; 2],
}

/// Whether `twisted.internet.base.DelayedCall.debug` is set: the switch
/// Twisted users flip to see where a pending call was made (trial's
/// "dirty reactor" reports print it).
fn debug_mode(py: Python<'_>) -> PyResult<bool> {
    api(py)?
        .delayed_call_class
        .bind(py)
        .getattr(pyo3::intern!(py, "debug"))?
        .is_truthy()
}

impl DelayedCall {
    /// Give the collector back what the queue untracked for this call
    /// (`me` is this call); nothing the second time.
    fn restore(&mut self, me: &Bound<'_, DelayedCall>) {
        let u = std::mem::take(&mut self.untracked);
        if u.call {
            retrack(me.as_any());
        }
        if u.args {
            if let Some(a) = &self.args {
                retrack(a.bind(me.py()).as_any());
            }
        }
        for obj in u.held.into_iter().flatten() {
            retrack(obj.bind(me.py()));
        }
    }

    /// [`DelayedCall::restore`] of a call the queue lets go. The queue
    /// never holds a borrow of a call while it calls this, and neither does
    /// anything else while the queue runs (no Python code runs in between);
    /// if one were held, the call would stay out of the lists.
    fn restore_of(call: &Bound<'_, DelayedCall>) {
        if let Ok(mut c) = call.try_borrow_mut() {
            c.restore(call);
        }
    }

    /// Neither called nor cancelled.
    pub fn is_active(&self) -> bool {
        !(self.cancelled || self.called)
    }

    fn activate_delay(&mut self) {
        self.time += self.delayed_time;
        self.delayed_time = 0.0;
    }

    fn check_pending(&self, py: Python<'_>) -> PyResult<()> {
        if self.cancelled {
            Err(PyErr::from_value(
                api(py)?.already_cancelled.bind(py).call0()?,
            ))
        } else if self.called {
            Err(PyErr::from_value(api(py)?.already_called.bind(py).call0()?))
        } else {
            Ok(())
        }
    }

    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        match self.queue.upgrade() {
            Some(q) => q.now(py),
            None => Ok(wall_clock()),
        }
    }
}

fn missing(name: &str) -> PyErr {
    PyAttributeError::new_err(format!(
        "'DelayedCall' object has no attribute '{name}' (the call was cancelled)"
    ))
}

fn func_name(func: &Bound<'_, PyAny>) -> String {
    for attr in ["__qualname__", "__name__"] {
        if let Ok(n) = func.getattr(attr).and_then(|n| n.extract::<String>()) {
            return n;
        }
    }
    safe_repr(func)
}

fn safe_repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unrepresentable object>".to_owned())
}

#[pymethods]
impl DelayedCall {
    #[getter]
    fn time(&self) -> f64 {
        self.time
    }

    #[getter]
    fn delayed_time(&self) -> f64 {
        self.delayed_time
    }

    /// `1` once the call has run, else `0` (Twisted's values).
    #[getter]
    fn called(&self) -> u8 {
        self.called as u8
    }

    #[getter]
    fn cancelled(&self) -> u8 {
        self.cancelled as u8
    }

    #[getter]
    fn func(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.func
            .as_ref()
            .map(|f| f.clone_ref(py))
            .ok_or_else(|| missing("func"))
    }

    #[getter]
    fn args(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        self.args
            .as_ref()
            .map(|a| a.clone_ref(py))
            .ok_or_else(|| missing("args"))
    }

    #[getter]
    fn kw(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        if self.cancelled {
            return Err(missing("kw"));
        }
        Ok(match self.kw.as_ref() {
            Some(k) => k.clone_ref(py),
            None => PyDict::new(py).unbind(),
        })
    }

    /// The stack that scheduled the call, in debug mode; else `None`.
    #[getter]
    fn creator(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.creator.as_ref().map(|c| c.clone_ref(py))
    }

    /// Twisted's class-wide switch (`base.DelayedCall.debug`).
    #[getter]
    fn debug(&self, py: Python<'_>) -> PyResult<bool> {
        debug_mode(py)
    }

    /// The reactor's clock (`reactor.seconds`), as Twisted's `DelayedCall.seconds`.
    fn seconds(&self, py: Python<'_>) -> PyResult<f64> {
        self.now(py)
    }

    #[pyo3(name = "getTime")]
    fn get_time(&self) -> f64 {
        self.time + self.delayed_time
    }

    fn active(&self) -> bool {
        !(self.cancelled || self.called)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut c = slf.borrow_mut();
            c.check_pending(py)?;
            c.cancelled = true;
        }
        // Twisted takes the repr after marking the call cancelled and before
        // dropping its function; a repr that fails leaves the live one.
        let frozen = if debug_mode(py).unwrap_or(false) {
            Self::__repr__(slf).ok()
        } else {
            None
        };
        let me = slf;
        let mut slf = slf.borrow_mut();
        slf.restore(me);
        slf.frozen_repr = frozen;
        slf.func = None;
        slf.args = None;
        slf.kw = None;
        if let Some(q) = slf.queue.upgrade() {
            q.note_cancelled();
        }
        Ok(())
    }

    fn reset(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = as_seconds)] seconds_from_now: f64,
    ) -> PyResult<()> {
        let py = slf.py();
        let moved = {
            let mut c = slf.borrow_mut();
            c.check_pending(py)?;
            let new_time = c.now(py)? + seconds_from_now;
            if new_time < c.time {
                c.delayed_time = 0.0;
                c.time = new_time;
                c.gen = c.gen.wrapping_add(1);
                Some((c.queue.upgrade(), new_time, c.gen))
            } else {
                c.delayed_time = new_time - c.time;
                None
            }
        };
        if let Some((Some(q), time, gen)) = moved {
            q.moved_sooner(slf, time, gen);
        }
        Ok(())
    }

    fn delay(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = as_seconds)] seconds_later: f64,
    ) -> PyResult<()> {
        let py = slf.py();
        let moved = {
            let mut c = slf.borrow_mut();
            c.check_pending(py)?;
            c.delayed_time += seconds_later;
            if c.delayed_time < 0.0 {
                c.activate_delay();
                c.gen = c.gen.wrapping_add(1);
                Some((c.queue.upgrade(), c.time, c.gen))
            } else {
                None
            }
        };
        if let Some((Some(q), time, gen)) = moved {
            q.moved_sooner(slf, time, gen);
        }
        Ok(())
    }

    #[pyo3(name = "activate_delay")]
    fn py_activate_delay(&mut self) {
        self.activate_delay();
    }

    fn __lt__(&self, other: PyRef<'_, Self>) -> bool {
        self.time < other.time
    }

    fn __le__(&self, other: PyRef<'_, Self>) -> bool {
        self.time <= other.time
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let this = slf.borrow();
        if let Some(r) = &this.frozen_repr {
            return Ok(r.clone());
        }
        let now = this.now(py)?;
        let mut s = format!(
            "<DelayedCall 0x{:x} [{}s] called={} cancelled={}",
            slf.as_ptr() as usize,
            py_float_str(py, this.time - now),
            this.called as u8,
            this.cancelled as u8
        );
        if let Some(func) = this.func.as_ref() {
            s.push(' ');
            s.push_str(&func_name(func.bind(py)));
            s.push('(');
            let mut parts: Vec<String> = Vec::new();
            if let Some(args) = this.args.as_ref() {
                parts.extend(args.bind(py).iter().map(|a| safe_repr(&a)));
            }
            if let Some(kw) = this.kw.as_ref() {
                for (k, v) in kw.bind(py).iter() {
                    parts.push(format!("{}={}", k, safe_repr(&v)));
                }
            }
            s.push_str(&parts.join(", "));
            s.push(')');
        }
        if let Some(creator) = this.creator.as_ref() {
            let lines: Vec<String> = creator
                .bind(py)
                .try_iter()?
                .map(|l| l.and_then(|l| l.extract::<String>()))
                .collect::<PyResult<_>>()?;
            s.push_str("\n\ntraceback at creation: \n\n");
            s.push_str(&lines.join("    "));
        }
        s.push('>');
        Ok(s)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(f) = &self.func {
            visit.call(f)?;
        }
        if let Some(a) = &self.args {
            visit.call(a)?;
        }
        if let Some(k) = &self.kw {
            visit.call(k)?;
        }
        if let Some(c) = &self.creator {
            visit.call(c)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.creator = None;
        self.func = None;
        self.args = None;
        self.kw = None;
    }
}

/// Accept any real number, as Twisted does for delays (ints, floats, ...).
fn as_seconds(obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    obj.extract::<f64>()
}

/// Python's `str(float)`, which Twisted's repr uses.
fn py_float_str(py: Python<'_>, x: f64) -> String {
    pyo3::types::PyFloat::new(py, x)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| x.to_string())
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DelayedCall>()?;
    Ok(())
}
