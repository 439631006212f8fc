//! Recycled `bytes` objects for small reads.
//!
//! A 1 KiB echo allocates a `bytes` for every read and frees it once the echo is
//! written: objects over pymalloc's 512-byte limit go to glibc's `malloc`, whose
//! large-bin path (with its fastbin consolidation) cost about 2.5% of the server's time.
//! When a written `bytes` comes back from a transport's write queue and nothing else
//! refers to it, it is as private as a fresh one; the next read reuses it instead of
//! the allocator.
//!
//! Reuse is only ever of an object whose reference count is one, held by the pool: no
//! other reference exists, so rewriting its contents, its size (downwards) and its
//! cached hash is invisible, as `_PyBytes_Resize` relies on too.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Smallest size kept: below it, CPython's own small-object allocator is already cheap.
const MIN_SIZE: usize = 480;
/// Largest size kept: larger reads go straight into a new `bytes` of their own.
const MAX_SIZE: usize = 16 * 1024;
/// Objects kept at most (so at most 512 KiB held).
const CAPACITY: usize = 32;

/// A LIFO stack of private `bytes` objects, each `MIN_SIZE..=MAX_SIZE` bytes long, and
/// one spare for bulk reads.
pub struct BytesPool {
    free: Vec<Py<PyBytes>>,
    /// The last bulk read's `bytes`, once its protocol let it go, with the size it was
    /// allocated for. A 64 KiB echo allocated and freed one per message through glibc's
    /// large bins: about 550 of its 2,740 user-space instructions per round trip.
    spare: Option<(Py<PyBytes>, usize)>,
    /// The last small read's `bytes`, once its protocol let it go (it wrote only slices
    /// of it, say): kept apart from `free`, where the flush that follows would bury it
    /// under written objects of other sizes before the next read.
    read_spare: Option<Py<PyBytes>>,
}

impl Default for BytesPool {
    fn default() -> Self {
        Self::new()
    }
}

impl BytesPool {
    /// An empty pool with room for `CAPACITY` objects (allocated once, here).
    pub fn new() -> Self {
        Self {
            free: Vec::with_capacity(CAPACITY),
            spare: None,
            read_spare: None,
        }
    }

    /// True when `b` can be kept: an exact `bytes` of a pooled size that nothing else
    /// refers to, with room left in the pool.
    pub fn accepts(&self, b: &Py<PyBytes>) -> bool {
        self.free.len() < CAPACITY && Self::private_and_pooled_size(b)
    }

    /// An exact `bytes` of a pooled size with no other reference.
    fn private_and_pooled_size(b: &Py<PyBytes>) -> bool {
        if cfg!(Py_GIL_DISABLED) {
            return false;
        }
        let p = b.as_ptr();
        // SAFETY: `p` is a live object (the caller owns a reference); reading its type,
        // reference count and size has no side effects.
        unsafe {
            ffi::PyBytes_CheckExact(p) != 0
                && ffi::Py_REFCNT(p) == 1
                && (MIN_SIZE..=MAX_SIZE).contains(&(ffi::Py_SIZE(p) as usize))
        }
    }

    /// Keeps `b`, which [`BytesPool::accepts`] approved, for reuse.
    pub fn keep(&mut self, b: Py<PyBytes>) {
        debug_assert!(self.accepts(&b));
        self.free.push(b);
    }

    /// Empties the pool (the loop is closing), handing its objects back for the caller
    /// to drop outside any borrow.
    pub fn take_all(&mut self) -> Vec<Py<PyBytes>> {
        let mut all = std::mem::take(&mut self.free);
        all.extend(self.spare.take().map(|(b, _)| b));
        all.extend(self.read_spare.take());
        all
    }

    /// Keeps `b`, a bulk read's `bytes` allocated for `cap` bytes, for the next bulk
    /// read if it is an exact `bytes` that nothing else refers to. Hands back what is
    /// not kept (`b`, or the spare it replaces) for the caller to drop outside the borrow.
    pub fn keep_bulk(&mut self, b: Bound<'_, PyBytes>, cap: usize) -> Option<Py<PyBytes>> {
        let p = b.as_ptr();
        // SAFETY: `p` is live (the caller owns a reference); reading its type and
        // reference count has no side effects.
        let private = unsafe { ffi::PyBytes_CheckExact(p) != 0 && ffi::Py_REFCNT(p) == 1 };
        if cfg!(Py_GIL_DISABLED) || !private {
            return Some(b.unbind());
        }
        self.spare.replace((b.unbind(), cap)).map(|(old, _)| old)
    }

    /// The spare bulk `bytes` and the size it was allocated for, when that is `want`
    /// bytes or at most an eighth more (a reused object never pins much more memory
    /// than a new one would). Its contents are stale and its size is whatever it was.
    pub fn take_bulk(&mut self, want: usize) -> Option<(Py<PyBytes>, usize)> {
        match &self.spare {
            Some((_, cap)) if want <= *cap && *cap - want <= want / 8 => self.spare.take(),
            _ => None,
        }
    }

    /// True when the kept object `b` can hold `n` bytes and is at most twice that, so a
    /// reused object never pins much more memory than a new one would.
    fn fits(b: &Py<PyBytes>, n: usize) -> bool {
        // SAFETY: kept objects are live exact `bytes`; reading the size is harmless.
        let cap = unsafe { ffi::Py_SIZE(b.as_ptr()) } as usize;
        n <= cap && cap <= 2 * n
    }

    /// A kept object that [fits](BytesPool::fits) `expected` bytes, for a read to land
    /// in directly: the read spare, else the newest of `free`. It is private, with
    /// `Py_SIZE(b) + 1` writable bytes at `ob_sval` (its size and the NUL every `bytes`
    /// has room for); [`set_len`] makes it the data read.
    pub fn take_for_read(&mut self, expected: usize) -> Option<Py<PyBytes>> {
        if self
            .read_spare
            .as_ref()
            .is_some_and(|b| Self::fits(b, expected))
        {
            return self.read_spare.take();
        }
        if self.free.last().is_some_and(|b| Self::fits(b, expected)) {
            return self.free.pop();
        }
        None
    }

    /// Keeps `b`, a small read's `bytes` its protocol has returned from, as the read
    /// spare if it is private and of a pooled size. Hands back what is not kept (`b`, or
    /// the spare it replaces) for the caller to drop outside the borrow.
    pub fn keep_read(&mut self, b: Bound<'_, PyBytes>) -> Option<Py<PyBytes>> {
        if !Self::private_and_pooled_size(b.as_unbound()) {
            return Some(b.unbind());
        }
        self.read_spare.replace(b.unbind())
    }

    /// A `bytes` holding a copy of `data`: the most recently kept object of `free` when
    /// it [fits](BytesPool::fits) `data`, or else a new one.
    pub fn bytes_from<'py>(&mut self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        let n = data.len();
        if !self.free.last().is_some_and(|b| Self::fits(b, n)) {
            return PyBytes::new(py, data);
        }
        let b = self.free.pop().expect("checked non-empty").into_bound(py);
        let obj = b.as_ptr().cast::<ffi::PyBytesObject>();
        // SAFETY: the object has a reference count of one (checked by `keep`, and only
        // the pool held it since), so nothing can observe it while it is rewritten. Its
        // allocation holds at least its current size, and `n` is no larger, so the copy
        // stays inside it.
        unsafe {
            let sval = std::ptr::addr_of_mut!((*obj).ob_sval).cast::<u8>();
            std::ptr::copy_nonoverlapping(data.as_ptr(), sval, n);
            set_len(b.as_ptr(), n);
        }
        b
    }
}

/// Sets an unshared `bytes` object's size to `n`, no more than the size it was allocated
/// for, where it stands: the trailing NUL moves to `n` and the cached hash is reset, as
/// for any new `bytes`. The allocation keeps its size, which bytes deallocation (sized
/// by the allocator, not by `ob_size`) does not mind.
///
/// # Safety
/// `obj` must be a `bytes` object allocated for at least `n` bytes, with no other
/// reference to it.
pub unsafe fn set_len(obj: *mut ffi::PyObject, n: usize) {
    let obj = obj.cast::<ffi::PyBytesObject>();
    // SAFETY: the caller guarantees an unshared bytes object allocated for at least `n`
    // bytes (plus the NUL every bytes object has room for), so byte `n` lies inside it.
    unsafe {
        *std::ptr::addr_of_mut!((*obj).ob_sval).cast::<u8>().add(n) = 0;
        (*obj).ob_base.ob_size = n as ffi::Py_ssize_t;
        #[allow(deprecated)]
        {
            (*obj).ob_shash = -1;
        }
    }
}
