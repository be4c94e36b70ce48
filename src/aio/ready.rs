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
//! - an exception out of a handle (only `SystemExit` and
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
    /// times it (`runner(handle)`); `None`: the pass runs it as
    /// `handle._run()` would (`crate::aio::handle::run`).
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
                Some(r) => {
                    r.call1(py, (handle,))?;
                }
                None => crate::aio::handle::run(py, handle)?,
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::types::PyModule;
    use std::sync::Arc;

    /// Handles as asyncio's: `_cancelled`, and `_run` appends to a log; a
    /// handle may push another while it runs, or raise.
    const HANDLES: &std::ffi::CStr = cr#"
log = []
class H:
    def __init__(self, name, then=None, raises=False):
        self.name, self.then, self.raises = name, then, raises
        self._cancelled = False
    def _run(self):
        log.append(self.name)
        if self.then is not None:
            push(self.then)
        if self.raises:
            raise KeyboardInterrupt
"#;

    /// A fresh module per test (`name`): from_code reuses a module of the
    /// same name, and the tests run in parallel.
    fn handles<'py>(
        py: Python<'py>,
        q: &Arc<ReadyQueue>,
        name: &std::ffi::CStr,
    ) -> Bound<'py, PyModule> {
        let m = PyModule::from_code(py, HANDLES, c"handles.py", name).unwrap();
        let q = q.clone();
        let push = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _| {
            q.push(args.get_item(0)?.unbind());
            PyResult::Ok(())
        })
        .unwrap();
        m.setattr("push", push).unwrap();
        m
    }

    fn log(m: &Bound<'_, PyModule>) -> Vec<String> {
        m.getattr("log").unwrap().extract().unwrap()
    }

    #[test]
    fn a_pass_runs_what_was_queued_when_it_began_in_order() {
        Python::initialize();
        Python::attach(|py| {
            let q = Arc::new(ReadyQueue::default());
            let m = handles(py, &q, c"handles_order");
            let h = m.getattr("H").unwrap();
            let later = h.call1(("later",)).unwrap();
            let skipped = h.call1(("skipped",)).unwrap();
            skipped.setattr("_cancelled", true).unwrap();
            q.push(h.call1(("a", later)).unwrap().unbind());
            q.push(skipped.unbind());
            q.push(h.call1(("b",)).unwrap().unbind());
            q.run_pass(py).unwrap();
            assert_eq!(log(&m), ["a", "b"]);
            assert_eq!(q.len(), 1, "pushed during the pass: next pass");
            q.run_pass(py).unwrap();
            assert_eq!(log(&m), ["a", "b", "later"]);
            assert!(q.is_empty());
        });
    }

    #[test]
    fn an_exception_ends_the_pass_and_keeps_the_rest_queued() {
        Python::initialize();
        Python::attach(|py| {
            let q = Arc::new(ReadyQueue::default());
            let m = handles(py, &q, c"handles_error");
            let h = m.getattr("H").unwrap();
            let kw = pyo3::types::PyDict::new(py);
            kw.set_item("raises", true).unwrap();
            q.push(h.call(("boom",), Some(&kw)).unwrap().unbind());
            q.push(h.call1(("after",)).unwrap().unbind());
            assert!(q.run_pass(py).is_err());
            assert_eq!(log(&m), ["boom"]);
            assert_eq!(q.len(), 1);
            q.run_pass(py).unwrap();
            assert_eq!(log(&m), ["boom", "after"]);
            q.clear();
        });
    }
}
