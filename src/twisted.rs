//! The Twisted objects the Rust core needs, imported once and kept.
//!
//! Twisted is imported lazily (on first use, with the GIL held), so importing
//! `twisted_shim._core` stays cheap. Failures in application callbacks are
//! logged through `twisted_shim._hooks`, which turns a Python exception into a
//! `Failure` and hands it to `twisted.logger` exactly as Twisted's own
//! reactors do.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

/// Objects from Twisted and from our Python package, resolved once.
pub struct Api {
    pub already_called: Py<PyAny>,
    pub already_cancelled: Py<PyAny>,
    pub connection_done: Py<PyAny>,
    pub connection_lost: Py<PyAny>,
    pub no_filedesc: Py<PyAny>,
    pub log_failure: Py<PyAny>,
    pub log_err: Py<PyAny>,
    pub log_error: Py<PyAny>,
    pub context_tracker: Py<PyAny>,
    pub ilogcontext: Py<PyAny>,
    /// `twisted.internet.base.DelayedCall`, whose `debug` flag ours honour.
    pub delayed_call_class: Py<PyAny>,
    pub format_stack: Py<PyAny>,
    /// `tcp.Connection.logPrefix`, which returns `self.logstr`.
    pub connection_log_prefix: Py<PyAny>,
}

static API: PyOnceLock<Api> = PyOnceLock::new();

/// The resolved objects; the first call imports Twisted.
pub fn api(py: Python<'_>) -> PyResult<&'static Api> {
    API.get_or_try_init(py, || {
        let error = py.import("twisted.internet.error")?;
        let main = py.import("twisted.internet.main")?;
        let posixbase = py.import("twisted.internet.posixbase")?;
        let hooks = py.import("twisted_shim._hooks")?;
        let context = py.import("twisted.python.context")?;
        let log = py.import("twisted.python.log")?;
        let base = py.import("twisted.internet.base")?;
        let traceback = py.import("traceback")?;
        let tcp = py.import("twisted.internet.tcp")?;
        Ok(Api {
            already_called: error.getattr("AlreadyCalled")?.unbind(),
            already_cancelled: error.getattr("AlreadyCancelled")?.unbind(),
            connection_done: main.getattr("CONNECTION_DONE")?.unbind(),
            connection_lost: main.getattr("CONNECTION_LOST")?.unbind(),
            no_filedesc: posixbase.getattr("_NO_FILEDESC")?.unbind(),
            log_failure: hooks.getattr("log_failure")?.unbind(),
            log_err: hooks.getattr("log_err")?.unbind(),
            log_error: hooks.getattr("log_error")?.unbind(),
            context_tracker: context.getattr("theContextTracker")?.unbind(),
            ilogcontext: log.getattr("ILogContext")?.unbind(),
            delayed_call_class: base.getattr("DelayedCall")?.unbind(),
            format_stack: traceback.getattr("format_stack")?.unbind(),
            connection_log_prefix: tcp.getattr("Connection")?.getattr("logPrefix")?.unbind(),
        })
    })
}

/// Log `err` as Twisted's `Logger.failure(why, Failure(err))` does.
///
/// Never fails: if logging itself raises, the error is printed through
/// `sys.unraisablehook` rather than lost or propagated into the loop.
pub fn log_failure(py: Python<'_>, why: &str, err: PyErr) {
    let logged = api(py).and_then(|api| {
        api.log_failure
            .call1(py, (why, err.value(py), err.traceback(py)))
            .map(|_| ())
    });
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}

/// Log one line at error level (no exception, no traceback), in the
/// `twisted_shim.http` namespace. Never fails (as [`log_failure`]).
pub fn log_error(py: Python<'_>, message: &str) {
    let logged = api(py).and_then(|api| api.log_error.call1(py, (message,)).map(|_| ()));
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}

/// Log `err` as `twisted.python.log.err(failure, system=system)` does: the
/// legacy form used by `callWithLogger`, so the event carries the selectable's
/// log prefix.
pub fn log_err(py: Python<'_>, err: &PyErr, system: Option<&Bound<'_, PyAny>>) {
    let logged = api(py).and_then(|api| {
        api.log_err
            .call1(py, (err.value(py), err.traceback(py), system))
            .map(|_| ())
    });
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}

/// A pushed `{"system": prefix}` log context, the native form of
/// `twisted.python.log.callWithLogger`; popped on drop.
///
/// Exactly what Twisted pushes: `log.callWithContext` copies the innermost
/// `ILogContext` found on the stack (`context.get`), sets `"system"` in the
/// copy, and `ContextTracker.callWithContext` appends `{ILogContext: copy}`
/// (it does not copy the dictionaries beneath: lookups walk the stack).
pub struct LogContext<'py> {
    contexts: Bound<'py, PyList>,
}

impl<'py> LogContext<'py> {
    /// The context stack of the calling thread (`ContextTracker.contexts`).
    pub fn stack(py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let api = api(py)?;
        Ok(api
            .context_tracker
            .bind(py)
            .call_method0(intern!(py, "currentContext"))?
            .getattr(intern!(py, "contexts"))?
            .cast_into::<PyList>()?)
    }

    /// Push `{ILogContext: {**innermost ILogContext, "system": system}}`.
    pub fn push(
        py: Python<'py>,
        contexts: &Bound<'py, PyList>,
        system: &Bound<'py, PyAny>,
    ) -> PyResult<Self> {
        let api = api(py)?;
        let ilog = api.ilogcontext.bind(py);
        let mut outer = None;
        for ctx in contexts.iter().rev() {
            if let Some(found) = ctx.cast::<PyDict>()?.get_item(ilog)? {
                outer = Some(found);
                break;
            }
        }
        let log_ctx = match outer {
            Some(d) => d.cast::<PyDict>()?.copy()?,
            None => PyDict::new(py),
        };
        log_ctx.set_item(intern!(py, "system"), system)?;
        let new = PyDict::new(py);
        new.set_item(ilog, log_ctx)?;
        contexts.append(new)?;
        Ok(LogContext {
            contexts: contexts.clone(),
        })
    }
}

impl Drop for LogContext<'_> {
    fn drop(&mut self) {
        // list.pop(), as ContextTracker does (a deletion by index goes
        // through CPython's general slice assignment, three times dearer).
        let py = self.contexts.py();
        if let Err(e) = self.contexts.call_method0(intern!(py, "pop")) {
            e.write_unraisable(py, None);
        }
    }
}
