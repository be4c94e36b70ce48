//! The output queue of a stream socket.
//!
//! Bytes are queued as they are produced and written with `writev` (and
//! `sendfile` for a span of a regular file) when the socket takes them.
//! Python `bytes` objects stay what they were: they are pointed at, not
//! copied. Small pieces a protocol makes (an HTTP status line and headers,
//! chunk-size lines) are gathered into owned buffers.
//!
//! Invariant: `bytes` is the number of bytes still to write, files included.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

const MAX_IOV: usize = 64;
const SENDFILE_STEP: usize = 1 << 20;

pub enum Chunk {
    Owned(Vec<u8>, usize),
    Py(Py<PyBytes>, usize, usize),
    File {
        fd: OwnedFd,
        offset: i64,
        remaining: u64,
    },
}

#[derive(Default)]
pub struct WriteQueue {
    chunks: VecDeque<Chunk>,
    pub bytes: usize,
    /// Bytes written since the owner last looked (see `take_progress`).
    progress: usize,
}

impl WriteQueue {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Queue bytes the host made; coalesced with a previous owned piece
    /// that has not started going out.
    pub fn push_owned(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.bytes += data.len();
        if let Some(Chunk::Owned(buf, 0)) = self.chunks.back_mut() {
            if buf.len() + data.len() <= 16 * 1024 {
                buf.extend_from_slice(data);
                return;
            }
        }
        self.chunks.push_back(Chunk::Owned(data.to_vec(), 0));
    }

    /// Queue `len` bytes of a Python bytes object starting at `start`,
    /// without copying them.
    pub fn push_py(&mut self, obj: Py<PyBytes>, start: usize, len: usize) {
        if len == 0 {
            return;
        }
        self.bytes += len;
        self.chunks.push_back(Chunk::Py(obj, start, start + len));
    }

    pub fn push_file(&mut self, fd: OwnedFd, offset: i64, len: u64) {
        if len == 0 {
            return;
        }
        self.bytes = self.bytes.saturating_add(len as usize);
        self.chunks.push_back(Chunk::File {
            fd,
            offset,
            remaining: len,
        });
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }

    /// Whether any byte went out since the last call.
    pub fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progress) > 0
    }

    /// Write as much as the socket takes. Returns whether everything went.
    pub fn flush(&mut self, py: Python<'_>, sock: RawFd) -> io::Result<bool> {
        loop {
            match self.chunks.front_mut() {
                None => return Ok(true),
                Some(Chunk::File {
                    fd,
                    offset,
                    remaining,
                }) => {
                    let step = (*remaining).min(SENDFILE_STEP as u64) as usize;
                    let mut off: libc::off_t = *offset;
                    // SAFETY: both descriptors are open (we own the file's
                    // duplicate); sendfile updates `off` in place.
                    let n = unsafe { libc::sendfile(sock, fd.as_raw_fd(), &mut off, step) };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        return match e.kind() {
                            io::ErrorKind::WouldBlock => Ok(false),
                            io::ErrorKind::Interrupted => continue,
                            _ => Err(e),
                        };
                    }
                    if n == 0 {
                        // The file shrank under us: what was promised cannot
                        // be sent, so the response cannot end cleanly.
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file ended before the promised length",
                        ));
                    }
                    *offset = off;
                    *remaining -= n as u64;
                    self.bytes -= n as usize;
                    self.progress += n as usize;
                    if *remaining == 0 {
                        self.chunks.pop_front();
                    }
                }
                Some(_) => {
                    let mut iov = [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; MAX_IOV];
                    let mut count = 0;
                    for c in self.chunks.iter() {
                        let slice: &[u8] = match c {
                            Chunk::Owned(buf, off) => &buf[*off..],
                            Chunk::Py(obj, start, end) => &obj.bind(py).as_bytes()[*start..*end],
                            Chunk::File { .. } => break,
                        };
                        iov[count] = libc::iovec {
                            iov_base: slice.as_ptr() as *mut libc::c_void,
                            iov_len: slice.len(),
                        };
                        count += 1;
                        if count == MAX_IOV {
                            break;
                        }
                    }
                    let n = write_some(sock, &iov[..count]);
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        return match e.kind() {
                            io::ErrorKind::WouldBlock => Ok(false),
                            io::ErrorKind::Interrupted => continue,
                            _ => Err(e),
                        };
                    }
                    self.advance(n as usize);
                }
            }
        }
    }

    /// The next byte to write, when it is in memory (not a file's).
    pub fn first_byte(&self, py: Python<'_>) -> Option<u8> {
        match self.chunks.front()? {
            Chunk::Owned(buf, off) => buf.get(*off).copied(),
            Chunk::Py(obj, start, end) if start < end => {
                obj.bind(py).as_bytes().get(*start).copied()
            }
            _ => None,
        }
    }

    /// Count `n` bytes at the front as written by the caller (at most the
    /// bytes before the next file).
    pub fn consume(&mut self, n: usize) {
        self.advance(n.min(self.bytes));
    }

    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        self.progress += n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            let left = match front {
                Chunk::Owned(buf, off) => {
                    let left = buf.len() - *off;
                    if n < left {
                        *off += n;
                        return;
                    }
                    left
                }
                Chunk::Py(_, start, end) => {
                    let left = *end - *start;
                    if n < left {
                        *start += n;
                        return;
                    }
                    left
                }
                Chunk::File { .. } => return,
            };
            n -= left;
            self.chunks.pop_front();
        }
    }
}

/// One write of `iov` to `sock`: `send` for a single buffer (the socket's
/// own path, cheaper in the kernel than `writev`'s file path), `writev`
/// for several, or for a descriptor that is not a socket. The result is
/// the system call's (-1 with `errno` set on failure).
fn write_some(sock: RawFd, iov: &[libc::iovec]) -> isize {
    if let [one] = iov {
        // SAFETY: `one` points at `iov_len` readable bytes (see `flush`).
        let n = unsafe { libc::send(sock, one.iov_base, one.iov_len, libc::MSG_NOSIGNAL) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOTSOCK) {
            return n;
        }
    }
    // SAFETY: every iovec points into a buffer owned by a queued chunk (a
    // Vec or a live bytes object, with the GIL held), none of which changes
    // before writev returns.
    unsafe { libc::writev(sock, iov.as_ptr(), iov.len() as libc::c_int) }
}
