//! Waking a loop that is blocked in its poller, from any thread.
//!
//! Wake-ups are coalesced: between two [`Waker::reset`] calls by the loop, only the first
//! [`Waker::wake`] costs a syscall (a write to the eventfd); the rest see the pending
//! flag and return. A thread scheduling ten thousand callbacks into a busy loop makes
//! one write, not ten thousand.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::Token;

/// A cross-thread wake-up for one [`crate::Poller`]. Cheap to clone.
#[derive(Clone)]
pub struct Waker {
    inner: Arc<Inner>,
}

struct Inner {
    waker: mio::Waker,
    pending: AtomicBool,
}

impl Waker {
    /// Registers a wake-up source (an eventfd on Linux) with `registry` under `token`.
    /// The loop recognises the token in its events and calls [`Waker::reset`].
    pub fn new(registry: &mio::Registry, token: usize) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                waker: mio::Waker::new(registry, Token(token))?,
                pending: AtomicBool::new(false),
            }),
        })
    }

    /// Makes the poller's current or next wait return. Never blocks.
    #[inline]
    pub fn wake(&self) -> io::Result<()> {
        if self.inner.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.waker.wake()
    }

    /// True when a wake-up was requested and not yet reset. A loop that would poll with
    /// a zero timeout anyway can skip the poll when this is false and nothing else is
    /// registered.
    #[inline]
    pub fn is_pending(&self) -> bool {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Called by the loop before it looks at whatever the wakers announced, so a wake
    /// that races with the loop's processing causes another wake-up, never a lost one.
    #[inline]
    pub fn reset(&self) {
        self.inner.pending.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Poller;
    use std::time::Duration;

    #[test]
    fn wakes_a_blocked_poll_from_another_thread() {
        let mut p = Poller::new(8).unwrap();
        let w = Waker::new(p.mio_registry(), usize::MAX).unwrap();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.wake().unwrap();
        });
        let n = p.poll(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(n, 1);
        assert_eq!(p.events().next().unwrap().token, usize::MAX);
        assert!(w.is_pending());
        w.reset();
        assert!(!w.is_pending());
        t.join().unwrap();
    }

    #[test]
    fn wakes_coalesce_until_reset() {
        let mut p = Poller::new(8).unwrap();
        let w = Waker::new(p.mio_registry(), 3).unwrap();
        for _ in 0..100 {
            w.wake().unwrap();
        }
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 1);
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 0);
        w.reset();
        w.wake().unwrap();
        assert_eq!(p.poll(Some(Duration::ZERO)).unwrap(), 1);
    }
}
