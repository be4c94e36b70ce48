//! Reads from a stream socket into Python `bytes` objects: what a native
//! transport hands its protocol (`dataReceived`, `data_received`).
//!
//! [`receive`] is one `recv` of at most a given size into a new `bytes`
//! object, made one of two ways (see there); [`ReadSizing`] is how a
//! connection chooses between them, by what its last read brought.
//! Everything runs on the loop's thread with the GIL held; [`READ_BUFFER`]'s
//! lock is never held across Python code.

use std::io;
use std::os::fd::RawFd;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::time::lock;

/// The buffer every transport's read receives into before the bytes are
/// copied into the `bytes` object handed to the protocol: one for the
/// process rather than one per connection (reads happen one at a time, on
/// the loop's thread).
pub(crate) static READ_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// What one `recv` gave.
pub enum Received<'py> {
    Data(Bound<'py, PyBytes>),
    /// Nothing to read now (`EAGAIN`).
    Again,
    /// End of stream.
    End,
    /// A socket error.
    Failed(io::Error),
}

extern "C" {
    // CPython's own way to shrink a bytes object nobody else holds yet
    // (what `socket.recv` does); exported by every CPython 3.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> c_int;
}

/// `None`: `n` bytes came (or `EINTR`: try again); else what the `recv`
/// that returned `n` means.
fn interpret(n: isize) -> Option<Received<'static>> {
    if n == 0 {
        return Some(Received::End);
    }
    if n > 0 {
        return None;
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::Interrupted => None,
        io::ErrorKind::WouldBlock => Some(Received::Again),
        _ => Some(Received::Failed(e)),
    }
}

/// One `recv` of at most `size` bytes from `fd`, as a new `bytes` object.
///
/// `direct`: into a `bytes` object of `size` bytes, shrunk to what came
/// (as `socket.recv` does: one copy, by the kernel). Otherwise into the
/// process's read buffer, then copied into a `bytes` object of the right
/// size: dearer by a copy for large reads, cheaper than allocating and
/// shrinking `size` bytes for small ones.
pub fn receive(py: Python<'_>, fd: RawFd, size: usize, direct: bool) -> PyResult<Received<'_>> {
    if !direct {
        let mut buf = lock(&READ_BUFFER);
        buf.clear();
        buf.reserve(size);
        loop {
            // SAFETY: reads at most `size` bytes into the spare capacity
            // reserved just above; the length is set to what was read.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), size, 0) };
            if let Some(other) = interpret(n) {
                return Ok(other);
            }
            if n > 0 {
                // SAFETY: the kernel wrote `n` bytes at the start of the buffer.
                unsafe { buf.set_len(n as usize) };
                return Ok(Received::Data(PyBytes::new(py, &buf)));
            }
        }
    }
    let len = ffi::Py_ssize_t::try_from(size).unwrap_or(ffi::Py_ssize_t::MAX);
    // SAFETY: PyBytes_FromStringAndSize(NULL, len) returns a new bytes
    // object of `len` bytes, not yet initialised, that nothing else refers
    // to (or NULL with an exception set); until it is handed out, writing
    // into its buffer and resizing it is allowed, as `socket.recv` does.
    // Every path below either releases it or hands its one reference to
    // `Bound::from_owned_ptr`.
    unsafe {
        let mut obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), len);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let buf = ffi::PyBytes_AsString(obj);
        let n = loop {
            let n = libc::recv(fd, buf.cast(), len as usize, 0);
            if let Some(other) = interpret(n) {
                ffi::Py_DECREF(obj);
                return Ok(other);
            }
            if n > 0 {
                break n;
            }
        };
        // On failure _PyBytes_Resize releases the object and sets it NULL.
        if n < len && _PyBytes_Resize(&mut obj, n) < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(Received::Data(
            Bound::from_owned_ptr(py, obj).cast_into_unchecked(),
        ))
    }
}

/// How a connection makes its next read: straight into its `bytes` object
/// after a read that filled at least half the size asked for (bulk data
/// comes in large reads), through the shared buffer otherwise.
#[derive(Default)]
pub struct ReadSizing {
    large: AtomicBool,
}

impl ReadSizing {
    /// [`receive`] at most `size` bytes, the way the last read says.
    pub fn receive<'py>(&self, py: Python<'py>, fd: RawFd, size: usize) -> PyResult<Received<'py>> {
        let got = receive(py, fd, size, self.large.load(Ordering::Relaxed))?;
        if let Received::Data(data) = &got {
            self.large
                .store(data.as_bytes().len() * 2 >= size, Ordering::Relaxed);
        }
        Ok(got)
    }
}
