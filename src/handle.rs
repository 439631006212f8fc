//! `Handle` and `TimerHandle`: a scheduled callback, as asyncio's `events.Handle`.
//!
//! A handle owns its callback, its arguments (the tuple `*args` already built, so
//! scheduling allocates nothing else) and its context. Cancelling only sets a flag the
//! loop checks before running; a cancelled timer stays in the heap until it reaches the
//! top or the heap is compacted.
//!
//! Handles are kept small because a busy loop holds many: a plain handle is three
//! pointers and a flag byte (64 bytes with the object and GC headers). The debug-only
//! creation traceback shares the argument slot (see [`Handle::args`]), and what only
//! timers need lives in [`TimerHandle`].

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};

use pyo3::basic::CompareOp;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::Loop;
use crate::gil_cell::GilSlot;
use crate::py_refs;

/// The handle was cancelled; it never runs.
const CANCELLED: u8 = 1;
/// `context` is a copy the loop made for this handle alone (not one the caller passed).
const PRIVATE_CONTEXT: u8 = 2;
/// `payload` is `(args, source_traceback)` rather than `args` (debug mode).
const TRACED: u8 = 4;
/// A timer that sits in its loop's heap; its cancellation is counted there.
const SCHEDULED: u8 = 8;
/// `payload` is the callback's single argument itself, not a tuple: the shape of every
/// future callback (`cb(fut)`), stored without allocating a tuple.
const SINGLE_ARG: u8 = 16;

/// The positional arguments a callback is scheduled with.
pub(crate) enum CallArgs<'py> {
    /// Any number of arguments, as a tuple.
    Tuple(Bound<'py, PyTuple>),
    /// Exactly one argument.
    One(Bound<'py, PyAny>),
}

impl<'py> CallArgs<'py> {
    fn into_tuple(self) -> PyResult<Bound<'py, PyTuple>> {
        match self {
            CallArgs::Tuple(t) => Ok(t),
            CallArgs::One(a) => PyTuple::new(a.py(), [a]),
        }
    }
}

/// What the loop's own watchers run instead of calling their callback through Python:
/// a Rust function given the callback (a bound method of the watching object), which
/// skips the vectorcall, the method wrapper and PyO3's trampoline on every event.
pub(crate) type NativeCall = for<'py> fn(&Bound<'py, PyAny>) -> PyResult<()>;

/// A callback scheduled with `call_soon`, `call_soon_threadsafe` or `add_reader`.
#[pyclass(frozen, subclass, module = "oxio._oxio", name = "Handle")]
pub struct Handle {
    /// Cleared by `cancel()` outside debug mode, as asyncio does, so a cancelled timer
    /// stops keeping its callback's objects alive.
    callback: GilSlot<PyAny>,
    /// The argument tuple; or the single argument (SINGLE_ARG); or, in debug mode,
    /// `(argument tuple, source traceback)` (TRACED). Cleared with the callback.
    payload: GilSlot<PyAny>,
    context: Py<PyAny>,
    /// The loop the handle was scheduled on, which `_run()` reports errors to.
    owner: Py<Loop>,
    flags: AtomicU8,
    /// Set for the loop's own watchers (see [`NativeCall`]); the callback stays what
    /// repr and the exception handler show.
    native: Option<NativeCall>,
}

impl Handle {
    /// A handle for `callback(*args)` in `context`. `private_context` says the context
    /// is a copy made for this handle alone; `source_traceback` is debug mode's record
    /// of where the handle was created.
    pub(crate) fn new(
        owner: Py<Loop>,
        callback: Py<PyAny>,
        args: CallArgs<'_>,
        context: Py<PyAny>,
        private_context: bool,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let mut flags = if private_context { PRIVATE_CONTEXT } else { 0 };
        let payload = match (source_traceback, args) {
            (None, CallArgs::Tuple(t)) => t.into_any().unbind(),
            (None, CallArgs::One(a)) => {
                flags |= SINGLE_ARG;
                a.unbind()
            }
            (Some(tb), args) => {
                flags |= TRACED;
                let args = args.into_tuple()?;
                PyTuple::new(args.py(), [args.into_any().unbind(), tb])?
                    .into_any()
                    .unbind()
            }
        };
        Ok(Handle {
            callback: GilSlot::new(callback),
            payload: GilSlot::new(payload),
            context,
            owner,
            flags: AtomicU8::new(flags),
            native: None,
        })
    }

    /// This handle runs `f(callback)` in its context instead of calling `callback()`:
    /// `f` must do exactly what calling the callback with no arguments would.
    pub(crate) fn with_native(mut self, f: NativeCall) -> Self {
        self.native = Some(f);
        self
    }

    #[inline]
    fn flag(&self, bit: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & bit != 0
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag(CANCELLED)
    }

    #[inline]
    pub(crate) fn has_private_context(&self) -> bool {
        self.flag(PRIVATE_CONTEXT)
    }

    /// Marks a timer as in (or out of) its loop's heap.
    #[inline]
    pub(crate) fn set_scheduled(&self, scheduled: bool) {
        if scheduled {
            self.flags.fetch_or(SCHEDULED, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!SCHEDULED, Ordering::Relaxed);
        }
    }

    /// The callback's positional arguments, as a tuple (empty once cleared by cancel).
    pub(crate) fn args<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        let Some(payload) = self.payload.get(py) else {
            return PyTuple::empty(py);
        };
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & TRACED != 0 {
            // SAFETY: a TRACED payload is the 2-tuple built in `new`, whose first item
            // is the argument tuple.
            unsafe {
                payload
                    .cast_unchecked::<PyTuple>()
                    .get_borrowed_item_unchecked(0)
                    .cast_unchecked::<PyTuple>()
                    .to_owned()
            }
        } else if flags & SINGLE_ARG != 0 {
            PyTuple::new(py, [payload]).expect("a 1-tuple")
        } else {
            // SAFETY: without TRACED or SINGLE_ARG, the payload is the argument tuple.
            unsafe { payload.cast_into_unchecked::<PyTuple>() }
        }
    }

    /// Where the handle was created, in debug mode.
    pub(crate) fn source_traceback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        if !self.flag(TRACED) {
            return None;
        }
        let payload = self.payload.get(py)?;
        // SAFETY: as in `args`: item 1 of a TRACED payload is the traceback.
        Some(unsafe {
            payload
                .cast_unchecked::<PyTuple>()
                .get_borrowed_item_unchecked(1)
                .to_owned()
        })
    }

    /// Runs the callback inside its context. Errors are returned, not reported.
    #[inline]
    pub(crate) fn invoke(&self, py: Python<'_>) -> PyResult<()> {
        // A strong reference for the duration of the call: the callback may cancel its
        // own handle, which clears the slots.
        let Some(callback) = self.callback.get(py) else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "'NoneType' object is not callable",
            ));
        };
        let ctx = self.context.as_ptr();
        // SAFETY: `ctx` is a live contextvars.Context (checked at creation). Enter and
        // Exit are paired on every path, a panic in a native call included.
        unsafe {
            if ffi::PyContext_Enter(ctx) != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        let err = if let Some(native) = self.native {
            // A panic unwinds past this frame: leave the context first, or it would stay
            // entered and every later run of this handle would fail to enter it.
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| native(&callback)));
            match run {
                Ok(r) => r.err(),
                Err(panic) => {
                    // SAFETY: entered above.
                    unsafe { ffi::PyContext_Exit(ctx) };
                    std::panic::resume_unwind(panic);
                }
            }
        } else {
            self.call(py, &callback)
        };
        // SAFETY: entered above.
        if unsafe { ffi::PyContext_Exit(ctx) } != 0 {
            let exit_err = PyErr::fetch(py);
            return Err(err.unwrap_or(exit_err));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Calls `callback` with the handle's arguments, through vectorcall.
    #[inline]
    fn call(&self, py: Python<'_>, callback: &Bound<'_, PyAny>) -> Option<PyErr> {
        // Strong references for the duration of the call, as for the callback.
        let payload = self.payload.get(py);
        let args = if self.flag(SINGLE_ARG) {
            None
        } else {
            Some(self.args(py))
        };
        let mut one = [payload
            .as_ref()
            .map_or(std::ptr::null_mut(), |p| p.as_ptr())];
        // SAFETY: the callback, the single argument and the argument tuple are kept
        // alive by the strong references above for the whole call, and the argument
        // pointer is either `one` or the tuple's own item array, valid for `nargs` items.
        unsafe {
            let (argv, nargs) = match &args {
                None => (one.as_mut_ptr(), 1),
                Some(t) => {
                    let n = ffi::PyTuple_GET_SIZE(t.as_ptr()) as usize;
                    let items = (*(t.as_ptr() as *mut ffi::PyTupleObject))
                        .ob_item
                        .as_mut_ptr();
                    (if n == 0 { std::ptr::null_mut() } else { items }, n)
                }
            };
            let result =
                ffi::PyObject_Vectorcall(callback.as_ptr(), argv, nargs, std::ptr::null_mut());
            if result.is_null() {
                Some(PyErr::fetch(py))
            } else {
                ffi::Py_DECREF(result);
                None
            }
        }
    }

    /// asyncio's `_format_callback_source`, or None once cancel() cleared the callback.
    fn format_callback(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let Some(callback) = self.callback.get(py) else {
            return Ok(None);
        };
        py_refs::format_callback_source(py)?
            .call1((callback, self.args(py)))?
            .extract()
            .map(Some)
    }

    /// Cancels the handle. Returns true if this call cancelled a timer that was still in
    /// its loop's heap (the caller then tells the loop).
    fn mark_cancelled(&self) -> bool {
        let before = self.flags.fetch_or(CANCELLED, Ordering::Relaxed);
        before & CANCELLED == 0 && before & SCHEDULED != 0
    }

    /// Cancels the handle; for a scheduled timer, tells the loop its heap holds one more
    /// cancelled entry. Outside debug mode the callback and its arguments are released at
    /// once, as asyncio does (debug mode keeps them for the handle's repr).
    pub(crate) fn cancel_bound(slf: &Bound<'_, Handle>) {
        let py = slf.py();
        let this = slf.get();
        let first = this.flags.load(Ordering::Relaxed) & CANCELLED == 0;
        if this.mark_cancelled() {
            this.owner.get().note_timer_cancelled(py);
        }
        if first && !this.owner.get().is_debug() {
            let released = (this.callback.take(py), this.payload.take(py));
            drop(released);
        }
    }

    /// The loop a handle belongs to.
    fn owner<'py>(&self, py: Python<'py>) -> Bound<'py, Loop> {
        self.owner.bind(py).clone()
    }
}

/// Whether the collector tracks `op`. A transport's watcher is released after every
/// event, and `PyObject_GC_IsTracked` is an out-of-line call in CPython: 26 of a 1 KiB
/// echo's instructions per round trip went to asking it twice.
///
/// # Safety
/// `op` must be a live object of a GC-enabled type.
#[inline]
unsafe fn is_tracked(op: *mut ffi::PyObject) -> bool {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        // SAFETY: a GC object is preceded by its `PyGC_Head`, two words of which the first
        // (`_gc_next`) is non-zero exactly while the object is tracked: the layout of
        // every CPython from 3.8 on, read by CPython's own `_PyObject_GC_IS_TRACKED`.
        unsafe { *op.cast::<usize>().sub(2) != 0 }
    }
    #[cfg(Py_GIL_DISABLED)]
    {
        // SAFETY: per this function's contract.
        unsafe { ffi::PyObject_GC_IsTracked(op) != 0 }
    }
}

/// Takes a handle the loop has just queued off the garbage collector's lists, together
/// with the context copy made for it alone.
///
/// While the loop holds a handle, the loop's reference is invisible to the collector
/// (Rust-side references are not traversed), so the handle can never be found garbage
/// then, and walking thousands of queued handles and contexts on every collection is
/// pure cost. [`release`] undoes this when the loop lets go, so cycles through handles
/// stay collectable. Every handle passed here must leave the loop through [`release`].
#[inline]
pub(crate) fn untrack(handle: &Bound<'_, Handle>) {
    // SAFETY: the handle and its context are live GC-enabled objects (every pyclass is,
    // and so is contextvars.Context). Untracking is always allowed; PyO3's dealloc
    // untracks only if tracked, and `release` re-tracks the context before it can be
    // deallocated (its dealloc assumes it is tracked).
    unsafe {
        if !crate::handle_alloc::born_untracked() {
            ffi::PyObject_GC_UnTrack(handle.as_ptr().cast());
        }
        let h = handle.get();
        if h.has_private_context() && is_tracked(h.context.as_ptr()) {
            ffi::PyObject_GC_UnTrack(h.context.as_ptr().cast());
        }
    }
}

/// Drops the loop's reference to `handle`: its private context copy is tracked again
/// (always: a context must be tracked when it is deallocated), and so is the handle
/// itself if anything else still holds it.
#[inline]
pub(crate) fn release(handle: Py<Handle>) {
    let p = handle.as_ptr();
    // SAFETY: `handle` is a strong reference, so it and its context are live GC
    // objects; tracking an untracked GC object is allowed, and IsTracked guards
    // against tracking one twice.
    unsafe {
        let h = handle.get();
        if h.has_private_context() {
            let ctx = h.context.as_ptr();
            if !is_tracked(ctx) {
                ffi::PyObject_GC_Track(ctx.cast());
            }
        }
        if ffi::Py_REFCNT(p) > 1 && !is_tracked(p) {
            ffi::PyObject_GC_Track(p.cast());
        }
    }
    drop(handle);
}

#[pymethods]
impl Handle {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.callback.traverse(&visit)?;
        self.payload.traverse(&visit)?;
        visit.call(&self.context)?;
        visit.call(&self.owner)?;
        Ok(())
    }

    /// Cancel the call. Idempotent; a cancelled callback never runs.
    fn cancel(slf: &Bound<'_, Self>) {
        Handle::cancel_bound(slf);
    }

    /// True if the call was cancelled.
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The `contextvars.Context` the callback runs in.
    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    /// Runs the callback now, reporting an exception to the loop's handler as asyncio's
    /// `Handle._run` does. Used by code that drives handles by hand.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match this.invoke(py) {
            Ok(()) => Ok(()),
            Err(e) if crate::errors::is_exit_exception(py, &e) => Err(e),
            Err(e) => crate::errors::report_callback_error(&this.owner(py), slf.as_any(), this, e),
        }
    }

    #[getter]
    fn _loop<'py>(&self, py: Python<'py>) -> Bound<'py, Loop> {
        self.owner(py)
    }

    #[getter]
    fn _callback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.callback.get(py)
    }

    #[getter]
    fn _args<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyTuple>> {
        self.callback.get(py).map(|_| self.args(py))
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _source_traceback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.source_traceback(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let this = slf.get();
        let mut info = vec![slf.get_type().name()?.extract::<String>()?];
        if this.is_cancelled() {
            info.push("cancelled".to_owned());
        }
        if let Ok(timer) = slf.cast::<TimerHandle>() {
            let when = pyo3::types::PyFloat::new(py, timer.get().when);
            info.push(format!("when={}", when.repr()?));
        }
        if let Some(cb) = this.format_callback(py)? {
            info.push(cb);
        }
        if let Some(tb) = this.source_traceback(py) {
            if tb.len()? > 0 {
                let frame = tb.get_item(-1)?;
                let file: String = frame.get_item(0)?.str()?.extract()?;
                let line: String = frame.get_item(1)?.str()?.extract()?;
                info.push(format!("created at {file}:{line}"));
            }
        }
        Ok(format!("<{}>", info.join(" ")))
    }
}

/// A callback scheduled for a time, by `call_later` or `call_at`.
#[pyclass(frozen, extends = Handle, module = "oxio._oxio", name = "TimerHandle")]
pub struct TimerHandle {
    /// When the loop should run it, as given (NaN included).
    when: f64,
}

impl TimerHandle {
    pub(crate) fn new(when: f64) -> Self {
        TimerHandle { when }
    }
}

fn when_of(other: &Bound<'_, PyAny>) -> Option<f64> {
    other.cast::<TimerHandle>().ok().map(|t| t.get().when)
}

#[pymethods]
impl TimerHandle {
    /// The absolute time (on the loop's clock) the callback is scheduled for.
    fn when(&self) -> f64 {
        self.when
    }

    fn __hash__(&self) -> isize {
        let h = self.when.to_bits();
        (h ^ (h >> 32)) as isize
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Some(theirs) = when_of(other) else {
            return Ok(py.NotImplemented());
        };
        let ours = slf.get().when;
        let this = slf.as_super().get();
        let same_call = || -> PyResult<bool> {
            let o = other.cast::<TimerHandle>()?.as_super().get();
            Ok(this
                .callback
                .get(py)
                .into_pyobject(py)?
                .eq(o.callback.get(py))?
                && this.args(py).eq(o.args(py))?
                && this.is_cancelled() == o.is_cancelled())
        };
        let result = match op {
            CompareOp::Lt => ours < theirs,
            CompareOp::Le => ours < theirs || (ours == theirs && same_call()?),
            CompareOp::Gt => ours > theirs,
            CompareOp::Ge => ours > theirs || (ours == theirs && same_call()?),
            CompareOp::Eq => ours == theirs && same_call()?,
            CompareOp::Ne => !(ours == theirs && same_call()?),
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }
}

/// Context dict for a failed callback, as asyncio's `Handle._run` builds it.
pub(crate) fn error_context<'py>(
    py: Python<'py>,
    handle_obj: &Bound<'py, PyAny>,
    handle: &Handle,
    exc: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let ctx = PyDict::new(py);
    let source = handle
        .format_callback(py)?
        .unwrap_or_else(|| "None".to_owned());
    ctx.set_item("message", format!("Exception in callback {source}"))?;
    ctx.set_item("exception", exc)?;
    ctx.set_item("handle", handle_obj)?;
    if let Some(tb) = handle.source_traceback(py) {
        ctx.set_item("source_traceback", tb)?;
    }
    Ok(ctx)
}
