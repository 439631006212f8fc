//! Hand-written `METH_FASTCALL | METH_KEYWORDS` entry points for the scheduling methods.
//!
//! `call_soon` is the call every Task step and every future callback goes through.
//! PyO3's generic argument parser (UTF-8 decoding and comparing every keyword name,
//! building the `*args` tuple through a general path) costs about as much as the rest
//! of scheduling; these entry points parse the one shape asyncio has, `(fixed...,
//! *args, context=None)`, directly from the vectorcall arguments. They still go through
//! PyO3's trampoline, so the GIL bookkeeping and panic-to-exception conversion are
//! PyO3's own.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::impl_::trampoline::get_trampoline_function;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::event_loop::Loop;
use crate::gil_cell::GilCell;
use crate::handle::CallArgs;

/// The arguments of a scheduling call: `fixed` leading positionals, then `*args`, then
/// the keyword-only `context`.
struct SchedulingArgs<'py, const N: usize> {
    fixed: [Bound<'py, PyAny>; N],
    rest: CallArgs<'py>,
    context: Option<Bound<'py, PyAny>>,
}

/// Parses `args[..nargs]` plus `kwnames` as `(fixed[0], ..., *rest, context=None)`,
/// raising the TypeError Python raises for the same mistake.
///
/// # Safety
/// `args` must point to `nargs` positional arguments followed by one value per name in
/// `kwnames` (NULL or a tuple of str), all live for the duration of the call, as
/// CPython's vectorcall protocol guarantees.
unsafe fn parse<'py, const N: usize>(
    py: Python<'py>,
    name: &str,
    params: [&str; N],
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<SchedulingArgs<'py, N>> {
    let nargs = nargs as usize;
    if nargs < N {
        let missing = &params[nargs..];
        let quoted: Vec<String> = missing.iter().map(|p| format!("'{p}'")).collect();
        return Err(PyTypeError::new_err(format!(
            "{name}() missing {} required positional argument{}: {}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            quoted.join(" and ")
        )));
    }
    // SAFETY: per the contract, `args[..nargs]` are live borrowed references.
    let positional = unsafe { std::slice::from_raw_parts(args, nargs) };
    let fixed: [Bound<'py, PyAny>; N] =
        std::array::from_fn(|i| unsafe { Bound::from_borrowed_ptr(py, positional[i]) });
    let rest = match nargs - N {
        0 => CallArgs::Tuple(PyTuple::empty(py)),
        // SAFETY: a live borrowed reference, per the contract.
        1 => CallArgs::One(unsafe { Bound::from_borrowed_ptr(py, positional[N]) }),
        // SAFETY: the items are live borrowed references; from_borrowed_ptr takes new
        // references for the tuple.
        _ => CallArgs::Tuple(PyTuple::new(
            py,
            positional[N..]
                .iter()
                .map(|&p| unsafe { Bound::from_borrowed_ptr(py, p) }),
        )?),
    };
    let mut context = None;
    if !kwnames.is_null() {
        // SAFETY: per the vectorcall protocol, a non-NULL kwnames is a tuple of str.
        let names =
            unsafe { Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>() };
        if is_context_only(&names) {
            // SAFETY: the keyword value follows the positionals.
            context = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs)) });
        } else {
            for (i, kw) in names.iter().enumerate() {
                if !is_context_name(&kw) {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{}'",
                        kw.str()?
                    )));
                }
                // SAFETY: keyword values follow the positionals, one per name.
                context = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs + i)) });
            }
        }
    }
    Ok(SchedulingArgs {
        fixed,
        rest,
        context,
    })
}

fn is_context_name(kw: &Bound<'_, PyAny>) -> bool {
    kw.as_ptr() == pyo3::intern!(kw.py(), "context").as_ptr()
        || kw
            .cast::<PyString>()
            .is_ok_and(|s| s.to_str().is_ok_and(|s| s == "context"))
}

/// The last keyword-name tuple found to be exactly `("context",)`. Callers pass the same
/// tuple every time (the C Task's is a module constant, a Python call site's lives in
/// its code object), so one pointer comparison usually settles it. The cache holds a
/// reference, so the address cannot be reused by another tuple while it is cached.
static CONTEXT_KWNAMES: GilCell<Option<Py<PyTuple>>> = GilCell::new(None);

fn is_context_only(names: &Bound<'_, PyTuple>) -> bool {
    let py = names.py();
    let hit = CONTEXT_KWNAMES.with(py, |c| {
        c.as_ref().is_some_and(|t| t.as_ptr() == names.as_ptr())
    });
    if hit {
        return true;
    }
    if names.len() != 1 || !names.get_item(0).is_ok_and(|kw| is_context_name(&kw)) {
        return false;
    }
    let old = CONTEXT_KWNAMES.with(py, |c| c.replace(names.clone().unbind()));
    drop(old);
    true
}

/// # Safety
/// `slf` must be a live instance of `Loop` (or a subclass).
unsafe fn this<'py>(py: Python<'py>, slf: *mut ffi::PyObject) -> Bound<'py, Loop> {
    // SAFETY: per the contract.
    unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Loop>() }
}

macro_rules! entry_point {
    ($fn_name:ident, $py_name:literal, [$($param:literal),*], |$slf:ident, $a:ident| $body:expr) => {
        /// # Safety
        /// Called by CPython with the vectorcall arguments of a method call.
        unsafe fn $fn_name(
            py: Python<'_>,
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> PyResult<*mut ffi::PyObject> {
            // SAFETY: CPython passes a live `self` and vectorcall arguments, and a method
            // descriptor checks that `self` is an instance of the type it belongs to
            // (`Loop`) before calling, whether called directly or through a bound method.
            let $slf = unsafe { this(py, slf) };
            let $a = unsafe { parse(py, $py_name, [$($param),*], args, nargs, kwnames)? };
            let result: PyResult<Bound<'_, PyAny>> = $body;
            Ok(result?.into_ptr())
        }
    };
}

entry_point!(call_soon, "call_soon", ["callback"], |slf, a| {
    let [callback] = a.fixed;
    Loop::call_soon_impl(&slf, &callback, a.rest, a.context).map(Bound::into_any)
});

entry_point!(
    call_soon_threadsafe,
    "call_soon_threadsafe",
    ["callback"],
    |slf, a| {
        let [callback] = a.fixed;
        Loop::call_soon_threadsafe_impl(&slf, &callback, a.rest, a.context).map(Bound::into_any)
    }
);

entry_point!(call_later, "call_later", ["delay", "callback"], |slf, a| {
    let [delay, callback] = a.fixed;
    Loop::call_later_impl(&slf, &delay, &callback, a.rest, a.context).map(Bound::into_any)
});

entry_point!(call_at, "call_at", ["when", "callback"], |slf, a| {
    let [when, callback] = a.fixed;
    Loop::call_at_impl(&slf, &when, &callback, a.rest, a.context).map(Bound::into_any)
});

/// Adds the entry points to the `Loop` type as ordinary method descriptors.
pub fn install(loop_type: &Bound<'_, PyType>) -> PyResult<()> {
    let methods: [(&'static std::ffi::CStr, ffi::PyCFunctionFastWithKeywords, &'static std::ffi::CStr); 4] = [
        (
            c"call_soon",
            get_trampoline_function!(fastcall_cfunction_with_keywords, call_soon),
            c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called in the next iteration.",
        ),
        (
            c"call_soon_threadsafe",
            get_trampoline_function!(fastcall_cfunction_with_keywords, call_soon_threadsafe),
            c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), but safe to call from another thread: wakes the loop.",
        ),
        (
            c"call_later",
            get_trampoline_function!(fastcall_cfunction_with_keywords, call_later),
            c"call_later($self, delay, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called after delay seconds.",
        ),
        (
            c"call_at",
            get_trampoline_function!(fastcall_cfunction_with_keywords, call_at),
            c"call_at($self, when, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called at loop time when.",
        ),
    ];
    for (name, meth, doc) in methods {
        add_method(loop_type, name, meth, doc)?;
    }
    Ok(())
}

/// Sets `ty.<name>` to a method descriptor of `ty` calling `meth` (METH_FASTCALL |
/// METH_KEYWORDS): what CPython's own types have, so calls through it are specialized.
pub fn add_method(
    ty: &Bound<'_, PyType>,
    name: &'static std::ffi::CStr,
    meth: ffi::PyCFunctionFastWithKeywords,
    doc: &'static std::ffi::CStr,
) -> PyResult<()> {
    // A method descriptor keeps a pointer to its PyMethodDef for as long as it lives,
    // which is as long as the type: the definitions are leaked on purpose, once per
    // method of a type made once per process.
    let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: meth,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr(),
    }));
    // SAFETY: the type pointer is a live type object and `def` outlives it; the result
    // is a new reference or NULL with an exception set.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(ty.py(), ffi::PyDescr_NewMethod(ty.as_ptr().cast(), def))?
    };
    ty.setattr(name.to_str().expect("ASCII method name"), descr)
}
