//! Socket I/O shared by the protocols that run natively on the loop: the
//! HTTP server today, native Twisted transports and TLS next.
//!
//! - [`socket`]: addresses, accepting, budgeted reads, socket options;
//! - [`read`]: a `recv` into a Python `bytes` object, for a protocol;
//! - [`write`]: the output queue (`writev`, `sendfile`, no copy of Python
//!   `bytes`), with the byte count a high-water mark is checked against.
//!
//! Nothing here knows a protocol: a caller reads into its own buffer, queues
//! what it wants written, and decides what readiness it waits for.

pub mod read;
pub mod socket;
pub mod write;
