//! Stream transports whose bytes move in Rust.
//!
//! - [`stream_io`]: `StreamIO`, the read and write paths of a stream
//!   connection (`doRead`, `write`, `writeSequence`, `doWrite`), a base of
//!   the TCP transports in `twisted_shim/tcp.py`, which take everything
//!   else (state, producers, half-close, TLS, `connectionLost`) from
//!   Twisted's own `tcp.Server` and `tcp.Client`.
//! - [`unix_io`]: `UnixStreamIO`, `StreamIO` plus the file descriptors a
//!   UNIX socket carries (`sendFileDescriptor`, `recvmsg`/`sendmsg` with
//!   `SCM_RIGHTS`), a base of the UNIX transports in
//!   `twisted_shim/unix.py` over Twisted's `unix.Server` and `unix.Client`.
//! - [`state`]: Twisted's state attributes of a transport (`connected`,
//!   `producer`, ...), read as attribute lookup does at a dictionary
//!   lookup's cost.

mod state;
pub mod stream_io;
pub mod unix_io;

use pyo3::prelude::*;

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    stream_io::init_pymodule(m)?;
    unix_io::init_pymodule(m)
}
