//! `UnixStreamIO`: [`StreamIO`] for UNIX stream sockets, which also carry
//! file descriptors, as Twisted's `unix._SendmsgMixin` does.
//!
//! The transports of `twisted_shim/unix.py` derive from this class and from
//! Twisted's `unix.Server` and `unix.Client` (`class Server(UnixStreamIO,
//! unix.Server)`): the bytes move as on TCP (the same queue, `writev`, the
//! same read buffer), and what the mixin adds is here, with its behaviour:
//!
//! - `sendFileDescriptor(fileno)` queues the descriptor (not a duplicate:
//!   the caller keeps it open until it is sent, as with Twisted), then
//!   `_maybePauseProducer()` and `startWriting()`. `_isSendBufferFull()`
//!   is true past `_fileDescriptorBufferSize` queued descriptors as well as
//!   past `bufferSize` bytes (and `StreamIO.write` pauses a producer on
//!   either, through [`descriptors_full`]); `_sendmsgQueue` reads the queue.
//! - `doWrite`: each queued descriptor goes out with one byte, the next of
//!   the byte queue, in one `sendmsg` with `SCM_RIGHTS`; then the rest of
//!   the bytes as `StreamIO.doWrite` sends them. More descriptors than
//!   queued bytes is `FileDescriptorOverrun`; `EAGAIN` or `ENOBUFS` waits
//!   for writability; another error is `CONNECTION_LOST`.
//! - `doRead`: one `recvmsg` of up to `bufferSize` bytes with room for
//!   Twisted's 4 KiB of control data. Control messages, in order, go to
//!   Twisted's own `_ancillaryLevelSOLSOCKETTypeSCMRIGHTS` (which hands each
//!   descriptor to an `IFileDescriptorReceiver` protocol's
//!   `fileDescriptorReceived`, or logs and closes them) or, for any other
//!   kind, to the transport's `_unsupportedAncillaryData` (Twisted's log
//!   line); then the bytes to `dataReceived`, so descriptors arrive before
//!   the bytes they came with. End of stream is `CONNECTION_DONE`, an error
//!   `CONNECTION_LOST`, `EAGAIN` nothing.
//!
//! Why always `recvmsg`, whatever the protocol: whether it receives
//! descriptors is asked when some arrive, as Twisted asks, so a protocol
//! that changes (TLS wraps it) is served right, and a non-receiver's
//! descriptors are closed and logged as Twisted does. A read without
//! control data costs what `recv` costs: the same one system call, which
//! copies a 56-byte `msghdr` in and out besides; the control buffer is on
//! the stack and not initialised. Descriptors to send are checked with one
//! `is_empty` per `doWrite`. So a connection that passes no descriptors
//! runs no Python code and makes no system call TCP would not.
//!
//! Invariants: every queued descriptor is sent with a byte still in the
//! queue when it goes (so `len(_sendmsgQueue)` never exceeds the queued
//! bytes once `doWrite` has run without an overrun); a received descriptor
//! is handed to Twisted's code or closed, never dropped (when that code
//! raises, the descriptors of the messages after it are closed). The locks are
//! never held across a Python call (reactor thread, GIL held).
//!
//! The loop calls `doRead`/`doWrite` by name, so these override
//! `StreamIO`'s; a dispatch that called `StreamIO`'s directly would have to
//! let this class's come first.

use std::collections::VecDeque;
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyTuple};

use super::stream_io::{buffer_size, fileno, StreamIO};
use crate::net::read::READ_BUFFER;
use crate::time::lock;
use crate::twisted::api;

/// The control space of Twisted's `twisted.python.sendmsg.recvmsg`:
/// `CMSG_SPACE(4096)`, room for a thousand descriptors (Linux sends at
/// most 253 per message).
// SAFETY: CMSG_SPACE is arithmetic on its argument.
const CONTROL_SPACE: usize = unsafe { libc::CMSG_SPACE(4096) } as usize;

/// A control buffer aligned for `cmsghdr`, left uninitialised: the kernel
/// writes what it delivers, and only that much is read.
type ControlBuffer = [MaybeUninit<u64>; CONTROL_SPACE.div_ceil(8)];

#[pyclass(module = "twisted_shim._core", extends = StreamIO, subclass)]
pub struct UnixStreamIO {
    /// Descriptors `sendFileDescriptor` queued, oldest first.
    fds: Mutex<VecDeque<RawFd>>,
}

/// `twisted.internet.error.FileDescriptorOverrun`, imported once.
static OVERRUN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn overrun(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let class = OVERRUN.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("twisted.internet.error")?
                .getattr("FileDescriptorOverrun")?
                .unbind(),
        )
    })?;
    class.call0(py)
}

/// `_isSendBufferFull`'s descriptor half, for `StreamIO`'s write path:
/// whether `obj` is a UNIX transport with more descriptors queued than its
/// `_fileDescriptorBufferSize`. False for any other transport.
pub(crate) fn descriptors_full(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let Ok(unix) = obj.cast::<UnixStreamIO>() else {
        return Ok(false);
    };
    let queued = lock(&unix.borrow().fds).len();
    Ok(queued > 0 && queued > fd_buffer_size(obj)?)
}

fn fd_buffer_size(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    obj.getattr(intern!(obj.py(), "_fileDescriptorBufferSize"))?
        .extract()
}

/// What became of the queued descriptors in one `doWrite`.
enum Sent {
    /// All went; the bytes left are `StreamIO`'s to send.
    All,
    /// The socket is full: try again when it is writable.
    Blocked,
    /// More descriptors than bytes to carry them: `FileDescriptorOverrun`.
    Overrun,
    /// `sendmsg` failed otherwise: `CONNECTION_LOST`.
    Lost,
}

/// `sendmsg` of one byte with `fd` in an `SCM_RIGHTS` message.
fn send_with_descriptor(sock: RawFd, byte: u8, fd: RawFd) -> io::Result<()> {
    let mut data = [byte];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // CMSG_SPACE(4) is 24 bytes on 64-bit Linux; 32, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is a C struct for which all zeroes (null pointers,
    // zero lengths) is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: arithmetic only.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) } as _;
    // SAFETY: msg_control points to `control`, which is larger than
    // msg_controllen and aligned for cmsghdr, so CMSG_FIRSTHDR is non-null
    // and its header and CMSG_LEN(4) bytes of data lie inside `control`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    loop {
        // SAFETY: msg and everything it points to (iov, data, control)
        // live on this frame until sendmsg returns.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `recvmsg` of up to `size` bytes into `buf`'s spare capacity and control
/// data into `control`: (bytes read, control bytes delivered).
fn recv_with_control(
    sock: RawFd,
    buf: &mut Vec<u8>,
    size: usize,
    control: &mut ControlBuffer,
) -> io::Result<(usize, usize)> {
    buf.clear();
    buf.reserve(size);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: size,
    };
    // SAFETY: all zeroes is a valid msghdr (see send_with_descriptor).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_SPACE as _;
    loop {
        // SAFETY: the iovec covers `size` bytes of spare capacity reserved
        // above, the control buffer CONTROL_SPACE bytes; the kernel writes
        // no more than that into either.
        let n = unsafe { libc::recvmsg(sock, &mut msg, 0) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the kernel wrote `n` bytes at the start of the buffer.
            unsafe { buf.set_len(n) };
            return Ok((n, (msg.msg_controllen as usize).min(CONTROL_SPACE)));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One control message received.
struct ControlMessage {
    level: i32,
    kind: i32,
    data: Vec<u8>,
}

impl ControlMessage {
    fn is_rights(&self) -> bool {
        self.level == libc::SOL_SOCKET && self.kind == libc::SCM_RIGHTS
    }

    /// The descriptors of an `SCM_RIGHTS` message (whole ones: the kernel
    /// delivers no part of one).
    fn descriptors(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.data
            .chunks_exact(mem::size_of::<RawFd>())
            .map(|b| RawFd::from_ne_bytes(b.try_into().unwrap_or_default()))
    }

    fn close_descriptors(&self) {
        if self.is_rights() {
            for fd in self.descriptors() {
                // SAFETY: the kernel just installed `fd` for us and nothing
                // else has seen it.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// The messages in the first `len` bytes of `control`, as the kernel laid
/// them out; a message whose data runs past `len` is cut there (an
/// `SCM_RIGHTS` one to whole descriptors).
fn control_messages(control: &mut ControlBuffer, len: usize) -> Vec<ControlMessage> {
    let mut out = Vec::new();
    // SAFETY: all zeroes is a valid msghdr (see send_with_descriptor).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = len as _;
    let base = control.as_ptr() as usize;
    let end = base + len;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header that lies
    // within the first msg_controllen bytes, which the kernel wrote; the
    // data read is clamped to those bytes too.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let start = data as usize;
            let stated = (*cmsg).cmsg_len as usize;
            let header = libc::CMSG_LEN(0) as usize;
            let stop = (cmsg as usize + stated.max(header)).min(end);
            let n = stop.saturating_sub(start);
            let mut bytes = std::slice::from_raw_parts(data, n).to_vec();
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                bytes.truncate(n - n % mem::size_of::<RawFd>());
            }
            out.push(ControlMessage {
                level,
                kind,
                data: bytes,
            });
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    out
}

impl UnixStreamIO {
    /// Send the queued descriptors, each with the next queued byte. No
    /// Python code runs here: the locks are held throughout.
    fn send_descriptors(slf: &Bound<'_, Self>, sock: RawFd) -> Sent {
        let py = slf.py();
        let me = slf.borrow();
        let mut fds = lock(&me.fds);
        let mut queue = lock(&me.as_super().queue);
        // As Twisted: more descriptors than bytes to carry them is an error.
        if fds.len() > queue.bytes {
            return Sent::Overrun;
        }
        while let Some(&fd) = fds.front() {
            let Some(byte) = queue.first_byte(py) else {
                return Sent::Overrun;
            };
            match send_with_descriptor(sock, byte, fd) {
                Ok(()) => {
                    queue.consume(1);
                    fds.pop_front();
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    return Sent::Blocked;
                }
                Err(_) => return Sent::Lost,
            }
        }
        Sent::All
    }

    /// Hand each control message to Twisted's handling, in order. If one
    /// raises, the descriptors of those not yet handed over are closed.
    fn deliver(obj: &Bound<'_, PyAny>, messages: &[ControlMessage]) -> PyResult<()> {
        let py = obj.py();
        for (i, m) in messages.iter().enumerate() {
            let handled = if m.is_rights() {
                obj.call_method1(
                    intern!(py, "_ancillaryLevelSOLSOCKETTypeSCMRIGHTS"),
                    (PyBytes::new(py, &m.data),),
                )
            } else {
                obj.call_method1(intern!(py, "_unsupportedAncillaryData"), (m.level, m.kind))
            };
            if let Err(e) = handled {
                messages[i + 1..]
                    .iter()
                    .for_each(ControlMessage::close_descriptors);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[pymethods]
impl UnixStreamIO {
    #[new]
    #[pyo3(signature = (*args, **kwargs))]
    fn new(
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyAny>>,
    ) -> PyClassInitializer<Self> {
        PyClassInitializer::from(StreamIO::new(args, kwargs)).add_subclass(UnixStreamIO {
            fds: Mutex::new(VecDeque::new()),
        })
    }

    /// `IUNIXTransport.sendFileDescriptor`.
    #[pyo3(name = "sendFileDescriptor")]
    fn send_file_descriptor(slf: &Bound<'_, Self>, fileno: RawFd) -> PyResult<()> {
        let py = slf.py();
        lock(&slf.borrow().fds).push_back(fileno);
        slf.call_method0(intern!(py, "_maybePauseProducer"))?;
        slf.call_method0(intern!(py, "startWriting"))?;
        Ok(())
    }

    /// `_SendmsgMixin._isSendBufferFull`: too many descriptors queued, or
    /// too many bytes.
    #[pyo3(name = "_isSendBufferFull")]
    fn is_send_buffer_full(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let queued = lock(&slf.borrow().fds).len();
        if queued > fd_buffer_size(slf.as_any())? {
            return Ok(true);
        }
        Ok(StreamIO::is_send_buffer_full(slf.as_super()))
    }

    /// The descriptors waiting to be sent (a copy); assigning one (as
    /// `_SendmsgMixin.__init__` does) replaces them.
    #[getter(_sendmsgQueue)]
    fn sendmsg_queue<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyList>> {
        let fds: Vec<RawFd> = lock(&slf.borrow().fds).iter().copied().collect();
        PyList::new(slf.py(), fds)
    }

    #[setter(_sendmsgQueue)]
    fn set_sendmsg_queue(slf: &Bound<'_, Self>, value: Vec<RawFd>) {
        *lock(&slf.borrow().fds) = value.into();
    }

    /// `IWriteDescriptor.doWrite`: the descriptors, then the bytes.
    #[pyo3(name = "doWrite")]
    fn do_write(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        if !lock(&slf.borrow().fds).is_empty() {
            let py = slf.py();
            let sock = fileno(slf.as_any())?;
            match Self::send_descriptors(slf, sock) {
                Sent::All => {}
                Sent::Blocked => return Ok(py.None()),
                Sent::Overrun => return overrun(py),
                Sent::Lost => return Ok(api(py)?.connection_lost.clone_ref(py)),
            }
        }
        StreamIO::do_write(slf.as_super())
    }

    /// `IReadDescriptor.doRead`, as `_SendmsgMixin.doRead`.
    #[pyo3(name = "doRead")]
    fn do_read(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let obj = slf.as_any();
        let sock = fileno(obj)?;
        let size = buffer_size(obj).max(1);
        let mut control: ControlBuffer = [MaybeUninit::uninit(); CONTROL_SPACE.div_ceil(8)];
        let (data, messages) = {
            let mut buf = lock(&READ_BUFFER);
            let (n, control_len) = match recv_with_control(sock, &mut buf, size, &mut control) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(py.None()),
                Err(_) => return Ok(api(py)?.connection_lost.clone_ref(py)),
            };
            let messages = if control_len == 0 {
                Vec::new()
            } else {
                control_messages(&mut control, control_len)
            };
            ((n > 0).then(|| PyBytes::new(py, &buf)), messages)
        };
        if !messages.is_empty() {
            Self::deliver(obj, &messages)?;
        }
        let Some(data) = data else {
            return Ok(api(py)?.connection_done.clone_ref(py));
        };
        obj.getattr(intern!(py, "protocol"))?
            .call_method1(intern!(py, "dataReceived"), (data,))?;
        Ok(py.None())
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<UnixStreamIO>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socketpair() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        (fds[0], fds[1])
    }

    fn identity(fd: RawFd) -> (u64, u64) {
        // SAFETY: all zeroes is a valid stat; fstat fills it for an open
        // descriptor.
        let mut st: libc::stat = unsafe { mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        (st.st_dev, st.st_ino)
    }

    fn close(fd: RawFd) {
        // SAFETY: the test owns `fd`.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn a_descriptor_travels_with_its_byte() {
        let (a, b) = socketpair();
        let (r, w) = socketpair();
        send_with_descriptor(a, b'x', r).unwrap();
        let mut buf = Vec::new();
        let mut control: ControlBuffer = [MaybeUninit::uninit(); CONTROL_SPACE.div_ceil(8)];
        let (n, len) = recv_with_control(b, &mut buf, 16, &mut control).unwrap();
        assert_eq!((n, &buf[..]), (1, &b"x"[..]));
        let messages = control_messages(&mut control, len);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].is_rights());
        let got: Vec<RawFd> = messages[0].descriptors().collect();
        assert_eq!(got.len(), 1);
        assert_ne!(got[0], r);
        assert_eq!(identity(got[0]), identity(r));
        messages[0].close_descriptors();
        for fd in [a, b, r, w] {
            close(fd);
        }
    }

    #[test]
    fn plain_bytes_bring_no_control_data() {
        let (a, b) = socketpair();
        // SAFETY: writes 3 bytes from a live buffer.
        assert_eq!(unsafe { libc::write(a, b"abc".as_ptr().cast(), 3) }, 3);
        let mut buf = Vec::new();
        let mut control: ControlBuffer = [MaybeUninit::uninit(); CONTROL_SPACE.div_ceil(8)];
        let (n, len) = recv_with_control(b, &mut buf, 16, &mut control).unwrap();
        assert_eq!((n, len), (3, 0));
        assert!(control_messages(&mut control, len).is_empty());
        close(a);
        close(b);
    }

    #[test]
    fn a_cut_message_keeps_whole_descriptors_only() {
        // A header announcing three descriptors, of which the buffer holds
        // one and a half.
        let mut control: ControlBuffer = [MaybeUninit::new(0); CONTROL_SPACE.div_ceil(8)];
        // SAFETY: arithmetic only.
        let header = unsafe { libc::CMSG_LEN(0) } as usize;
        // SAFETY: the buffer is larger than a header and aligned for it.
        unsafe {
            let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
            (*cmsg).cmsg_len = libc::CMSG_LEN(12) as _;
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            let data = control.as_mut_ptr().cast::<u8>().add(header);
            ptr::copy_nonoverlapping(7i32.to_ne_bytes().as_ptr(), data, 4);
        }
        let messages = control_messages(&mut control, header + 6);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].descriptors().collect::<Vec<_>>(), vec![7]);
    }
}
