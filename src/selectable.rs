//! What the loop's dispatch knows of a Python selectable's class.
//!
//! For each event the dispatch asks two things of the selectable's class:
//! are its `doRead` and `doWrite` `StreamIO`'s own (then the byte paths are
//! called directly, see [`crate::transport::stream_io::StreamIO::native`]),
//! and is its `logPrefix` `tcp.Connection`'s, which returns `self.logstr`
//! (then that attribute is read without the Python frame)? Asked with
//! attribute lookups that is three per event. The answers are kept per
//! class, keyed by the class object's address and its version tag.
//!
//! Invariant: a kept answer is used only while the class's version tag is
//! valid and the one it was computed under. CPython invalidates a class's
//! tag whenever the class or one of its bases is modified (an attribute set
//! or deleted: `PyType_Modified`), and never hands out the same tag twice,
//! so a kept answer is always the one the lookups would give now, and a
//! class freed and another made at the same address cannot match. A class
//! without a valid tag is asked afresh every time. What is on the instance
//! (a connecting `tcp.Client` sets `doRead`/`doWrite` on itself, and
//! `abortConnection` replaces them) is not a class fact: [`facts`] takes
//! it off with one look at the instance dictionary per call.

use std::sync::{Mutex, OnceLock};

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

use crate::time::lock;
use crate::transport::stream_io;
use crate::twisted::api;

/// What the dispatch needs to know of a selectable's class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassFacts {
    /// A `StreamIO` subclass whose `doRead` and `doWrite` are `StreamIO`'s.
    pub stream_io: bool,
    /// Its `logPrefix` is `tcp.Connection.logPrefix` (`return self.logstr`).
    pub logstr_prefix: bool,
}

/// Classes remembered: a process has a handful of transport classes.
const SLOTS: usize = 8;

struct Entry {
    class: usize,
    tag: u32,
    facts: ClassFacts,
}

struct Cache {
    entries: [Option<Entry>; SLOTS],
    /// The slot the next new class takes (round-robin).
    next: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    entries: [None, None, None, None, None, None, None, None],
    next: 0,
});

/// Whether this CPython marks a class's tag valid by the tag alone (3.13
/// on: `Py_TPFLAGS_VALID_VERSION_TAG` is no longer set, and an invalid
/// tag is 0) rather than by that flag (3.11, 3.12).
static TAG_ALONE: OnceLock<bool> = OnceLock::new();

/// The class's version tag, or 0 when it has no valid one.
pub(crate) fn version_tag(class: &Bound<'_, PyType>) -> u32 {
    let tag_alone = *TAG_ALONE.get_or_init(|| class.py().version_info() >= (3, 13));
    let ptr = class.as_type_ptr();
    // SAFETY: `ptr` is a live type object (`class` holds a reference) and
    // the GIL is held (the module declares it needs the GIL), so no other
    // thread modifies it while two fields of its struct are read, as
    // CPython's own method cache reads them.
    let (flags, tag) = unsafe { ((*ptr).tp_flags, (*ptr).tp_version_tag) };
    if tag_alone || flags & ffi::Py_TPFLAGS_VALID_VERSION_TAG != 0 {
        tag
    } else {
        0
    }
}

/// `facts`, less what `sel`'s own `__dict__` overrides (an instance
/// attribute, which no class fact can know of): one lookup of the
/// instance dictionary, only when some fact holds.
fn less_instance(sel: &Bound<'_, PyAny>, mut facts: ClassFacts) -> ClassFacts {
    if facts == ClassFacts::default() {
        return facts;
    }
    let py = sel.py();
    let dict = match instance_dict(sel) {
        InstanceDict::None => return facts, // nothing overridden
        InstanceDict::Other => return ClassFacts::default(), // assume everything is
        InstanceDict::Dict(dict) => dict,
    };
    let has = |name: &Bound<'_, PyString>| dict.contains(name).unwrap_or(true);
    if facts.stream_io
        && (has(intern!(py, "doRead"))
            || has(intern!(py, "doWrite"))
            || has(intern!(py, "stopWriting")))
    {
        facts.stream_io = false;
    }
    if facts.logstr_prefix && has(intern!(py, "logPrefix")) {
        facts.logstr_prefix = false;
    }
    facts
}

/// What attribute lookup reads as an object's instance dictionary.
pub(crate) enum InstanceDict<'py> {
    /// It has none: its class answers alone.
    None,
    /// Not a `dict`: nothing is assumed of what it holds.
    Other,
    Dict(Bound<'py, PyDict>),
}

/// The instance dictionary of `sel` itself, as attribute lookup reads it
/// (not whatever a class's own `__dict__` attribute would return), without
/// looking `__dict__` up through the class.
pub(crate) fn instance_dict<'py>(sel: &Bound<'py, PyAny>) -> InstanceDict<'py> {
    // SAFETY: `sel` is a live object and the GIL is held; the function
    // returns a new reference or NULL with an exception set, both taken
    // over by `from_owned_ptr_or_err`.
    let dict = unsafe {
        Bound::from_owned_ptr_or_err(
            sel.py(),
            ffi::PyObject_GenericGetDict(sel.as_ptr(), std::ptr::null_mut()),
        )
    };
    match dict {
        Err(_) => InstanceDict::None,
        Ok(d) => match d.cast_into::<PyDict>() {
            Ok(d) => InstanceDict::Dict(d),
            Err(_) => InstanceDict::Other,
        },
    }
}

/// What the dispatch may take as given for `sel` now: its class's facts
/// (kept per class version) less what the instance overrides.
pub fn facts(sel: &Bound<'_, PyAny>) -> ClassFacts {
    less_instance(sel, class_facts(sel))
}

/// The facts of `sel`'s class, from the cache when its tag still matches.
fn class_facts(sel: &Bound<'_, PyAny>) -> ClassFacts {
    let class = sel.get_type();
    let address = class.as_type_ptr() as usize;
    let tag = version_tag(&class);
    if tag != 0 {
        let cache = lock(&CACHE);
        for entry in cache.entries.iter().flatten() {
            if entry.class == address && entry.tag == tag {
                return entry.facts;
            }
        }
    }
    let facts = ClassFacts {
        stream_io: stream_io::StreamIO::class_is_native(sel, &class),
        logstr_prefix: has_connection_log_prefix(&class),
    };
    // The lookups above give the class a valid tag if it had none; a tag
    // that changed while they ran (Python code in a lookup modified the
    // class) is not trusted.
    let before = tag;
    let tag = version_tag(&class);
    if tag != 0 && (before == 0 || before == tag) {
        let mut cache = lock(&CACHE);
        let slot = cache.next;
        cache.entries[slot] = Some(Entry {
            class: address,
            tag,
            facts,
        });
        cache.next = (slot + 1) % SLOTS;
    }
    facts
}

fn has_connection_log_prefix(class: &Bound<'_, PyType>) -> bool {
    let py = class.py();
    let Ok(api) = api(py) else {
        return false;
    };
    class
        .getattr(intern!(py, "logPrefix"))
        .map(|m| m.is(api.connection_log_prefix.bind(py)))
        .unwrap_or(false)
}
