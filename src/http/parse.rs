//! Request parsing: the head with `httparse`, then the checks HTTP/1.1
//! servers must add on top of it, and the chunked body decoder.
//!
//! `httparse` is lenient where a server must be strict (it accepts a bare LF
//! as a line end); [`parse_head`] rejects what RFC 9112 says to reject, so a
//! request that reaches the application has exactly one unambiguous framing:
//! bare LF, obs-fold, invalid characters, both `Content-Length` and
//! `Transfer-Encoding`, invalid or repeated `Content-Length`, and transfer
//! codings other than `chunked` are all 400.
//!
//! `Host` must be one valid authority without userinfo (RFC 9112 §3.2,
//! [`valid_host`]), else 400; for an absolute-form target, the target's
//! authority replaces the `Host` header's value (§3.2.2), so what a service
//! reads as the host is what the request was routed by.
//!
//! A chunk-size line is parsed by [`parse_chunk_line`] to RFC 9112's grammar
//! exactly (`httparse::parse_chunk_size` skips anything up to a LF in an
//! extension, so a bare LF there split one request into two): hex digits,
//! then `BWS ";" BWS name [BWS "=" BWS value]` extensions with token names
//! and token or quoted-string values, then CRLF; anything else is 400.

use std::fmt;

/// How many headers a request may have (more is 431, like a too large head).
pub const MAX_HEADERS: usize = 100;

/// Why a request cannot be served; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// 400, with the reason (sent in the body and logged).
    BadRequest(&'static str),
    /// 431: the head is larger than the limit.
    HeadTooLarge,
    /// 413: the body is larger than the limit.
    BodyTooLarge,
    /// 408: the head did not arrive in time.
    Timeout,
    /// 501: a method or transfer coding we do not implement.
    NotImplemented(&'static str),
    /// 505.
    VersionNotSupported,
}

impl Reject {
    pub fn status(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "400 Bad Request",
            Reject::HeadTooLarge => "431 Request Header Fields Too Large",
            Reject::BodyTooLarge => "413 Content Too Large",
            Reject::Timeout => "408 Request Timeout",
            Reject::NotImplemented(_) => "501 Not Implemented",
            Reject::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::BadRequest(why) | Reject::NotImplemented(why) => {
                write!(f, "{}: {}", self.status(), why)
            }
            _ => f.write_str(self.status()),
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header names as sent, values as bytes (they may hold obs-text).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyKind,
    /// The client asked for `100 Continue`.
    pub expect_continue: bool,
    /// The connection stays open after this response (per version and
    /// `Connection`).
    pub keep_alive: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parse a request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and `buf` is still within
/// `max_head`), `Ok(Some(head))` when a whole head is there.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<Head>, Reject> {
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
    }
    let buf = &buf[skip..];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(httparse::Error::Version) => {
            // "HTTP/2.0" and friends are well-formed but not ours.
            return if buf.starts_with(b"PRI * HTTP/2") || has_other_version(buf) {
                Err(Reject::VersionNotSupported)
            } else {
                Err(Reject::BadRequest("malformed request line"))
            };
        }
        Err(httparse::Error::HeaderName) => {
            return Err(Reject::BadRequest("invalid header name or obs-fold"))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(Reject::BadRequest("invalid character in a header value"))
        }
        Err(httparse::Error::NewLine) => return Err(Reject::BadRequest("malformed line ending")),
        Err(httparse::Error::Token) => {
            return Err(Reject::BadRequest("invalid character in the request line"))
        }
        Err(_) => return Err(Reject::BadRequest("malformed request")),
    };
    let len = match status {
        httparse::Status::Partial => {
            // The empty lines count: a client sending nothing else must not
            // make the buffer grow without bound.
            if skip + buf.len() > max_head {
                return Err(Reject::HeadTooLarge);
            }
            // A bare LF in what we have is already fatal; say so now rather
            // than wait for a head that would be rejected anyway.
            check_line_ends(buf)?;
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if skip + len > max_head {
        return Err(Reject::HeadTooLarge);
    }
    check_line_ends(&buf[..len])?;
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default().to_owned();
    let minor = req.version.unwrap_or(1);
    if target.is_empty() {
        return Err(Reject::BadRequest("empty request target"));
    }
    split_target(&target)?;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut expect_continue = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut host_seen = false;
    let mut out = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(Reject::BadRequest("repeated Content-Length"));
            }
            content_length = Some(parse_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(Reject::BadRequest("repeated Transfer-Encoding"));
            }
            transfer_encoding = true;
            if value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else if has_token(value, "chunked") {
                return Err(Reject::NotImplemented(
                    "transfer codings other than chunked",
                ));
            } else {
                return Err(Reject::NotImplemented("unsupported transfer coding"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            conn_close |= has_token(value, "close");
            conn_keep_alive |= has_token(value, "keep-alive");
        } else if name.eq_ignore_ascii_case("expect") {
            if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            }
        } else if name.eq_ignore_ascii_case("host") {
            if host_seen {
                return Err(Reject::BadRequest("repeated Host"));
            }
            host_seen = true;
            if !valid_host(value) {
                return Err(Reject::BadRequest("invalid Host"));
            }
        }
        out.push((name.to_owned(), value.to_vec()));
    }
    if minor == 1 && !host_seen {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is 400, even with
        // an absolute-form target.
        return Err(Reject::BadRequest("missing Host header"));
    }
    if let Some(authority) = absolute_authority(&target)? {
        // RFC 9112 §3.2.2: the target's authority, not the Host header.
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case("host")) {
            Some((_, v)) => *v = authority.as_bytes().to_vec(),
            None => out.push(("Host".to_owned(), authority.as_bytes().to_vec())),
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(Reject::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if transfer_encoding && minor == 0 {
        return Err(Reject::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    let body = if chunked {
        BodyKind::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    let keep_alive = if minor == 0 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    Ok(Some(Head {
        method,
        target,
        minor,
        headers: out,
        body,
        expect_continue: expect_continue && minor == 1 && body != BodyKind::None,
        keep_alive,
        len: skip + len,
    }))
}

fn has_other_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len());
    let line = &buf[..line_end];
    line.rsplit(|&b| b == b' ').next().is_some_and(|v| {
        // Well-formed (HTTP/d.d) but not 1.0 or 1.1: 505, not 400.
        v.len() == 8
            && v.starts_with(b"HTTP/")
            && v[5].is_ascii_digit()
            && v[6] == b'.'
            && v[7].is_ascii_digit()
            && v != b"HTTP/1.1"
            && v != b"HTTP/1.0"
    })
}

/// Every LF must follow a CR: a bare LF is how request smuggling starts.
fn check_line_ends(head: &[u8]) -> Result<(), Reject> {
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err(Reject::BadRequest("bare LF line ending"));
        }
    }
    Ok(())
}

/// A Content-Length value: digits only, no sign, no list, no overflow.
fn parse_length(value: &[u8]) -> Result<u64, Reject> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadRequest("invalid Content-Length"));
    }
    let mut n: u64 = 0;
    for &d in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(Reject::BadRequest("invalid Content-Length"))?;
    }
    Ok(n)
}

/// Chunk extensions a request may carry in all (they are read and
/// dropped): without a cap, one-byte chunks with long extensions would make
/// a body of `--max-body` cost thousands of times that in input.
pub const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// Trailer section size a request may send (read and dropped); beyond it,
/// 431 as for a head.
pub const MAX_TRAILERS: usize = 64 * 1024;

/// Incremental decoder of a chunked body.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Decoded body size so far.
    pub total: u64,
    /// Bytes of chunk extensions seen so far.
    extensions: usize,
    /// Bytes of trailer section seen so far.
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decode as much of `input` as possible into `out`; returns how many
    /// input bytes were consumed. Stops at the end of the body.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_body: u64,
    ) -> Result<usize, Reject> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => {
                    let line_end = match find_crlf(rest) {
                        Some(i) => i,
                        None => {
                            if rest.len() > 4096 {
                                return Err(Reject::BadRequest("chunk size line too long"));
                            }
                            if rest.contains(&b'\n') {
                                return Err(Reject::BadRequest("bare LF in chunked body"));
                            }
                            return Ok(pos);
                        }
                    };
                    let (size, digits) = parse_chunk_line(&rest[..line_end])?;
                    self.extensions += line_end - digits;
                    if self.extensions > MAX_CHUNK_EXTENSIONS {
                        return Err(Reject::BadRequest("chunk extensions too long"));
                    }
                    pos += line_end + 2;
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else {
                        if self.total.saturating_add(size) > max_body {
                            return Err(Reject::BodyTooLarge);
                        }
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = (left.min(rest.len() as u64)) as usize;
                    out.extend_from_slice(&rest[..take]);
                    self.total += take as u64;
                    pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(Reject::BadRequest("chunk data not followed by CRLF"));
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // Trailer fields are read and dropped; an empty line ends them.
                    let line_end = match find_crlf(rest) {
                        Some(i) => i,
                        None => {
                            if rest.len() > 8192 {
                                return Err(Reject::BadRequest("trailer section too long"));
                            }
                            if rest.contains(&b'\n') {
                                return Err(Reject::BadRequest("bare LF in trailers"));
                            }
                            return Ok(pos);
                        }
                    };
                    if rest[..line_end].contains(&b'\n') {
                        return Err(Reject::BadRequest("bare LF in trailers"));
                    }
                    if line_end > 0 && !valid_field_line(&rest[..line_end]) {
                        // Anything else (a bare CR, a request line) would be
                        // swallowed as a trailer: the next request with it.
                        return Err(Reject::BadRequest("invalid trailer field"));
                    }
                    self.trailers += line_end + 2;
                    if self.trailers > MAX_TRAILERS {
                        return Err(Reject::HeadTooLarge);
                    }
                    pos += line_end + 2;
                    if line_end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// Whether `value` is a valid `Host`: `host [":" port]` per RFC 3986 with
/// no userinfo, where host is an IP-literal (`[` IPv6 `]`), an IPv4
/// address or a reg-name (unreserved, percent-encoded and sub-delims
/// characters), and port at most 65535. Empty is valid (a target without
/// an authority). A comma, though a sub-delim, is refused: it is what two
/// Host values joined into one look like.
pub fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host, port) = if value[0] == b'[' {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &value[1..end];
        let ok = std::str::from_utf8(inside)
            .ok()
            .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return false;
        }
        match &value[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&value[..0], port),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &value[..0]),
        }
    };
    if !port.iter().all(u8::is_ascii_digit)
        || (!port.is_empty()
            && std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_none_or(|p| p > 65535))
    {
        return false;
    }
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                if !(host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=".contains(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// An absolute-form target (`http://AUTHORITY/...`, scheme in any case)
/// split into its authority and the rest (path, query and fragment, from
/// the first `/`, `?` or `#` after the authority); `None` for other forms.
fn absolute_parts(target: &str) -> Option<(&str, &str)> {
    // Compared as bytes: the target may hold non-ASCII characters, and a
    // str slice inside one would panic.
    let starts = |scheme: &[u8]| {
        target
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
    };
    let scheme_len = if starts(b"http://") {
        7
    } else if starts(b"https://") {
        8
    } else {
        return None;
    };
    let after = &target[scheme_len..];
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some((&after[..end], &after[end..]))
}

/// The authority of an absolute-form target, if the target is one; 400 if
/// that authority is not a valid host.
fn absolute_authority(target: &str) -> Result<Option<&str>, Reject> {
    let Some((authority, _)) = absolute_parts(target) else {
        return Ok(None);
    };
    if authority.is_empty() || !valid_host(authority.as_bytes()) {
        return Err(Reject::BadRequest(
            "invalid authority in the request target",
        ));
    }
    Ok(Some(authority))
}

/// A field line (RFC 9112 section 5): a token, ':', then a value of
/// visible characters, spaces, tabs and obs-text (no CR, LF, NUL or other
/// control characters).
fn valid_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon].iter().all(|&b| is_tchar(b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// More hex digits than this in a chunk size is 400 (16 fill a u64).
const MAX_CHUNK_SIZE_DIGITS: usize = 16;

/// RFC 9110's `tchar`, the characters of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Skip `BWS` (spaces and tabs) from `i`.
fn skip_bws(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
        i += 1;
    }
    i
}

/// Parse a token from `i`; returns where it ends, if it is not empty.
fn token_end(line: &[u8], i: usize) -> Option<usize> {
    let end = i + line[i..].iter().take_while(|&&b| is_tchar(b)).count();
    (end > i).then_some(end)
}

/// Parse a quoted-string starting at `i` (at its opening quote); returns
/// where it ends. qdtext and quoted-pair exclude CTLs but HTAB, so a NUL,
/// CR or LF inside is an error.
fn quoted_end(line: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < line.len() {
        match line[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let next = *line.get(i + 1)?;
                if next != b'\t' && (next < 0x20 || next == 0x7f) {
                    return None;
                }
                i += 2;
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// Parse a chunk-size line (without its CRLF) per RFC 9112 section 7.1:
///
/// ```text
/// chunk-size [ chunk-ext ]
/// chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// chunk-ext-val = token / quoted-string
/// ```
///
/// Returns the size and how many hex digits it had.
pub fn parse_chunk_line(line: &[u8]) -> Result<(u64, usize), Reject> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Reject::BadRequest("invalid chunk size"));
    }
    // Leading zeros are allowed, so count what is left of them.
    let significant = line[..digits].iter().skip_while(|&&b| b == b'0').count();
    if significant > MAX_CHUNK_SIZE_DIGITS {
        return Err(Reject::BadRequest("chunk size too large"));
    }
    let size = line[..digits]
        .iter()
        .fold(0u64, |n, &b| (n << 4) | u64::from(hex(b).unwrap_or(0)));
    let bad = Reject::BadRequest("invalid chunk extension");
    let mut i = digits;
    while i < line.len() {
        // BWS is allowed only before a ';' (no trailing whitespace).
        i = skip_bws(line, i);
        if line.get(i) != Some(&b';') {
            return Err(bad);
        }
        i = skip_bws(line, i + 1);
        i = token_end(line, i).ok_or(bad.clone())?;
        let after_name = skip_bws(line, i);
        if line.get(after_name) == Some(&b'=') {
            i = skip_bws(line, after_name + 1);
            i = match line.get(i) {
                Some(b'"') => quoted_end(line, i),
                Some(_) => token_end(line, i),
                None => None,
            }
            .ok_or(bad.clone())?;
        }
    }
    Ok((size, digits))
}

/// One request as the server frames it from a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub method: String,
    pub target: String,
    pub minor: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The connection stays open after it (a connection reads no further
    /// request when this is false).
    pub keep_alive: bool,
}

/// Frame every request in `data`, as a connection reads them (head, then
/// its body, then the next head, unless the request closes the
/// connection): the requests complete in `data`, and the reason the stream
/// was refused, if it was. An incomplete last request is left out. Tests compare this with other parsers (the differential test);
/// a connection applies the same functions as bytes arrive.
pub fn frame_all(data: &[u8], max_head: usize, max_body: u64) -> (Vec<Framed>, Option<Reject>) {
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        if rest.is_empty() {
            return (out, None);
        }
        let head = match parse_head(rest, max_head) {
            Err(r) => return (out, Some(r)),
            Ok(None) => return (out, None),
            Ok(Some(h)) => h,
        };
        rest = &rest[head.len..];
        let mut body = Vec::new();
        match head.body {
            BodyKind::None => {}
            BodyKind::Length(n) if n > max_body => return (out, Some(Reject::BodyTooLarge)),
            BodyKind::Length(n) => {
                if (rest.len() as u64) < n {
                    return (out, None);
                }
                body.extend_from_slice(&rest[..n as usize]);
                rest = &rest[n as usize..];
            }
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::default();
                match dec.decode(rest, &mut body, max_body) {
                    Err(r) => return (out, Some(r)),
                    Ok(used) => rest = &rest[used..],
                }
                if !dec.is_done() {
                    return (out, None);
                }
            }
        }
        let keep_alive = head.keep_alive;
        out.push(Framed {
            method: head.method,
            target: head.target,
            minor: head.minor,
            headers: head.headers,
            body,
            keep_alive,
        });
        if !keep_alive {
            return (out, None);
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Percent-decode a request path into bytes (invalid escapes stay as they are).
pub fn percent_decode(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(path[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Split a request target into (path, query), accepting origin-form,
/// absolute-form and `*`.
pub fn split_target(target: &str) -> Result<(&str, &str), Reject> {
    let rest = if target.starts_with('/') {
        target
    } else if target == "*" {
        return Ok(("*", ""));
    } else if let Some((_, rest)) = absolute_parts(target) {
        rest
    } else {
        return Err(Reject::BadRequest("invalid request target"));
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (path, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    // An absolute-form target with no path has the path '/' (RFC 9112 §3.2.2).
    Ok((if path.is_empty() { "/" } else { path }, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, Reject> {
        parse_head(raw.as_bytes(), 65536)
    }

    #[test]
    fn simple_get() {
        let h = head("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/a?b=1");
        assert_eq!(h.minor, 1);
        assert!(h.keep_alive);
        assert_eq!(h.body, BodyKind::None);
    }

    #[test]
    fn partial_then_complete() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn http10_defaults_to_close() {
        let h = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let bad = [
            "GET / HTTP/1.1\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\x01\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GARBAGE\r\n\r\n",
            "GET / HTTP/1.x\r\nHost: x\r\n\r\n",
        ];
        for raw in bad {
            let r = head(raw);
            assert!(
                matches!(r, Err(Reject::BadRequest(_))),
                "{raw:?} gave {r:?}"
            );
        }
    }

    #[test]
    fn other_versions_are_505() {
        assert_eq!(
            head("GET / HTTP/2.0\r\nHost: x\r\n\r\n").unwrap_err(),
            Reject::VersionNotSupported
        );
    }

    #[test]
    fn head_too_large() {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(1000)
        );
        assert_eq!(
            parse_head(raw.as_bytes(), 100).unwrap_err(),
            Reject::HeadTooLarge
        );
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(1000));
        assert_eq!(
            parse_head(partial.as_bytes(), 100).unwrap_err(),
            Reject::HeadTooLarge
        );
    }

    #[test]
    fn chunked_decoding() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let used = d.decode(input, &mut out, 100).unwrap();
        assert!(d.is_done());
        assert_eq!(out, b"hello world");
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn chunked_in_pieces() {
        let input = b"5\r\nhello\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for &b in input.iter() {
            buf.push(b);
            let used = d.decode(&buf, &mut out, 100).unwrap();
            buf.drain(..used);
        }
        assert!(d.is_done());
        assert_eq!(out, b"hello");
    }

    #[test]
    fn bad_chunks() {
        for input in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"-1\r\n",
            b"\r\nhello",
        ] {
            let mut d = ChunkedDecoder::default();
            assert!(
                matches!(
                    d.decode(input, &mut Vec::new(), 100),
                    Err(Reject::BadRequest(_))
                ),
                "{input:?}"
            );
        }
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(b"ff\r\n", &mut Vec::new(), 10).unwrap_err(),
            Reject::BodyTooLarge
        );
    }

    #[test]
    fn chunk_lines_follow_the_grammar() {
        for ok in [
            &b"5"[..],
            b"0005",
            b"a;x",
            b"a;x=1",
            b"a ; x = 1",
            b"a\t;\tx\t=\t1;y;z=\"q \\\" s\"",
            b"ffffffffffffffff",
            b"000000000000000000001",
        ] {
            assert!(
                parse_chunk_line(ok).is_ok(),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
        assert_eq!(parse_chunk_line(b"1f;a=b").unwrap(), (31, 2));
        for bad in [
            &b""[..],
            b" 5",
            b"5 ",
            b"5\t",
            b"5;",
            b"5;=1",
            b"5;a=",
            b"5;a\nbc",
            b"5;\n",
            b"5;a\x00b",
            b"5;a=\"unterminated",
            b"5;a=\"nul\x00\"",
            b"5;a=\"lf\n\"",
            b"5;a=b c",
            b"5;a b",
            b"5x",
            b"10000000000000000",
        ] {
            assert!(
                parse_chunk_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailer_lines_must_be_field_lines() {
        for bad in [
            &b"0\r\n\r\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"0\r\nbad name: v\r\n\r\n",
            b"0\r\nT: nul\x00\r\n\r\n",
            b"0\r\nT: cr\rx\r\n\r\n",
        ] {
            let mut d = ChunkedDecoder::default();
            assert_eq!(
                d.decode(bad, &mut Vec::new(), 100),
                Err(Reject::BadRequest("invalid trailer field")),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut d = ChunkedDecoder::default();
        let ok = b"0\r\nT: v\r\nEmpty:\r\nX-Obs: \xe9\t!\r\n\r\nNEXT";
        assert_eq!(d.decode(ok, &mut Vec::new(), 100), Ok(ok.len() - 4));
        assert!(d.is_done());
    }

    #[test]
    fn smuggling_through_a_bare_lf_in_an_extension_is_refused() {
        // Found by a reliability test: read as two requests before.
        let body = b"2;\nxx\r\n50\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\n";
        let mut d = ChunkedDecoder::default();
        assert!(matches!(
            d.decode(body, &mut Vec::new(), 1 << 20),
            Err(Reject::BadRequest(_))
        ));
        for line in [
            &b"3;a\nbc\r\n"[..],
            b"3;\n\r\n",
            b"0;\nx\r\n",
            b"3;a\x00b\r\n",
            b"3 \r\n",
        ] {
            let mut d = ChunkedDecoder::default();
            assert!(
                matches!(
                    d.decode(line, &mut Vec::new(), 1 << 20),
                    Err(Reject::BadRequest(_))
                ),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn hosts_follow_rfc_3986() {
        for ok in [
            &b""[..],
            b"example.com",
            b"example.com:8080",
            b"a-b_c.d~e",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:8000",
            b"[2001:db8::7]",
            b"xn--bcher-kva.example",
            b"%41bc",
            b"host:",
            b"h:65535",
        ] {
            assert!(valid_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"a/b"[..],
            b"a b",
            b"\xe9vil",
            b"a, b",
            b"a,b",
            b"u@a",
            b"evil:99999",
            b"h:8a",
            b"[::1",
            b"[nothex]",
            b"[::1]x",
            b"%4",
            b"%zz",
            b"a\\b",
            b"a?b",
            b"a#b",
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn an_invalid_host_is_400_and_absolute_form_replaces_host() {
        for value in ["a/b", "a b", "a, b", "u@a", "evil:99999"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
            assert_eq!(
                head(&raw).unwrap_err(),
                Reject::BadRequest("invalid Host"),
                "{value}"
            );
        }
        let h = head("GET / HTTP/1.1\r\nHost: \u{e9}vil\r\n\r\n");
        assert!(h.is_err());
        let h = head("GET http://x:81/p?q=1 HTTP/1.1\r\nHost: y\r\n\r\n")
            .unwrap()
            .unwrap();
        let hosts: Vec<_> = h
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].1, b"x:81");
        // HTTP/1.1 needs Host even with an absolute-form target.
        assert_eq!(
            head("GET http://x/p HTTP/1.1\r\n\r\n").unwrap_err(),
            Reject::BadRequest("missing Host header")
        );
        let h = head("GET http://x/p HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(h.headers.iter().any(|(n, v)| n == "Host" && v == b"x"));
        for target in [
            "http:///p",
            "http://u@x/p",
            "http://a b/p",
            "https://x:99999/",
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(head(&raw).is_err(), "{target}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("/a/b?c=d").unwrap(), ("/a/b", "c=d"));
        assert_eq!(split_target("http://h:1/x?y").unwrap(), ("/x", "y"));
        assert_eq!(split_target("http://h").unwrap(), ("/", ""));
        // The path starts after the authority: a '/' in the query or the
        // fragment is not the path's.
        assert_eq!(split_target("http://h?a/b").unwrap(), ("/", "a/b"));
        assert_eq!(split_target("http://h#x/y").unwrap(), ("/", ""));
        assert_eq!(split_target("HTTP://h/p?q").unwrap(), ("/p", "q"));
        assert_eq!(split_target("https://h:8/p#f?g").unwrap(), ("/p", ""));
        // Found by the fuzzer: a multi-byte character across the scheme's
        // length (a str slice there panicked).
        assert!(split_target("http:/\u{4d7}:80/").is_err());
        assert_eq!(split_target("/\u{4d7}").unwrap(), ("/\u{4d7}", ""));
        assert!(split_target("x").is_err());
        assert_eq!(percent_decode(b"/a%20b%zz%4"), b"/a b%zz%4");
    }

    #[test]
    fn empty_lines_count_against_the_head_limit() {
        // Only CRLFs: the buffer must not be allowed to grow forever.
        let flood = b"\r\n".repeat(40_000);
        assert_eq!(parse_head(&flood, 65536).unwrap_err(), Reject::HeadTooLarge);
        assert!(parse_head(&flood[..1000], 65536).unwrap().is_none());
        // A few empty lines before a request are still fine (RFC 9112 §2.2).
        let h = head("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.len, 4 + 27);
        // Empty lines plus a head that fits alone but not together: 431.
        let mut raw = b"\r\n".repeat(100);
        raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(parse_head(&raw, 200).unwrap_err(), Reject::HeadTooLarge);
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const REQUESTS: &[&str] = &[
        "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "\r\nPOST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        "PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\nX-Obs: caf\u{e9}\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://h:1/x?y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ];

    fn latin1_bytes(s: &str) -> Vec<u8> {
        s.chars().map(|c| c as u32 as u8).collect()
    }

    #[test]
    fn a_head_parses_the_same_however_it_arrives() {
        for raw in REQUESTS.iter().map(|r| latin1_bytes(r)) {
            let whole = parse_head(&raw, 65536).unwrap().unwrap();
            for cut in 0..whole.len {
                assert!(
                    parse_head(&raw[..cut], 65536).unwrap().is_none(),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(&raw)
                );
            }
            for cut in whole.len..=raw.len() {
                let h = parse_head(&raw[..cut], 65536).unwrap().unwrap();
                assert_eq!(
                    (&h.method, &h.target, h.minor, &h.headers, h.body, h.len),
                    (
                        &whole.method,
                        &whole.target,
                        whole.minor,
                        &whole.headers,
                        whole.body,
                        whole.len
                    )
                );
            }
        }
    }

    #[test]
    fn mangled_heads_are_answered_never_panic() {
        // Bytes that matter to a parser, and some that should never appear.
        const NASTY: &[u8] = b"\r\n :\t\0\x7f\xff,;=?#/%0aZ\"";
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut accepted = 0;
        for i in 0..60_000 {
            let mut raw = latin1_bytes(REQUESTS[i % REQUESTS.len()]);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(raw.len() + 1);
                let b = NASTY[rng.below(NASTY.len())];
                match rng.below(4) {
                    0 if at < raw.len() => raw[at] = b,
                    1 => raw.insert(at, b),
                    2 if at < raw.len() => {
                        raw.remove(at);
                    }
                    _ => raw.truncate(at),
                }
            }
            let limit = [64, 512, 65536][rng.below(3)];
            match parse_head(&raw, limit) {
                Ok(None) => assert!(raw.len() <= limit, "{raw:?} waits past the limit"),
                Ok(Some(h)) => {
                    accepted += 1;
                    assert!(h.len <= raw.len() && h.len <= limit);
                    assert!(!h.method.is_empty() && !h.target.is_empty());
                    assert!(h.minor <= 1);
                    // What was accepted has no bare LF and no stray CR.
                    let head_bytes = &raw[..h.len];
                    check_line_ends(head_bytes).unwrap();
                    split_target(&h.target).unwrap();
                }
                Err(r) => assert!(
                    [
                        "400 Bad Request",
                        "413 Content Too Large",
                        "431 Request Header Fields Too Large",
                        "501 Not Implemented",
                        "505 HTTP Version Not Supported"
                    ]
                    .contains(&r.status()),
                    "{r:?}"
                ),
            }
        }
        // The mutations leave some requests valid: the accepting path ran too.
        assert!(accepted > 1000, "{accepted}");
    }

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), Reject> {
        // As the connection does: unconsumed bytes wait for the next piece.
        let mut dec = ChunkedDecoder::default();
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for piece in pieces {
            pending.extend_from_slice(piece);
            let n = dec.decode(&pending, &mut out, 1 << 20)?;
            pending.drain(..n);
            if dec.is_done() {
                break;
            }
        }
        Ok((out, dec.is_done()))
    }

    #[test]
    fn a_chunked_body_decodes_the_same_in_any_pieces() {
        let body: &[u8] =
            b"4\r\nWiki\r\n5;name=val\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
        let (whole, done) = decode_all(&[body]).unwrap();
        assert!(done);
        assert_eq!(whole, b"Wikipedia in\r\n\r\nchunks.");
        let mut rng = Rng(42);
        for _ in 0..5_000 {
            let mut cuts: Vec<usize> = (0..rng.below(8)).map(|_| rng.below(body.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([body.len()]) {
                pieces.push(&body[start..c]);
                start = c;
            }
            assert_eq!(decode_all(&pieces).unwrap(), (whole.clone(), true));
        }
        // Mangled bodies: an error or less output, never a panic or more.
        for _ in 0..20_000 {
            let mut raw = body.to_vec();
            let at = rng.below(raw.len());
            raw[at] = b"\r\n;0fFzx \t"[rng.below(10)];
            if let Ok((out, _)) = decode_all(&[&raw]) {
                assert!(out.len() <= whole.len() + 16, "{out:?}");
            }
        }
    }

    #[test]
    fn chunk_extensions_and_trailers_are_bounded() {
        // One-byte chunks with 1 KiB extensions: fine for a while, then 400.
        let ext = "x".repeat(1000);
        let mut body = Vec::new();
        for _ in 0..10 {
            body.extend_from_slice(format!("1;e={ext}\r\na\r\n").as_bytes());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode_all(&[&body]).unwrap(), (b"a".repeat(10), true));
        let mut long = Vec::new();
        for _ in 0..20 {
            long.extend_from_slice(format!("1;e={ext}\r\na\r\n").as_bytes());
        }
        assert_eq!(
            decode_all(&[&long]).unwrap_err(),
            Reject::BadRequest("chunk extensions too long")
        );
        // Trailer lines, each short, adding up past the cap: 431.
        let mut t = b"1\r\na\r\n0\r\n".to_vec();
        for i in 0..2000 {
            t.extend_from_slice(format!("X-T{i}: {}\r\n", "v".repeat(40)).as_bytes());
        }
        t.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&[&t]).unwrap_err(), Reject::HeadTooLarge);
    }
}
