//! Allocation for `Handle` and `TimerHandle` that does not drive the collector's schedule.
//!
//! Every pyclass is a GC type, and an ordinary GC allocation counts towards the
//! collector's generation-0 threshold. A loop that queues 50,000 callbacks would thereby
//! trigger some seventy extra collections, each walking every live task, although the
//! loop keeps its handles off the collector's lists while it holds them (see
//! `handle::untrack`). These two slots allocate and free a handle as a valid GC object
//! (a zeroed, i.e. untracked, GC header in front of it) without touching the count, and
//! free it the same way, so the count stays balanced. A handle that outlives the loop's
//! reference is tracked like any other object (`handle::release`), so reference cycles
//! through handles remain collectable.
//!
//! Only installed where the layout is the classic one: a GIL build (the free-threaded
//! build keeps GC state in the object header instead) and a type without pre-header
//! slots for managed dicts or weak references.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// True once both handle types allocate through this module (and so are never tracked
/// at birth: `handle::untrack` need not untrack them).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// True when handles are allocated untracked (see the module docs).
#[inline]
pub fn born_untracked() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// `PyGC_Head`: two words in front of every GC object on GIL builds.
#[cfg(not(Py_GIL_DISABLED))]
const GC_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// `Py_TPFLAGS_MANAGED_DICT` and `Py_TPFLAGS_MANAGED_WEAKREF` (3.12+): either puts more
/// words in front of the object than the GC header.
#[cfg(not(Py_GIL_DISABLED))]
const PREHEADER_FLAGS: std::ffi::c_ulong = (1 << 4) | (1 << 3);

#[cfg(not(Py_GIL_DISABLED))]
unsafe extern "C" fn alloc(
    ty: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    debug_assert_eq!(nitems, 0, "handles are not variable-size");
    // SAFETY: CPython (or PyO3) calls tp_alloc with a live type object whose basic size
    // describes the instance. The block is zeroed, so the GC header reads as untracked,
    // and PyObject_Init sets the type (taking a reference to the heap type) and the
    // reference count, as PyType_GenericAlloc would.
    unsafe {
        let size = GC_HEADER + (*ty).tp_basicsize as usize;
        let mem = ffi::PyObject_Malloc(size) as *mut u8;
        if mem.is_null() {
            return ffi::PyErr_NoMemory();
        }
        std::ptr::write_bytes(mem, 0, size);
        let obj = mem.add(GC_HEADER) as *mut ffi::PyObject;
        ffi::PyObject_Init(obj, ty)
    }
}

#[cfg(not(Py_GIL_DISABLED))]
unsafe extern "C" fn free(obj: *mut std::ffi::c_void) {
    // SAFETY: `obj` came from `alloc` (only exact handle types use these slots) and was
    // untracked by the type's dealloc before being freed; the block starts one GC header
    // before it.
    unsafe { ffi::PyObject_Free((obj as *mut u8).sub(GC_HEADER).cast()) }
}

/// Installs the slots on both handle types if their layout is the one they assume;
/// otherwise leaves them with CPython's allocator.
pub fn install_all(types: &[Bound<'_, PyType>]) {
    if types.iter().all(layout_fits) {
        types.iter().for_each(install);
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

fn layout_fits(ty: &Bound<'_, PyType>) -> bool {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        let p = ty.as_type_ptr();
        // SAFETY: reading plain fields of a live type object.
        unsafe {
            let flags = (*p).tp_flags;
            flags & ffi::Py_TPFLAGS_HAVE_GC != 0
                && flags & PREHEADER_FLAGS == 0
                && (*p).tp_itemsize == 0
        }
    }
    #[cfg(Py_GIL_DISABLED)]
    {
        let _ = ty;
        false
    }
}

fn install(ty: &Bound<'_, PyType>) {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        let p = ty.as_type_ptr();
        // SAFETY: `p` is the live heap type PyO3 just created, before any instance
        // exists; tp_alloc/tp_free are plain fields of the full (non-limited) type
        // object, and PyType_Modified invalidates cached lookups.
        unsafe {
            (*p).tp_alloc = Some(alloc);
            (*p).tp_free = Some(free);
            ffi::PyType_Modified(p);
        }
    }
    #[cfg(Py_GIL_DISABLED)]
    let _ = ty;
}
