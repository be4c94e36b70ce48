//! asyncio's `Handle` and `TimerHandle` objects, made and run in Rust for
//! the face's `call_soon`, `call_soon_threadsafe`, `call_later` and
//! `call_at` and the ready queue's pass.
//!
//! The objects are CPython's own classes (`asyncio.Handle`, and the face's
//! `_TimerHandle`, a `TimerHandle` with the reactor's timed call in a slot),
//! so `isinstance`, `cancel`, `cancelled`, `when`, `get_context`, reprs and
//! comparisons are asyncio's; only their construction and their run are
//! here. Both classes keep their state in `__slots__`, which CPython lays
//! out at fixed offsets in the instance and describes with one member
//! descriptor per slot: [`Slot::of`] reads a slot's offset from its
//! descriptor once (checking that it is a plain object slot of that class),
//! and the hot paths read and write the instance at that offset, as the
//! descriptor's own `__get__` and `__set__` do, without an attribute lookup.
//! A handle is allocated with its class's `tp_alloc` (what `object.__new__`
//! does for these classes) and its slots are filled as `Handle.__init__`
//! fills them outside debug mode (`_source_traceback` is `None`; the
//! context is a copy of the current one unless given). In debug mode the
//! face uses its Python methods instead, which record the source traceback
//! and check the thread and the callback.
//!
//! [`run`] is `Handle._run` for the ready queue's pass: the callback runs in
//! the handle's context (entered and exited around the call, as
//! `Context.run` does), an exception other than `SystemExit` and
//! `KeyboardInterrupt` goes to the loop's exception handler with the context
//! `Handle._run` gives it, and those two propagate. A handle whose class has
//! a `_run` other than `Handle._run` (looked up on its type each time, so a
//! patched class is honoured) has its own `_run` called; so does any object
//! that is not a `Handle`.
//!
//! Invariant: a handle made here has every slot `Handle.__init__` (and
//! `TimerHandle.__init__`) sets, with the same values; a slot is written
//! directly only in an instance of a class that has it (a subclass of the
//! class whose descriptor gave the offset: subclasses keep their bases'
//! layout).

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

extern "C" {
    // CPython's type attribute lookup through its method cache (what
    // `type.__getattribute__` uses): a borrowed reference or NULL, no
    // exception set. Exported by every CPython 3.
    fn _PyType_Lookup(ty: *mut ffi::PyTypeObject, name: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// `Py_T_OBJECT_EX` (`structmember.h`): an object slot; `NULL` is unset.
const T_OBJECT_EX: std::os::raw::c_int = 16;
/// `Py_READONLY` and (3.12) `Py_RELATIVE_OFFSET`: a slot with either is not
/// a plain `__slots__` entry.
const UNFIT_FLAGS: std::os::raw::c_int = 1 | 8;

/// Where one `__slots__` member lives in the instances of a class (and of
/// its subclasses).
#[derive(Clone, Copy, Debug)]
pub struct Slot(isize);

impl Slot {
    /// The slot `name` of `cls`, from its member descriptor; an error if
    /// `cls.name` is not a plain object slot that fits in the instance.
    pub fn of(cls: &Bound<'_, PyType>, name: &str) -> PyResult<Slot> {
        let py = cls.py();
        let descr = cls.getattr(name)?;
        let member_type = py.import("types")?.getattr("MemberDescriptorType")?;
        let unfit = || PyTypeError::new_err(format!("{cls}.{name} is not an object slot"));
        if !descr.get_type().is(&member_type) {
            return Err(unfit());
        }
        // SAFETY: `descr` is a member descriptor (its type was checked just
        // above), so it is a PyMemberDescrObject whose `d_member` points at
        // the PyMemberDef of its slot, both alive as long as the class.
        let (owner, def) = unsafe {
            let d = descr.as_ptr().cast::<ffi::PyMemberDescrObject>();
            ((*d).d_common.d_type, &*(*d).d_member)
        };
        // SAFETY: both are type objects; PyType_IsSubtype only reads them.
        let subtype = unsafe { ffi::PyType_IsSubtype(cls.as_type_ptr(), owner) } != 0;
        // SAFETY: reading the basic size of a live type object.
        let basicsize = unsafe { (*cls.as_type_ptr()).tp_basicsize };
        let size = std::mem::size_of::<*mut ffi::PyObject>() as isize;
        if !subtype
            || def.type_code != T_OBJECT_EX
            || def.flags & UNFIT_FLAGS != 0
            || def.offset < std::mem::size_of::<ffi::PyObject>() as isize
            || def.offset + size > basicsize
        {
            return Err(unfit());
        }
        Ok(Slot(def.offset))
    }

    /// # Safety
    /// `obj` is a live instance of a class that has this slot.
    unsafe fn at(self, obj: *mut ffi::PyObject) -> *mut *mut ffi::PyObject {
        obj.cast::<u8>().offset(self.0).cast()
    }

    /// The slot's value, borrowed; `NULL` when unset.
    ///
    /// # Safety
    /// As [`Slot::at`].
    pub unsafe fn get(self, obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
        *self.at(obj)
    }

    /// Set the slot to `value` (a new reference, given to the slot); the old
    /// value, if any, is released after the slot holds the new one, as the
    /// descriptor's `__set__` does.
    ///
    /// # Safety
    /// As [`Slot::at`]; `value` is a valid owned reference.
    pub unsafe fn set(self, obj: *mut ffi::PyObject, value: *mut ffi::PyObject) {
        let p = self.at(obj);
        let old = *p;
        *p = value;
        ffi::Py_XDECREF(old);
    }
}

/// The slots `Handle.__init__` fills.
struct HandleSlots {
    context: Slot,
    loop_: Slot,
    callback: Slot,
    args: Slot,
    cancelled: Slot,
    repr: Slot,
    source_traceback: Slot,
}

struct Classes {
    handle: Py<PyType>,
    /// `Handle._run`: a handle whose type has it runs here (see [`run`]).
    handle_run: Py<PyAny>,
    run_name: Py<PyString>,
    slots: HandleSlots,
    /// `TimerHandle`'s own slots: `_when`, `_scheduled`.
    when: Slot,
    scheduled: Slot,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// The timer class of the first face bound (`twisted_shim.aio`'s
/// `_TimerHandle`): known to be a `Handle` without asking its MRO.
static FACE_TIMER: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `twisted_shim.aio._callback_failed(handle, exc)`: what `Handle._run` does
/// with an exception (imported on the first one).
static CALLBACK_FAILED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || {
        let events = py.import("asyncio.events")?;
        let handle = events.getattr("Handle")?.cast_into::<PyType>()?;
        let timer = events.getattr("TimerHandle")?.cast_into::<PyType>()?;
        let slot = |name| Slot::of(&handle, name);
        let slots = HandleSlots {
            context: slot("_context")?,
            loop_: slot("_loop")?,
            callback: slot("_callback")?,
            args: slot("_args")?,
            cancelled: slot("_cancelled")?,
            repr: slot("_repr")?,
            source_traceback: slot("_source_traceback")?,
        };
        Ok(Classes {
            handle_run: handle.getattr("_run")?.unbind(),
            run_name: PyString::intern(py, "_run").unbind(),
            when: Slot::of(&timer, "_when")?,
            scheduled: Slot::of(&timer, "_scheduled")?,
            slots,
            handle: handle.unbind(),
        })
    })
}

/// What a face gives its core so that handles can name it: the face itself
/// (a handle's `_loop`), its timer class and that class's `_call` slot, and
/// its bound `push` (what a timed call calls when it is due).
pub struct Face {
    pub face: Py<PyAny>,
    pub timer_class: Py<PyType>,
    pub timer_call: Slot,
    pub push: Py<PyAny>,
}

impl Face {
    /// The face `face` with timers of `timer_class`, a subclass of
    /// `asyncio.TimerHandle` with a `_call` slot.
    pub fn new(
        py: Python<'_>,
        face: Py<PyAny>,
        timer_class: Py<PyType>,
        push: Py<PyAny>,
    ) -> PyResult<Face> {
        let timer = py
            .import("asyncio.events")?
            .getattr("TimerHandle")?
            .cast_into::<PyType>()?;
        let cls = timer_class.bind(py);
        if !cls.is_subclass(&timer)? {
            return Err(PyTypeError::new_err(format!(
                "{cls} is not a subclass of asyncio.TimerHandle"
            )));
        }
        let timer_call = Slot::of(cls, "_call")?;
        let _ = FACE_TIMER.get_or_init(py, || timer_class.clone_ref(py));
        Ok(Face {
            face,
            timer_class,
            timer_call,
            push,
        })
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.face)?;
        visit.call(&self.timer_class)?;
        visit.call(&self.push)
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Face {
        Face {
            face: self.face.clone_ref(py),
            timer_class: self.timer_class.clone_ref(py),
            timer_call: self.timer_call,
            push: self.push.clone_ref(py),
        }
    }
}

/// A new, empty instance of `cls` (every slot unset), as `object.__new__`.
fn allocate<'py>(py: Python<'py>, cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `cls` is a live type object; its tp_alloc (PyType_GenericAlloc
    // for a class made by a class statement) returns a new reference to a
    // zeroed instance, or NULL with an exception set.
    unsafe {
        let tp = cls.as_type_ptr();
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        Bound::from_owned_ptr_or_err(py, alloc(tp, 0))
    }
}

fn new_ref(obj: &Bound<'_, PyAny>) -> *mut ffi::PyObject {
    obj.clone().into_ptr()
}

/// Fill a new handle's slots as `Handle.__init__` does; returns whether
/// its context is a copy made here (no context was given).
fn fill(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    loop_: &Bound<'_, PyAny>,
    callback: Py<PyAny>,
    args: Py<PyTuple>,
    context: Option<Py<PyAny>>,
) -> PyResult<bool> {
    let s = &classes(py)?.slots;
    let (context, copied) = match context {
        Some(c) if !c.is_none(py) => (c.into_ptr(), false),
        // SAFETY: a new reference to a copy of the current context, or NULL
        // with an exception set.
        _ => (unsafe { ffi::PyContext_CopyCurrent() }, true),
    };
    if context.is_null() {
        return Err(PyErr::fetch(py));
    }
    let o = obj.as_ptr();
    // SAFETY: `obj` is an instance of Handle or a subclass (made by the
    // callers from such a class), so it has every slot in `s`; each value
    // is a new reference handed to its slot.
    unsafe {
        s.context.set(o, context);
        s.loop_.set(o, new_ref(loop_));
        s.callback.set(o, callback.into_ptr());
        s.args.set(o, args.into_ptr());
        s.cancelled.set(o, ffi::Py_NewRef(ffi::Py_False()));
        s.repr.set(o, ffi::Py_NewRef(ffi::Py_None()));
        s.source_traceback.set(o, ffi::Py_NewRef(ffi::Py_None()));
    }
    Ok(copied)
}

/// A new `asyncio.Handle(callback, args, loop_, context)`, and whether its
/// context is a copy made for it (no context was given).
pub fn handle<'py>(
    py: Python<'py>,
    loop_: &Bound<'py, PyAny>,
    callback: Py<PyAny>,
    args: Py<PyTuple>,
    context: Option<Py<PyAny>>,
) -> PyResult<(Bound<'py, PyAny>, bool)> {
    let obj = allocate(py, classes(py)?.handle.bind(py))?;
    let copied = fill(py, &obj, loop_, callback, args, context)?;
    Ok((obj, copied))
}

/// The context of `handle`, a `Handle` made here (a new reference).
pub fn context_of<'py>(py: Python<'py>, handle: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let c = classes(py).ok()?;
    if !is_handle(c, handle) {
        return None;
    }
    // SAFETY: `handle` is a Handle, so it has the slot; the borrowed value
    // is NULL-checked and made owned.
    unsafe {
        let ctx = c.slots.context.get(handle.as_ptr());
        (!ctx.is_null()).then(|| Bound::from_borrowed_ptr(py, ctx))
    }
}

/// A new `_TimerHandle(when, callback, args, face, context)` with its
/// `_scheduled` set and its `_call` not yet (the caller sets it with
/// [`Face::timer_call`]), and whether its context is a copy made for it.
pub fn timer<'py>(
    py: Python<'py>,
    face: &Face,
    when: f64,
    callback: Py<PyAny>,
    args: Py<PyTuple>,
    context: Option<Py<PyAny>>,
) -> PyResult<(Bound<'py, PyAny>, bool)> {
    let c = classes(py)?;
    let obj = allocate(py, face.timer_class.bind(py))?;
    let copied = fill(py, &obj, face.face.bind(py), callback, args, context)?;
    // SAFETY: a new float reference, or NULL with an exception set.
    let when = unsafe { ffi::PyFloat_FromDouble(when) };
    if when.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: the face's timer class is a TimerHandle subclass (checked by
    // `Face::new`), so its instances have TimerHandle's slots.
    unsafe {
        c.when.set(obj.as_ptr(), when);
        c.scheduled
            .set(obj.as_ptr(), ffi::Py_NewRef(ffi::Py_True()));
    }
    Ok((obj, copied))
}

/// Whether `obj`'s type is `Handle` or a subclass, so its slots can be read
/// directly.
fn is_handle(c: &Classes, obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: reading the type of a live object and checking it against
    // another type object.
    unsafe {
        let tp = ffi::Py_TYPE(obj.as_ptr());
        let handle = c.handle.as_ptr().cast::<ffi::PyTypeObject>();
        let timer = FACE_TIMER
            .get(obj.py())
            .map_or(std::ptr::null_mut(), |t| t.as_ptr().cast());
        tp == handle || tp == timer || ffi::PyType_IsSubtype(tp, handle) != 0
    }
}

/// Whether a queued object is cancelled (its `_cancelled` is true): read
/// from the slot of a `Handle`, looked up on anything else.
pub fn cancelled(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let c = classes(py)?;
    if is_handle(c, obj) {
        // SAFETY: `obj` is a Handle (checked just above), so it has the slot.
        let v = unsafe { c.slots.cancelled.get(obj.as_ptr()) };
        // SAFETY: comparing against the interpreter's bool singletons.
        unsafe {
            if v == ffi::Py_False() {
                return Ok(false);
            }
            if v == ffi::Py_True() {
                return Ok(true);
            }
        }
    }
    obj.getattr(intern!(py, "_cancelled"))?.is_truthy()
}

/// The handle's context, callback and arguments, when it runs as
/// `Handle._run`: its type is a `Handle` whose `_run` is `Handle._run`, and
/// the three slots hold a context-like object, something and a tuple.
fn own_run_parts<'py>(
    c: &Classes,
    handle: &Bound<'py, PyAny>,
) -> Option<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
    if !is_handle(c, handle) {
        return None;
    }
    let py = handle.py();
    let o = handle.as_ptr();
    // SAFETY: `handle` is a Handle, so it has the slots read here; each value
    // read is a borrowed reference that is NULL-checked, then made owned
    // (the callback may cancel the handle, which clears the slots, while
    // they are in use). The type lookup returns a borrowed reference or NULL.
    unsafe {
        let run = _PyType_Lookup(ffi::Py_TYPE(o), c.run_name.as_ptr());
        if run != c.handle_run.as_ptr() {
            return None;
        }
        let context = c.slots.context.get(o);
        let callback = c.slots.callback.get(o);
        let args = c.slots.args.get(o);
        if context.is_null() || callback.is_null() || args.is_null() {
            return None;
        }
        let args = Bound::from_borrowed_ptr(py, args)
            .cast_into::<PyTuple>()
            .ok()?;
        Some((
            Bound::from_borrowed_ptr(py, context),
            Bound::from_borrowed_ptr(py, callback),
            args,
        ))
    }
}

/// `context.run(callback, *args)`: enter, call, exit.
fn run_in(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    // SAFETY: C API calls on live objects with the GIL held. PyContext_Enter
    // fails (TypeError, RuntimeError) without entering; once entered, the
    // context is exited whatever the call did, as Context.run does.
    unsafe {
        if ffi::PyContext_Enter(context.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        let result = ffi::PyObject_Call(callback.as_ptr(), args.as_ptr(), std::ptr::null_mut());
        let exited = ffi::PyContext_Exit(context.as_ptr());
        if result.is_null() {
            return Err(PyErr::fetch(py));
        }
        ffi::Py_DECREF(result);
        if exited < 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(())
}

/// Run a queued handle as `Handle._run` does (see the module's docs).
pub fn run(py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
    let c = classes(py)?;
    let Some((context, callback, args)) = own_run_parts(c, handle) else {
        handle.call_method0(c.run_name.bind(py))?;
        return Ok(());
    };
    match run_in(py, &context, &callback, &args) {
        Ok(()) => Ok(()),
        Err(e)
            if e.is_instance_of::<PySystemExit>(py)
                || e.is_instance_of::<PyKeyboardInterrupt>(py) =>
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
