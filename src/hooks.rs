//! Functions exposed to Python for tests that compare our parts with
//! reference implementations (the HTTP differential test). Nothing here is
//! used by the reactor or the host.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::http::parse::{frame_all, Framed};

type PyFramed<'py> = (
    String,
    String,
    u8,
    Vec<(String, Bound<'py, PyBytes>)>,
    Bound<'py, PyBytes>,
);

/// `_frame_requests(data, max_head, max_body) -> (requests, status)`: the
/// requests the HTTP server frames from `data` (method, target, minor
/// version, headers with values as bytes, body), and the status it would
/// refuse the stream with (`None` if it did not).
#[pyfunction]
fn _frame_requests<'py>(
    py: Python<'py>,
    data: &[u8],
    max_head: usize,
    max_body: u64,
) -> (Vec<PyFramed<'py>>, Option<u16>) {
    let (requests, reject) = frame_all(data, max_head, max_body);
    let convert = |f: Framed| {
        (
            f.method,
            f.target,
            f.minor,
            f.headers
                .into_iter()
                .map(|(n, v)| (n, PyBytes::new(py, &v)))
                .collect(),
            PyBytes::new(py, &f.body),
        )
    };
    let status = reject.map(|r| r.status()[..3].parse().unwrap_or(400));
    (requests.into_iter().map(convert).collect(), status)
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_frame_requests, m)?)?;
    Ok(())
}
