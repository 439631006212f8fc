//! A pure-Rust event loop with asyncio's shape, assembled from the engine's parts.
//!
//! It is what the Python binding does, minus Python: one iteration collects due timers
//! and ready descriptors into the ready queue and runs exactly the callbacks that were
//! ready when the pass began. It keeps the engine usable and benchmarkable on its own.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::poller::{Interest, Poller, Registrar, LEVEL_IS_NATIVE};
use crate::{clock, Cancellable, ReadyQueue, TimerHeap, Waker, MAXIMUM_POLL_TIMEOUT};

type Callback = Box<dyn FnOnce(&mut EventLoop)>;
type SendCallback = Box<dyn FnOnce(&mut EventLoop) + Send>;
type FdCallback = Rc<RefCell<dyn FnMut(&mut EventLoop)>>;

const WAKER_TOKEN: usize = usize::MAX;

#[derive(Default)]
struct HandleState {
    cancelled: Cell<bool>,
    scheduled: Cell<bool>,
}

/// A scheduled callback that can be cancelled before it runs.
#[derive(Clone, Default)]
pub struct CallbackHandle {
    state: Rc<HandleState>,
}

impl CallbackHandle {
    /// True once [`EventLoop::cancel`] was called for this handle.
    pub fn cancelled(&self) -> bool {
        self.state.cancelled.get()
    }
}

struct Scheduled {
    handle: CallbackHandle,
    callback: Callback,
}

impl Cancellable for Scheduled {
    fn is_cancelled(&self) -> bool {
        self.handle.cancelled()
    }
}

enum Ready {
    Call(Scheduled),
    Fd(FdCallback),
}

#[derive(Default)]
struct Watch {
    reader: Option<FdCallback>,
    writer: Option<FdCallback>,
}

impl Watch {
    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
    }
}

/// Schedules callbacks on an [`EventLoop`] from other threads.
#[derive(Clone)]
pub struct Remote {
    inbox: Arc<Mutex<Vec<SendCallback>>>,
    waker: Waker,
}

impl Remote {
    /// Runs `f` on the loop's thread in a coming iteration, waking the loop if it waits.
    pub fn call_soon_threadsafe(&self, f: impl FnOnce(&mut EventLoop) + Send + 'static) {
        self.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
        let _ = self.waker.wake();
    }
}

/// A single-threaded event loop: timers, ready callbacks and descriptor watches.
pub struct EventLoop {
    ready: ReadyQueue<Ready>,
    timers: TimerHeap<Scheduled>,
    poller: Poller,
    registrar: Registrar,
    remote: Remote,
    watches: HashMap<RawFd, Watch>,
    fired: Vec<RawFd>,
    stopping: bool,
    resolution: f64,
}

impl EventLoop {
    /// A new loop with its own poller and waker.
    pub fn new() -> io::Result<Self> {
        let poller = Poller::new(1024)?;
        let registrar = poller.registrar()?;
        let waker = Waker::new(poller.mio_registry(), WAKER_TOKEN)?;
        Ok(Self {
            ready: ReadyQueue::new(),
            timers: TimerHeap::new(),
            poller,
            registrar,
            remote: Remote {
                inbox: Arc::default(),
                waker,
            },
            watches: HashMap::new(),
            fired: Vec::new(),
            stopping: false,
            resolution: clock::resolution(),
        })
    }

    /// The loop's clock, in seconds.
    pub fn time(&self) -> f64 {
        clock::monotonic()
    }

    /// A handle for scheduling onto this loop from other threads.
    pub fn remote(&self) -> Remote {
        self.remote.clone()
    }

    /// Runs `f` in the next iteration, after everything already scheduled.
    pub fn call_soon(&mut self, f: impl FnOnce(&mut EventLoop) + 'static) -> CallbackHandle {
        let handle = CallbackHandle::default();
        self.ready.push(Ready::Call(Scheduled {
            handle: handle.clone(),
            callback: Box::new(f),
        }));
        handle
    }

    /// Runs `f` once `delay` seconds have passed.
    pub fn call_later(
        &mut self,
        delay: f64,
        f: impl FnOnce(&mut EventLoop) + 'static,
    ) -> CallbackHandle {
        let when = self.time() + delay;
        self.call_at(when, f)
    }

    /// Runs `f` at `when` on the loop's clock. `when` must not be NaN.
    pub fn call_at(
        &mut self,
        when: f64,
        f: impl FnOnce(&mut EventLoop) + 'static,
    ) -> CallbackHandle {
        assert!(!when.is_nan(), "call_at: when is NaN");
        let handle = CallbackHandle::default();
        handle.state.scheduled.set(true);
        self.timers.push(
            when,
            Scheduled {
                handle: handle.clone(),
                callback: Box::new(f),
            },
        );
        handle
    }

    /// Cancels a scheduled callback; it will not run. Idempotent.
    pub fn cancel(&mut self, handle: &CallbackHandle) {
        if handle.state.cancelled.replace(true) {
            return;
        }
        if handle.state.scheduled.get() {
            self.timers.note_cancelled();
        }
    }

    /// Calls `f` in every iteration while `fd` is readable (level-triggered, as asyncio's
    /// `add_reader`). Replaces an earlier reader of `fd`.
    pub fn add_reader(
        &mut self,
        fd: RawFd,
        f: impl FnMut(&mut EventLoop) + 'static,
    ) -> io::Result<()> {
        self.set_watch(fd, |w| w.reader = Some(Rc::new(RefCell::new(f))))
    }

    /// Calls `f` in every iteration while `fd` is writable.
    pub fn add_writer(
        &mut self,
        fd: RawFd,
        f: impl FnMut(&mut EventLoop) + 'static,
    ) -> io::Result<()> {
        self.set_watch(fd, |w| w.writer = Some(Rc::new(RefCell::new(f))))
    }

    /// Stops calling the reader of `fd`; false if there was none.
    pub fn remove_reader(&mut self, fd: RawFd) -> bool {
        self.clear_watch(fd, |w| w.reader.take().is_some())
    }

    /// Stops calling the writer of `fd`; false if there was none.
    pub fn remove_writer(&mut self, fd: RawFd) -> bool {
        self.clear_watch(fd, |w| w.writer.take().is_some())
    }

    fn set_watch(&mut self, fd: RawFd, set: impl FnOnce(&mut Watch)) -> io::Result<()> {
        let existed = self.watches.contains_key(&fd);
        let mut watch = self.watches.remove(&fd).unwrap_or_default();
        set(&mut watch);
        let result = if existed {
            self.registrar
                .reregister_level(fd, fd as usize, watch.interest())
        } else {
            self.registrar
                .register_level(fd, fd as usize, watch.interest())
        };
        if result.is_ok() || existed {
            self.watches.insert(fd, watch);
        }
        result
    }

    fn clear_watch(&mut self, fd: RawFd, clear: impl FnOnce(&mut Watch) -> bool) -> bool {
        let Some(watch) = self.watches.get_mut(&fd) else {
            return false;
        };
        let removed = clear(watch);
        let interest = watch.interest();
        if !interest.readable && !interest.writable {
            self.watches.remove(&fd);
            let _ = self.registrar.deregister(fd);
        } else if removed {
            let _ = self.registrar.reregister_level(fd, fd as usize, interest);
        }
        removed
    }

    /// Makes `run_forever` return after the current iteration.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Runs iterations until [`EventLoop::stop`] is called.
    pub fn run_forever(&mut self) -> io::Result<()> {
        while !self.stopping {
            self.run_once()?;
        }
        self.stopping = false;
        Ok(())
    }

    /// One iteration: poll, collect due timers, run what was ready at the start.
    pub fn run_once(&mut self) -> io::Result<()> {
        if self.timers.wants_compaction() {
            let mut removed = Vec::new();
            self.timers.compact(&mut removed);
        }
        while self.timers.pop_cancelled_head().is_some() {}

        let timeout = if !self.ready.is_empty() || self.stopping {
            Some(Duration::ZERO)
        } else {
            self.timers.next_when().map(|when| {
                let secs = (when - self.time()).clamp(0.0, MAXIMUM_POLL_TIMEOUT);
                Duration::from_secs_f64(secs)
            })
        };
        match self.poller.poll(timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut woken = false;
        for ev in self.poller.events() {
            if ev.token == WAKER_TOKEN {
                woken = true;
                continue;
            }
            let fd = ev.token as RawFd;
            if let Some(w) = self.watches.get(&fd) {
                if ev.readable {
                    if let Some(r) = &w.reader {
                        self.ready.push(Ready::Fd(r.clone()));
                    }
                }
                if ev.writable {
                    if let Some(wr) = &w.writer {
                        self.ready.push(Ready::Fd(wr.clone()));
                    }
                }
                if !LEVEL_IS_NATIVE {
                    self.fired.push(fd);
                }
            }
        }
        if woken {
            self.remote.waker.reset();
            let inbox =
                std::mem::take(&mut *self.remote.inbox.lock().unwrap_or_else(|e| e.into_inner()));
            for f in inbox {
                let f: Callback = f;
                self.ready.push(Ready::Call(Scheduled {
                    handle: CallbackHandle::default(),
                    callback: f,
                }));
            }
        }

        let end = self.time() + self.resolution;
        while let Some(t) = self.timers.pop_due(end) {
            t.handle.state.scheduled.set(false);
            self.ready.push(Ready::Call(t));
        }

        let n = self.ready.begin_pass();
        for _ in 0..n {
            match self.ready.pop() {
                Some(Ready::Call(s)) => {
                    if !s.handle.cancelled() {
                        (s.callback)(self);
                    }
                }
                Some(Ready::Fd(f)) => (f.borrow_mut())(self),
                None => break,
            }
        }
        // Level-triggered semantics where the kernel has no such mode: re-arm every
        // descriptor that fired and is still watched, so it is reported again while it
        // stays ready.
        for fd in std::mem::take(&mut self.fired) {
            if let Some(w) = self.watches.get(&fd) {
                let _ = self.registrar.rearm(fd, fd as usize, w.interest());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn log() -> Rc<RefCell<Vec<u32>>> {
        Rc::new(RefCell::new(Vec::new()))
    }

    #[test]
    fn callbacks_scheduled_during_a_pass_run_in_the_next() {
        let mut l = EventLoop::new().unwrap();
        let seen = log();
        let s = seen.clone();
        l.call_soon(move |l| {
            s.borrow_mut().push(1);
            let s2 = s.clone();
            l.call_soon(move |_| s2.borrow_mut().push(3));
        });
        let s = seen.clone();
        l.call_soon(move |_| s.borrow_mut().push(2));
        l.run_once().unwrap();
        assert_eq!(*seen.borrow(), vec![1, 2]);
        l.run_once().unwrap();
        assert_eq!(*seen.borrow(), vec![1, 2, 3]);
    }

    #[test]
    fn timers_fire_in_order_and_cancel() {
        let mut l = EventLoop::new().unwrap();
        let seen = log();
        for (i, d) in [(1, 0.02), (2, 0.01), (3, 0.01)] {
            let s = seen.clone();
            l.call_later(d, move |_| s.borrow_mut().push(i));
        }
        let s = seen.clone();
        let h = l.call_later(0.005, move |_| s.borrow_mut().push(9));
        l.cancel(&h);
        assert!(h.cancelled());
        l.call_later(0.03, |l| l.stop());
        l.run_forever().unwrap();
        assert_eq!(*seen.borrow(), vec![2, 3, 1]);
    }

    #[test]
    fn reader_is_level_triggered() {
        let mut l = EventLoop::new().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.write_all(b"abc").unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        let fd = a.as_raw_fd();
        l.add_reader(fd, move |l| {
            let mut one = [0u8; 1];
            a.read_exact(&mut one).unwrap();
            g.borrow_mut().push(one[0]);
            if g.borrow().len() == 3 {
                l.remove_reader(fd);
                l.stop();
            }
        })
        .unwrap();
        l.call_later(5.0, |l| l.stop());
        l.run_forever().unwrap();
        assert_eq!(&*got.borrow(), b"abc");
        assert!(!l.remove_reader(fd));
    }

    #[test]
    fn add_reader_on_closed_fd_is_ebadf() {
        let mut l = EventLoop::new().unwrap();
        let err = l.add_reader(999_999, |_| {}).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert!(!l.remove_reader(999_999));
    }

    #[test]
    fn threadsafe_call_wakes_blocked_loop() {
        let mut l = EventLoop::new().unwrap();
        let remote = l.remote();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            remote.call_soon_threadsafe(|l| l.stop());
        });
        let t0 = std::time::Instant::now();
        l.call_later(10.0, |_| panic!("not woken"));
        l.run_forever().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn heavy_cancellation_compacts() {
        let mut l = EventLoop::new().unwrap();
        let handles: Vec<_> = (0..1000).map(|_| l.call_later(100.0, |_| {})).collect();
        for h in &handles[..900] {
            l.cancel(h);
        }
        l.call_soon(|l| l.stop());
        l.run_forever().unwrap();
        assert_eq!(l.timers.len(), 100);
    }
}
