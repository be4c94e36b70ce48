//! The asyncio ready queue: the FIFO behind `call_soon`, run once per
//! iteration of the one loop.
//!
//! The [`Loop`](crate::event_loop::Loop) owns one `ReadyQueue` whether or not
//! an asyncio face exists; an empty queue costs the loop an atomic load per
//! iteration (in `runUntilCurrent` and before the wait).
//!
//! Semantics are asyncio's `BaseEventLoop._run_once`:
//!
//! - handles run in the order they were pushed (`call_soon`, readiness of an
//!   asyncio reader or writer, a due `TimerHandle`, `call_soon_threadsafe`);
//! - a pass runs the handles queued when it starts, no more: a handle pushed
//!   by a handle of this pass runs in the next pass, after the next wait,
//!   which is then a poll (the loop does not sleep while the queue is not
//!   empty);
//! - a cancelled handle (`_cancelled`) is skipped, not run;
//! - an exception out of `Handle._run` (only `SystemExit` and
//!   `KeyboardInterrupt`: asyncio's handles pass the rest to the loop's
//!   exception handler) ends the pass at once and propagates; the handles not
//!   yet run stay queued, in order.
//!
//! Any thread may push (the queue is behind a mutex; `call_soon_threadsafe`
//! then wakes the loop); only the loop's thread runs a pass. No lock is held
//! while Python code runs: a pass pops one handle at a time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::time::lock;

#[derive(Default)]
pub struct ReadyQueue {
    queue: Mutex<VecDeque<Py<PyAny>>>,
    /// `queue.len()`, readable without the lock (the loop's emptiness checks).
    len: AtomicUsize,
    /// In asyncio's debug mode, the face's function that runs one handle and
    /// times it (`runner(handle)`); `None`: the pass calls `handle._run()`.
    runner: Mutex<Option<Py<PyAny>>>,
}

impl ReadyQueue {
    pub fn push(&self, handle: Py<PyAny>) {
        let mut q = lock(&self.queue);
        q.push_back(handle);
        self.len.store(q.len(), Ordering::Release);
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn pop(&self) -> Option<Py<PyAny>> {
        let mut q = lock(&self.queue);
        let h = q.pop_front();
        self.len.store(q.len(), Ordering::Release);
        h
    }

    pub fn set_runner(&self, runner: Option<Py<PyAny>>) -> Option<Py<PyAny>> {
        std::mem::replace(&mut *lock(&self.runner), runner)
    }

    /// Run one pass: the handles queued now, in order (see the module's
    /// semantics).
    pub fn run_pass(&self, py: Python<'_>) -> PyResult<()> {
        if self.is_empty() {
            return Ok(());
        }
        let n = self.len();
        let runner = lock(&self.runner).as_ref().map(|r| r.clone_ref(py));
        for _ in 0..n {
            let Some(handle) = self.pop() else { break };
            let handle = handle.bind(py);
            if handle.getattr(intern!(py, "_cancelled"))?.is_truthy()? {
                continue;
            }
            match &runner {
                Some(r) => r.call1(py, (handle,))?,
                None => handle.call_method0(intern!(py, "_run"))?.unbind(),
            };
        }
        Ok(())
    }

    /// Drop every queued handle; they are dropped after the lock is released
    /// (dropping one may run Python code that pushes).
    pub fn clear(&self) {
        let drained: VecDeque<Py<PyAny>> = {
            let mut q = lock(&self.queue);
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut *q)
        };
        drop(drained);
        let runner = lock(&self.runner).take();
        drop(runner);
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(q) = self.queue.try_lock() {
            for h in q.iter() {
                visit.call(h)?;
            }
        }
        if let Ok(r) = self.runner.try_lock() {
            if let Some(r) = r.as_ref() {
                visit.call(r)?;
            }
        }
        Ok(())
    }
}
