//! Reporting errors the way asyncio does: `call_exception_handler`, the default handler
//! and its log format, and the context a failed callback reports.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::event_loop::Loop;
use crate::handle::{error_context, Handle};
use crate::py_refs;

/// True for the exceptions asyncio lets escape the loop: `KeyboardInterrupt`, `SystemExit`.
pub fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Reports a callback's exception to the loop's exception handler, through the loop
/// object's `call_exception_handler` attribute so that overrides (and mocks) see it.
pub fn report_callback_error(
    lp: &Bound<'_, Loop>,
    handle_obj: &Bound<'_, PyAny>,
    handle: &Handle,
    err: PyErr,
) -> PyResult<()> {
    let py = lp.py();
    let exc = err.into_value(py).into_bound(py).into_any();
    let ctx = error_context(py, handle_obj, handle, &exc)?;
    // asyncio calls the handler from its `except` block: inside it, sys.exc_info() is
    // the callback's exception, and an error the handler raises has it as __context__.
    let _handling = HandlingException::enter(&exc);
    lp.call_method1(pyo3::intern!(py, "call_exception_handler"), (ctx,))?;
    Ok(())
}

/// Makes `exc` the exception being handled (`sys.exc_info()`) until dropped, as an
/// `except` block does, then restores the previous one.
struct HandlingException {
    saved: [*mut pyo3::ffi::PyObject; 3],
}

impl HandlingException {
    fn enter(exc: &Bound<'_, PyAny>) -> Self {
        let mut saved = [std::ptr::null_mut(); 3];
        // SAFETY: the GIL is held. PyErr_GetExcInfo hands out new references (kept in
        // `saved` until `drop` gives them back to PyErr_SetExcInfo, which steals them);
        // SetExcInfo steals the three new references made here.
        unsafe {
            pyo3::ffi::PyErr_GetExcInfo(&mut saved[0], &mut saved[1], &mut saved[2]);
            let ty = exc.get_type().into_any().into_ptr();
            let tb = pyo3::ffi::PyException_GetTraceback(exc.as_ptr());
            pyo3::ffi::PyErr_SetExcInfo(ty, exc.clone().into_ptr(), tb);
        }
        Self { saved }
    }
}

impl Drop for HandlingException {
    fn drop(&mut self) {
        // SAFETY: restores what `enter` saved, transferring the references back; the
        // GIL is held by the thread that created the guard, which drops it.
        unsafe { pyo3::ffi::PyErr_SetExcInfo(self.saved[0], self.saved[1], self.saved[2]) }
    }
}

fn log_error_with_traceback(py: Python<'_>, msg: &str) -> PyResult<()> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("exc_info", true)?;
    py_refs::logger(py)?.call_method("error", (msg,), Some(&kwargs))?;
    Ok(())
}

/// asyncio's `call_exception_handler`: the custom handler if one is set, the default
/// one otherwise, and a logged error (never an exception) if the handler itself fails.
pub fn call_exception_handler(lp: &Bound<'_, Loop>, context: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = lp.py();
    let handler = lp.get().exception_handler(py);
    match handler {
        None => {
            if let Err(e) = lp.call_method1("default_exception_handler", (context,)) {
                if is_exit_exception(py, &e) {
                    return Err(e);
                }
                e.restore(py);
                log_error_with_traceback(py, "Exception in default exception handler")?;
                PyErr::take(py);
            }
        }
        Some(handler) => {
            if let Err(e) = handler.bind(py).call1((lp, context)) {
                if is_exit_exception(py, &e) {
                    return Err(e);
                }
                let ctx = PyDict::new(py);
                ctx.set_item("message", "Unhandled error in exception handler")?;
                // into_value attaches the traceback to the exception object (on 3.11
                // value() does not), so the log shows where the handler failed.
                ctx.set_item("exception", e.into_value(py))?;
                ctx.set_item("context", context)?;
                if let Err(e2) = lp.call_method1("default_exception_handler", (ctx,)) {
                    if is_exit_exception(py, &e2) {
                        return Err(e2);
                    }
                    e2.restore(py);
                    log_error_with_traceback(
                        py,
                        "Exception in default exception handler while handling an unexpected \
                         error in custom exception handler",
                    )?;
                    PyErr::take(py);
                }
            }
        }
    }
    Ok(())
}

fn format_traceback(py: Python<'_>, heading: &str, frames: &Bound<'_, PyAny>) -> PyResult<String> {
    let lines = py_refs::format_list(py)?.call1((frames,))?;
    let joined: String = pyo3::types::PyString::new(py, "")
        .call_method1("join", (lines,))?
        .extract()?;
    Ok(format!("{heading}\n{}", joined.trim_end()))
}

/// asyncio's `default_exception_handler`: logs the message, every other context key in
/// sorted order, and the exception's traceback, to the `asyncio` logger at ERROR.
pub fn default_exception_handler(
    lp: &Bound<'_, Loop>,
    context: &Bound<'_, PyDict>,
) -> PyResult<()> {
    let py = lp.py();
    let message = match context.get_item("message")? {
        Some(m) if m.is_truthy()? => m.str()?.extract::<String>()?,
        _ => "Unhandled exception in event loop".to_owned(),
    };
    let exc_info: Bound<'_, PyAny> = match context.get_item("exception")? {
        Some(exc) if !exc.is_none() => PyTuple::new(
            py,
            [
                exc.get_type().into_any(),
                exc.clone(),
                exc.getattr("__traceback__")?,
            ],
        )?
        .into_any(),
        _ => false.into_pyobject(py)?.to_owned().into_any(),
    };
    if !context.contains("source_traceback")? {
        if let Some(tb) = lp.get().current_handle_traceback(py) {
            context.set_item("handle_traceback", tb)?;
        }
    }
    let mut lines = vec![message];
    let keys = PyList::new(py, context.keys())?;
    keys.sort()?;
    for key in keys.iter() {
        let key_s: String = key.str()?.extract()?;
        if key_s == "message" || key_s == "exception" {
            continue;
        }
        let value = context
            .get_item(&key)?
            .unwrap_or_else(|| py.None().into_bound(py));
        let text = match key_s.as_str() {
            "source_traceback" => {
                format_traceback(py, "Object created at (most recent call last):", &value)?
            }
            "handle_traceback" => {
                format_traceback(py, "Handle created at (most recent call last):", &value)?
            }
            _ => value.repr()?.extract()?,
        };
        lines.push(format!("{key_s}: {text}"));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("exc_info", exc_info)?;
    py_refs::logger(py)?.call_method("error", (lines.join("\n"),), Some(&kwargs))?;
    Ok(())
}
