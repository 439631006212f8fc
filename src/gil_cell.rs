//! Interior mutability for loop state that is only ever touched with the GIL held.
//!
//! The loop is a frozen pyclass shared between its own thread (running callbacks) and
//! any thread that calls `call_soon_threadsafe`; every such access holds the GIL, so the
//! GIL is the lock. What the GIL does not rule out is re-entrance: code run while the
//! state is borrowed (a `__del__` triggered by a drop, say) calling back into the loop.
//! [`GilCell::with`] detects that and panics (which PyO3 turns into a Python exception)
//! instead of handing out a second mutable reference.

use std::cell::{Cell, UnsafeCell};

use pyo3::Python;

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
}
