//! A service-agnostic HTTP/1.1 server on the reactor's loop.
//!
//! It owns parsing, framing, limits, timeouts, keep-alive and pipelining,
//! backpressure and the connections' socket I/O (through [`crate::net`]);
//! what to answer is a [`service::Service`]'s business, reached only
//! through the interface in [`service`]. This layer is interface-agnostic:
//! an application interface is one service on it, and dependencies point
//! from there to here, never back.
//!
//! - [`parse`]: request heads (`httparse` plus the strictness a server needs)
//!   and chunked bodies;
//! - [`body`]: request bodies in bounded memory (spooled to an unnamed
//!   file past `body_buffer`);
//! - [`service`]: the boundary: `Service`, `Exchange`, `Responder`, `ConnInfo`;
//! - [`conn`]: one connection: reading, framing requests and responses,
//!   timeouts, keep-alive and pipelining, closing;
//! - [`server`]: listeners, the connection table, the timeout sweep,
//!   graceful shutdown;
//! - [`forwarded`]: which peers' `X-Forwarded-For`/`-Proto` are believed.
//!
//! Connections are native handlers of the loop ([`crate::fdset::NativeHandler`]):
//! no Python transport or protocol object is involved.

pub mod body;
pub mod conn;
pub mod forwarded;
pub mod parse;
pub mod server;
pub mod service;

#[cfg(test)]
mod service_tests;

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// (year, month 1-12, day) from days since 1970-01-01 (Howard Hinnant's
/// civil-from-days).
fn civil(days: i64) -> (i64, usize, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as usize, d)
}

fn now_parts() -> (i64, i64) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (secs.div_euclid(86_400), secs.rem_euclid(86_400))
}

static DATE_CACHE: std::sync::Mutex<(i64, String)> =
    std::sync::Mutex::new((i64::MIN, String::new()));

/// The `Date` header value for now (IMF-fixdate), formatted once a second.
pub fn http_date() -> String {
    let (days, secs) = now_parts();
    let stamp = days * 86_400 + secs;
    let mut cache = crate::time::lock(&DATE_CACHE);
    if cache.0 != stamp {
        *cache = (stamp, format_http_date(days, secs));
    }
    cache.1.clone()
}

fn format_http_date(days: i64, secs: i64) -> String {
    let (y, m, d) = civil(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[m - 1],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The date of an access-log line (common log format).
pub fn log_date() -> String {
    let (days, secs) = now_parts();
    let (y, m, d) = civil(days);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d,
        MONTHS[m - 1],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_513), (2026, 3, 1));
    }

    #[test]
    fn date_shape() {
        let d = http_date();
        assert_eq!(d.len(), 29, "{d}");
        assert!(d.ends_with(" GMT"));
    }
}
