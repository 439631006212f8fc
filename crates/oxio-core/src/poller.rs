//! Readiness of raw file descriptors, over mio.
//!
//! mio registers descriptors edge-triggered. asyncio's `add_reader` is level-triggered:
//! the callback runs on every iteration while the descriptor stays readable. A caller
//! that wants level semantics calls [`Registrar::rearm`] after it has dispatched an
//! event; re-registering makes epoll re-check readiness and report the descriptor again
//! if it is still ready. Transports that always read until `EAGAIN` need no re-arming.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Poll, Token};

/// Which readiness a registration asks for. At least one of the two is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    /// Report when the descriptor is readable (or has hung up, or has an error).
    pub readable: bool,
    /// Report when the descriptor is writable (or has an error).
    pub writable: bool,
}

impl Interest {
    /// Read interest only.
    pub const READ: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Write interest only.
    pub const WRITE: Interest = Interest {
        readable: false,
        writable: true,
    };
    /// Both.
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };

    fn to_mio(self) -> Option<mio::Interest> {
        match (self.readable, self.writable) {
            (true, true) => Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
            (true, false) => Some(mio::Interest::READABLE),
            (false, true) => Some(mio::Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

/// One descriptor's readiness from one poll.
///
/// As in asyncio's selectors, an error or hang-up makes a descriptor both readable and
/// writable, so whichever callback is registered runs and sees the error itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// The token the descriptor was registered with.
    pub token: usize,
    /// Readable, hung up, or in error.
    pub readable: bool,
    /// Writable, or in error.
    pub writable: bool,
    /// The peer hung up or the descriptor is in error. An edge-triggered reader that
    /// sees this must read until end of file: no further edge will announce it.
    pub closed: bool,
}

/// True where [`Registrar::register_level`] is level-triggered in the kernel (epoll);
/// elsewhere a level-triggered watcher re-arms after each event it was reported.
pub const LEVEL_IS_NATIVE: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Registers descriptors with a [`Poller`]; usable from any thread while the poller
/// itself is blocked in [`Poller::poll`].
pub struct Registrar {
    registry: mio::Registry,
}

fn invalid_interest() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "empty interest")
}

impl Registrar {
    /// Starts watching `fd`. Fails with the OS error (`EBADF` for a descriptor that is
    /// not open, `EEXIST` if it is already registered, `EPERM` for a regular file).
    pub fn register(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        let i = interest.to_mio().ok_or_else(invalid_interest)?;
        self.registry.register(&mut SourceFd(&fd), Token(token), i)
    }

    /// Changes what `fd` is watched for.
    pub fn reregister(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        let i = interest.to_mio().ok_or_else(invalid_interest)?;
        self.registry
            .reregister(&mut SourceFd(&fd), Token(token), i)
    }

    /// Re-arms a level-triggered watch after its event was dispatched: if the descriptor
    /// is still ready, the next poll reports it again.
    #[inline]
    pub fn rearm(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        self.reregister(fd, token, interest)
    }

    /// Starts watching `fd` level-triggered where the platform has it natively
    /// ([`LEVEL_IS_NATIVE`]): every poll reports the descriptor while it is ready, with
    /// no re-arm. Elsewhere the same as [`Registrar::register`], and the caller re-arms.
    pub fn register_level(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, token, interest);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return self.register(fd, token, interest);
    }

    /// Changes what `fd` is watched for, and makes the watch level-triggered as
    /// [`Registrar::register_level`] does.
    pub fn reregister_level(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, token, interest);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return self.reregister(fd, token, interest);
    }

    /// mio registers edge-triggered only. A level-triggered entry goes to the same epoll
    /// instance with mio's event bits minus `EPOLLET` and the token as mio stores it
    /// (the event's `u64`), so the events mio collects read the same either way.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn epoll_ctl(
        &self,
        op: libc::c_int,
        fd: RawFd,
        token: usize,
        interest: Interest,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        interest.to_mio().ok_or_else(invalid_interest)?;
        let mut events = 0;
        if interest.readable {
            events |= libc::EPOLLIN | libc::EPOLLRDHUP;
        }
        if interest.writable {
            events |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token as u64,
        };
        // SAFETY: the registry's descriptor is a live epoll instance for as long as
        // `self` is; `event` is a valid epoll_event that outlives the call.
        let rc = unsafe { libc::epoll_ctl(self.registry.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd`. A descriptor that was closed meanwhile has already left the
    /// kernel's interest list; that is not an error for the caller to act on.
    pub fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.registry.deregister(&mut SourceFd(&fd))
    }

    /// The underlying mio registry, for sources that are not raw descriptors.
    pub fn mio_registry(&self) -> &mio::Registry {
        &self.registry
    }
}

/// The poller: blocks until a registered descriptor is ready or the timeout expires.
pub struct Poller {
    poll: Poll,
    events: Events,
}

impl Poller {
    /// A poller with room for `capacity` events per poll.
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(Self {
            poll: Poll::new()?,
            events: Events::with_capacity(capacity.max(1)),
        })
    }

    /// A registrar for this poller, independent of it (a cloned registry handle).
    pub fn registrar(&self) -> io::Result<Registrar> {
        Ok(Registrar {
            registry: self.poll.registry().try_clone()?,
        })
    }

    /// The mio registry, for creating a [`crate::Waker`].
    pub fn mio_registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// Waits for readiness. `None` blocks until an event arrives; `Some(ZERO)` only
    /// collects what is ready now. An interrupted wait (`EINTR`) is returned as an error
    /// of kind `Interrupted` with no events, so the caller can run signal handlers.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => Ok(self.events.iter().count()),
            Err(e) => {
                self.events.clear();
                Err(e)
            }
        }
    }

    /// The events the last [`Poller::poll`] collected.
    pub fn events(&self) -> impl Iterator<Item = Readiness> + '_ {
        self.events.iter().map(|e| {
            let error = e.is_error();
            Readiness {
                token: e.token().0,
                readable: e.is_readable() || e.is_read_closed() || error,
                writable: e.is_writable() || e.is_write_closed() || error,
                closed: e.is_read_closed() || e.is_write_closed() || error,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A poller, its registrar, and a connected socket pair whose first end (the one
    /// the tests register) is non-blocking.
    fn poller_and_pair() -> (Poller, Registrar, UnixStream, UnixStream) {
        let p = Poller::new(16).unwrap();
        let r = p.registrar().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (p, r, a, b)
    }

    #[test]
    fn reports_readable_and_rearms_level_style() {
        let (mut p, r, mut a, mut b) = poller_and_pair();
        r.register(a.as_raw_fd(), 7, Interest::READ).unwrap();
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 0);
        b.write_all(b"xy").unwrap();
        p.poll(Some(Duration::from_secs(5))).unwrap();
        let ev: Vec<_> = p.events().collect();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].token, 7);
        assert!(ev[0].readable);
        // Edge-triggered: without a re-arm, unread data is not reported again.
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 0);
        // Consume one byte, re-arm: still readable, so reported again.
        let mut buf = [0u8; 1];
        a.read_exact(&mut buf).unwrap();
        r.rearm(a.as_raw_fd(), 7, Interest::READ).unwrap();
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 1);
        a.read_exact(&mut buf).unwrap();
        r.rearm(a.as_raw_fd(), 7, Interest::READ).unwrap();
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 0);
        r.deregister(a.as_raw_fd()).unwrap();
    }

    #[test]
    fn level_registration_reports_until_drained_without_rearm() {
        let (mut p, r, mut a, mut b) = poller_and_pair();
        r.register_level(a.as_raw_fd(), 9, Interest::READ).unwrap();
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 0);
        b.write_all(b"xy").unwrap();
        let mut buf = [0u8; 1];
        for _ in 0..2 {
            // Reported at every poll while data is left, with no re-arm in between.
            assert_eq!(p.poll(Some(Duration::from_secs(5))).unwrap(), 1);
            let ev: Vec<_> = p.events().collect();
            assert_eq!(
                (ev[0].token, ev[0].readable, ev[0].closed),
                (9, true, false)
            );
            assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 1);
            a.read_exact(&mut buf).unwrap();
        }
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 0);
        // Changing the interest keeps it level-triggered.
        r.reregister_level(a.as_raw_fd(), 9, Interest::BOTH)
            .unwrap();
        for _ in 0..2 {
            assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 1);
            let ev: Vec<_> = p.events().collect();
            assert!(ev[0].writable && !ev[0].readable);
        }
        drop(b);
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 1);
        assert!(p.events().next().unwrap().closed);
        r.deregister(a.as_raw_fd()).unwrap();
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 0);
        let err = r
            .reregister_level(a.as_raw_fd(), 9, Interest::READ)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let none = Interest {
            readable: false,
            writable: false,
        };
        let err = r.register_level(a.as_raw_fd(), 9, none).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn writable_and_hangup() {
        let (mut p, r, a, b) = poller_and_pair();
        r.register(a.as_raw_fd(), 1, Interest::BOTH).unwrap();
        p.poll(Some(Duration::from_secs(5))).unwrap();
        let ev: Vec<_> = p.events().collect();
        assert!(ev[0].writable && !ev[0].readable);
        drop(b);
        r.rearm(a.as_raw_fd(), 1, Interest::READ).unwrap();
        p.poll(Some(Duration::from_secs(5))).unwrap();
        let ev: Vec<_> = p.events().collect();
        assert!(ev[0].readable, "hang-up reads as readable");
    }

    #[test]
    fn bad_descriptor_is_ebadf() {
        let p = Poller::new(4).unwrap();
        let r = p.registrar().unwrap();
        let err = r.register(1_000_000, 0, Interest::READ).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn empty_interest_is_rejected() {
        let p = Poller::new(4).unwrap();
        let r = p.registrar().unwrap();
        let none = Interest {
            readable: false,
            writable: false,
        };
        assert_eq!(
            r.register(0, 0, none).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn timeout_expires() {
        let mut p = Poller::new(4).unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(p.poll(Some(Duration::from_millis(20))).unwrap(), 0);
        assert!(t0.elapsed() >= Duration::from_millis(15));
    }
}
