//! `twisted_shim._core`: the Rust half of the twisted_shim reactor.
//!
//! The tree follows the reactor's concerns, one module each:
//!
//! - [`event_loop`]: the `Loop` object a Python reactor owns — `run`, `iterate`,
//!   waiting with the GIL released, and dispatch of readiness;
//! - [`wait`]: the wait itself (`epoll_pwait2` on `polling`'s epoll instance)
//!   and the eventfd that wakes it from other threads;
//! - [`fdset`]: the registrations behind IReactorFDSet (Python selectables and
//!   native Rust handlers), kept in a `slab`;
//! - [`time`]: `callLater`'s heap and the `DelayedCall` objects it returns;
//! - [`calls`]: the queue behind `callFromThread`;
//! - [`collector`]: what the loop's queues hold, out of the cycle
//!   collector's lists while they hold it;
//! - [`aio`]: the asyncio face's half of the loop: the ready queue behind
//!   `call_soon` and asyncio's readers and writers in the FD set;
//! - [`twisted`]: the Twisted objects the core needs (errors, the logger);
//! - [`selectable`]: what the dispatch knows of a selectable's class
//!   (kept per class version);
//! - [`net`]: socket I/O for protocols native to the loop (accept, reads,
//!   the `writev`/`sendfile` output queue);
//! - [`transport`]: stream transports whose bytes move in Rust (`StreamIO`
//!   under Twisted's TCP connection classes);
//! - [`http`]: a service-agnostic HTTP/1.1 server, as native handlers;
//! - [`wsgi`]: the WSGI host, one service on that server: PEP 3333 and the
//!   pause_output extension.
//!
//! `hooks` exposes test-only functions (the HTTP differential test).
//! This file only wires the modules into the Python module.

use pyo3::prelude::*;

pub mod aio;
pub mod calls;
pub mod collector;
pub mod event_loop;
pub mod fdset;
mod hooks;
pub mod http;
pub mod net;
pub mod selectable;
pub mod time;
pub mod transport;
pub mod twisted;
pub mod wait;
pub mod wsgi;

// The core relies on the GIL (the loop's locks only satisfy `Sync`; class
// facts read type objects under it), so a free-threaded build keeps it on.
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    time::init_pymodule(m)?;
    event_loop::init_pymodule(m)?;
    aio::init_pymodule(m)?;
    wsgi::init_pymodule(m)?;
    transport::init_pymodule(m)?;
    hooks::init_pymodule(m)?;
    Ok(())
}
