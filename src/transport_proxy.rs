//! `write` on a stream transport's proxy as a method of the proxy's own type.
//!
//! Protocols see `oxio._transports.SocketTransport`, a Python object in front of the
//! Rust `StreamTransport` (its `_core`). Its other methods are the engine's bound
//! methods, cached in the instance's `__dict__` on first use; but CPython cannot
//! specialize `transport.write(data)` for an attribute found in the instance dict. That
//! generic lookup (type, then instance dict) and the bound method's call cost a 1 KiB
//! echo server 258 instructions per round trip, 9% of its user-space instructions
//! (counted with callgrind). A method descriptor on the type is what CPython
//! specializes best: the call goes straight to [`stream_write`], which takes the engine
//! from the proxy's `_core` slot at a fixed offset.

use std::sync::atomic::{AtomicIsize, Ordering};

use pyo3::exceptions::{PyAttributeError, PyTypeError};
use pyo3::ffi;
use pyo3::impl_::trampoline::get_trampoline_function;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::handles::stream::StreamTransport;

/// Where the `_core` slot sits in a proxy (0: not installed yet).
static CORE_OFFSET: AtomicIsize = AtomicIsize::new(0);

/// CPython's `PyMemberDescrObject` (descrobject.h), the same from 3.8 on: the common
/// descriptor header, then the member's definition.
#[repr(C)]
struct MemberDescr {
    common: ffi::PyDescrObject,
    member: *mut ffi::PyMemberDef,
}

/// The engine behind `proxy`, from its `_core` slot.
///
/// # Safety
/// `proxy` must be a live instance of the type [`install`] was given (or a subclass),
/// which the method descriptor checks before calling.
unsafe fn core_of<'py>(
    py: Python<'py>,
    proxy: *mut ffi::PyObject,
) -> PyResult<Bound<'py, StreamTransport>> {
    let offset = CORE_OFFSET.load(Ordering::Relaxed);
    // SAFETY: `install` read `offset` from the type's `_core` member, an object slot
    // inside every instance of the type and its subclasses, which `proxy` is.
    let slot = unsafe {
        *proxy
            .cast::<u8>()
            .offset(offset)
            .cast::<*mut ffi::PyObject>()
    };
    if slot.is_null() {
        return Err(PyAttributeError::new_err("_core"));
    }
    // SAFETY: a non-NULL object slot holds a strong reference, alive while `proxy` is.
    let core = unsafe { Bound::from_borrowed_ptr(py, slot) };
    Ok(core.cast_into::<StreamTransport>()?)
}

/// `SocketTransport.write(self, data)`.
///
/// # Safety
/// Called by CPython with the vectorcall arguments of a method call, `slf` checked by
/// the method descriptor to be an instance of the proxy type.
unsafe fn stream_write(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: per this function's contract.
    let core = unsafe { core_of(py, slf)? };
    if nargs == 1 && kwnames.is_null() {
        // SAFETY: one live positional argument, per the vectorcall protocol.
        let data = unsafe { Bound::from_borrowed_ptr(py, *args) };
        StreamTransport::write(&core, &data)?;
        return Ok(py.None().into_ptr());
    }
    // Keywords, or the wrong number of arguments: the engine's own method parses them
    // and raises its errors.
    let write = core.getattr(pyo3::intern!(py, "write"))?;
    // SAFETY: the arguments are forwarded exactly as CPython passed them.
    let result = unsafe { ffi::PyObject_Vectorcall(write.as_ptr(), args, nargs as usize, kwnames) };
    // SAFETY: a new reference, or NULL with an exception set.
    Ok(unsafe { Bound::from_owned_ptr_or_err(py, result)? }.into_ptr())
}

/// Makes `write` on `cls` (`oxio._transports.SocketTransport`, whose `_core` is a
/// `__slots__` member) a method descriptor that calls the engine directly.
#[pyfunction]
fn _install_stream_proxy(cls: &Bound<'_, PyType>) -> PyResult<()> {
    let member = cls.getattr("_core")?;
    // SAFETY: reading the type of a live object.
    let is_member = unsafe {
        ffi::PyObject_TypeCheck(
            member.as_ptr(),
            std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type),
        )
    } != 0;
    if !is_member {
        return Err(PyTypeError::new_err("_core must be a __slots__ member"));
    }
    // SAFETY: a member descriptor has MemberDescr's layout; its definition lives as
    // long as the type that owns the descriptor.
    let (owner, def) = unsafe {
        let d = member.as_ptr().cast::<MemberDescr>();
        ((*d).common.d_type, &*(*d).member)
    };
    // SAFETY: both are live type objects.
    let inherited = unsafe { ffi::PyType_IsSubtype(cls.as_ptr().cast(), owner) } != 0;
    if !inherited || def.type_code != ffi::Py_T_OBJECT_EX || def.offset <= 0 {
        return Err(PyTypeError::new_err(
            "_core must be an object slot of the class",
        ));
    }
    let previous = CORE_OFFSET.swap(def.offset, Ordering::Relaxed);
    if previous != 0 && previous != def.offset {
        CORE_OFFSET.store(previous, Ordering::Relaxed);
        return Err(PyTypeError::new_err(
            "a proxy type with another layout is installed",
        ));
    }
    crate::fastcall::add_method(
        cls,
        c"write",
        get_trampoline_function!(fastcall_cfunction_with_keywords, stream_write),
        c"write($self, /, data)\n--\n\nWrite data (bytes, bytearray or memoryview) to the transport.",
    )
}

/// Adds `_install_stream_proxy` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_install_stream_proxy, m)?)
}
