//! Stream transports whose bytes move in Rust.
//!
//! - [`stream_io`]: `StreamIO`, the read and write paths of a stream
//!   connection (`doRead`, `write`, `writeSequence`, `doWrite`), a base of
//!   the TCP transports in `twisted_shim/tcp.py`, which take everything
//!   else (state, producers, half-close, TLS, `connectionLost`) from
//!   Twisted's own `tcp.Server` and `tcp.Client`.

pub mod stream_io;

use pyo3::prelude::*;

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    stream_io::init_pymodule(m)
}
