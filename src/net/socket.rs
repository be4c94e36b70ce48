//! Stream sockets as the loop's native handlers use them: addresses,
//! accepting, reading within a budget, and the options a server sets.
//!
//! Every function takes a descriptor it does not own (the caller keeps it
//! open for the duration of the call) and never blocks: sockets here are
//! non-blocking, and "would block" is an ordinary outcome.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A socket address as text: `host` is empty for a UNIX socket (or when
/// the address is unknown), and `port` 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub port: u16,
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The address in `addr`; IPv4-mapped IPv6 addresses are given as IPv4.
pub fn sockaddr_peer(addr: &libc::sockaddr_storage) -> Peer {
    match addr.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Peer {
                host: ip.to_string(),
                port: u16::from_be(a.sin_port),
            }
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let host = match ip.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => ip.to_string(),
            };
            Peer {
                host,
                port: u16::from_be(a.sin6_port),
            }
        }
        _ => Peer::default(),
    }
}

/// `getsockname` of `fd`, or `None` if it fails.
fn sockname(fd: RawFd) -> Option<libc::sockaddr_storage> {
    let mut storage = zeroed_storage();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into our storage.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(storage)
}

/// The local address of a connected or listening socket.
pub fn local_addr(fd: RawFd) -> Peer {
    sockname(fd).map_or_else(Peer::default, |s| sockaddr_peer(&s))
}

/// A connection taken from a listening socket's queue.
pub struct Accepted {
    pub fd: OwnedFd,
    pub peer: Peer,
    pub local: Peer,
    pub unix: bool,
}

/// Why [`accept`] returned no connection.
pub enum AcceptError {
    /// The queue is empty.
    WouldBlock,
    /// Out of descriptors or memory: accepting again at once would fail the
    /// same way (and a level-triggered listener would spin the loop).
    Exhausted(io::Error),
    /// Anything else, worth logging.
    Other(io::Error),
}

/// Accept one connection, non-blocking and close-on-exec, with
/// `TCP_NODELAY` set on TCP. Transient errors (a connection aborted before
/// it was accepted, a signal) are retried.
pub fn accept(listener: RawFd) -> Result<Accepted, AcceptError> {
    loop {
        let mut storage = zeroed_storage();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: accept4 writes the peer address into our storage and
        // returns a new descriptor that we take ownership of below.
        let fd = unsafe {
            libc::accept4(
                listener,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EAGAIN) => AcceptError::WouldBlock,
                Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => continue,
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                | Some(libc::ENOMEM) => AcceptError::Exhausted(e),
                _ => AcceptError::Other(e),
            });
        }
        // SAFETY: accept4 returned a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let unix = storage.ss_family as i32 == libc::AF_UNIX;
        if !unix {
            set_nodelay(fd);
        }
        return Ok(Accepted {
            fd: owned,
            peer: sockaddr_peer(&storage),
            local: local_addr(fd),
            unix,
        });
    }
}

/// `TCP_NODELAY` on: responses go out as they are written.
pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with an int we own on the caller's socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `SO_LINGER` 0: closing the socket sends a reset, not a FIN.
pub fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a plain setsockopt with a struct we own, on the caller's socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// `shutdown(2)`; errors (a socket already reset) are of no use to callers.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutting down the caller's socket; it stays open.
    unsafe { libc::shutdown(fd, how) };
}

/// What [`read_into`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes appended to the buffer.
    pub bytes: usize,
    /// End of stream, or an error that ends it (a reset).
    pub eof: bool,
}

/// Read from `fd` into the spare capacity of `buf`, at most `budget` bytes
/// (for fairness between connections), until the socket is empty, `limit`
/// says stop (checked before each read with the buffer's length), or the
/// stream ends.
pub fn read_into(
    fd: RawFd,
    buf: &mut Vec<u8>,
    mut budget: usize,
    limit: impl Fn(usize) -> bool,
) -> ReadOutcome {
    let mut out = ReadOutcome::default();
    while budget > 0 {
        if limit(buf.len()) {
            break;
        }
        buf.reserve(65536);
        let spare = buf.capacity() - buf.len();
        let want = spare.min(budget);
        // SAFETY: reads into the vector's spare capacity, which we own;
        // `set_len` below covers exactly the bytes read.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(buf.len()).cast(), want) };
        if n > 0 {
            let n = n as usize;
            // SAFETY: the kernel wrote `n` bytes after the old length.
            unsafe { buf.set_len(buf.len() + n) };
            budget -= n;
            out.bytes += n;
            if n < want {
                // A short read emptied the socket: another read would only
                // return EAGAIN. The poller is level-triggered, so what
                // arrives meanwhile (end of stream too) is reported by the
                // next wait.
                break;
            }
            continue;
        }
        if n == 0 {
            out.eof = true;
            break;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => break,
            io::ErrorKind::Interrupted => continue,
            _ => {
                out.eof = true;
                break;
            }
        }
    }
    out
}

/// Whether `fd` is a TCP socket (IPv4 or IPv6), as opposed to a UNIX one.
pub fn is_tcp(fd: RawFd) -> bool {
    sockname(fd).is_some_and(|s| matches!(s.ss_family as i32, libc::AF_INET | libc::AF_INET6))
}

/// `SO_ATTACH_FILTER` (`<asm-generic/socket.h>`; the same number on every
/// Linux architecture).
#[cfg(target_os = "linux")]
const SO_ATTACH_FILTER: libc::c_int = 26;

/// Have the kernel drop every SYN that reaches `fd`, a listening TCP
/// socket, so that no new handshake starts on it while those in progress
/// still complete into its queue: a classic BPF socket filter that drops a
/// segment whose SYN flag is set and keeps every other.
///
/// For a TCP socket the filter runs on the segment with its TCP header at
/// offset 0 (the IP header is already pulled), where byte 13 holds the
/// flags (SYN = 0x02). The final ACK of a handshake whose SYN came before
/// the filter is not a SYN, so it passes and the connection is queued for
/// `accept`. A client whose SYN is dropped gets no answer and retransmits
/// it (after 1 s, then 3 s, ...): once this socket is closed, to another
/// socket of its `SO_REUSEPORT` group if there is one, else to a closed
/// port, which refuses it. `scripts/syn_filter_experiment.py` shows each of
/// these on the running kernel.
#[cfg(target_os = "linux")]
pub fn drop_syns(fd: RawFd) -> io::Result<()> {
    const SYN: u32 = 0x02;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut code = [
        // A = the byte at offset 13 of the TCP header: the flags.
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
        // SYN set: go on to drop it; else skip to keep it.
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 1, SYN),
        // Drop: keep 0 bytes.
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        // Keep the whole segment.
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as libc::c_ushort,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `code`, which outlives the call; the kernel
    // copies (and checks) the program during setsockopt and keeps no
    // pointer to our memory.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Not on this system: a stopping server only drains its queue.
#[cfg(not(target_os = "linux"))]
pub fn drop_syns(_fd: RawFd) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn dropped_syns_leave_queued_connections_acceptable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(is_tcp(listener.as_raw_fd()));
        let before = TcpStream::connect(addr).unwrap();
        drop_syns(listener.as_raw_fd()).unwrap();
        // A new handshake gets no SYN-ACK: the connect times out (the
        // client would retransmit its SYN).
        let after = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert_eq!(
            after.map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        // The connection completed before is still in the queue, alone.
        listener.set_nonblocking(true).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, before.local_addr().unwrap());
        drop(accepted);
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn unix_sockets_are_not_tcp() {
        let dir = std::env::temp_dir().join(format!("shim-sock-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        assert!(!is_tcp(listener.as_raw_fd()));
        drop(listener);
        let _ = std::fs::remove_file(&dir);
    }
}
