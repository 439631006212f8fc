//! `Handle` and `TimerHandle`: a scheduled callback, as asyncio's `events.Handle`.
//!
//! A handle owns its callback, its arguments (the tuple `*args` already built, so
//! scheduling allocates nothing else) and its context. Cancelling only sets a flag the
//! loop checks before running; a cancelled timer stays in the heap until it reaches the
//! top or the heap is compacted.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::basic::CompareOp;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::Loop;
use crate::py_refs;

/// A callback scheduled with `call_soon`, `call_soon_threadsafe` or `add_reader`.
#[pyclass(
    frozen,
    subclass,
    freelist = 1024,
    module = "oxio._oxio",
    name = "Handle"
)]
pub struct Handle {
    pub(crate) callback: Py<PyAny>,
    pub(crate) args: Py<PyTuple>,
    pub(crate) context: Py<PyAny>,
    pub(crate) cancelled: AtomicBool,
    /// Timers only: when the loop should run it, as given (NaN included).
    pub(crate) when: f64,
    /// Timers only: true while the timer sits in the loop's heap.
    pub(crate) scheduled: AtomicBool,
    /// The loop the handle was scheduled on; a timer's cancellation is counted there.
    pub(crate) owner: Py<Loop>,
    /// Debug mode: where the handle was created.
    pub(crate) source_traceback: Option<Py<PyAny>>,
    /// True when `context` is a copy the loop made (and untracked) for this handle
    /// alone, rather than a context the caller passed in.
    pub(crate) private_context: bool,
}

impl Handle {
    pub(crate) fn new(
        owner: Py<Loop>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        private_context: bool,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        Handle {
            callback,
            args,
            context,
            cancelled: AtomicBool::new(false),
            when: 0.0,
            scheduled: AtomicBool::new(false),
            owner,
            source_traceback,
            private_context,
        }
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Runs the callback inside its context. Errors are returned, not reported.
    #[inline]
    pub(crate) fn invoke(&self, py: Python<'_>) -> PyResult<()> {
        let ctx = self.context.as_ptr();
        let args = self.args.bind(py);
        // SAFETY: `ctx` is a live contextvars.Context (checked at creation), the callback
        // and the argument tuple are kept alive by `self` for the whole call, and the
        // argument pointer is the tuple's own item array, valid for `len` items. Enter
        // and Exit are paired on every path.
        unsafe {
            if ffi::PyContext_Enter(ctx) != 0 {
                return Err(PyErr::fetch(py));
            }
            let nargs = ffi::PyTuple_GET_SIZE(args.as_ptr());
            let argv = if nargs == 0 {
                std::ptr::null_mut()
            } else {
                (*(args.as_ptr() as *mut ffi::PyTupleObject))
                    .ob_item
                    .as_mut_ptr()
            };
            let result = ffi::PyObject_Vectorcall(
                self.callback.as_ptr(),
                argv,
                nargs as usize,
                std::ptr::null_mut(),
            );
            let err = if result.is_null() {
                Some(PyErr::fetch(py))
            } else {
                ffi::Py_DECREF(result);
                None
            };
            if ffi::PyContext_Exit(ctx) != 0 {
                let exit_err = PyErr::fetch(py);
                return Err(err.unwrap_or(exit_err));
            }
            match err {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }

    fn format_callback(&self, py: Python<'_>) -> PyResult<String> {
        py_refs::format_callback_source(py)?
            .call1((self.callback.bind(py), self.args.bind(py)))?
            .extract()
    }

    fn repr_info(&self, py: Python<'_>, class_name: &str, timer: bool) -> PyResult<Vec<String>> {
        let mut info = vec![class_name.to_owned()];
        let cancelled = self.is_cancelled();
        if cancelled {
            info.push("cancelled".to_owned());
        }
        if timer {
            info.push(format!("when={}", PyAnyFloat(self.when).repr(py)?));
        }
        info.push(self.format_callback(py)?);
        if let Some(tb) = &self.source_traceback {
            let tb = tb.bind(py);
            if tb.len()? > 0 {
                let frame = tb.get_item(-1)?;
                let file: String = frame.get_item(0)?.str()?.extract()?;
                let line: String = frame.get_item(1)?.str()?.extract()?;
                info.push(format!("created at {file}:{line}"));
            }
        }
        Ok(info)
    }

    /// Cancels the handle; for a scheduled timer, tells the loop its heap holds one more
    /// cancelled entry.
    pub(crate) fn do_cancel(&self, py: Python<'_>) {
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.scheduled.load(Ordering::Relaxed) {
            self.owner.get().note_timer_cancelled(py);
        }
    }
}

/// Formats a float the way Python's `repr(float)` does.
struct PyAnyFloat(f64);

impl PyAnyFloat {
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        pyo3::types::PyFloat::new(py, self.0).repr()?.extract()
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
        ffi::PyObject_GC_UnTrack(handle.as_ptr().cast());
        let h = handle.get();
        if h.private_context && ffi::PyObject_GC_IsTracked(h.context.as_ptr()) != 0 {
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
        if h.private_context {
            let ctx = h.context.as_ptr();
            if ffi::PyObject_GC_IsTracked(ctx) == 0 {
                ffi::PyObject_GC_Track(ctx.cast());
            }
        }
        if ffi::Py_REFCNT(p) > 1 && ffi::PyObject_GC_IsTracked(p) == 0 {
            ffi::PyObject_GC_Track(p.cast());
        }
    }
    drop(handle);
}

#[pymethods]
impl Handle {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callback)?;
        visit.call(&self.args)?;
        visit.call(&self.context)?;
        visit.call(&self.owner)?;
        if let Some(tb) = &self.source_traceback {
            visit.call(tb)?;
        }
        Ok(())
    }

    /// Cancel the call. Idempotent; a cancelled callback never runs.
    fn cancel(&self, py: Python<'_>) {
        self.do_cancel(py);
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
            Err(e) => {
                if crate::errors::is_exit_exception(py, &e) {
                    return Err(e);
                }
                let owner = this.owner.bind(py);
                crate::errors::report_callback_error(owner, slf.as_any(), this, e)
            }
        }
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<Loop> {
        self.owner.clone_ref(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.args.clone_ref(py)
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
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let name: String = slf.get_type().name()?.extract()?;
        let timer = slf.is_instance_of::<TimerHandle>();
        Ok(format!(
            "<{}>",
            slf.get().repr_info(py, &name, timer)?.join(" ")
        ))
    }
}

/// A callback scheduled for a time, by `call_later` or `call_at`.
#[pyclass(frozen, extends = Handle, freelist = 1024, module = "oxio._oxio", name = "TimerHandle")]
pub struct TimerHandle;

fn when_of(other: &Bound<'_, PyAny>) -> Option<f64> {
    other
        .cast::<TimerHandle>()
        .ok()
        .map(|t| t.as_super().get().when)
}

#[pymethods]
impl TimerHandle {
    /// The absolute time (on the loop's clock) the callback is scheduled for.
    fn when(slf: &Bound<'_, Self>) -> f64 {
        slf.as_super().get().when
    }

    fn __hash__(slf: &Bound<'_, Self>) -> isize {
        let h = slf.as_super().get().when.to_bits();
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
        let this = slf.as_super().get();
        let ours = this.when;
        let same_call = || -> PyResult<bool> {
            let o = other.cast::<TimerHandle>()?.as_super().get();
            Ok(this.callback.bind(py).eq(o.callback.bind(py))?
                && this.args.bind(py).eq(o.args.bind(py))?
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
    ctx.set_item(
        "message",
        format!("Exception in callback {}", handle.format_callback(py)?),
    )?;
    ctx.set_item("exception", exc)?;
    ctx.set_item("handle", handle_obj)?;
    if let Some(tb) = &handle.source_traceback {
        ctx.set_item("source_traceback", tb.bind(py))?;
    }
    Ok(ctx)
}
