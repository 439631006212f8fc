//! Borrowing a Python object's bytes for the length of one call, with the `Py_buffer`
//! on the caller's stack.
//!
//! `pyo3::buffer::PyBuffer` boxes its `Py_buffer` (an exporter may point the view's
//! `shape` at the view itself, so it must not move); that is a heap allocation per read
//! or write, which the hot path does not allow (DESIGN.md, rule 4). Here the view lives
//! in the frame of [`with_buffer`] and is released before it returns.

use std::mem::MaybeUninit;

use pyo3::ffi;
use pyo3::prelude::*;

/// An exported buffer, valid only inside the [`with_buffer`] callback it is given to.
pub(crate) struct View {
    /// The first byte.
    pub ptr: *mut u8,
    /// Length in bytes, whatever the item size.
    pub len: usize,
    /// The exporter forbids writing.
    pub readonly: bool,
    /// The bytes are one C-contiguous run, so `ptr..ptr + len` is all of them.
    pub contiguous: bool,
}

impl View {
    /// The bytes, when they form one contiguous run.
    pub fn bytes(&self) -> Option<&[u8]> {
        // SAFETY: a C-contiguous export covers exactly `len` bytes from `ptr`, which the
        // exporter keeps valid (and, for a mutable object, the same size) until release,
        // and the borrow cannot outlive the callback that holds `self`.
        self.contiguous
            .then(|| unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// Exports `obj`'s buffer (a `TypeError` if it has none), calls `f` with the view and
/// releases the export afterwards, also when `f` fails or panics.
pub(crate) fn with_buffer<R>(
    obj: &Bound<'_, PyAny>,
    f: impl FnOnce(&View) -> PyResult<R>,
) -> PyResult<R> {
    /// The view, filled in place and never moved: an exporter may point `shape` and
    /// `strides` into the view itself.
    struct Export {
        view: MaybeUninit<ffi::Py_buffer>,
        filled: bool,
    }
    impl Drop for Export {
        fn drop(&mut self) {
            if self.filled {
                // SAFETY: PyObject_GetBuffer succeeded on this view, which has not
                // moved since; it is released once, with the GIL held (the caller's
                // `Bound` proves it).
                unsafe { ffi::PyBuffer_Release(self.view.as_mut_ptr()) }
            }
        }
    }

    let mut export = Export {
        view: MaybeUninit::uninit(),
        filled: false,
    };
    // SAFETY: `obj` is a live object and `export.view` is writable memory for one
    // Py_buffer; on failure nothing is exported and an exception is set.
    if unsafe {
        ffi::PyObject_GetBuffer(obj.as_ptr(), export.view.as_mut_ptr(), ffi::PyBUF_FULL_RO)
    } != 0
    {
        return Err(PyErr::fetch(obj.py()));
    }
    export.filled = true;
    let view = {
        // SAFETY: PyObject_GetBuffer filled the view.
        let v = unsafe { export.view.assume_init_ref() };
        View {
            ptr: v.buf.cast(),
            len: v.len as usize,
            readonly: v.readonly != 0,
            // SAFETY: the view is filled, exported and in place.
            contiguous: unsafe { ffi::PyBuffer_IsContiguous(export.view.as_ptr(), b'C' as _) } != 0,
        }
    };
    f(&view)
}
