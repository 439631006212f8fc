//! Interior mutability for loop state that is only ever touched with the GIL held.
//!
//! The loop is a frozen pyclass shared between its own thread (running callbacks) and
//! any thread that calls `call_soon_threadsafe`; every such access holds the GIL, so the
//! GIL is the lock. What the GIL does not rule out is re-entrance: code run while the
//! state is borrowed (a `__del__` triggered by a drop, say) calling back into the loop.
//! [`GilCell::with`] detects that and panics (which PyO3 turns into a Python exception)
//! instead of handing out a second mutable reference.

use std::cell::{Cell, UnsafeCell};

use pyo3::{Bound, Python};

/// A value guarded by the GIL, lent out one closure at a time.
pub struct GilCell<T> {
    borrowed: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: every access goes through `with`, which requires a `Python` token (the GIL is
// held, and the module declares it needs the GIL, so there is no free-threaded access),
// and the `borrowed` flag, only read and written with the GIL held, rules out aliasing.
unsafe impl<T: Send> Sync for GilCell<T> {}

struct Release<'a>(&'a Cell<bool>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl<T> GilCell<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self {
            borrowed: Cell::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with exclusive access to the value.
    ///
    /// `f` must not run Python code: in particular it must hand Python objects it
    /// removes back to the caller rather than drop them, since a drop can run `__del__`.
    /// Re-entering the same cell panics.
    #[inline]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        if self.borrowed.replace(true) {
            panic!("oxio: loop state re-entered while borrowed");
        }
        let _release = Release(&self.borrowed);
        // SAFETY: the GIL is held (we have a `Python` token) and `borrowed` was false, so
        // no other reference to the value exists; `_release` clears the flag when `f`
        // returns or unwinds.
        f(unsafe { &mut *self.value.get() })
    }

    /// A new reference to an optional object held in the value (cloning a reference
    /// runs no Python code, so this is safe under the borrow).
    #[inline]
    pub fn bound<'py, O>(
        &self,
        py: Python<'py>,
        field: impl FnOnce(&T) -> &Option<pyo3::Py<O>>,
    ) -> Option<pyo3::Bound<'py, O>> {
        self.with(py, |v| field(v).as_ref().map(|p| p.bind(py).clone()))
    }
}

impl<T> GilCell<T> {
    /// The value, through exclusive access to the cell (no borrow can be live).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// Runs `f` on the value unless it is borrowed right now (then returns `None`).
    /// For the garbage collector's traversal, which may run in the middle of a borrow
    /// and must then report fewer references (a leak), never touch the value.
    pub fn try_peek<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.borrowed.replace(true) {
            return None;
        }
        let _release = Release(&self.borrowed);
        // SAFETY: the flag was clear and is now set, so no other reference exists;
        // callers hold the GIL (the collector runs with it).
        Some(f(unsafe { &mut *self.value.get() }))
    }
}

/// An optional Python reference that can be cleared while shared, guarded by the GIL.
///
/// Cheaper than a [`GilCell`] (no borrow flag: one pointer) because its operations
/// never hand out a reference into the slot: [`GilSlot::get`] returns a new strong
/// reference and [`GilSlot::take`] moves the value out, so no Python code can run while
/// the slot is being accessed, and whatever is removed is dropped by the caller.
pub struct GilSlot<T> {
    value: UnsafeCell<Option<pyo3::Py<T>>>,
}

// SAFETY: every access requires a `Python` token (the GIL is held; the module declares
// it needs the GIL) and completes without running Python code, so accesses never overlap.
unsafe impl<T> Sync for GilSlot<T> {}

impl<T> GilSlot<T> {
    /// A slot holding `value`.
    pub const fn new(value: pyo3::Py<T>) -> Self {
        Self {
            value: UnsafeCell::new(Some(value)),
        }
    }

    /// A new strong reference to the value, if the slot still holds one. It is a
    /// `Bound` because dropping a `Py` first asks a thread-local whether the thread is
    /// attached, which a handle's run paid once per reference it took.
    #[inline]
    pub fn get<'py>(&self, py: Python<'py>) -> Option<Bound<'py, T>> {
        // SAFETY: the GIL is held and clone only increments a reference count, so no
        // other access to the slot can happen while this shared reference exists.
        unsafe { (*self.value.get()).as_ref().map(|v| v.bind(py).clone()) }
    }

    /// Empties the slot, handing the value to the caller to drop.
    #[inline]
    pub fn take(&self, _py: Python<'_>) -> Option<pyo3::Py<T>> {
        // SAFETY: the GIL is held and moving the value out runs no Python code, so no
        // other access to the slot overlaps this one.
        unsafe { (*self.value.get()).take() }
    }
}

impl<T> GilSlot<T> {
    /// Reports the value to the garbage collector during `__traverse__`.
    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // SAFETY: traversal runs with the GIL held, inside the collector, which runs no
        // code that could access the slot concurrently; only a shared reference is taken
        // for the duration of the call.
        visit.call(unsafe { (*self.value.get()).as_ref() })
    }
}
