//! The asyncio ready queue: the FIFO behind `call_soon`, run once per
//! iteration of the one loop.
//!
//! The [`Loop`](crate::event_loop::Loop) owns one `ReadyQueue` whether or not
//! an asyncio face exists; an empty queue costs the loop two atomic loads
//! per iteration (in `runUntilCurrent` and before the wait).
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
//! The collector: a handle `call_soon` makes is taken out of the cycle
//! collector's lists (`PyObject_GC_UnTrack`) while it is queued, with the
//! context copied for it, and put back (`PyObject_GC_Track`) when it leaves
//! the queue (run, skipped, cleared or dropped), before the queue's reference
//! to it is released. While queued, the queue holds it, so it and whatever
//! it refers to cannot be garbage; untracked, the collector does not visit
//! it on every young collection, nor promote it to older generations it
//! would later have to visit whole (with a thousand handles queued per pass
//! that was most of a `call_soon`'s cost, all the more in a process whose
//! heap is large). Nothing else changes: an object the collector does not
//! track keeps what it refers to alive, as the queue does anyway.
//!
//! Any thread may push (the queue is behind a mutex; `call_soon_threadsafe`
//! then wakes the loop); only the loop's thread runs a pass. No lock is held
//! while Python code runs: a pass moves the queued handles out of the queue
//! in one swap and runs them one at a time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::collector::{retrack, untrack};
use crate::time::lock;

/// One queued handle, and what the queue took out of the collector's lists
/// for it (see the module's docs).
pub struct Queued {
    obj: Py<PyAny>,
    untracked: Untracked,
}

enum Untracked {
    Nothing,
    /// The handle, and the context made for it if any.
    Handle(Option<Py<PyAny>>),
}

impl Queued {
    fn plain(obj: Py<PyAny>) -> Queued {
        Queued {
            obj,
            untracked: Untracked::Nothing,
        }
    }

    /// Give the collector back what this entry took.
    fn restore(&mut self, py: Python<'_>) {
        if let Untracked::Handle(context) =
            std::mem::replace(&mut self.untracked, Untracked::Nothing)
        {
            retrack(self.obj.bind(py));
            if let Some(c) = &context {
                retrack(c.bind(py));
            }
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if matches!(self.untracked, Untracked::Handle(_)) {
            // An entry dropped without the queue's pass or `clear` (the
            // queue itself is dropped): with the GIL, if it can be had.
            let _ = Python::try_attach(|py| self.restore(py));
        }
    }
}

#[derive(Default)]
pub struct ReadyQueue {
    queue: Mutex<VecDeque<Queued>>,
    /// `queue.len()`, readable without the lock.
    queued: AtomicUsize,
    /// The handles of the pass under way not yet run (the pass moved them
    /// out of `queue` when it began): `len()` counts them, as asyncio's
    /// `len(_ready)` does during its pass.
    in_pass: AtomicUsize,
    /// Bumped by `clear`: a pass under way drops what it has not run.
    epoch: AtomicU64,
    /// An empty queue with capacity, swapped with `queue` when a pass
    /// begins so that neither allocates in the steady state.
    spare: Mutex<VecDeque<Queued>>,
    /// In asyncio's debug mode, the face's function that runs one handle and
    /// times it (`runner(handle)`); `None`: the pass runs it as
    /// `handle._run()` would (`crate::aio::handle::run`).
    runner: Mutex<Option<Py<PyAny>>>,
}

impl ReadyQueue {
    pub fn push(&self, handle: Py<PyAny>) {
        self.push_entry(Queued::plain(handle));
    }

    /// Queue a handle made by `call_soon`, out of the collector's lists
    /// with `context`, the context made for it (see the module's docs).
    pub fn push_made(&self, handle: Bound<'_, PyAny>, context: Option<Bound<'_, PyAny>>) {
        let entry = if untrack(&handle) {
            let context = context.filter(untrack).map(Bound::unbind);
            Queued {
                obj: handle.unbind(),
                untracked: Untracked::Handle(context),
            }
        } else {
            Queued::plain(handle.unbind())
        };
        self.push_entry(entry);
    }

    fn push_entry(&self, entry: Queued) {
        let mut q = lock(&self.queue);
        q.push_back(entry);
        self.queued.store(q.len(), Ordering::Release);
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire) + self.in_pass.load(Ordering::Acquire)
    }

    pub fn set_runner(&self, runner: Option<Py<PyAny>>) -> Option<Py<PyAny>> {
        std::mem::replace(&mut *lock(&self.runner), runner)
    }

    /// Run one pass: the handles queued now, in order (see the module's
    /// semantics). The pass takes them all out of the queue at once;
    /// handles pushed meanwhile go to the (now empty) queue for the next
    /// pass. If a handle raises, those of this pass not yet run go back to
    /// the front of the queue, in order.
    pub fn run_pass(&self, py: Python<'_>) -> PyResult<()> {
        if self.is_empty() {
            return Ok(());
        }
        let runner = lock(&self.runner).as_ref().map(|r| r.clone_ref(py));
        let mut batch = std::mem::take(&mut *lock(&self.spare));
        {
            let mut q = lock(&self.queue);
            std::mem::swap(&mut *q, &mut batch);
            self.queued.store(0, Ordering::Release);
        }
        // A pass inside a handle of another (`reactor.iterate()` from a
        // callback) counts the outer pass's handles too.
        let outer = self.in_pass.load(Ordering::Acquire);
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut result = Ok(());
        while let Some(mut entry) = batch.pop_front() {
            self.in_pass.store(outer + batch.len(), Ordering::Release);
            let handle = entry.obj.bind(py);
            let step = match crate::aio::handle::cancelled(py, handle) {
                Ok(true) => Ok(()),
                Ok(false) => match &runner {
                    Some(r) => r.call1(py, (handle,)).map(drop),
                    None => crate::aio::handle::run(py, handle),
                },
                Err(e) => Err(e),
            };
            entry.restore(py);
            drop(entry);
            if let Err(e) = step {
                result = Err(e);
                break;
            }
            if self.epoch.load(Ordering::Acquire) != epoch {
                for mut e in batch.drain(..) {
                    e.restore(py);
                }
            }
        }
        if !batch.is_empty() {
            let mut q = lock(&self.queue);
            for e in batch.drain(..).rev() {
                q.push_front(e);
            }
            self.queued.store(q.len(), Ordering::Release);
        }
        self.in_pass.store(outer, Ordering::Release);
        let mut spare = lock(&self.spare);
        if spare.capacity() < batch.capacity() {
            *spare = batch;
        }
        result
    }

    /// Drop every queued handle, and those a pass under way has not run
    /// yet; they are dropped after the lock is released (dropping one may
    /// run Python code that pushes).
    pub fn clear(&self) {
        let drained: VecDeque<Queued> = {
            let mut q = lock(&self.queue);
            self.queued.store(0, Ordering::Release);
            std::mem::take(&mut *q)
        };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(drained);
        let runner = lock(&self.runner).take();
        drop(runner);
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(q) = self.queue.try_lock() {
            for e in q.iter() {
                visit.call(&e.obj)?;
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
