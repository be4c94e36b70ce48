//! The HTTP layer driven by a fake [`Service`], over real loopback sockets,
//! without any application interface: pipelining, chunked and
//! close-delimited output, the 500 page, aborts, a client that leaves, and
//! backpressure.
//!
//! Each test runs a server on its own [`Loop`], a blocking-free client on a
//! `std::net::TcpStream`, and pumps the loop until the client has what it
//! expects, or fails after a bounded number of iterations.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::event_loop::Loop;
use crate::http::body::{RequestBody, SpoolConfig};
use crate::http::forwarded::TrustedProxies;
use crate::http::parse::Head;
use crate::http::server::{Config, Server};
use crate::http::service::{ConnInfo, Exchange, Responder, Service};

/// What a fake exchange does when started.
#[derive(Clone, Copy)]
enum Plan {
    /// `200` with a `Content-Length` body "METHOD TARGET BODY".
    Echo,
    /// `200` without a length: "hello", "world" as two body pieces.
    TwoPieces,
    /// Headers with `Content-Length: 10`, "12345", then abort.
    AbortMidBody,
    /// Fail before any headers (the 500 page).
    FailEarly,
    /// Never answer (the client is expected to leave).
    Hold,
    /// `total` bytes in 16 KiB pieces, waiting for drains above the mark.
    Stream { total: usize },
}

#[derive(Default)]
struct Events {
    log: Vec<String>,
    drained: usize,
    max_queued: usize,
}

struct FakeService {
    plan: Plan,
    events: Arc<Mutex<Events>>,
}

struct FakeExchange {
    plan: Plan,
    responder: Responder,
    events: Arc<Mutex<Events>>,
    sent: Mutex<usize>,
}

impl Service for FakeService {
    fn exchange(
        &self,
        _py: Python<'_>,
        head: &Head,
        info: &Arc<ConnInfo>,
        responder: Responder,
    ) -> PyResult<Arc<dyn Exchange>> {
        assert!(!info.unix && info.peer.host == "127.0.0.1");
        self.events
            .lock()
            .unwrap()
            .log
            .push(format!("exchange {}", head.target));
        Ok(Arc::new(FakeExchange {
            plan: self.plan,
            responder,
            events: self.events.clone(),
            sent: Mutex::new(0),
        }))
    }
}

const PIECE: usize = 16 * 1024;

impl FakeExchange {
    /// Send pieces until done or above the high-water mark.
    fn pump(&self, py: Python<'_>, total: usize) {
        loop {
            let mut sent = self.sent.lock().unwrap();
            if *sent == total {
                drop(sent);
                self.responder.finish(py).unwrap();
                self.responder.flush(py);
                return;
            }
            if self.responder.over_high_water() {
                self.responder.wait_for_drain();
                return;
            }
            let n = PIECE.min(total - *sent);
            let piece: Vec<u8> = (*sent..*sent + n).map(|i| (i % 251) as u8).collect();
            *sent += n;
            drop(sent);
            self.responder.body(&PyBytes::new(py, &piece));
            let mut ev = self.events.lock().unwrap();
            ev.max_queued = ev.max_queued.max(self.responder.queued());
        }
    }
}

impl Exchange for FakeExchange {
    fn start(&self, py: Python<'_>, head: Head, body: RequestBody) {
        let r = &self.responder;
        match self.plan {
            Plan::Echo => {
                let (bytes, spooled) = match body {
                    RequestBody::Memory(v) => (v, ""),
                    RequestBody::File { mut file, len } => {
                        let mut v = Vec::new();
                        file.read_to_end(&mut v).unwrap();
                        assert_eq!(v.len() as u64, len);
                        (v, " [spooled]")
                    }
                };
                let text = format!(
                    "{} {} {}{}",
                    head.method,
                    head.target,
                    String::from_utf8_lossy(&bytes),
                    spooled
                );
                let len = text.len() as u64;
                r.start(
                    "200 OK",
                    &[("Content-Length".into(), len.to_string())],
                    Some(len),
                    false,
                    false,
                );
                r.body(&PyBytes::new(py, text.as_bytes()));
                r.finish(py).unwrap();
            }
            Plan::TwoPieces => {
                r.start("200 OK", &[], None, false, false);
                r.body(&PyBytes::new(py, b"hello"));
                r.body(&PyBytes::new(py, b"world"));
                r.finish(py).unwrap();
            }
            Plan::AbortMidBody => {
                r.start(
                    "200 OK",
                    &[("Content-Length".into(), "10".into())],
                    Some(10),
                    false,
                    false,
                );
                r.body(&PyBytes::new(py, b"12345"));
                r.abort(py);
                return;
            }
            Plan::FailEarly => r.fail(py),
            Plan::Hold => return,
            Plan::Stream { total } => {
                r.start(
                    "200 OK",
                    &[("Content-Length".into(), total.to_string())],
                    Some(total as u64),
                    false,
                    false,
                );
                self.pump(py, total);
                return;
            }
        }
        r.flush(py);
    }

    fn drained(&self, py: Python<'_>) {
        self.events.lock().unwrap().drained += 1;
        if let Plan::Stream { total } = self.plan {
            self.pump(py, total);
        }
    }

    fn aborted(&self, _py: Python<'_>, disconnected: bool) {
        self.events
            .lock()
            .unwrap()
            .log
            .push(format!("aborted disconnected={disconnected}"));
    }
}

struct Harness {
    lp: Py<Loop>,
    server: Arc<Server>,
    _listener: TcpListener,
    port: u16,
    events: Arc<Mutex<Events>>,
}

/// Bodies longer than this are spooled to a file in these tests.
const SPOOL_BUFFER: usize = 8;

fn harness(py: Python<'_>, plan: Plan, high_water: usize) -> Harness {
    let lp = Py::new(py, Loop::for_tests()).unwrap();
    let events = Arc::new(Mutex::new(Events::default()));
    let cfg = Config {
        max_header: 8192,
        max_body: 1 << 20,
        spool: Arc::new(SpoolConfig {
            buffer: SPOOL_BUFFER,
            dir: std::env::temp_dir(),
        }),
        header_timeout: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        min_body_rate: 1024,
        high_water,
        proxies: Arc::new(TrustedProxies::parse::<&str>(&[]).unwrap()),
        access_log: None,
    };
    let service = Arc::new(FakeService {
        plan,
        events: events.clone(),
    });
    let server = Server::new(lp.clone_ref(py), cfg, service);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    server.listen(py, listener.as_raw_fd()).unwrap();
    let port = listener.local_addr().unwrap().port();
    Harness {
        lp,
        server,
        _listener: listener,
        port,
        events,
    }
}

impl Harness {
    fn client(&self) -> TcpStream {
        let c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_nonblocking(true).unwrap();
        c
    }

    /// Pump the loop, reading what `client` gets, until `done(read so far,
    /// at end of stream)`; panics after 2,000 iterations.
    fn until(
        &self,
        py: Python<'_>,
        client: &mut TcpStream,
        got: &mut Vec<u8>,
        done: impl Fn(&[u8], bool) -> bool,
    ) -> bool {
        let mut eof = false;
        for _ in 0..2000 {
            self.lp.bind(py).get().poll_native(py, 0.005);
            let mut buf = [0u8; 65536];
            loop {
                match client.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            if done(got, eof) {
                return eof;
            }
        }
        panic!(
            "the client never got what it waited for; it has {:?}",
            String::from_utf8_lossy(got)
        );
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn with_python(f: impl FnOnce(Python<'_>)) {
    Python::initialize();
    Python::attach(f);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    with_python(|py| {
        let h = harness(py, Plan::Echo, 1 << 20);
        let mut c = h.client();
        c.write_all(
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
              GET /b HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
        let mut got = Vec::new();
        h.until(py, &mut c, &mut got, |g, _| {
            count(g, b"HTTP/1.1 200 OK") == 2 && g.ends_with(b"GET /b ")
        });
        let text = String::from_utf8_lossy(&got);
        let a = text.find("POST /a abc").expect("first response");
        let b = text.find("GET /b ").expect("second response");
        assert!(a < b, "{text}");
        assert_eq!(count(&got, b"Date: "), 2, "{text}");
        assert_eq!(
            h.events.lock().unwrap().log,
            ["exchange /a", "exchange /b"],
            "the second request reached the service after the first"
        );
        assert_eq!(h.server.connections(), 1, "kept alive");
    });
}

#[test]
fn bodies_past_the_buffer_reach_the_service_as_files() {
    with_python(|py| {
        let h = harness(py, Plan::Echo, 1 << 20);
        let mut c = h.client();
        // Pipelined: a long body with a length, one chunked in pieces that
        // cross the buffer's size, a short one; then a request without one.
        c.write_all(
            b"POST /long HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n01234567890123456789\
              POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nabcde\r\n7\r\nfghijkl\r\n3\r\nmno\r\n0\r\n\r\n\
              POST /short HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz\
              GET /end HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
        let mut got = Vec::new();
        h.until(py, &mut c, &mut got, |g, _| g.ends_with(b"GET /end "));
        let text = String::from_utf8_lossy(&got);
        let order = [
            "POST /long 01234567890123456789 [spooled]",
            "POST /chunked abcdefghijklmno [spooled]",
            "POST /short xyzHTTP/1.1",
            "GET /end ",
        ]
        .map(|s| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s:?} not in {text}"))
        });
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    });
}

#[test]
fn output_without_a_length_is_chunked_for_http11_and_close_delimited_for_http10() {
    with_python(|py| {
        let h = harness(py, Plan::TwoPieces, 1 << 20);
        let mut c = h.client();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = Vec::new();
        h.until(py, &mut c, &mut got, |g, _| g.ends_with(b"0\r\n\r\n"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("Connection: close"), "{text}");

        let mut c = h.client();
        c.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let eof = h.until(py, &mut c, &mut got, |_, eof| eof);
        assert!(eof);
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(!text.contains("chunked"), "{text}");
        assert!(text.ends_with("\r\n\r\nhelloworld"), "{text}");
    });
}

#[test]
fn head_responses_carry_no_body() {
    with_python(|py| {
        let h = harness(py, Plan::Echo, 1 << 20);
        let mut c = h.client();
        c.write_all(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        h.until(py, &mut c, &mut got, |g, _| g.ends_with(b"GET /y "));
        let text = String::from_utf8_lossy(&got);
        // The HEAD response says the length its body would have, sends none,
        // and the next response follows at once.
        assert!(text.contains("Content-Length: 8\r\n"), "{text}");
        assert!(!text.contains("HEAD /x"), "{text}");
        assert_eq!(count(&got, b"HTTP/1.1 200 OK"), 2, "{text}");
    });
}

#[test]
fn a_failure_before_the_headers_is_a_500_and_the_connection_closes() {
    with_python(|py| {
        let h = harness(py, Plan::FailEarly, 1 << 20);
        let mut c = h.client();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = Vec::new();
        h.until(py, &mut c, &mut got, |_, eof| eof);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nInternal Server Error\n"), "{text}");
    });
}

#[test]
fn an_abort_truncates_the_response_and_resets() {
    with_python(|py| {
        let h = harness(py, Plan::AbortMidBody, 1 << 20);
        let mut c = h.client();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = Vec::new();
        h.until(py, &mut c, &mut got, |_, eof| eof);
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("Content-Length: 10\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n12345"),
            "5 of 10 bytes, then the end: {text}"
        );
        assert_eq!(
            h.events.lock().unwrap().log,
            ["exchange /", "aborted disconnected=false"]
        );
        assert_eq!(h.server.connections(), 0);
    });
}

#[test]
fn a_client_that_leaves_aborts_its_exchange() {
    with_python(|py| {
        let h = harness(py, Plan::Hold, 1 << 20);
        let mut c = h.client();
        c.write_all(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let lp = h.lp.bind(py).get();
        for _ in 0..200 {
            lp.poll_native(py, 0.005);
            if h.server.active() == 1 && !h.events.lock().unwrap().log.is_empty() {
                break;
            }
        }
        assert_eq!(h.events.lock().unwrap().log, ["exchange /held"]);
        c.shutdown(Shutdown::Both).unwrap();
        for _ in 0..200 {
            lp.poll_native(py, 0.005);
            if h.server.connections() == 0 {
                break;
            }
        }
        assert_eq!(
            h.events.lock().unwrap().log,
            ["exchange /held", "aborted disconnected=true"]
        );
        assert_eq!(h.server.connections(), 0);
        let _ = c
            .read(&mut [0u8; 16])
            .map(|n| got.extend_from_slice(&[0; 16][..n]));
        assert!(got.is_empty(), "no response was begun");
    });
}

#[test]
fn backpressure_holds_the_service_at_the_high_water_mark() {
    with_python(|py| {
        let total = 4 << 20;
        let high_water = 64 * 1024;
        let h = harness(py, Plan::Stream { total }, high_water);
        let mut c = h.client();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        h.until(py, &mut c, &mut got, |g, _| {
            g.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|end| g.len() - end - 4 == total)
        });
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = &got[end..];
        assert!(
            body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "the body arrived whole and in order"
        );
        let ev = h.events.lock().unwrap();
        assert!(
            ev.drained > 0,
            "the service was told to go on after waiting"
        );
        // It never queued more than one piece past the mark.
        assert!(
            ev.max_queued <= high_water + PIECE,
            "queued {} with a mark of {high_water}",
            ev.max_queued
        );
    });
}
