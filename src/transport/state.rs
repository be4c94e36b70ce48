//! Twisted's state attributes of a transport, read as attribute lookup
//! reads them, at the cost of a dictionary lookup.
//!
//! `StreamIO` keeps none of Twisted's connection state: `connected`,
//! `disconnecting`, `producer` and the rest stay attributes of the Twisted
//! object, set by Twisted's code, so every rule about them stays Twisted's.
//! Reading one through `getattr` costs a walk of CPython's generic lookup
//! (the class's method cache, then the instance dictionary), about 200
//! instructions, and the write and read paths read eight of them per round
//! trip. [`State`] reads them the way that lookup ends, with the class's part
//! done once per class version:
//!
//! - [`ClassState`], per class and version tag (as [`crate::selectable`]
//!   keeps its facts): for each name, what the class's MRO holds, and
//!   whether the name is *plain*: the class keeps object's
//!   `__getattribute__` and what it holds under the name (if anything) is
//!   not a descriptor, of a type that cannot be modified into one (the
//!   class's tag does not cover the type of its attributes). Only then is
//!   the instance dictionary the whole answer.
//! - A plain name is looked up in the instance dictionary (what
//!   `PyObject_GenericGetDict` returns, the one attribute lookup reads),
//!   then taken from the class. Anything else, and a name found nowhere
//!   (so that the error, or a `__getattr__`, is the lookup's own), is read
//!   with `getattr`.
//!
//! Invariant: a `State` is made where it is used and dropped before any
//! Python code runs that could replace the instance's dictionary; a kept
//! `ClassState` is used only under the version tag it was computed for,
//! which CPython changes whenever the class or a base is modified.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple, PyType};

use crate::selectable::version_tag;
use crate::time::lock;

/// The names read on the hot paths, by [`Attr`].
const NAMES: [&str; 10] = [
    "connected",
    "disconnecting",
    "_writeDisconnected",
    "_writeDisconnecting",
    "TLS",
    "producer",
    "streamingProducer",
    "producerPaused",
    "bufferSize",
    "protocol",
];

/// A state attribute of a transport; the index of its name in [`NAMES`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Attr {
    Connected,
    Disconnecting,
    WriteDisconnected,
    WriteDisconnecting,
    Tls,
    Producer,
    StreamingProducer,
    ProducerPaused,
    BufferSize,
    Protocol,
}

fn names(py: Python<'_>) -> &[Py<PyString>; NAMES.len()] {
    static INTERNED: PyOnceLock<[Py<PyString>; NAMES.len()]> = PyOnceLock::new();
    INTERNED.get_or_init(py, || NAMES.map(|n| PyString::intern(py, n).unbind()))
}

/// What a class holds under each of [`NAMES`].
pub(crate) struct ClassState {
    /// Whether the instance dictionary, then `value`, is the whole answer.
    plain: [bool; NAMES.len()],
    /// The class attribute (from the first class of the MRO that has one).
    value: [Option<Py<PyAny>>; NAMES.len()],
}

/// Classes remembered: a process has a handful of transport classes.
const SLOTS: usize = 8;

struct Entry {
    class: usize,
    tag: u32,
    state: Arc<ClassState>,
}

static CACHE: Mutex<[Option<Entry>; SLOTS]> =
    Mutex::new([None, None, None, None, None, None, None, None]);
static NEXT: Mutex<usize> = Mutex::new(0);

/// The state attributes of one transport, for one stretch of Rust code.
pub(crate) struct State<'py> {
    obj: Bound<'py, PyAny>,
    dict: Option<Bound<'py, PyDict>>,
    class: Option<Arc<ClassState>>,
}

impl<'py> State<'py> {
    pub(crate) fn new(obj: &Bound<'py, PyAny>) -> Self {
        let py = obj.py();
        let class = class_state(obj);
        let dict = class.as_ref().and_then(|_| {
            // SAFETY: `obj` is live and the GIL is held; the result is a new
            // reference, or NULL with an exception set (no dictionary), both
            // taken over here.
            let d = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyObject_GenericGetDict(obj.as_ptr(), std::ptr::null_mut()),
                )
            };
            d.ok().and_then(|d| d.cast_into::<PyDict>().ok())
        });
        // Without an instance dictionary the class alone answers, unless
        // the class says its instances have one: then nothing is assumed.
        let class = match (class, &dict) {
            (Some(_), None) if has_dict_slot(obj) => None,
            (c, _) => c,
        };
        State {
            obj: obj.clone(),
            dict,
            class,
        }
    }

    /// `getattr(obj, name)`.
    pub(crate) fn get(&self, attr: Attr) -> PyResult<Bound<'py, PyAny>> {
        let py = self.obj.py();
        let i = attr as usize;
        let name = names(py)[i].bind(py);
        if let Some(class) = &self.class {
            if class.plain[i] {
                if let Some(dict) = &self.dict {
                    if let Some(v) = dict.get_item(name)? {
                        return Ok(v);
                    }
                }
                if let Some(v) = &class.value[i] {
                    return Ok(v.bind(py).clone());
                }
            }
        }
        self.obj.getattr(name)
    }

    /// `bool(getattr(obj, name))`.
    pub(crate) fn is_true(&self, attr: Attr) -> PyResult<bool> {
        let v = self.get(attr)?;
        // True, False and None without a call.
        if let Ok(b) = v.cast::<PyBool>() {
            return Ok(b.is_true());
        }
        if v.is_none() {
            return Ok(false);
        }
        v.is_truthy()
    }
}

/// Whether instances of `obj`'s class have an instance dictionary at all
/// (then a failure to get it is an error to respect, not an absence).
fn has_dict_slot(obj: &Bound<'_, PyAny>) -> bool {
    let ptr = obj.get_type().as_type_ptr();
    // SAFETY: a live type object, GIL held; two plain fields are read.
    unsafe { (*ptr).tp_dictoffset != 0 || (*ptr).tp_flags & ffi::Py_TPFLAGS_MANAGED_DICT != 0 }
}

/// Whether `class` cannot be modified (`Py_TPFLAGS_IMMUTABLETYPE`: the
/// builtin types, and extension types that ask for it).
fn is_immutable(class: &Bound<'_, PyType>) -> bool {
    let ptr = class.as_type_ptr();
    // SAFETY: a live type object, GIL held; a plain field is read.
    unsafe { (*ptr).tp_flags & ffi::Py_TPFLAGS_IMMUTABLETYPE != 0 }
}

/// The class state of `obj`'s class, from the cache when its tag matches;
/// `None` when the class has no valid tag or cannot be read.
fn class_state(obj: &Bound<'_, PyAny>) -> Option<Arc<ClassState>> {
    let class = obj.get_type();
    let address = class.as_type_ptr() as usize;
    let tag = version_tag(&class);
    if tag == 0 {
        return None;
    }
    {
        let cache = lock(&CACHE);
        for entry in cache.iter().flatten() {
            if entry.class == address && entry.tag == tag {
                return Some(entry.state.clone());
            }
        }
    }
    let state = Arc::new(compute(obj).ok()?);
    // Python code run by the lookups (a metaclass, a descriptor's type)
    // may have modified the class: then the answer is not kept.
    if version_tag(&class) != tag {
        return None;
    }
    let evicted = {
        let mut next = lock(&NEXT);
        let mut cache = lock(&CACHE);
        let evicted = cache[*next].replace(Entry {
            class: address,
            tag,
            state: state.clone(),
        });
        *next = (*next + 1) % SLOTS;
        evicted
    };
    // Dropped with the locks released: the entry may hold the last
    // reference to a class attribute the class has since let go, whose
    // finalizer is Python code that may write to a transport, which comes
    // back here.
    drop(evicted);
    Some(state)
}

fn compute(obj: &Bound<'_, PyAny>) -> PyResult<ClassState> {
    let py = obj.py();
    let class = obj.get_type();
    let object = py.get_type::<pyo3::types::PyAny>();
    let generic = class
        .getattr("__getattribute__")?
        .is(&object.getattr("__getattribute__")?);
    let mro = class.getattr("__mro__")?;
    let mro = mro
        .cast::<PyTuple>()
        .map_err(|_| PyTypeError::new_err("__mro__ is not a tuple"))?;
    let mut plain = [false; NAMES.len()];
    let mut value: [Option<Py<PyAny>>; NAMES.len()] = Default::default();
    for (i, name) in names(py).iter().enumerate() {
        let name = name.bind(py);
        let mut found = None;
        for base in mro.iter() {
            let dict = base.getattr("__dict__")?;
            if let Ok(v) = dict.get_item(name) {
                found = Some(v);
                break;
            }
        }
        plain[i] = generic
            && match &found {
                None => true,
                // Whether the value is a descriptor is a fact of its type,
                // which the class's version tag does not cover: only a type
                // that cannot be modified (int, bool, None, str, ...) is
                // known to stay what it is now.
                Some(v) => {
                    let t = v.get_type();
                    is_immutable(&t)
                        && !(t.hasattr("__get__")?
                            || t.hasattr("__set__")?
                            || t.hasattr("__delete__")?)
                }
            };
        value[i] = found.map(Bound::unbind);
    }
    Ok(ClassState { plain, value })
}
