//! The file-descriptor set behind IReactorFDSet, and native handlers.
//!
//! Each registered descriptor has one [`Registration`] in a `slab`. Its key,
//! together with a generation counter, is the key given to the poller, so an
//! event still in flight for a registration that was removed (and whose slab
//! slot was reused) is recognised as stale and dropped.
//!
//! A registration targets either a Python selectable (an `IReadDescriptor` /
//! `IWriteDescriptor`, dispatched to `doRead`/`doWrite` as Twisted's poll-like
//! reactors do) or a native Rust [`NativeHandler`], for code that lives on the
//! loop without Python transports (the WSGI host).
//!
//! Invariants:
//! - `by_fd[fd]` is `Some(key)` exactly when `slab[key].fd == fd`;
//! - a Python registration is in the poller with interest
//!   `(reading, writing)` and at least one of them is true;
//! - we update this table only after the poller call succeeded, so the two
//!   never disagree (the same rule as `epollreactor`).
//!
//! Descriptors closed underneath their registration vanish from epoll
//! silently. Each Python registration records the identity (device, inode)
//! of what its fd named when added; [`FdSet::lost`] finds the ones whose fd
//! is closed or now names something else. When the number is reused before
//! that sweep and someone else registers it (another selectable, or a native
//! handler), the old registration is evicted at once
//! ([`FdSet::take_evicted`]) and the new one registered afresh: kept, the
//! old entry would hide the new file from epoll, and the sweep would later
//! take the new selectable for the lost one.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use polling::{Event, PollMode, Poller};
use pyo3::prelude::*;
use slab::Slab;

/// What a poller event says about a descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// Hang-up (`EPOLLHUP`): the peer is gone in both directions.
    pub hangup: bool,
    /// Error condition (`EPOLLERR`).
    pub error: bool,
}

/// A handler implemented in Rust, called on the reactor thread with the GIL
/// held when its descriptor is ready. It may (de)register descriptors,
/// including its own, through the loop it is given.
pub trait NativeHandler: Send + Sync {
    fn ready(&self, py: Python<'_>, token: Token, readiness: Readiness);

    /// What the loop's dispatch calls: [`NativeHandler::ready`], unless the
    /// handler runs code whose exceptions may have to end the loop's run
    /// (asyncio lets `SystemExit` and `KeyboardInterrupt` out of
    /// `run_forever`): then an error stops the dispatch and propagates out
    /// of the iteration (the events not yet dispatched are reported again
    /// by the next wait: the poller is level-triggered).
    fn dispatch(&self, py: Python<'_>, token: Token, readiness: Readiness) -> PyResult<()> {
        self.ready(py, token, readiness);
        Ok(())
    }
}

/// A native registration, as returned by [`FdSet::add_native`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

pub enum Target {
    Python(Py<PyAny>),
    Native(Arc<dyn NativeHandler>),
}

impl Target {
    fn clone_ref(&self, py: Python<'_>) -> Target {
        match self {
            Target::Python(o) => Target::Python(o.clone_ref(py)),
            Target::Native(h) => Target::Native(h.clone()),
        }
    }
}

pub struct Registration {
    pub fd: RawFd,
    pub target: Target,
    pub reading: bool,
    /// Twisted's view: the selectable is in `getWriters()`.
    pub writing: bool,
    /// Whether the poller watches for writability. False for a writer that
    /// is flushed optimistically (see [`FdSet::take_optimistic`]).
    out_armed: bool,
    gen: u32,
    ident: Option<(u64, u64)>,
}

impl Registration {
    /// A Python registration whose descriptor is closed, or now names a
    /// different file than when it was added.
    fn is_gone(&self) -> bool {
        matches!(self.target, Target::Python(_)) && identity(self.fd) != self.ident
    }
}

/// A registration as the dispatcher needs it, taken out of the table so that
/// no lock is held while Python runs.
pub struct Snapshot {
    pub fd: RawFd,
    pub target: Target,
    pub reading: bool,
    pub writing: bool,
}

#[derive(Default)]
pub struct FdSet {
    slab: Slab<Registration>,
    by_fd: Vec<Option<usize>>,
    gen: u32,
    /// Poller keys of readers that became writers since the last iteration;
    /// their `doWrite` runs before the next wait instead of after a poll
    /// says writable (a connected socket nearly always is).
    optimistic: Vec<usize>,
    /// Python registrations whose descriptor number was reused and
    /// registered by someone else; the loop disconnects them next.
    evicted: Vec<Registration>,
}

fn poll_key(idx: usize, gen: u32) -> usize {
    idx | ((gen as usize) << 32)
}

fn split_key(key: usize) -> (usize, u32) {
    (key & 0xffff_ffff, (key >> 32) as u32)
}

/// (device, inode) of what `fd` names now, or `None` if it is closed.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only writes into the buffer we own; an invalid fd makes it
    // fail with EBADF, which we report as None.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are not u64 everywhere
    let ident = (st.st_dev as u64, st.st_ino as u64);
    Some(ident)
}

/// The exact readiness of `fd` now, as epoll would report it (`poll(2)` with
/// no wait: both ask the file's own poll method). polling folds hang-up and
/// error into "readable and writable"; Twisted's dispatch needs to know
/// whether `EPOLLIN` itself was set, so on those rare events we ask again.
pub fn readiness_now(fd: RawFd) -> Option<Readiness> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd we own, zero timeout; a bad fd is reported in revents.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    if rc < 0 || p.revents & libc::POLLNVAL != 0 {
        return None;
    }
    Some(Readiness {
        readable: p.revents & libc::POLLIN != 0,
        writable: p.revents & libc::POLLOUT != 0,
        hangup: p.revents & libc::POLLHUP != 0,
        error: p.revents & libc::POLLERR != 0,
    })
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the poller only uses the descriptor for the duration of the
    // epoll_ctl call; an fd closed meanwhile makes that call fail with EBADF
    // or ENOENT, which callers handle. Nothing keeps the BorrowedFd.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn interest(key: usize, reading: bool, writing: bool) -> Event {
    Event::new(key, reading, writing)
}

impl FdSet {
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    fn lookup(&self, fd: RawFd) -> Option<usize> {
        if fd < 0 {
            return None;
        }
        self.by_fd.get(fd as usize).copied().flatten()
    }

    /// Whether what is registered on `fd` is the Python selectable `sel`.
    pub fn holds_python(&self, fd: RawFd, sel: &Bound<'_, PyAny>) -> bool {
        self.lookup(fd)
            .is_some_and(|idx| matches!(&self.slab[idx].target, Target::Python(o) if o.is(sel)))
    }

    /// The registration behind a poller key, unless it is stale.
    pub fn snapshot(&self, py: Python<'_>, key: usize) -> Option<Snapshot> {
        let (idx, gen) = split_key(key);
        let reg = self.slab.get(idx)?;
        if reg.gen != gen {
            return None;
        }
        Some(Snapshot {
            fd: reg.fd,
            target: reg.target.clone_ref(py),
            reading: reg.reading,
            writing: reg.writing,
        })
    }

    fn insert(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        target: Target,
        reading: bool,
        writing: bool,
        ident: Option<(u64, u64)>,
    ) -> io::Result<usize> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.gen = self.gen.wrapping_add(1);
        let gen = self.gen;
        let entry = self.slab.vacant_entry();
        let idx = entry.key();
        let key = poll_key(idx, gen);
        // SAFETY: see `borrow`; the registration is deleted from the poller
        // when it is removed from this table, and a descriptor closed before
        // that simply leaves epoll's interest list.
        let added =
            unsafe { poller.add_with_mode(fd, interest(key, reading, writing), PollMode::Level) };
        match added {
            Ok(()) => {}
            // A descriptor we still list was closed and its number reused:
            // epoll forgot the old one, so the add above cannot see EEXIST
            // from it; EEXIST means the poller knows this fd from elsewhere.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => poller.modify_with_mode(
                borrow(fd),
                interest(key, reading, writing),
                PollMode::Level,
            )?,
            Err(e) => return Err(e),
        }
        entry.insert(Registration {
            fd,
            target,
            reading,
            writing,
            out_armed: writing,
            gen,
            ident,
        });
        let slot = fd as usize;
        if self.by_fd.len() <= slot {
            self.by_fd.resize(slot + 1, None);
        }
        self.by_fd[slot] = Some(idx);
        Ok(idx)
    }

    fn modify(
        &mut self,
        poller: &Poller,
        idx: usize,
        reading: bool,
        writing: bool,
    ) -> io::Result<()> {
        let reg = &self.slab[idx];
        let key = poll_key(idx, reg.gen);
        let fd = reg.fd;
        match poller.modify_with_mode(borrow(fd), interest(key, reading, writing), PollMode::Level)
        {
            Ok(()) => {}
            // The descriptor was closed and its number reused since we added
            // it: epoll dropped the old registration. Register the new one.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: as in `insert`.
                unsafe {
                    poller.add_with_mode(fd, interest(key, reading, writing), PollMode::Level)?
                }
            }
            Err(e) => return Err(e),
        }
        let reg = &mut self.slab[idx];
        reg.reading = reading;
        reg.writing = writing;
        reg.out_armed = writing;
        Ok(())
    }

    fn remove(&mut self, poller: &Poller, idx: usize) -> Registration {
        let reg = self.unlist(idx);
        // ENOENT/EBADF: the descriptor was already closed, which removed it
        // from epoll; there is nothing left to undo.
        let _ = poller.delete(borrow(reg.fd));
        reg
    }

    /// Take a registration out of the table only (not the poller).
    fn unlist(&mut self, idx: usize) -> Registration {
        let reg = self.slab.remove(idx);
        if let Some(slot) = self.by_fd.get_mut(reg.fd as usize) {
            if *slot == Some(idx) {
                *slot = None;
            }
        }
        reg
    }

    /// Start watching a Python selectable for reading or writing. Like
    /// `epollreactor._add`: the fd's selectable becomes `sel`.
    pub fn add_python(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        fd: RawFd,
        sel: &Bound<'_, PyAny>,
        read: bool,
    ) -> io::Result<()> {
        let found = self.lookup(fd).filter(|&idx| {
            let reg = &self.slab[idx];
            let same = matches!(&reg.target, Target::Python(o) if o.is(sel));
            // Only another selectable on the same number can mean the old one
            // is gone (an fstat, off the hot path of a reader that writes).
            same || !self.evict_if_reused(poller, idx)
        });
        match found {
            Some(idx) => {
                let reg = &self.slab[idx];
                let (reading, writing) = if read {
                    (true, reg.writing)
                } else {
                    (reg.reading, true)
                };
                let already = if read { reg.reading } else { reg.writing };
                let same = matches!(&reg.target, Target::Python(o) if o.is(sel));
                if already && same {
                    return Ok(());
                }
                if let Target::Native(_) = reg.target {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("file descriptor {fd} is watched by a native handler"),
                    ));
                }
                if !already {
                    if !read && reg.reading && !reg.out_armed {
                        // An established reader starts writing: flush it
                        // before the next wait, without an epoll_ctl now.
                        // Only if the flush leaves data does the poller
                        // start watching for writability.
                        let key = poll_key(idx, reg.gen);
                        self.slab[idx].writing = true;
                        self.optimistic.push(key);
                    } else {
                        self.modify(poller, idx, reading, writing)?;
                    }
                }
                self.slab[idx].target = Target::Python(sel.clone().unbind());
                let _ = py;
                Ok(())
            }
            None => {
                let ident = identity(fd);
                self.insert(
                    poller,
                    fd,
                    Target::Python(sel.clone().unbind()),
                    read,
                    !read,
                    ident,
                )
                .map(|_| ())
            }
        }
    }

    /// Stop watching a Python selectable for reading or writing. `fd` is what
    /// its `fileno()` returned, or `None` when that was -1 or failed: then the
    /// registration is found by identity, as `epollreactor._remove` does.
    /// Returns whether a registration was changed.
    pub fn remove_python(
        &mut self,
        poller: &Poller,
        fd: Option<RawFd>,
        sel: &Bound<'_, PyAny>,
        read: bool,
    ) -> io::Result<bool> {
        let idx = match fd.and_then(|fd| self.lookup(fd)) {
            Some(idx) => Some(idx),
            None if fd.is_none() => self
                .slab
                .iter()
                .find(|(_, r)| matches!(&r.target, Target::Python(o) if o.is(sel)))
                .map(|(i, _)| i),
            None => None,
        };
        let Some(idx) = idx else { return Ok(false) };
        let reg = &self.slab[idx];
        if let Target::Native(_) = reg.target {
            return Ok(false);
        }
        let (reading, writing) = if read {
            (false, reg.writing)
        } else {
            (reg.reading, false)
        };
        let was = if read { reg.reading } else { reg.writing };
        if !was {
            return Ok(false);
        }
        if !read && !reg.out_armed && reading {
            // An optimistic writer that is done: the poller never knew.
            self.slab[idx].writing = false;
        } else if reading || writing {
            self.modify(poller, idx, reading, writing)?;
        } else {
            self.remove(poller, idx);
        }
        Ok(true)
    }

    pub fn has_optimistic(&self) -> bool {
        !self.optimistic.is_empty()
    }

    /// The optimistic writers queued since the last call.
    pub fn take_optimistic(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.optimistic)
    }

    /// After an optimistic flush: a writer that still has data to write is
    /// now watched for writability like any other.
    pub fn arm_if_writing(&mut self, poller: &Poller, key: usize) -> io::Result<()> {
        let (idx, gen) = split_key(key);
        match self.slab.get(idx) {
            Some(r) if r.gen == gen && r.writing && !r.out_armed => {
                let reading = r.reading;
                self.modify(poller, idx, reading, true)
            }
            _ => Ok(()),
        }
    }

    /// Whether `key` still names a writer waiting for its optimistic flush.
    pub fn is_optimistic(&self, key: usize) -> bool {
        let (idx, gen) = split_key(key);
        matches!(self.slab.get(idx), Some(r) if r.gen == gen && r.writing && !r.out_armed)
    }

    /// Python selectables watched for reading (`read`) or writing.
    pub fn python_targets(&self, py: Python<'_>, read: bool) -> Vec<Py<PyAny>> {
        self.slab
            .iter()
            .filter(|(_, r)| if read { r.reading } else { r.writing })
            .filter_map(|(_, r)| match &r.target {
                Target::Python(o) => Some(o.clone_ref(py)),
                Target::Native(_) => None,
            })
            .collect()
    }

    /// Python registrations whose descriptor was closed, or now names a
    /// different file, since they were added. They are removed from the table
    /// and returned with the interest they had.
    pub fn lost(&mut self) -> Vec<Registration> {
        let lost: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, r)| r.is_gone())
            .map(|(i, _)| i)
            .collect();
        // The poller forgot them when their fds were closed; if a number now
        // names another file that we never added, it is not ours to touch.
        lost.into_iter().map(|idx| self.unlist(idx)).collect()
    }

    /// If the Python registration at `idx` no longer names the file its
    /// descriptor named when added (closed, and the number reused), take it
    /// out of the table and queue it for disconnection. Returns whether it did.
    fn evict_if_reused(&mut self, poller: &Poller, idx: usize) -> bool {
        if !self.slab[idx].is_gone() {
            return false;
        }
        // Whatever epoll holds under this number now is the new file's, if
        // anything: dropped with it, so the new registration starts clean.
        // (A queued optimistic key for it is stale by its generation.)
        let reg = self.remove(poller, idx);
        self.evicted.push(reg);
        true
    }

    /// Whether registrations are waiting to be disconnected (see
    /// [`FdSet::take_evicted`]): the loop must not sleep before it does.
    pub fn has_evicted(&self) -> bool {
        !self.evicted.is_empty()
    }

    /// Python registrations evicted because their descriptor number was
    /// reused; the loop disconnects them with `ConnectionFdescWentAway`.
    pub fn take_evicted(&mut self) -> Vec<Registration> {
        std::mem::take(&mut self.evicted)
    }

    /// Register a native handler for `fd`.
    pub fn add_native(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        handler: Arc<dyn NativeHandler>,
        reading: bool,
        writing: bool,
    ) -> io::Result<Token> {
        if let Some(idx) = self.lookup(fd) {
            self.evict_if_reused(poller, idx);
        }
        if self.lookup(fd).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("file descriptor {fd} is already registered"),
            ));
        }
        let idx = self.insert(poller, fd, Target::Native(handler), reading, writing, None)?;
        Ok(Token(poll_key(idx, self.slab[idx].gen) as u64))
    }

    fn native_idx(&self, token: Token) -> Option<usize> {
        let (idx, gen) = split_key(token.0 as usize);
        match self.slab.get(idx) {
            Some(r) if r.gen == gen && matches!(r.target, Target::Native(_)) => Some(idx),
            _ => None,
        }
    }

    /// Change what a native handler waits for. Interest in neither direction
    /// keeps the registration but silences it.
    pub fn set_native_interest(
        &mut self,
        poller: &Poller,
        token: Token,
        reading: bool,
        writing: bool,
    ) -> io::Result<()> {
        let idx = self
            .native_idx(token)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "stale native token"))?;
        let reg = &self.slab[idx];
        if reg.reading == reading && reg.writing == writing {
            return Ok(());
        }
        self.modify(poller, idx, reading, writing)
    }

    /// Remove a native handler; returns it, so it can be dropped after the
    /// caller released the table's lock.
    pub fn remove_native(&mut self, poller: &Poller, token: Token) -> Option<Registration> {
        let idx = self.native_idx(token)?;
        Some(self.remove(poller, idx))
    }

    /// Add every registration, with the interest it has, to a new poller.
    /// One whose descriptor is closed fails to add; the lost-descriptor
    /// sweep disconnects it.
    pub fn rearm_all(&self, poller: &Poller) {
        for (idx, reg) in self.slab.iter() {
            let key = poll_key(idx, reg.gen);
            // SAFETY: as in `insert`.
            let _ = unsafe {
                poller.add_with_mode(
                    reg.fd,
                    interest(key, reg.reading, reg.out_armed),
                    PollMode::Level,
                )
            };
        }
    }

    /// Every registration, removed from the table and the poller.
    pub fn drain(&mut self, poller: &Poller) -> Vec<Registration> {
        let keys: Vec<usize> = self.slab.iter().map(|(i, _)| i).collect();
        keys.into_iter().map(|i| self.remove(poller, i)).collect()
    }

    pub fn python_objects(&self) -> impl Iterator<Item = &Py<PyAny>> {
        self.slab.iter().filter_map(|(_, r)| match &r.target {
            Target::Python(o) => Some(o),
            Target::Native(_) => None,
        })
    }
}
