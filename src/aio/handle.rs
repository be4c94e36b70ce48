//! asyncio's `Handle` and `TimerHandle` objects, made in Rust for the face's
//! `call_soon`, `call_soon_threadsafe`, `call_later` and `call_at`.
//!
//! The objects are CPython's own classes (`asyncio.Handle`, and the face's
//! `_TimerHandle`, a `TimerHandle` with the reactor's timed call in a slot),
//! so `isinstance`, `cancel`, `cancelled`, `when`, `get_context`, reprs and
//! comparisons are asyncio's; only their construction is here: the instance
//! is allocated with `object.__new__` and its slots are filled as
//! `Handle.__init__` fills them outside debug mode (`_source_traceback` is
//! `None`). In debug mode the face uses its Python methods instead, which
//! record the source traceback and check the thread and the callback.
//!
//! [`run`] is `Handle._run` for the ready queue's pass: the callback runs in
//! the handle's context (`context.run(callback, *args)`), an exception other
//! than `SystemExit` and `KeyboardInterrupt` goes to the loop's exception
//! handler with the context `Handle._run` gives it, and those two propagate.
//! A handle whose class overrides `_run` has its own `_run` called.
//!
//! Invariant: a handle made here has every slot `Handle.__init__` (and
//! `TimerHandle.__init__`) sets, with the same values.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

struct Classes {
    handle: Py<PyType>,
    /// `Handle._run`: a handle whose class has it runs here (see [`run`]).
    handle_run: Py<PyAny>,
    copy_context: Py<PyAny>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// `twisted_shim.aio._callback_failed(handle, exc)`: what `Handle._run` does
/// with an exception (imported on the first one).
static CALLBACK_FAILED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || {
        let events = py.import("asyncio.events")?;
        let contextvars = py.import("contextvars")?;
        let handle = events.getattr("Handle")?.cast_into::<PyType>()?;
        Ok(Classes {
            handle_run: handle.getattr("_run")?.unbind(),
            handle: handle.unbind(),
            copy_context: contextvars.getattr("copy_context")?.unbind(),
        })
    })
}

/// What a face gives its core so that handles can name it: the face itself
/// (a handle's `_loop`), its timer class and its bound `push` (what a timed
/// call calls when it is due).
pub struct Face {
    pub face: Py<PyAny>,
    pub timer_class: Py<PyType>,
    pub push: Py<PyAny>,
}

impl Face {
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.face)?;
        visit.call(&self.timer_class)?;
        visit.call(&self.push)
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Face {
        Face {
            face: self.face.clone_ref(py),
            timer_class: self.timer_class.clone_ref(py),
            push: self.push.clone_ref(py),
        }
    }
}

fn fill<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    face: &Face,
    callback: Py<PyAny>,
    args: Py<PyTuple>,
    context: Option<Py<PyAny>>,
) -> PyResult<()> {
    let context = match context {
        Some(c) if !c.is_none(py) => c,
        _ => classes(py)?.copy_context.call0(py)?,
    };
    obj.setattr(intern!(py, "_context"), context)?;
    obj.setattr(intern!(py, "_loop"), face.face.clone_ref(py))?;
    obj.setattr(intern!(py, "_callback"), callback)?;
    obj.setattr(intern!(py, "_args"), args)?;
    obj.setattr(intern!(py, "_cancelled"), false)?;
    obj.setattr(intern!(py, "_repr"), py.None())?;
    obj.setattr(intern!(py, "_source_traceback"), py.None())?;
    Ok(())
}

fn allocate<'py>(py: Python<'py>, cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
    cls.call_method1(intern!(py, "__new__"), (cls,))
}

/// A new `asyncio.Handle(callback, args, face, context)`.
pub fn handle(
    py: Python<'_>,
    face: &Face,
    callback: Py<PyAny>,
    args: Py<PyTuple>,
    context: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    let cls = classes(py)?.handle.bind(py);
    let obj = allocate(py, cls)?;
    fill(py, &obj, face, callback, args, context)?;
    Ok(obj.unbind())
}

/// A new `_TimerHandle(when, callback, args, face, context)`, not yet
/// scheduled (its `_call` is set by the caller).
pub fn timer<'py>(
    py: Python<'py>,
    face: &Face,
    when: f64,
    callback: Py<PyAny>,
    args: Py<PyTuple>,
    context: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let obj = allocate(py, face.timer_class.bind(py))?;
    fill(py, &obj, face, callback, args, context)?;
    obj.setattr(intern!(py, "_when"), when)?;
    obj.setattr(intern!(py, "_scheduled"), true)?;
    Ok(obj)
}

/// Run a queued handle as `Handle._run` does (see the module's docs).
pub fn run(py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
    let classes = classes(py)?;
    let own_run = handle.get_type().getattr(intern!(py, "_run"))?;
    if !own_run.is(&classes.handle_run) {
        handle.call_method0(intern!(py, "_run"))?;
        return Ok(());
    }
    let context = handle.getattr(intern!(py, "_context"))?;
    let callback = handle.getattr(intern!(py, "_callback"))?;
    let args = handle
        .getattr(intern!(py, "_args"))?
        .cast_into::<PyTuple>()?;
    let mut call = Vec::with_capacity(args.len() + 1);
    call.push(callback);
    call.extend(args.iter());
    match context.call_method1(intern!(py, "run"), PyTuple::new(py, call)?) {
        Ok(_) => Ok(()),
        Err(e)
            if e.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
                || e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) =>
        {
            Err(e)
        }
        Err(e) => {
            let failed = CALLBACK_FAILED.get_or_try_init(py, || {
                PyResult::Ok(
                    py.import("twisted_shim.aio")?
                        .getattr("_callback_failed")?
                        .unbind(),
                )
            })?;
            failed.call1(py, (handle, e.into_value(py)))?;
            Ok(())
        }
    }
}
