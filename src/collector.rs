//! The loop's queues and CPython's cycle collector.
//!
//! A queue of the loop (the asyncio ready queue, the timer heap) holds
//! objects it made for a short while: asyncio handles and their contexts,
//! `DelayedCall`s and their argument tuples. The collector tracks them all
//! and visits every one it tracks at every collection of its generation;
//! an object alive across a young collection is promoted, and the older
//! generations are visited whole, so a queue of a million timers, or a
//! thousand handles queued per pass, makes the collector the largest cost
//! of scheduling them (and the larger the process's heap, the more so).
//!
//! So a queue takes what it made out of the collector's lists while it
//! holds it ([`untrack`]), and puts it back ([`retrack`]) when it lets go,
//! before it releases its reference. While the queue holds an object it
//! cannot be garbage, nor can anything it refers to: an object the collector
//! does not track keeps what it refers to alive, exactly as the queue's own
//! reference does. Once the object is back, a cycle through it is found as
//! before. Only `gc.is_tracked` (and `gc.get_objects`) can tell.
//!
//! Invariant: an object a queue untracked is tracked again before the queue
//! drops its reference; nothing is tracked that was not tracked before.

use pyo3::ffi;
use pyo3::prelude::*;

/// Take `obj` out of the collector's lists if it is a GC object the
/// collector tracks now; whether it did.
pub fn untrack(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: GC calls on a live object with the GIL held (`obj` proves
    // it); only a tracked GC object is untracked.
    unsafe {
        let o = obj.as_ptr();
        if ffi::PyObject_IS_GC(o) == 0 || ffi::PyObject_GC_IsTracked(o) == 0 {
            return false;
        }
        ffi::PyObject_GC_UnTrack(o.cast());
    }
    true
}

/// Put `obj`, which [`untrack`] took out, back in the collector's lists,
/// unless something already did.
pub fn retrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: as in `untrack`; `obj` is a GC object (untrack took it out).
    unsafe {
        let o = obj.as_ptr();
        if ffi::PyObject_GC_IsTracked(o) == 0 {
            ffi::PyObject_GC_Track(o.cast());
        }
    }
}
