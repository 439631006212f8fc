//! The bridge to blocking code and the loop's async-generator bookkeeping: the default
//! executor, `run_in_executor`, and the shutdown coroutines `asyncio.run()` awaits.
//!
//! The two shutdown methods do their bookkeeping here, at call time, and return a
//! coroutine from `oxio._coroutines` that does the waiting.

use pyo3::exceptions::{PyResourceWarning, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::event_loop::Loop;
use crate::py_refs;

fn default_executor<'py>(slf: &Bound<'py, Loop>) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let this = slf.get();
    let (existing, shutdown) = this.state.with(py, |s| {
        (
            s.default_executor.as_ref().map(|e| e.clone_ref(py)),
            s.executor_shutdown_called,
        )
    });
    if shutdown {
        return Err(PyRuntimeError::new_err("Executor shutdown has been called"));
    }
    if let Some(e) = existing {
        return Ok(e.into_bound(py));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("thread_name_prefix", "asyncio")?;
    let created = py_refs::thread_pool_executor(py)?.call((), Some(&kwargs))?;
    let stored = created.clone().unbind();
    let old = this.state.with(py, |s| s.default_executor.replace(stored));
    drop(old);
    Ok(created)
}

pub fn run_in_executor<'py>(
    slf: &Bound<'py, Loop>,
    executor: &Bound<'py, PyAny>,
    func: &Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let this = slf.get();
    this.check_closed()?;
    if this.is_debug() {
        crate::callback_check::check_callback(&this.code_cache, func, "run_in_executor", true)?;
    }
    let executor = if executor.is_none() {
        default_executor(slf)?
    } else {
        executor.clone()
    };
    let mut submit_args = Vec::with_capacity(args.len() + 1);
    submit_args.push(func.clone());
    submit_args.extend(args.iter());
    let cf = executor.call_method1("submit", PyTuple::new(py, submit_args)?)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("loop", slf)?;
    py_refs::wrap_future(py)?.call((cf,), Some(&kwargs))
}

pub fn set_default_executor(slf: &Bound<'_, Loop>, executor: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    if !executor.is_instance(py_refs::thread_pool_executor(py)?)? {
        return Err(PyTypeError::new_err(
            "executor must be ThreadPoolExecutor instance",
        ));
    }
    let new = executor.clone().unbind();
    let old = slf
        .get()
        .state
        .with(py, |s| s.default_executor.replace(new));
    drop(old);
    Ok(())
}

pub fn shutdown_default_executor<'py>(
    slf: &Bound<'py, Loop>,
    timeout: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let executor = slf.get().state.with(py, |s| {
        s.executor_shutdown_called = true;
        s.default_executor.as_ref().map(|e| e.clone_ref(py))
    });
    py_refs::coroutine_helper(py, "shutdown_executor")?.call1((slf, executor, timeout))
}

fn asyncgens<'py>(slf: &Bound<'py, Loop>) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let this = slf.get();
    if let Some(set) = this
        .state
        .with(py, |s| s.asyncgens.as_ref().map(|a| a.clone_ref(py)))
    {
        return Ok(set.into_bound(py));
    }
    let set = py_refs::weak_set(py)?.call0()?;
    let stored = set.clone().unbind();
    let old = this.state.with(py, |s| s.asyncgens.replace(stored));
    drop(old);
    Ok(set)
}

pub fn shutdown_asyncgens<'py>(slf: &Bound<'py, Loop>) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    slf.get()
        .state
        .with(py, |s| s.asyncgens_shutdown_called = true);
    let set = asyncgens(slf)?;
    let agens = PyList::new(py, set.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
    set.call_method0("clear")?;
    py_refs::coroutine_helper(py, "close_asyncgens")?.call1((slf, agens))
}

pub fn asyncgen_firstiter(slf: &Bound<'_, Loop>, agen: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    if slf.get().state.with(py, |s| s.asyncgens_shutdown_called) {
        let kwargs = PyDict::new(py);
        kwargs.set_item("source", slf)?;
        py_refs::warn(py)?.call(
            (
                format!(
                    "asynchronous generator {} was scheduled after loop.shutdown_asyncgens() call",
                    agen.repr()?
                ),
                py.get_type::<PyResourceWarning>(),
            ),
            Some(&kwargs),
        )?;
    }
    asyncgens(slf)?.call_method1("add", (agen,))?;
    Ok(())
}

pub fn asyncgen_finalizer(slf: &Bound<'_, Loop>, agen: &Bound<'_, PyAny>) -> PyResult<()> {
    asyncgens(slf)?.call_method1("discard", (agen,))?;
    if !slf.get().is_closed_flag() {
        let create_task = slf.getattr("create_task")?;
        let aclose = agen.call_method0("aclose")?;
        slf.call_method1("call_soon_threadsafe", (create_task, aclose))?;
    }
    Ok(())
}
