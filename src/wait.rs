//! The loop's wait, and the wake-up that ends it from other threads.
//!
//! Registrations go through `polling` (its `Poller` owns the epoll instance
//! and every `epoll_ctl`), but the wait itself is one `epoll_pwait2` on that
//! instance's descriptor. `Poller::wait` costs four more system calls per
//! wait than that: it arms a timerfd for the timeout (`timerfd_settime` and
//! an `epoll_ctl`), and after the wait it reads and re-arms its notifier (a
//! `read` and an `epoll_ctl`). A reactor waits once per iteration, so in
//! request/response traffic with few connections those four calls are most
//! of the system calls it makes. `epoll_pwait2` (Linux 5.11) takes a
//! nanosecond timeout, which is what the timerfd was for; older kernels get
//! `epoll_wait` with the timeout rounded up to the millisecond, so a wait
//! never ends before a timed call is due.
//!
//! Waking the loop is the loop's own eventfd ([`Waker`]), level-triggered
//! under a key no registration can have; a flag keeps a burst of wake-ups
//! from other threads to one `write`.
//!
//! The readiness reported for each key is what `polling`'s `Event` says for
//! the same epoll flags, so the dispatcher above cannot tell the difference.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use polling::{Event, PollMode, Poller};

use crate::fdset::Readiness;

/// The poller key of the loop's wake-up eventfd. Registration keys carry a
/// slab index below 2^32 in their low half, so none can equal it; `polling`
/// keeps `usize::MAX` for its own notifier.
pub const WAKE_KEY: usize = usize::MAX - 1;

/// The key `polling` gives its internal notifier and timer (never armed
/// here, since `Poller::wait` and `Poller::notify` are not used).
const POLLING_KEY: usize = usize::MAX;

/// Whether the kernel has `epoll_pwait2`; cleared on the first `ENOSYS`.
static HAVE_PWAIT2: AtomicBool = AtomicBool::new(true);

/// An eventfd that ends the loop's wait when another thread has work for it.
pub struct Waker {
    fd: OwnedFd,
    /// Set by the first wake-up since the loop last drained the eventfd.
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: the descriptor was just created and nobody else owns it.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }

    /// Watch the eventfd with `poller` (a new poller, after a rebuild, too).
    pub fn register(&self, poller: &Poller) -> io::Result<()> {
        // SAFETY: the eventfd lives as long as the Waker, which lives as long
        // as the loop whose pollers watch it; it is never closed before them.
        unsafe {
            poller.add_with_mode(
                self.fd.as_raw_fd(),
                Event::readable(WAKE_KEY),
                PollMode::Level,
            )
        }
    }

    /// End the current or next wait. Safe from any thread; one `write` per
    /// burst of calls between two waits.
    pub fn wake(&self) -> io::Result<()> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a u64 we own to our eventfd.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // EAGAIN: the counter is saturated, so the eventfd is readable.
            if e.kind() != io::ErrorKind::WouldBlock {
                self.pending.store(false, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Called when a wait reported the eventfd: empty the counter, then
    /// rearm the flag (in that order, as `polling` does). A wake-up between
    /// the two finds the flag still set and writes nothing, but its work was
    /// queued before it and the loop looks at its queues before it waits
    /// again. The other order loses wake-ups: one that sets the flag after
    /// it was cleared and writes before the read has its write consumed and
    /// leaves the flag set with the counter empty, so every later wake-up
    /// is skipped and the loop sleeps until a timeout.
    fn drain(&self) {
        self.drain_with(|| {});
    }

    /// `drain`, running `between` after the read and before the flag is
    /// rearmed (where a racing wake-up lands; tests use it).
    fn drain_with(&self, between: impl FnOnce()) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a u64 we own from our eventfd; EAGAIN
        // (already empty) leaves it untouched.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        between();
        self.pending.store(false, Ordering::Release);
    }
}

/// A reusable buffer of epoll events.
pub struct EventBuf(Vec<libc::epoll_event>);

impl EventBuf {
    pub fn with_capacity(cap: usize) -> EventBuf {
        EventBuf(Vec::with_capacity(cap.max(1)))
    }
}

/// What `polling` reports for these epoll flags.
fn readiness(flags: u32) -> Readiness {
    let has = |bits: libc::c_int| flags & bits as u32 != 0;
    Readiness {
        readable: has(libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI),
        writable: has(libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR),
        hangup: has(libc::EPOLLHUP),
        error: has(libc::EPOLLERR),
    }
}

/// Wait on `poller` for at most `timeout` (`None`: until something happens),
/// without holding the GIL (the caller detaches). Fills `out` with each
/// ready key and its readiness; the waker's own event is consumed here.
/// An interrupted wait (`EINTR`) returns no events and no error, so the
/// caller can run signal handlers. Returns how many events the kernel
/// reported, the waker's included (0: the wait timed out or was interrupted).
pub fn wait(
    poller: &Poller,
    waker: &Waker,
    buf: &mut EventBuf,
    timeout: Option<Duration>,
    out: &mut Vec<(usize, Readiness)>,
) -> io::Result<usize> {
    let epfd = poller.as_raw_fd();
    let events = &mut buf.0;
    events.clear();
    let n = raw_wait(epfd, events, timeout)?;
    // SAFETY: the kernel initialised the first `n` entries.
    unsafe { events.set_len(n) };
    for ev in events.iter() {
        // epoll_event is packed on x86_64: copy the fields out, no references.
        let key = { ev.u64 } as usize;
        let flags = { ev.events };
        match key {
            WAKE_KEY => waker.drain(),
            POLLING_KEY => {}
            _ => out.push((key, readiness(flags))),
        }
    }
    Ok(n)
}

fn raw_wait(
    epfd: RawFd,
    events: &mut Vec<libc::epoll_event>,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let cap = events.capacity().min(libc::c_int::MAX as usize) as libc::c_int;
    let ptr = events.as_mut_ptr();
    if HAVE_PWAIT2.load(Ordering::Relaxed) {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as _,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `ptr` has room for `cap` events; the timespec outlives the
        // call; no signal mask is passed (so its size argument is unused).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epfd,
                ptr,
                cap,
                ts_ptr,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => return Ok(0),
            Some(libc::ENOSYS) => HAVE_PWAIT2.store(false, Ordering::Relaxed),
            _ => return Err(e),
        }
    }
    let ms = match timeout {
        None => -1,
        // Round up: waking early would find no timed call due and wait again.
        Some(t) => t
            .as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int,
    };
    // SAFETY: as above, with a millisecond timeout.
    let rc = unsafe { libc::epoll_wait(epfd, ptr, cap, ms) };
    if rc >= 0 {
        return Ok(rc as usize);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINTR) {
        return Ok(0);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_burst_of_wakes_is_one_event_and_the_flag_rearms() {
        let poller = Poller::new().unwrap();
        let waker = Waker::new().unwrap();
        waker.register(&poller).unwrap();
        let mut buf = EventBuf::with_capacity(8);
        let mut out = Vec::new();
        for _ in 0..100 {
            waker.wake().unwrap();
        }
        let start = Instant::now();
        wait(&poller, &waker, &mut buf, None, &mut out).unwrap();
        assert!(out.is_empty(), "the waker's event is not a registration's");
        assert!(start.elapsed() < Duration::from_secs(5));
        // Drained: a zero wait now sees nothing, and a new wake is seen.
        wait(&poller, &waker, &mut buf, Some(Duration::ZERO), &mut out).unwrap();
        assert!(!waker.pending.load(Ordering::SeqCst));
        waker.wake().unwrap();
        assert!(waker.pending.load(Ordering::SeqCst));
    }

    #[test]
    fn a_timeout_is_not_cut_short() {
        let poller = Poller::new().unwrap();
        let waker = Waker::new().unwrap();
        waker.register(&poller).unwrap();
        let mut buf = EventBuf::with_capacity(8);
        let mut out = Vec::new();
        for t in [Duration::from_micros(300), Duration::from_millis(3)] {
            let start = Instant::now();
            wait(&poller, &waker, &mut buf, Some(t), &mut out).unwrap();
            assert!(start.elapsed() >= t, "{:?} < {t:?}", start.elapsed());
        }
    }

    #[test]
    fn flags_read_as_polling_reads_them() {
        let hup = readiness((libc::EPOLLHUP) as u32);
        assert!(hup.readable && hup.writable && hup.hangup && !hup.error);
        let out = readiness(libc::EPOLLOUT as u32);
        assert!(!out.readable && out.writable);
        let inp = readiness(libc::EPOLLIN as u32);
        assert!(inp.readable && !inp.writable && !inp.hangup);
    }

    #[test]
    fn a_wake_racing_with_the_drain_is_not_lost() {
        // Another thread wakes the loop while it drains the eventfd: after
        // the drain, the next wake-up must still reach the eventfd (with the
        // flag rearmed before the read, the racing write was consumed and the
        // flag left set, and every later wake-up was skipped: the loop slept
        // until a timeout; thread-pool mode showed it as 1 s stalls).
        let waker = Waker::new().unwrap();
        waker.wake().unwrap();
        waker.drain_with(|| waker.wake().unwrap());
        assert!(!waker.pending.load(Ordering::SeqCst));
        waker.wake().unwrap();
        let now = crate::fdset::readiness_now(waker.fd.as_raw_fd()).unwrap();
        assert!(now.readable, "the wake-up after a racing one was lost");
    }
}
