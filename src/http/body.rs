//! Request bodies in bounded memory: the first `body_buffer` bytes in RAM,
//! the rest spooled to an anonymous temporary file as they arrive.
//!
//! A connection feeds the body's bytes to a [`BodySink`] as it reads them
//! (de-chunked); when the request is complete, [`BodySink::finish`] gives
//! the service a [`RequestBody`]: the bytes themselves, or the file,
//! rewound, with its length. Invariants:
//!
//! - memory held for one body is at most `body_buffer` plus one read's
//!   worth: once the body outgrows the buffer, what was buffered is written
//!   to the file and the buffer is released, and later bytes go to the file
//!   straight from the connection's read buffer (never a second whole copy);
//! - the file has no name from the start (`O_TMPFILE`; where the file
//!   system lacks it, a random name unlinked at once), so nothing is left
//!   on disk when the body is dropped, the request fails or the process is
//!   killed;
//! - a failure to create or write the file is a [`SpoolError`], which the
//!   connection answers with 503 (out of space) or 500 and logs; the bytes
//!   written so far go with the file.
//!
//! This is nginx's `client_body_buffer_size` / `client_body_temp_path`
//! model (what mod_wsgi relied on), with the temp file unnamed.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most a sink reserves before bytes arrive.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// A complete request body, as the service receives it.
#[derive(Debug)]
pub enum RequestBody {
    /// Small enough to stay in memory.
    Memory(Vec<u8>),
    /// Spooled: an unnamed file positioned at its start, and its length.
    File { file: File, len: u64 },
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::Memory(Vec::new())
    }

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            RequestBody::Memory(v) => v.len() as u64,
            RequestBody::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where and from what size bodies are spooled.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Bytes of a body kept in memory; a longer body goes to a file.
    pub buffer: usize,
    /// The directory of the temporary files.
    pub dir: PathBuf,
}

/// Why a body could not be spooled.
#[derive(Debug)]
pub struct SpoolError {
    /// Creating the file (else: writing it).
    pub creating: bool,
    pub dir: PathBuf,
    pub err: io::Error,
}

impl SpoolError {
    /// The file system is full (or the quota spent): the server cannot
    /// take the body now, but may later.
    pub fn out_of_space(&self) -> bool {
        matches!(
            self.err.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }

    /// The status line to answer with.
    pub fn status(&self) -> &'static str {
        if self.out_of_space() {
            "503 Service Unavailable"
        } else {
            "500 Internal Server Error"
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.creating {
            "cannot create a temporary file for a request body in"
        } else {
            "cannot write a request body to its temporary file in"
        };
        write!(f, "{what} {}: {}", self.dir.display(), self.err)
    }
}

/// Accumulates one body as it arrives.
#[derive(Debug)]
pub struct BodySink {
    /// The bytes so far while in memory; once spooled, a scratch buffer for
    /// de-chunked input on its way to the file (emptied after each write).
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
    cfg: Arc<SpoolConfig>,
    /// The body's declared length is over the buffer: write to the file
    /// from the start.
    direct: bool,
}

impl BodySink {
    /// A sink for a body expected to be `expected` bytes (0: unknown, as
    /// for a chunked body). A body known to be longer than the buffer goes
    /// to the file from its first byte (as nginx does), so it never costs
    /// the buffer's memory.
    pub fn new(cfg: &Arc<SpoolConfig>, expected: u64) -> BodySink {
        let fits = expected <= cfg.buffer as u64;
        // Reserved up front only up to one read's worth: a head alone must
        // not make the server allocate what it merely announces.
        let capacity = if fits {
            (expected as usize).min(INITIAL_CAPACITY)
        } else {
            0
        };
        BodySink {
            mem: Vec::with_capacity(capacity),
            file: None,
            len: 0,
            cfg: Arc::clone(cfg),
            direct: !fits,
        }
    }

    /// Make the file now if the body is known to need one (its declared
    /// length is over the buffer), so a failure is known before the body
    /// is asked for (`100 Continue`).
    pub fn prepare(&mut self) -> Result<(), SpoolError> {
        if self.direct {
            self.spill()?;
        }
        Ok(())
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the body went to a file.
    pub fn spooled(&self) -> bool {
        self.file.is_some()
    }

    /// Take `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.len += bytes.len() as u64;
        if self.file.is_none() && !self.direct && self.mem.len() + bytes.len() <= self.cfg.buffer {
            self.mem.extend_from_slice(bytes);
            return Ok(());
        }
        self.spill()?;
        self.write_file(bytes)
    }

    /// The buffer to decode into (a chunked body's data is appended to it
    /// by the decoder); call [`BodySink::settle`] after.
    pub fn scratch(&mut self) -> &mut Vec<u8> {
        &mut self.mem
    }

    /// Account for what was appended to [`BodySink::scratch`]: keep it in
    /// memory, or move it to the file.
    pub fn settle(&mut self, appended: usize) -> Result<(), SpoolError> {
        self.len += appended as u64;
        if self.file.is_none() && self.mem.len() <= self.cfg.buffer {
            return Ok(());
        }
        self.spill()?;
        if !self.mem.is_empty() {
            let pending = std::mem::take(&mut self.mem);
            let result = self.write_file(&pending);
            self.mem = pending;
            self.mem.clear();
            result?;
        }
        Ok(())
    }

    /// Make the file if there is none yet, and move the buffered bytes to it.
    fn spill(&mut self) -> Result<(), SpoolError> {
        if self.file.is_some() {
            return Ok(());
        }
        let file = unnamed_file(&self.cfg.dir).map_err(|err| SpoolError {
            creating: true,
            dir: self.cfg.dir.clone(),
            err,
        })?;
        self.file = Some(file);
        let buffered = std::mem::take(&mut self.mem);
        self.write_file(&buffered)?;
        // Keep a small scratch buffer; the body's memory goes back.
        self.mem = Vec::new();
        Ok(())
    }

    fn write_file(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(bytes).map_err(|err| SpoolError {
            creating: false,
            dir: self.cfg.dir.clone(),
            err,
        })
    }

    /// The complete body.
    pub fn finish(self) -> Result<RequestBody, SpoolError> {
        match self.file {
            None => Ok(RequestBody::Memory(self.mem)),
            Some(mut file) => {
                let dir = self.cfg.dir.clone();
                file.flush()
                    .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
                    .map_err(|err| SpoolError {
                        creating: false,
                        dir,
                        err,
                    })?;
                Ok(RequestBody::File {
                    file,
                    len: self.len,
                })
            }
        }
    }
}

/// A new file in `dir` that has no name: `O_TMPFILE` where the file system
/// has it, else a fresh name removed as soon as the file is open.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    let tmpfile = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    match tmpfile {
        Ok(f) => return Ok(f),
        // Not supported by this kernel or file system: fall back. Any other
        // error (no such directory, permission, space) is the answer.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) => {}
        Err(e) => return Err(e),
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            ".twisted-shim-body-{}-{}-{n}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn cfg(buffer: usize) -> Arc<SpoolConfig> {
        Arc::new(SpoolConfig {
            buffer,
            dir: std::env::temp_dir(),
        })
    }

    fn read_all(body: RequestBody) -> Vec<u8> {
        match body {
            RequestBody::Memory(v) => v,
            RequestBody::File { mut file, len } => {
                let mut v = Vec::new();
                file.read_to_end(&mut v).unwrap();
                assert_eq!(v.len() as u64, len);
                v
            }
        }
    }

    #[test]
    fn small_body_stays_in_memory() {
        let mut s = BodySink::new(&cfg(10), 6);
        s.write(b"abc").unwrap();
        s.write(b"def").unwrap();
        let body = s.finish().unwrap();
        assert!(matches!(body, RequestBody::Memory(_)));
        assert_eq!(read_all(body), b"abcdef");
    }

    #[test]
    fn large_body_spools_and_releases_memory() {
        let mut s = BodySink::new(&cfg(8), 0);
        s.write(b"12345").unwrap();
        assert!(!s.spooled());
        s.write(b"67890").unwrap();
        assert!(s.spooled());
        assert_eq!(
            s.mem.capacity(),
            0,
            "the buffered bytes' memory is released"
        );
        s.write(b"abc").unwrap();
        let body = s.finish().unwrap();
        assert!(matches!(body, RequestBody::File { len: 13, .. }));
        assert_eq!(read_all(body), b"1234567890abc");
    }

    #[test]
    fn a_body_declared_longer_than_the_buffer_goes_to_the_file_at_once() {
        let mut s = BodySink::new(&cfg(8), 20);
        s.write(b"ab").unwrap();
        assert!(s.spooled());
        assert_eq!(s.mem.capacity(), 0);
        s.write(&[b'c'; 18]).unwrap();
        let mut want = b"ab".to_vec();
        want.extend([b'c'; 18]);
        assert_eq!(read_all(s.finish().unwrap()), want);
    }

    #[test]
    fn scratch_and_settle_as_the_chunked_decoder_uses_them() {
        let mut s = BodySink::new(&cfg(4), 0);
        for piece in [&b"ab"[..], b"cd", b"efg", b"h"] {
            s.scratch().extend_from_slice(piece);
            s.settle(piece.len()).unwrap();
        }
        assert!(s.spooled());
        assert!(s.scratch().is_empty());
        assert_eq!(s.len(), 8);
        assert_eq!(read_all(s.finish().unwrap()), b"abcdefgh");
    }

    #[test]
    fn the_file_has_no_name() {
        let dir = std::env::temp_dir().join(format!("ts-body-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Arc::new(SpoolConfig {
            buffer: 1,
            dir: dir.clone(),
        });
        let mut s = BodySink::new(&c, 0);
        s.write(b"spooled").unwrap();
        assert!(s.spooled());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop(s);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_a_spool_error() {
        let c = Arc::new(SpoolConfig {
            buffer: 1,
            dir: PathBuf::from("/nonexistent/twisted-shim"),
        });
        let mut s = BodySink::new(&c, 0);
        let e = s.write(b"xy").unwrap_err();
        assert!(e.creating);
        assert_eq!(e.status(), "500 Internal Server Error");
        assert!(e.to_string().contains("/nonexistent/twisted-shim"), "{e}");
    }
}
