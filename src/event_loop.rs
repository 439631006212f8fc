//! `oxio._oxio.Loop`: scheduling and dispatch.
//!
//! The loop keeps to one job: collect what is ready (due timers, ready descriptors,
//! callbacks from other threads) and run it, one pass per iteration, exactly as
//! asyncio's `BaseEventLoop._run_once` orders things. Cold machinery lives elsewhere:
//! error reporting in `errors`, descriptor watches in `fd_watch`, the executor bridge in
//! `executor`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use oxio_core::{
    clock, BatchQueue, Cancellable, Poller, Readiness, ReadyQueue, TimerHeap, Waker,
    MAXIMUM_POLL_TIMEOUT,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass_init::PyClassInitializer;
use pyo3::types::{PyDict, PyTuple};
use pyo3::BoundObject;

use crate::bytes_pool::BytesPool;
use crate::callback_check::{check_callback, CodeFlagsCache};
use crate::errors;
use crate::executor;
use crate::fd_watch::{fileobj_to_fd, FdMap, FdWatches, Side, Trigger};
use crate::gil_cell::GilCell;
use crate::handle::{release, untrack, CallArgs, Handle, NativeCall, TimerHandle};
use crate::handles::stream::StreamTransport;
use crate::py_refs;

const WAKER_TOKEN: usize = usize::MAX;

/// The loop's read buffer: asyncio's `max_size`, and the most `sock_recv` reads through it.
pub(crate) const READ_BUFFER_SIZE: usize = 256 * 1024;

/// A heap entry: the timer's handle. Its cancellation flag is the handle's.
struct Timer(Py<Handle>);

impl Cancellable for Timer {
    #[inline]
    fn is_cancelled(&self) -> bool {
        self.0.get().is_cancelled()
    }
}

struct Scheduler {
    ready: ReadyQueue<Py<Handle>>,
    timers: TimerHeap<Timer>,
}

/// Python-level state read on cold paths only.
#[derive(Default)]
pub(crate) struct PyState {
    pub exception_handler: Option<Py<PyAny>>,
    pub task_factory: Option<Py<PyAny>>,
    pub default_executor: Option<Py<PyAny>>,
    pub executor_shutdown_called: bool,
    pub asyncgens: Option<Py<PyAny>>,
    pub asyncgens_shutdown_called: bool,
    pub current_handle: Option<Py<Handle>>,
}

/// The event loop. `oxio.Loop` is this class with `asyncio.AbstractEventLoop` mixed in.
#[pyclass(frozen, subclass, module = "oxio._oxio", name = "Loop")]
pub struct Loop {
    sched: GilCell<Scheduler>,
    watches: GilCell<Option<FdWatches>>,
    poller: GilCell<Option<Poller>>,
    events: GilCell<Vec<Readiness>>,
    /// Wakes the poller from other threads. Lives as long as the loop object (its
    /// eventfd closes with it); after `close()` nothing polls it any more.
    waker: Waker,
    /// True while any descriptor is watched: otherwise a loop with callbacks ready can
    /// skip the poll syscall altogether.
    watching: AtomicBool,
    pub(crate) state: GilCell<PyState>,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop; 0 when not running.
    thread_id: AtomicU64,
    /// Debug mode warns about callbacks that take longer than this (seconds), as a float.
    slow_callback_duration: AtomicU64,
    resolution: f64,
    pub(crate) code_cache: CodeFlagsCache,
    /// Transports with writes queued this iteration, flushed before the next poll.
    flush: GilCell<BatchQueue<Py<StreamTransport>>>,
    /// Descriptors owned by a transport, which `add_reader` and friends refuse.
    transports: GilCell<FdMap<Py<StreamTransport>>>,
    /// Where stream reads land before they are copied into an exactly sized `bytes`.
    read_buf: GilCell<Box<[u8]>>,
    /// Written `bytes` that came back private, for small reads to reuse.
    bytes_pool: GilCell<BytesPool>,
    /// The last `sock_recv` returned a large read: the next large one reads straight
    /// into its `bytes`.
    pub(crate) bulk_recv: AtomicBool,
    /// Counts polls (from 1): a stamp for "in this loop pass, after its poll".
    polls: AtomicU64,
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// An `OSError` as Python raises it: `OSError(errno, strerror)`, which Python turns into
/// the errno's subclass (`FileNotFoundError`, `ConnectionResetError`, ...).
pub(crate) fn os_error(e: std::io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(errno) => {
            // std formats "<strerror> (os error N)", using the thread-safe strerror_r.
            let full = e.to_string();
            let msg = full
                .strip_suffix(&format!(" (os error {errno})"))
                .unwrap_or(&full)
                .to_owned();
            pyo3::exceptions::PyOSError::new_err((errno, msg))
        }
        None => PyErr::from(e),
    }
}

#[inline]
fn current_thread_ident() -> u64 {
    // SAFETY: PyThread_get_thread_ident has no preconditions; it is what
    // threading.get_ident() returns.
    unsafe { ffi::PyThread_get_thread_ident() as u64 }
}

impl Loop {
    #[inline]
    pub(crate) fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    #[inline]
    pub(crate) fn is_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    fn check_thread(&self) -> PyResult<()> {
        let tid = self.thread_id.load(Ordering::Relaxed);
        if tid != 0 && tid != current_thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Replaces one optional Python reference in the loop's state; the old one is
    /// dropped after the state is released (dropping can run `__del__`).
    fn replace_state(
        &self,
        py: Python<'_>,
        field: impl FnOnce(&mut PyState) -> &mut Option<Py<PyAny>>,
        value: Option<Py<PyAny>>,
    ) {
        let old = self.state.with(py, |s| std::mem::replace(field(s), value));
        drop(old);
    }

    pub(crate) fn note_timer_cancelled(&self, py: Python<'_>) {
        self.sched.with(py, |s| s.timers.note_cancelled());
    }

    pub(crate) fn exception_handler(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.with(py, |s| {
            s.exception_handler.as_ref().map(|h| h.clone_ref(py))
        })
    }

    pub(crate) fn current_handle_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let h = self
            .state
            .with(py, |s| s.current_handle.as_ref().map(|h| h.clone_ref(py)))?;
        h.get().source_traceback(py).map(Bound::unbind)
    }

    fn wake(&self) {
        // A failed wake (the eventfd counter saturated) means a wake is pending anyway.
        let _ = self.waker.wake();
    }

    /// Builds a handle after asyncio's checks (closed loop, thread in debug mode, callback).
    fn make_handle(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: CallArgs<'_>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Handle> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let debug = this.is_debug();
        if debug && check_thread {
            this.check_thread()?;
        }
        check_callback(&this.code_cache, callback, method, debug)?;
        let (context, private_context) = match context {
            Some(c) if !c.is_none() => (c.unbind(), false),
            // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an
            // exception set; from_owned_ptr_or_err takes ownership of it.
            _ => unsafe {
                let copy = Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?;
                (copy.unbind(), true)
            },
        };
        let source_traceback = if debug {
            Some(
                py_refs::extract_stack(py)?
                    .call1((py_refs::getframe(py)?.call1((0,))?,))?
                    .unbind(),
            )
        } else {
            None
        };
        Handle::new(
            slf.clone().unbind(),
            callback.clone().unbind(),
            args,
            context,
            private_context,
            source_traceback,
        )
    }

    fn schedule_timer<'py>(
        slf: &Bound<'py, Self>,
        when: f64,
        handle: Handle,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let py = slf.py();
        handle.set_scheduled(true);
        let init = PyClassInitializer::from(handle).add_subclass(TimerHandle::new(when));
        let timer = Bound::new(py, init)?;
        let base = timer.as_super();
        untrack(base);
        // A NaN time compares with nothing; asyncio ends up running such a timer at once,
        // so it is keyed as due now instead of being allowed to disorder the heap.
        let key = if when.is_nan() {
            f64::NEG_INFINITY
        } else {
            when
        };
        let queued = base.clone().unbind();
        slf.get()
            .sched
            .with(py, |s| s.timers.push(key, Timer(queued)));
        Ok(timer)
    }

    /// Runs one iteration, as asyncio's `_run_once`.
    fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        py.check_signals()?;

        // Timer housekeeping: drop cancelled entries from the top, compact if needed.
        let (garbage, scheduled, next_when) = this.sched.with(py, |s| {
            let scheduled = s.ready.len();
            if s.timers.is_empty() {
                return (None, scheduled, None);
            }
            let mut garbage = Vec::new();
            if s.timers.wants_compaction() {
                s.timers.compact(&mut garbage);
            }
            while let Some(t) = s.timers.pop_cancelled_head() {
                garbage.push(t);
            }
            (Some(garbage), scheduled, s.timers.next_when())
        });
        if let Some(garbage) = garbage {
            for t in garbage {
                t.0.get().set_scheduled(false);
                release(t.0);
            }
        }

        let timeout = if scheduled > 0 || this.stopping.load(Ordering::Relaxed) {
            Some(Duration::ZERO)
        } else {
            next_when.map(|when| {
                let secs = (when - clock::monotonic()).clamp(0.0, MAXIMUM_POLL_TIMEOUT);
                Duration::from_secs_f64(if secs.is_nan() { 0.0 } else { secs })
            })
        };
        let fired = this.poll(py, timeout)?;

        // Due timers join the ready queue.
        if next_when.is_some() {
            let cancelled = this.sched.with(py, |s| {
                let end = clock::monotonic() + this.resolution;
                let mut cancelled = Vec::new();
                while let Some(t) = s.timers.pop_due(end) {
                    let h = t.0;
                    h.get().set_scheduled(false);
                    if h.get().is_cancelled() {
                        cancelled.push(h);
                    } else {
                        s.ready.push(h);
                    }
                }
                cancelled
            });
            if !cancelled.is_empty() {
                cancelled.into_iter().for_each(release);
            }
        }

        let result = Self::run_ready(slf, scheduled);
        let _ = fired;
        this.watches.with(py, |w| {
            if let Some(w) = w {
                if w.rearm_pending() {
                    w.rearm_fired();
                }
            }
        });
        result
    }

    /// Polls for I/O and queues the handles of ready descriptors. Returns true if a
    /// watched descriptor fired (it must be re-armed after the callbacks ran).
    fn poll(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<bool> {
        self.flush_transports(py)?;
        // Only the loop's thread writes it: no atomic read-modify-write needed.
        self.polls
            .store(self.polls.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Resumed readers run after this poll as if it had reported them (those it
        // reports run once): it must not wait.
        let replays = self
            .watches
            .with(py, |w| w.as_ref().is_some_and(FdWatches::replay_pending));
        let timeout = if replays {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        if timeout == Some(Duration::ZERO)
            && !self.watching.load(Ordering::Relaxed)
            && !self.waker.is_pending()
        {
            // Nothing could be ready: skip the syscall.
            if replays {
                self.queue_replays(py);
            }
            return Ok(false);
        }
        let polled = self.poller.with(py, |poller| -> std::io::Result<()> {
            let Some(poller) = poller else { return Ok(()) };
            let result = if timeout == Some(Duration::ZERO) {
                poller.poll(timeout)
            } else {
                py.detach(|| poller.poll(timeout))
            };
            result?;
            self.events.with(py, |buf| {
                buf.clear();
                buf.extend(poller.events());
            });
            Ok(())
        });
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                py.check_signals()?;
                return Ok(false);
            }
            Err(e) => return Err(os_error(e)),
        }
        let events = self.events.with(py, std::mem::take);
        let mut woken = false;
        let mut fired = false;
        self.sched.with(py, |s| {
            self.watches.with(py, |w| {
                for ev in events.iter() {
                    if ev.token == WAKER_TOKEN {
                        woken = true;
                    } else if let Some(w) = w {
                        w.dispatch(py, *ev, &mut s.ready);
                        fired = true;
                    }
                }
            })
        });
        self.events.with(py, |buf| *buf = events);
        if replays {
            self.queue_replays(py);
        }
        if woken {
            self.waker.reset();
        }
        Ok(fired)
    }

    /// Queues the resumed readers that the poll did not report.
    fn queue_replays(&self, py: Python<'_>) {
        self.sched.with(py, |s| {
            self.watches.with(py, |w| {
                if let Some(w) = w {
                    w.queue_replays(py, &mut s.ready);
                }
            })
        });
    }

    /// Runs the callbacks that were ready when the pass began: first the `scheduled` ones
    /// that were queued before this iteration polled, then the I/O and timer callbacks
    /// the poll added.
    ///
    /// Writes made by the first group leave between the two groups rather than at the next
    /// poll. Those callbacks are mostly task steps answering requests read last iteration;
    /// sending their replies now lets the peer's next request arrive before the loop polls
    /// again rather than after it, which saves an iteration per round trip and wakes the
    /// peer once per burst of replies (measured with uvicorn under wrk: a third fewer
    /// wake-ups of wrk, whose cost lands in our `sendmsg`). Callback order is unchanged; a
    /// transport written by both groups sends twice.
    fn run_ready(slf: &Bound<'_, Self>, scheduled: usize) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let n = this.sched.with(py, |s| s.ready.begin_pass());
        for i in 0..n {
            if i == scheduled && scheduled > 0 {
                this.flush_transports(py)?;
            }
            let Some(handle) = this.sched.with(py, |s| s.ready.pop()) else {
                break;
            };
            let h = handle.get();
            if h.is_cancelled() {
                release(handle);
                continue;
            }
            let outcome = if this.is_debug() {
                Self::run_handle_debug(slf, &handle)
            } else {
                match h.invoke(py) {
                    Ok(()) => Ok(()),
                    Err(e) if errors::is_exit_exception(py, &e) => Err(e),
                    Err(e) => errors::report_callback_error(slf, handle.bind(py).as_any(), h, e),
                }
            };
            release(handle);
            outcome?;
        }
        Ok(())
    }

    fn run_handle_debug(slf: &Bound<'_, Self>, handle: &Py<Handle>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let prev = this
            .state
            .with(py, |s| s.current_handle.replace(handle.clone_ref(py)));
        drop(prev);
        let t0 = clock::monotonic();
        let result = handle.get().invoke(py);
        let dt = clock::monotonic() - t0;
        let cur = this.state.with(py, |s| s.current_handle.take());
        drop(cur);
        if let Err(e) = result {
            if errors::is_exit_exception(py, &e) {
                return Err(e);
            }
            errors::report_callback_error(slf, handle.bind(py).as_any(), handle.get(), e)?;
        }
        if dt >= f64::from_bits(this.slow_callback_duration.load(Ordering::Relaxed)) {
            py_refs::logger(py)?.call_method1(
                "warning",
                ("Executing %s took %.3f seconds", handle.bind(py), dt),
            )?;
        }
        Ok(())
    }

    fn check_running(&self, py: Python<'_>) -> PyResult<()> {
        if self.thread_id.load(Ordering::Relaxed) != 0 {
            return Err(PyRuntimeError::new_err(
                "This event loop is already running",
            ));
        }
        if !py_refs::get_running_loop(py)?.call0()?.is_none() {
            return Err(PyRuntimeError::new_err(
                "Cannot run the event loop while another loop is running",
            ));
        }
        Ok(())
    }

    /// While the loop runs, keeps one bound `call_soon` among the instance's attributes.
    ///
    /// asyncio's C Task and Future look `loop.call_soon` up on every step and every
    /// callback they schedule; each lookup of a method allocates a bound-method object
    /// (a GC-counted one). Found on the instance, the lookup allocates nothing. Only done
    /// when nobody has put their own `call_soon` on the instance; returns what was set.
    fn cache_bound_call_soon<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let name = pyo3::intern!(slf.py(), "call_soon");
        let found = slf.getattr(name)?;
        if !Self::is_own_builtin(slf, &found) {
            return Ok(None);
        }
        match slf.setattr(name, &found) {
            Ok(()) => Ok(Some(found)),
            Err(_) => Ok(None), // an instance without attributes: just no shortcut
        }
    }

    /// Removes the cached bound `call_soon` unless something replaced it meanwhile.
    fn uncache_bound_call_soon(slf: &Bound<'_, Self>, cached: &Bound<'_, PyAny>) -> PyResult<()> {
        let name = pyo3::intern!(slf.py(), "call_soon");
        if slf.getattr(name)?.is(cached) {
            slf.delattr(name)?;
        }
        Ok(())
    }

    /// True if `obj` is one of this class's own built-in methods, bound to `slf`.
    fn is_own_builtin(slf: &Bound<'_, Self>, obj: &Bound<'_, PyAny>) -> bool {
        // SAFETY: type checks and a field read on a live object.
        unsafe {
            ffi::PyCFunction_Check(obj.as_ptr()) != 0
                && ffi::PyCFunction_GetSelf(obj.as_ptr()) == slf.as_ptr()
        }
    }

    /// True if `_run_once` was replaced on the instance. Asks through getattr rather
    /// than `__dict__`: reading `__dict__` materializes the instance dict, which makes
    /// every later attribute lookup on the loop (`loop.call_soon` from each Task step)
    /// slower.
    fn run_once_overridden(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let found = slf.getattr(pyo3::intern!(slf.py(), "_run_once"))?;
        Ok(!Self::is_own_builtin(slf, &found))
    }

    fn set_coroutine_origin_tracking(py: Python<'_>, enabled: bool) -> PyResult<()> {
        // asyncio's debug mode records where coroutines were created.
        let depth = if enabled { 20 } else { 0 };
        py_refs::set_coro_tracking_depth(py)?.call1((depth,))?;
        Ok(())
    }

    fn watch<'py>(
        slf: &Bound<'py, Self>,
        side: Side,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        check_transport: bool,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let method = if side == Side::Read {
            "add_reader"
        } else {
            "add_writer"
        };
        let fd = fileobj_to_fd(fd)?;
        if check_transport {
            slf.get().ensure_fd_no_transport(py, fd)?;
        }
        let handle = Bound::new(
            py,
            Self::make_handle(slf, callback, CallArgs::Tuple(args), None, method, false)?,
        )?;
        slf.get().install_watch(fd, side, &handle, Trigger::Level)?;
        Ok(handle)
    }

    /// Makes `handle` the `side` watcher of `fd`, reported as `trigger` says; the handle it
    /// replaces is cancelled, as asyncio cancels a replaced reader or writer.
    fn install_watch(
        &self,
        fd: RawFd,
        side: Side,
        handle: &Bound<'_, Handle>,
        trigger: Trigger,
    ) -> PyResult<()> {
        let py = handle.py();
        let watched = handle.clone().unbind();
        // On failure `set` drops `watched`, which is not the last reference: no Python
        // code runs while the state is borrowed.
        let replaced = self.watches.with(py, |w| match w {
            Some(w) => w.set(fd, side, watched, trigger).map_err(os_error),
            None => Err(closed_error()),
        })?;
        self.watching.store(true, Ordering::Relaxed);
        untrack(handle);
        if let Some(old) = replaced {
            Handle::cancel_bound(old.bind(py));
            release(old);
        }
        Ok(())
    }

    fn unwatch(
        slf: &Bound<'_, Self>,
        side: Side,
        fd: &Bound<'_, PyAny>,
        check_transport: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        if slf.get().closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let fd = fileobj_to_fd(fd)?;
        if check_transport {
            slf.get().ensure_fd_no_transport(py, fd)?;
        }
        Ok(slf.get().unwatch_internal(py, fd, side))
    }
}

#[pyfunction]
fn _run_until_complete_cb(fut: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = fut.py();
    if !fut.call_method0("cancelled")?.is_truthy()? {
        let exc = fut.call_method0("exception")?;
        if exc.is_instance_of::<pyo3::exceptions::PySystemExit>()
            || exc.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>()
        {
            // Let the exception propagate out of run_forever without stopping first.
            return Ok(());
        }
    }
    py_refs::future_get_loop(py)?
        .call1((fut,))?
        .call_method0("stop")?;
    Ok(())
}

fn run_until_complete_cb(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Ok(wrap_pyfunction!(_run_until_complete_cb, py)?.into_any())
}

#[pymethods]
impl Loop {
    #[new]
    fn new(py: Python<'_>) -> PyResult<Self> {
        let poller = Poller::new(1024).map_err(os_error)?;
        let registrar = poller.registrar().map_err(os_error)?;
        let waker = Waker::new(poller.mio_registry(), WAKER_TOKEN).map_err(os_error)?;
        let debug = py_refs::is_debug_mode(py)?.call0()?.is_truthy()?;
        Ok(Loop {
            sched: GilCell::new(Scheduler {
                ready: ReadyQueue::new(),
                timers: TimerHeap::new(),
            }),
            watches: GilCell::new(Some(FdWatches::new(registrar))),
            poller: GilCell::new(Some(poller)),
            events: GilCell::new(Vec::with_capacity(1024)),
            waker,
            watching: AtomicBool::new(false),
            state: GilCell::new(PyState::default()),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            debug: AtomicBool::new(debug),
            thread_id: AtomicU64::new(0),
            slow_callback_duration: AtomicU64::new(0.1f64.to_bits()),
            resolution: clock::resolution(),
            code_cache: CodeFlagsCache::new(),
            flush: GilCell::new(BatchQueue::new()),
            transports: GilCell::new(FdMap::default()),
            read_buf: GilCell::new(vec![0u8; READ_BUFFER_SIZE].into_boxed_slice()),
            bytes_pool: GilCell::new(BytesPool::new()),
            bulk_recv: AtomicBool::new(false),
            polls: AtomicU64::new(1),
        })
    }

    // ---- scheduling -------------------------------------------------------------

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    // ---- lifecycle ----------------------------------------------------------------

    /// Run until `stop()` is called.
    fn run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        this.check_running(py)?;
        Self::set_coroutine_origin_tracking(py, this.is_debug())?;
        let old_hooks = py_refs::get_asyncgen_hooks(py)?.call0()?;
        this.thread_id
            .store(current_thread_ident(), Ordering::Relaxed);
        let mut bound_call_soon = None;
        let result = (|| -> PyResult<()> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("firstiter", slf.getattr("_asyncgen_firstiter_hook")?)?;
            kwargs.set_item("finalizer", slf.getattr("_asyncgen_finalizer_hook")?)?;
            py_refs::set_asyncgen_hooks(py)?.call((), Some(&kwargs))?;
            py_refs::set_running_loop(py)?.call1((slf,))?;
            bound_call_soon = Self::cache_bound_call_soon(slf)?;
            // Instrumentation (CPython's own tests among it) may replace `_run_once` on
            // the instance; honour that, and otherwise take the direct path.
            let instrumented = Self::run_once_overridden(slf)?;
            loop {
                if instrumented {
                    slf.call_method0(pyo3::intern!(py, "_run_once"))?;
                } else {
                    Self::run_once(slf)?;
                }
                if this.stopping.load(Ordering::Relaxed) {
                    break;
                }
            }
            Ok(())
        })();
        this.stopping.store(false, Ordering::Relaxed);
        this.thread_id.store(0, Ordering::Relaxed);
        let cleanup = (|| -> PyResult<()> {
            if let Some(cached) = bound_call_soon {
                Self::uncache_bound_call_soon(slf, &cached)?;
            }
            py_refs::set_running_loop(py)?.call1((py.None(),))?;
            Self::set_coroutine_origin_tracking(py, false)?;
            py_refs::set_asyncgen_hooks(py)?.call1(old_hooks.cast::<PyTuple>()?.clone())?;
            Ok(())
        })();
        result.and(cleanup)
    }

    /// Run until `future` (a future, task or coroutine) is done; return its result.
    fn run_until_complete(slf: &Bound<'_, Self>, future: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        this.check_running(py)?;
        let new_task = !py_refs::isfuture(py)?.call1((future,))?.is_truthy()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("loop", slf)?;
        let fut = py_refs::ensure_future(py)?.call((future,), Some(&kwargs))?;
        if new_task {
            // The caller never sees this task, so an exception it ends with is not
            // "never retrieved": it is raised from here.
            fut.setattr("_log_destroy_pending", false)?;
        }
        let cb = run_until_complete_cb(py)?;
        fut.call_method1("add_done_callback", (&cb,))?;
        let ran = Self::run_forever(slf);
        let removed = fut.call_method1("remove_done_callback", (&cb,));
        if let Err(e) = ran {
            if new_task
                && fut.call_method0("done")?.is_truthy()?
                && !fut.call_method0("cancelled")?.is_truthy()?
            {
                // Mark the exception retrieved: it propagates from here instead.
                let _ = fut.call_method0("exception");
            }
            return Err(e);
        }
        removed?;
        if !fut.call_method0("done")?.is_truthy()? {
            return Err(PyRuntimeError::new_err(
                "Event loop stopped before Future completed.",
            ));
        }
        Ok(fut.call_method0("result")?.unbind())
    }

    /// Stop after the current iteration (or, if not running, after the next one).
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// True while the loop is running.
    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    /// True once the loop was closed.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Close the loop: drop pending callbacks, release the poller, shut the default
    /// executor down without waiting. Idempotent; a running loop cannot be closed.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.is_running() {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        if this.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if this.is_debug() {
            py_refs::logger(py)?.call_method1("debug", ("Close %r", slf))?;
        }
        this.closed.store(true, Ordering::Relaxed);
        let (ready, timers) = this
            .sched
            .with(py, |s| (s.ready.take_all(), s.timers.take_all()));
        let watches = this.watches.with(py, |w| w.take());
        let poller = this.poller.with(py, |p| p.take());
        let executor = this.state.with(py, |s| {
            s.executor_shutdown_called = true;
            s.default_executor.take()
        });
        let watch_handles = watches.map(|mut w| w.take_all()).unwrap_or_default();
        let flush = this.flush.with(py, |f| f.take_all());
        let transports = this.transports.with(py, std::mem::take);
        let pooled = this.bytes_pool.with(py, |p| p.take_all());
        drop(flush);
        drop(transports);
        drop(pooled);
        ready.into_iter().for_each(release);
        timers.into_iter().for_each(|t| release(t.0));
        watch_handles.into_iter().for_each(release);
        drop(poller);
        this.watching.store(false, Ordering::Relaxed);
        if let Some(executor) = executor {
            let kwargs = PyDict::new(py);
            kwargs.set_item("wait", false)?;
            executor
                .bind(py)
                .call_method("shutdown", (), Some(&kwargs))?;
        }
        Ok(())
    }

    // ---- futures and tasks ------------------------------------------------------------

    /// A new `asyncio.Future` attached to this loop.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py_refs::vectorcall(
            py_refs::future_class(py)?,
            &[slf.as_any()],
            Some(py_refs::kw_loop(py)),
        )
    }

    /// Schedule a coroutine as a task (through the task factory, if one is set).
    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<Bound<'py, PyAny>>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let factory = this
            .state
            .with(py, |s| s.task_factory.as_ref().map(|f| f.clone_ref(py)));
        let context = context.filter(|c| !c.is_none());
        let name_given = name.as_ref().is_some_and(|n| !n.is_none());
        match factory {
            None => {
                let task_class = py_refs::task_class(py)?;
                let task = match (name.as_ref().filter(|_| name_given), &context) {
                    (None, None) => py_refs::vectorcall(
                        task_class,
                        &[coro, slf.as_any()],
                        Some(py_refs::kw_loop(py)),
                    )?,
                    (Some(n), None) => py_refs::vectorcall(
                        task_class,
                        &[coro, slf.as_any(), n],
                        Some(py_refs::kw_loop_name(py)),
                    )?,
                    (None, Some(c)) => py_refs::vectorcall(
                        task_class,
                        &[coro, slf.as_any(), c],
                        Some(py_refs::kw_loop_context(py)),
                    )?,
                    (Some(n), Some(c)) => py_refs::vectorcall(
                        task_class,
                        &[coro, slf.as_any(), n, c],
                        Some(py_refs::kw_loop_name_context(py)),
                    )?,
                };
                if this.is_debug() {
                    // Hide this frame from the task's creation traceback, as asyncio does.
                    if let Ok(tb) = task.getattr("_source_traceback") {
                        if tb.is_truthy()? {
                            tb.del_item(-1)?;
                        }
                    }
                }
                Ok(task)
            }
            Some(factory) => {
                let factory = factory.bind(py);
                let task = match &context {
                    None => factory.call1((slf, coro))?,
                    Some(context) => {
                        let kwargs = PyDict::new(py);
                        kwargs.set_item("context", context)?;
                        factory.call((slf, coro), Some(&kwargs))?
                    }
                };
                py_refs::set_task_name(py)?.call1((&task, name))?;
                Ok(task)
            }
        }
    }

    /// Set the factory `create_task` uses: `factory(loop, coro[, context=...])`, or None.
    fn set_task_factory(&self, py: Python<'_>, factory: Py<PyAny>) -> PyResult<()> {
        let factory = callable_or_none(py, factory, |_| {
            Ok("task factory must be a callable or None".to_owned())
        })?;
        self.replace_state(py, |s| &mut s.task_factory, factory);
        Ok(())
    }

    /// The task factory, or None.
    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .with(py, |s| s.task_factory.as_ref().map(|f| f.clone_ref(py)))
    }

    // ---- errors -------------------------------------------------------------------------

    /// Set the handler called as `handler(loop, context)`, or None for the default.
    fn set_exception_handler(&self, py: Python<'_>, handler: Py<PyAny>) -> PyResult<()> {
        let handler = callable_or_none(py, handler, |h| {
            Ok(format!(
                "A callable object or None is expected, got {}",
                h.repr()?
            ))
        })?;
        self.replace_state(py, |s| &mut s.exception_handler, handler);
        Ok(())
    }

    /// The custom exception handler, or None.
    fn get_exception_handler(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.exception_handler(py)
    }

    /// Log `context` to the `asyncio` logger the way asyncio does.
    fn default_exception_handler(
        slf: &Bound<'_, Self>,
        context: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        errors::default_exception_handler(slf, context)
    }

    /// Report `context` to the exception handler.
    fn call_exception_handler(slf: &Bound<'_, Self>, context: &Bound<'_, PyAny>) -> PyResult<()> {
        errors::call_exception_handler(slf, context)
    }

    // ---- descriptors --------------------------------------------------------------------

    /// Call `callback(*args)` whenever `fd` is readable.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::watch(slf, Side::Read, fd, callback, args, true).map(drop)
    }

    /// Call `callback(*args)` whenever `fd` is writable.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::watch(slf, Side::Write, fd, callback, args, true).map(drop)
    }

    /// Stop watching `fd` for reading; True if it was watched.
    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch(slf, Side::Read, fd, true)
    }

    /// Stop watching `fd` for writing; True if it was watched.
    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch(slf, Side::Write, fd, true)
    }

    /// `add_reader` without the transport check, returning the handle (asyncio's
    /// internal `_add_reader`, which the socket methods use).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::watch(slf, Side::Read, fd, callback, args, false)
    }

    /// `add_writer` without the transport check, returning the handle.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::watch(slf, Side::Write, fd, callback, args, false)
    }

    /// `remove_reader` without the transport check.
    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch(slf, Side::Read, fd, false)
    }

    /// `remove_writer` without the transport check.
    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch(slf, Side::Write, fd, false)
    }

    /// Drops every watch of `fd`, and its poller registration, parked or not: for a
    /// server about to close a listening socket that may have been watched edge-triggered
    /// (by `sock_accept`, say: `_remove_reader` parks such a registration, which a closed
    /// descriptor that was duplicated would keep alive).
    fn _forget_fd(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        let fd = fileobj_to_fd(fd)?;
        let this = slf.get();
        if !this.closed.load(Ordering::Relaxed) {
            this.forget_fd(slf.py(), fd);
        }
        Ok(())
    }

    /// asyncio's `_ensure_fd_no_transport`.
    fn _ensure_fd_no_transport(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        let fd = fileobj_to_fd(fd)?;
        slf.get().ensure_fd_no_transport(slf.py(), fd)
    }

    // ---- executor and async generators ---------------------------------------------------

    /// Run `func(*args)` in `executor` (the default executor if None); return a future.
    #[pyo3(signature = (executor, func, *args))]
    fn run_in_executor<'py>(
        slf: &Bound<'py, Self>,
        executor: &Bound<'py, PyAny>,
        func: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        executor::run_in_executor(slf, executor, func, args)
    }

    /// Set the executor `run_in_executor(None, ...)` uses.
    fn set_default_executor(slf: &Bound<'_, Self>, executor: &Bound<'_, PyAny>) -> PyResult<()> {
        executor::set_default_executor(slf, executor)
    }

    /// Coroutine: shut the default executor down, waiting for its threads.
    #[pyo3(signature = (timeout=None))]
    fn shutdown_default_executor<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        executor::shutdown_default_executor(slf, timeout)
    }

    /// Coroutine: close every async generator still alive on this loop.
    fn shutdown_asyncgens<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        executor::shutdown_asyncgens(slf)
    }

    fn _asyncgen_firstiter_hook(slf: &Bound<'_, Self>, agen: &Bound<'_, PyAny>) -> PyResult<()> {
        executor::asyncgen_firstiter(slf, agen)
    }

    fn _asyncgen_finalizer_hook(slf: &Bound<'_, Self>, agen: &Bound<'_, PyAny>) -> PyResult<()> {
        executor::asyncgen_finalizer(slf, agen)
    }

    // ---- debug ------------------------------------------------------------------------------

    /// True in debug mode.
    fn get_debug(&self) -> bool {
        self.is_debug()
    }

    /// Turn debug mode on or off.
    fn set_debug(slf: &Bound<'_, Self>, enabled: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let enabled = enabled.is_truthy()?;
        let this = slf.get();
        this.debug.store(enabled, Ordering::Relaxed);
        if this.is_running() {
            let f = py_refs::set_coro_tracking_depth(py)?;
            let depth = if enabled { 20 } else { 0 };
            Self::call_soon_threadsafe_impl(
                slf,
                f,
                CallArgs::One(pyo3::types::PyInt::new(py, depth).into_any()),
                None,
            )?;
        }
        Ok(())
    }

    /// Runs one iteration of the loop: poll, collect due timers, run what is ready.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run_once(slf)
    }

    /// Resolution of the loop's clock in seconds; timers this close are run now.
    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.resolution
    }

    /// Debug mode logs callbacks that run longer than this many seconds.
    #[getter]
    fn get_slow_callback_duration(&self) -> f64 {
        f64::from_bits(self.slow_callback_duration.load(Ordering::Relaxed))
    }

    #[setter]
    fn set_slow_callback_duration(&self, value: f64) {
        self.slow_callback_duration
            .store(value.to_bits(), Ordering::Relaxed);
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let this = slf.get();
        Ok(format!(
            "<{} running={} closed={} debug={}>",
            slf.get_type().qualname()?,
            if this.is_running() { "True" } else { "False" },
            if this.is_closed() { "True" } else { "False" },
            if this.is_debug() { "True" } else { "False" },
        ))
    }
}

/// The scheduling methods. Python reaches them through the entry points in `fastcall`.
impl Loop {
    /// Makes a handle and queues it to run in the next iteration.
    fn enqueue<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: CallArgs<'py>,
        context: Option<Bound<'py, PyAny>>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let handle = Self::make_handle(slf, callback, args, context, method, check_thread)?;
        let handle = Bound::new(py, handle)?;
        untrack(&handle);
        let queued = handle.clone().unbind();
        slf.get().sched.with(py, |s| s.ready.push(queued));
        Ok(handle)
    }

    pub(crate) fn call_soon_impl<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: CallArgs<'py>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::enqueue(slf, callback, args, context, "call_soon", true)
    }

    /// As `call_soon`, from any thread (no thread check in debug mode), waking the poller.
    pub(crate) fn call_soon_threadsafe_impl<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: CallArgs<'py>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let handle = Self::enqueue(slf, callback, args, context, "call_soon_threadsafe", false)?;
        slf.get().wake();
        Ok(handle)
    }

    pub(crate) fn call_later_impl<'py>(
        slf: &Bound<'py, Self>,
        delay: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: CallArgs<'py>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let when = clock::monotonic() + delay.extract::<f64>()?;
        Self::schedule_at(slf, when, callback, args, context)
    }

    pub(crate) fn call_at_impl<'py>(
        slf: &Bound<'py, Self>,
        when: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: CallArgs<'py>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        Self::schedule_at(slf, when.extract()?, callback, args, context)
    }

    /// Makes a timer handle for `when` and puts it in the heap. Errors name call_at()
    /// for both methods, as asyncio's do (its call_later delegates to call_at).
    fn schedule_at<'py>(
        slf: &Bound<'py, Self>,
        when: f64,
        callback: &Bound<'py, PyAny>,
        args: CallArgs<'py>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let handle = Self::make_handle(slf, callback, args, context, "call_at", true)?;
        Self::schedule_timer(slf, when, handle)
    }
}

/// asyncio's check for handlers and factories: None, or a callable; anything else is a
/// TypeError whose message `message` builds from the rejected object.
fn callable_or_none(
    py: Python<'_>,
    obj: Py<PyAny>,
    message: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<String>,
) -> PyResult<Option<Py<PyAny>>> {
    if obj.is_none(py) {
        Ok(None)
    } else if obj.bind(py).is_callable() {
        Ok(Some(obj))
    } else {
        Err(PyTypeError::new_err(message(obj.bind(py))?))
    }
}

/// Registers the loop's Python-visible helpers on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Loop>()?;
    crate::fastcall::install(&m.py().get_type::<Loop>())?;
    m.add_function(wrap_pyfunction!(_run_until_complete_cb, m)?)?;
    Ok(())
}

impl Loop {
    /// True once `close()` ran.
    pub(crate) fn is_closed_flag(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// What transports need from the loop: edge-triggered watches, the end-of-iteration
/// flush, the shared read buffer, and the registry of descriptors they own.
impl Loop {
    /// asyncio's `_ensure_fd_no_transport`: a descriptor owned by an open transport is
    /// not the user's to watch.
    fn ensure_fd_no_transport(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let owner = self
            .transports
            .with(py, |t| t.get(&fd).map(|t| t.clone_ref(py)));
        if let Some(t) = owner {
            if !t.get().is_closing_flag(py) {
                return Err(PyRuntimeError::new_err(format!(
                    "File descriptor {fd} is used by transport {}",
                    t.bind(py).repr()?
                )));
            }
        }
        Ok(())
    }

    /// Records that `fd` belongs to `transport` until [`Loop::forget_transport`].
    pub(crate) fn adopt_transport(&self, py: Python<'_>, fd: RawFd, t: Py<StreamTransport>) {
        let old = self.transports.with(py, |m| m.insert(fd, t));
        drop(old);
    }

    /// Ends `fd`'s ownership by a transport.
    pub(crate) fn forget_transport(&self, py: Python<'_>, fd: RawFd) {
        let old = self.transports.with(py, |m| m.remove(&fd));
        drop(old);
    }

    /// Installs `callback` (called with no arguments, or through `native`) as the `side`
    /// watcher of `fd`, reported as `trigger` says. Nothing is checked: the caller is a
    /// transport or a socket method.
    pub(crate) fn watch_internal(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        side: Side,
        callback: &Bound<'_, PyAny>,
        native: Option<NativeCall>,
        trigger: Trigger,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an
        // exception set; from_owned_ptr_or_err takes ownership of it.
        let context = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? };
        let mut handle = Handle::new(
            slf.clone().unbind(),
            callback.clone().unbind(),
            CallArgs::Tuple(PyTuple::empty(py)),
            context.unbind(),
            true,
            None,
        )?;
        if let Some(f) = native {
            handle = handle.with_native(f);
        }
        let handle = Bound::new(py, handle)?;
        this.install_watch(fd, side, &handle, trigger)?;
        Ok(handle.unbind())
    }

    /// Removes the `side` watcher of `fd`; true if there was one.
    pub(crate) fn unwatch_internal(&self, py: Python<'_>, fd: RawFd, side: Side) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let (removed, watching) = self.watches.with(py, |w| match w {
            Some(w) => (w.remove(fd, side), !w.is_empty()),
            None => (None, false),
        });
        self.watching.store(watching, Ordering::Relaxed);
        match removed {
            Some(h) => {
                Handle::cancel_bound(h.bind(py));
                release(h);
                true
            }
            None => false,
        }
    }

    /// Queues `callback(*args)` for the next iteration without asyncio's argument
    /// checks: the caller is the loop's own machinery.
    pub(crate) fn call_soon_internal<'py, A>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: A,
    ) -> PyResult<()>
    where
        A: IntoPyObject<'py, Target = PyTuple>,
    {
        let args = args
            .into_pyobject(slf.py())
            .map_err(Into::into)?
            .into_bound();
        Self::enqueue(
            slf,
            callback,
            CallArgs::Tuple(args),
            None,
            "call_soon",
            false,
        )?;
        Ok(())
    }

    /// Forgets every watch of `fd` (parked or not) before its owner closes it.
    pub(crate) fn forget_fd(&self, py: Python<'_>, fd: RawFd) {
        let (handles, watching) = self.watches.with(py, |w| match w {
            Some(w) => (w.forget(fd), !w.is_empty()),
            None => (Vec::new(), false),
        });
        self.watching.store(watching, Ordering::Relaxed);
        for h in handles {
            Handle::cancel_bound(h.bind(py));
            release(h);
        }
    }

    /// The current loop pass: what happens after this pass's poll (and before the next)
    /// shares it, and nothing else does.
    #[inline]
    pub(crate) fn pass(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Records that `fd`'s reader, just removed, had emptied it in this pass.
    pub(crate) fn reader_drained(&self, py: Python<'_>, fd: RawFd) {
        self.watches.with(py, |w| {
            if let Some(w) = w {
                w.reader_drained(fd);
            }
        });
    }

    /// Asks the next poll to report `fd` again if it is still ready.
    pub(crate) fn request_rearm(&self, py: Python<'_>, fd: RawFd) {
        self.watches.with(py, |w| {
            if let Some(w) = w {
                w.request_rearm(fd);
            }
        });
    }

    /// Queues `t` to have its writes flushed before the loop next polls.
    pub(crate) fn queue_flush(&self, py: Python<'_>, t: Py<StreamTransport>) {
        self.flush.with(py, |f| f.push(t));
    }

    /// Runs `f` on the pool of recycled `bytes`. `f` must not call Python.
    pub(crate) fn with_bytes_pool<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut BytesPool) -> R,
    ) -> R {
        self.bytes_pool.with(py, f)
    }

    /// Runs `f` on the shared read buffer. `f` must not call Python.
    pub(crate) fn with_read_buf<R>(&self, py: Python<'_>, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.read_buf.with(py, |b| f(b))
    }

    /// True while `run_forever` runs (on whichever thread).
    pub(crate) fn running_flag(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    /// Flushes every transport written since the last flush: rule 5 of the hot path, one
    /// vectored write per transport for the writes of a run of callbacks (see `run_ready`
    /// for where runs end).
    fn flush_transports(&self, py: Python<'_>) -> PyResult<()> {
        loop {
            let mut batch = self.flush.with(py, |f| f.take_batch());
            if batch.is_empty() {
                return Ok(());
            }
            let mut result = Ok(());
            for t in batch.iter() {
                if result.is_ok() {
                    result = StreamTransport::flush_queued(t.bind(py));
                } else {
                    t.get().cancel_flush(py);
                }
            }
            batch.clear();
            self.flush.with(py, |f| f.give_back(batch));
            result?;
        }
    }
}
