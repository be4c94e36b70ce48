//! The queue behind `callFromThread`.
//!
//! Any thread may push; only the reactor thread drains. A push wakes the loop
//! through the poller's notifier, which writes to its eventfd only when no
//! wake-up is already pending, so a burst of calls costs one syscall.
//!
//! Calls queued while a drain is running wait for the next iteration (as in
//! Twisted's `runUntilCurrent`), and the loop does not sleep while any wait.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::time::lock;
use crate::twisted::log_failure;

struct ThreadCall {
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kw: Option<Py<PyDict>>,
}

#[derive(Default)]
pub struct ThreadCalls {
    queue: Mutex<Vec<ThreadCall>>,
}

impl ThreadCalls {
    pub fn push(&self, func: Py<PyAny>, args: Py<PyTuple>, kw: Option<Py<PyDict>>) {
        lock(&self.queue).push(ThreadCall { func, args, kw });
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// Run the calls queued so far; exceptions are logged and do not stop
    /// the others.
    pub fn run(&self, py: Python<'_>) {
        let batch = std::mem::take(&mut *lock(&self.queue));
        for call in batch {
            let kw = call.kw.as_ref().map(|k| k.bind(py));
            if let Err(e) = call.func.call(py, call.args.bind(py), kw) {
                log_failure(py, "while calling from thread", e);
            }
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(q) = self.queue.try_lock() {
            for c in q.iter() {
                visit.call(&c.func)?;
                visit.call(&c.args)?;
                if let Some(k) = &c.kw {
                    visit.call(k)?;
                }
            }
        }
        Ok(())
    }

    pub fn clear(&self) {
        lock(&self.queue).clear();
    }
}
