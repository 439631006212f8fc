//! The table behind `add_reader`/`add_writer`: which handle runs when a descriptor is
//! ready, kept in step with the poller's registrations.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::RawFd;

use oxio_core::poller::{Registrar, LEVEL_IS_NATIVE};
use oxio_core::{Interest, Readiness, ReadyQueue};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::handle::Handle;

/// A map keyed by file descriptor. Descriptors are small distinct integers that no
/// peer chooses, so they need no keyed (SipHash) hashing: one multiplication spreads
/// them over the table. Each readiness event looks its descriptor up here; SipHash cost
/// 0.4% of a 1 KiB echo server's time.
pub type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;

/// The hasher of [`FdMap`]: Fibonacci hashing of the descriptor.
#[derive(Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    #[inline]
    fn write_i32(&mut self, fd: i32) {
        self.0 = (fd as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The reader and writer watching one descriptor.
struct Watch {
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
    /// asyncio's level-triggered semantics: registered level-triggered (re-armed after
    /// every event where the kernel has no such mode). Transports register
    /// edge-triggered and ask for a re-arm only when they left data unread.
    level: bool,
    /// What the kernel's registration asks for: the interest of the last `register` or
    /// `reregister`, which a parked entry keeps.
    registered: Interest,
    /// A re-arm was skipped because the entry was parked by then: an end of file that
    /// came with data, or data left unread, which no further edge will announce (a
    /// replayed reader may stop short of an end of file). A resumed reader then re-arms
    /// instead of replaying ([`Trigger::Resume`]).
    rearm_owed: bool,
    /// The descriptor is in `FdWatches::replay`.
    replay_queued: bool,
    /// The descriptor may hold data its reader has not been run for since its last
    /// registration: the reader was removed with data left or its event pending, or an
    /// event came while it had none. A resumed reader is replayed only then; otherwise
    /// the next new data raises an edge of its own.
    unread: bool,
}

impl Watch {
    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
    }
}

/// How a watch wants its descriptor reported.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Trigger {
    /// asyncio's level-triggered semantics (every `add_reader` and `add_writer`): the
    /// descriptor is reported at every poll while it is ready.
    Level,
    /// Edge-triggered: reported at the next poll if it is ready now, then once per new
    /// readiness. The watcher drains what it is told about or asks for a re-arm
    /// ([`FdWatches::request_rearm`]).
    Edge,
    /// Edge-triggered, for a reader resuming after a pause, which may have left data
    /// unread and may have missed edges while it was parked. A parked registration that
    /// asks for reads only is kept as it is, with no system call. If the descriptor may
    /// hold data the reader was not run for ([`FdWatches::reader_drained`] says when it
    /// does not), the reader runs after the next poll whether or not the poll reports
    /// it, and finds out by reading. Otherwise the same as `Edge`.
    Resume,
}

/// Which side of a descriptor a watch is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Read,
    Write,
}

/// Descriptor watches and their poller registrations.
///
/// Methods never drop a handle: replaced or removed handles are returned so the caller
/// can cancel and drop them outside the loop's borrowed state.
pub struct FdWatches {
    registrar: Registrar,
    /// Watched descriptors, and parked ones: edge-triggered registrations left in the
    /// kernel after their last watcher went, so that watching them again costs one
    /// `epoll_ctl` instead of two (a socket method waits on the same descriptor over
    /// and over). A parked descriptor's events find no watcher and are ignored.
    watches: FdMap<Watch>,
    /// How many entries of `watches` have a watcher (are not parked).
    active: usize,
    fired: Vec<RawFd>,
    /// Descriptors whose resumed reader runs after the next poll even if the poll does
    /// not report them ([`Trigger::Resume`]).
    replay: Vec<RawFd>,
}

impl FdWatches {
    pub fn new(registrar: Registrar) -> Self {
        Self {
            registrar,
            watches: FdMap::default(),
            active: 0,
            fired: Vec::new(),
            replay: Vec::new(),
        }
    }

    /// True when no descriptor is watched (the loop may then skip polling entirely when
    /// it has callbacks ready).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.active == 0
    }

    /// Installs `handle` as the `side` callback of `fd`, returning the one it replaces.
    /// On an OS error (a descriptor that is not open: `EBADF`) nothing changes.
    /// `trigger` chooses asyncio's level-triggered semantics or edge-triggered ones.
    pub fn set(
        &mut self,
        fd: RawFd,
        side: Side,
        handle: Py<Handle>,
        trigger: Trigger,
    ) -> io::Result<Option<Py<Handle>>> {
        let level = trigger == Trigger::Level;
        match self.watches.get_mut(&fd) {
            Some(watch) => {
                let was_parked = watch.reader.is_none() && watch.writer.is_none();
                watch.level = level;
                let mut interest = watch.interest();
                match side {
                    Side::Read => interest.readable = true,
                    Side::Write => interest.writable = true,
                }
                // A parked entry is edge-triggered (level ones are dropped instead), and
                // its registration still asks for `registered`. The descriptor is the
                // same file: its owner, resuming, has not closed it.
                if trigger == Trigger::Resume
                    && was_parked
                    && interest == watch.registered
                    && !watch.rearm_owed
                {
                    if std::mem::take(&mut watch.unread) && !watch.replay_queued {
                        watch.replay_queued = true;
                        self.replay.push(fd);
                    }
                } else {
                    if let Err(e) = reregister(&self.registrar, level, fd, interest) {
                        // The descriptor was closed (and so left epoll) and its number
                        // reused: register the new file afresh.
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            return Err(e);
                        }
                        register(&self.registrar, level, fd, interest)?;
                    }
                    watch.registered = interest;
                    watch.rearm_owed = false;
                    watch.unread = false;
                }
                if was_parked {
                    self.active += 1;
                }
                Ok(match side {
                    Side::Read => watch.reader.replace(handle),
                    Side::Write => watch.writer.replace(handle),
                })
            }
            None => {
                let (reader, writer, registered) = match side {
                    Side::Read => (Some(handle), None, Interest::READ),
                    Side::Write => (None, Some(handle), Interest::WRITE),
                };
                register(&self.registrar, level, fd, registered)?;
                let watch = Watch {
                    reader,
                    writer,
                    level,
                    registered,
                    rearm_owed: false,
                    replay_queued: false,
                    unread: false,
                };
                self.watches.insert(fd, watch);
                self.active += 1;
                Ok(None)
            }
        }
    }

    /// Removes the `side` callback of `fd`, returning it if there was one.
    pub fn remove(&mut self, fd: RawFd, side: Side) -> Option<Py<Handle>> {
        let watch = self.watches.get_mut(&fd)?;
        let removed = match side {
            Side::Read => watch.reader.take(),
            Side::Write => watch.writer.take(),
        };
        removed.as_ref()?;
        if side == Side::Read {
            // Unless its owner says otherwise (`reader_drained`).
            watch.unread = true;
        }
        let interest = watch.interest();
        if !interest.readable && !interest.writable {
            self.active -= 1;
            if watch.level {
                self.watches.remove(&fd);
                // A descriptor closed before its watch was removed has already left
                // epoll.
                let _ = self.registrar.deregister(fd);
            }
            // An edge-triggered registration is parked: see `watches`.
        } else {
            let _ = reregister(&self.registrar, watch.level, fd, interest);
            watch.registered = interest;
        }
        removed
    }

    /// Drops `fd`'s entry, parked or not, and its registration: for the owner of a
    /// descriptor that is about to close it.
    pub fn forget(&mut self, fd: RawFd) -> Vec<Py<Handle>> {
        let Some(w) = self.watches.remove(&fd) else {
            return Vec::new();
        };
        if w.replay_queued {
            // The number may be reused by another file before the poll.
            self.replay.retain(|&r| r != fd);
        }
        let _ = self.registrar.deregister(fd);
        let handles: Vec<_> = w.reader.into_iter().chain(w.writer).collect();
        if !handles.is_empty() {
            self.active -= 1;
        }
        handles
    }

    /// Queues the handles an event makes ready; cancelled ones are left out.
    pub fn dispatch(&mut self, py: Python<'_>, ev: Readiness, ready: &mut ReadyQueue<Py<Handle>>) {
        let fd = ev.token as RawFd;
        let Some(watch) = self.watches.get_mut(&fd) else {
            return;
        };
        if ev.readable {
            if watch.reader.is_none() {
                watch.unread = true;
            }
            if let Some(r) = &watch.reader {
                // This run of the reader is also the replay it may have asked for: two
                // runs in a row would make the second read whatever trickled in between.
                watch.replay_queued = false;
                if !r.get().is_cancelled() {
                    ready.push(r.clone_ref(py));
                }
            }
        }
        if ev.writable {
            if let Some(w) = &watch.writer {
                if !w.get().is_cancelled() {
                    ready.push(w.clone_ref(py));
                }
            }
        }
        // Edge-triggered watchers drain what they are told about, except an end of
        // file that arrived with data: re-arm so that the next poll reports it. A level
        // watch is re-armed only where the kernel does not keep it level itself.
        if (watch.level && !LEVEL_IS_NATIVE) || (!watch.level && ev.closed) {
            self.fired.push(fd);
        }
    }

    /// Records that the reader just removed from `fd` had emptied it after its last
    /// event: its owner read until the kernel had nothing left, in this loop pass, after
    /// the poll that reported it. A resume then needs neither a replay nor a re-arm.
    pub fn reader_drained(&mut self, fd: RawFd) {
        if let Some(w) = self.watches.get_mut(&fd) {
            if w.reader.is_none() {
                w.unread = false;
            }
        }
    }

    /// True when some reader waits for a replay: the next poll must not block.
    #[inline]
    pub fn replay_pending(&self) -> bool {
        !self.replay.is_empty()
    }

    /// Queues the readers resumed since the last poll that the poll did not report, as
    /// if it had reported them readable. Called after the poll's events were dispatched.
    pub fn queue_replays(&mut self, py: Python<'_>, ready: &mut ReadyQueue<Py<Handle>>) {
        for fd in self.replay.drain(..) {
            let Some(w) = self.watches.get_mut(&fd) else {
                continue;
            };
            if !std::mem::replace(&mut w.replay_queued, false) {
                continue; // the poll reported it
            }
            // A reader paused before this poll is not run; its resume replays.
            if let Some(r) = &w.reader {
                if !r.get().is_cancelled() {
                    ready.push(r.clone_ref(py));
                }
            }
        }
    }

    /// Makes the next poll report `fd` again if it is still ready: an edge-triggered
    /// watcher that stopped before draining its descriptor asks for this. (Running the
    /// reader after the next poll instead, as a resume does, saves the system call
    /// when data is left, but costs a wasted read, and a wasted `get_buffer()` call for
    /// a `BufferedProtocol`, when the read that filled its buffer had emptied the
    /// socket: a 1 MiB BufferedProtocol echo, four full 256 KiB reads per message,
    /// served about 10% less.)
    pub fn request_rearm(&mut self, fd: RawFd) {
        self.fired.push(fd);
    }

    /// True when some descriptor waits to be re-armed.
    pub fn rearm_pending(&self) -> bool {
        !self.fired.is_empty()
    }

    /// Re-arms every descriptor that fired and is still watched, so that it is reported
    /// again by the next poll if it is still ready: asyncio's level-triggered semantics.
    pub fn rearm_fired(&mut self) {
        for fd in self.fired.drain(..) {
            if let Some(w) = self.watches.get_mut(&fd) {
                if w.reader.is_none() && w.writer.is_none() {
                    w.rearm_owed = true; // parked
                    continue;
                }
                let _ = reregister(&self.registrar, w.level, fd, w.interest());
                w.rearm_owed = false;
            }
        }
    }

    /// Removes every watch, handing the handles back.
    pub fn take_all(&mut self) -> Vec<Py<Handle>> {
        let mut out = Vec::new();
        self.active = 0;
        self.replay.clear();
        for (fd, w) in self.watches.drain() {
            let _ = self.registrar.deregister(fd);
            out.extend(w.reader);
            out.extend(w.writer);
        }
        out
    }
}

/// Registers `fd` (its number is its token) level- or edge-triggered.
fn register(registrar: &Registrar, level: bool, fd: RawFd, interest: Interest) -> io::Result<()> {
    if level {
        registrar.register_level(fd, fd as usize, interest)
    } else {
        registrar.register(fd, fd as usize, interest)
    }
}

/// Changes `fd`'s registration, level- or edge-triggered. An edge-triggered one is also
/// re-armed: reported by the next poll if it is ready.
fn reregister(registrar: &Registrar, level: bool, fd: RawFd, interest: Interest) -> io::Result<()> {
    if level {
        registrar.reregister_level(fd, fd as usize, interest)
    } else {
        registrar.reregister(fd, fd as usize, interest)
    }
}

/// asyncio's `selectors._fileobj_to_fd`: an int, or an object with `fileno()`.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = if let Ok(fd) = obj.extract::<i64>() {
        fd
    } else {
        let invalid = || {
            PyValueError::new_err(format!(
                "Invalid file object: {}",
                obj.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        };
        let fileno = obj.call_method0("fileno").map_err(|e| {
            let py = obj.py();
            if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                || e.is_instance_of::<pyo3::exceptions::PyTypeError>(py)
                || e.is_instance_of::<PyValueError>(py)
            {
                invalid()
            } else {
                e
            }
        })?;
        let as_int = obj
            .py()
            .get_type::<pyo3::types::PyInt>()
            .call1((fileno,))
            .map_err(|_| invalid())?;
        as_int.extract::<i64>().map_err(|_| invalid())?
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}
