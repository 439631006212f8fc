//! What asyncio's `_check_callback` verifies, made cheap enough to do on every call.
//!
//! asyncio checks callbacks only in debug mode; oxio always rejects non-callables and
//! coroutines (both fail later anyway, far from the mistake), and in debug mode also
//! runs asyncio's full coroutine-function test for exotic callables.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::gil_cell::GilCell;
use crate::py_refs;

const CO_COROUTINE: i64 = 0x0080;
const CO_ITERABLE_COROUTINE: i64 = 0x0100;

/// Remembers the last code object checked and whether it belongs to a coroutine
/// function: schedulers call the same few functions over and over. It keeps a strong
/// reference, so the address cannot be reused by another code object while cached.
pub struct CodeFlagsCache {
    last: GilCell<Option<(Py<PyAny>, bool)>>,
}

impl CodeFlagsCache {
    pub const fn new() -> Self {
        Self {
            last: GilCell::new(None),
        }
    }

    fn is_coroutine_code(&self, code: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = code.py();
        let hit = self.last.with(py, |last| match last {
            Some((c, is_coro)) if c.as_ptr() == code.as_ptr() => Some(*is_coro),
            _ => None,
        });
        if let Some(is_coro) = hit {
            return Ok(is_coro);
        }
        let flags: i64 = code.getattr(pyo3::intern!(py, "co_flags"))?.extract()?;
        let is_coro = flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE) != 0;
        let old = self
            .last
            .with(py, |last| last.replace((code.clone().unbind(), is_coro)));
        drop(old);
        Ok(is_coro)
    }
}

/// CPython's bound-method object (`Include/cpython/classobject.h`); its leading fields
/// have had this layout in every CPython 3.x, and pyo3-ffi does not expose it.
#[repr(C)]
struct PyMethodObject {
    ob_base: ffi::PyObject,
    im_func: *mut ffi::PyObject,
    im_self: *mut ffi::PyObject,
}

extern "C" {
    static mut PyMethod_Type: ffi::PyTypeObject;
}

/// The plain Python function behind `cb`, if it is one or a bound method of one.
fn python_function<'py>(cb: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = cb.py();
    // SAFETY: type checks on a live object; a bound method's `im_func` is a borrowed
    // reference owned by the method, and the function's code object one owned by the
    // function; both outlive this call and become new strong references here.
    unsafe {
        let mut p = cb.as_ptr();
        if ffi::Py_TYPE(p) == std::ptr::addr_of_mut!(PyMethod_Type) {
            p = (*(p as *mut PyMethodObject)).im_func;
        }
        if ffi::PyFunction_Check(p) != 0 {
            let code = ffi::PyFunction_GetCode(p);
            if !code.is_null() {
                return Some(Bound::from_borrowed_ptr(py, code));
            }
        }
    }
    None
}

/// Raises asyncio's TypeError if `cb` is not callable or is a coroutine (function).
#[inline]
pub fn check_callback(
    cache: &CodeFlagsCache,
    cb: &Bound<'_, PyAny>,
    method: &str,
    debug: bool,
) -> PyResult<()> {
    // SAFETY: both are type checks on a live object.
    let (callable, coro) = unsafe {
        (
            ffi::PyCallable_Check(cb.as_ptr()) != 0,
            ffi::PyCoro_CheckExact(cb.as_ptr()) != 0,
        )
    };
    let is_coroutine =
        coro || match python_function(cb) {
            Some(code) => cache.is_coroutine_code(&code)?,
            None => false,
        } || (debug && is_coroutine_slow(cb)?);
    if is_coroutine {
        return Err(PyTypeError::new_err(format!(
            "coroutines cannot be used with {method}()"
        )));
    }
    if !callable {
        return Err(PyTypeError::new_err(format!(
            "a callable object was expected by {method}(), got {}",
            cb.repr()?
        )));
    }
    Ok(())
}

fn is_coroutine_slow(cb: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = cb.py();
    Ok(py_refs::iscoroutine(py)?.call1((cb,))?.is_truthy()?
        || py_refs::iscoroutinefunction(py)?
            .call1((cb,))?
            .is_truthy()?)
}
