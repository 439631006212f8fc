//! Python objects the loop looks up once per process: asyncio's classes and helpers,
//! interned names. Looking them up on every call would cost a dict lookup each time.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyAny;

macro_rules! cached_attr {
    ($(#[$doc:meta])* $name:ident, $module:literal, $attr:literal) => {
        $(#[$doc])*
        pub fn $name(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
            static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            CELL.get_or_try_init(py, || {
                py.import($module)?.getattr($attr).map(Bound::unbind)
            })
            .map(|v| v.bind(py))
        }
    };
}

cached_attr!(
    /// `asyncio.Future`, the class `create_future` instantiates.
    future_class, "asyncio", "Future");
cached_attr!(
    /// `asyncio.Task`, the class `create_task` instantiates without a factory.
    task_class, "asyncio", "Task");
cached_attr!(
    /// `asyncio.futures.isfuture`.
    isfuture, "asyncio.futures", "isfuture");
cached_attr!(
    /// `asyncio.tasks.ensure_future`.
    ensure_future, "asyncio.tasks", "ensure_future");
cached_attr!(
    /// `asyncio.futures.wrap_future`.
    wrap_future, "asyncio.futures", "wrap_future");
cached_attr!(
    /// `asyncio.futures._get_loop`.
    future_get_loop, "asyncio.futures", "_get_loop");
cached_attr!(
    /// `asyncio.events._get_running_loop`.
    get_running_loop, "asyncio.events", "_get_running_loop");
cached_attr!(
    /// `asyncio.events._set_running_loop`.
    set_running_loop, "asyncio.events", "_set_running_loop");
cached_attr!(
    /// `asyncio.tasks._set_task_name`.
    set_task_name, "asyncio.tasks", "_set_task_name");
cached_attr!(
    /// `asyncio.coroutines.iscoroutine`.
    iscoroutine, "asyncio.coroutines", "iscoroutine");
cached_attr!(
    /// `asyncio.coroutines.iscoroutinefunction`.
    iscoroutinefunction, "asyncio.coroutines", "iscoroutinefunction");
cached_attr!(
    /// `asyncio.coroutines._is_debug_mode`.
    is_debug_mode, "asyncio.coroutines", "_is_debug_mode");
cached_attr!(
    /// `asyncio.format_helpers._format_callback_source`.
    format_callback_source, "asyncio.format_helpers", "_format_callback_source");
cached_attr!(
    /// `asyncio.format_helpers.extract_stack`.
    extract_stack, "asyncio.format_helpers", "extract_stack");
cached_attr!(
    /// The `asyncio.base_events` module, whose `logger` the loop logs through.
    base_events, "asyncio", "base_events");

cached_attr!(
    /// `_socket.socket`, the C type under `socket.socket`.
    socket_base_class, "_socket", "socket");

/// `object.__new__`, which makes an instance of a class without running its `__init__`.
pub fn object_new(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        py.import("builtins")?
            .getattr("object")?
            .getattr("__new__")
            .map(Bound::unbind)
    })
    .map(|v| v.bind(py))
}

/// asyncio's logger, looked up on every use as `asyncio.base_events.logger`: code (and
/// CPython's own tests) patch that name to observe what the loop logs.
pub fn logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    base_events(py)?.getattr(pyo3::intern!(py, "logger"))
}
cached_attr!(
    /// `concurrent.futures.ThreadPoolExecutor`.
    thread_pool_executor, "concurrent.futures", "ThreadPoolExecutor");
cached_attr!(
    /// `sys.get_asyncgen_hooks`.
    get_asyncgen_hooks, "sys", "get_asyncgen_hooks");
cached_attr!(
    /// `sys.set_asyncgen_hooks`.
    set_asyncgen_hooks, "sys", "set_asyncgen_hooks");
cached_attr!(
    /// `sys.set_coroutine_origin_tracking_depth`.
    set_coro_tracking_depth, "sys", "set_coroutine_origin_tracking_depth");
cached_attr!(
    /// `weakref.WeakSet`, which tracks live async generators.
    weak_set, "weakref", "WeakSet");
cached_attr!(
    /// `traceback.format_list`.
    format_list, "traceback", "format_list");

cached_attr!(
    /// `oxio._transports.SocketTransport`, the transport class protocols see.
    proxy_class, "oxio._transports", "SocketTransport");
cached_attr!(
    /// `asyncio.trsock.TransportSocket`, what `get_extra_info("socket")` returns.
    transport_socket_class, "asyncio.trsock", "TransportSocket");
cached_attr!(
    /// `asyncio.BufferedProtocol`.
    buffered_protocol_class, "asyncio", "BufferedProtocol");
cached_attr!(
    /// `asyncio.futures._set_result_unless_cancelled`.
    set_result_unless_cancelled, "asyncio.futures", "_set_result_unless_cancelled");
cached_attr!(
    /// `socket.socket`, what accepted connections are wrapped in.
    socket_class, "socket", "socket");

/// Imports `oxio._coroutines` and returns the named coroutine function.
pub fn coroutine_helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("oxio._coroutines")?.getattr(name)
}

cached_attr!(
    /// `sys._getframe`.
    getframe, "sys", "_getframe");
cached_attr!(
    /// `warnings.warn`.
    warn, "warnings", "warn");

/// A tuple of interned keyword names, built once, for vectorcalls with keywords.
macro_rules! kwnames {
    ($(#[$doc:meta])* $name:ident, [$($kw:literal),+]) => {
        $(#[$doc])*
        pub fn $name(py: Python<'_>) -> &Bound<'_, pyo3::types::PyTuple> {
            static CELL: PyOnceLock<Py<pyo3::types::PyTuple>> = PyOnceLock::new();
            CELL.get_or_init(py, || {
                pyo3::types::PyTuple::new(py, [$(pyo3::types::PyString::intern(py, $kw)),+])
                    .expect("a tuple of interned names")
                    .unbind()
            })
            .bind(py)
        }
    };
}

kwnames!(
    /// `("loop",)`
    kw_loop, ["loop"]);
kwnames!(
    /// `("loop", "name")`
    kw_loop_name, ["loop", "name"]);
kwnames!(
    /// `("loop", "context")`
    kw_loop_context, ["loop", "context"]);
kwnames!(
    /// `("loop", "name", "context")`
    kw_loop_name_context, ["loop", "name", "context"]);

/// Calls `callable(*args[..n], **dict(zip(kwnames, args[n..])))` by vectorcall, where
/// `n = args.len() - kwnames.len()`: no argument tuple or keyword dict is built.
pub fn vectorcall<'py>(
    callable: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
    kwnames: Option<&Bound<'py, pyo3::types::PyTuple>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let mut ptrs: [*mut pyo3::ffi::PyObject; 8] = [std::ptr::null_mut(); 8];
    assert!(args.len() <= ptrs.len(), "vectorcall: too many arguments");
    for (slot, a) in ptrs.iter_mut().zip(args) {
        *slot = a.as_ptr();
    }
    let nkw = kwnames.map_or(0, |k| k.len());
    let npos = args.len() - nkw;
    let kw = kwnames.map_or(std::ptr::null_mut(), |k| k.as_ptr());
    // SAFETY: `ptrs[..args.len()]` are borrowed pointers to live objects kept alive by
    // `args` for the duration of the call; `kw` is NULL or a tuple of `nkw` strings
    // naming the trailing arguments. The result is a new reference or NULL with an
    // exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyObject_Vectorcall(callable.as_ptr(), ptrs.as_ptr(), npos, kw),
        )
    }
}

cached_attr!(
    /// `ssl.SSLWantReadError`: the TLS engine needs more bytes from the peer.
    ssl_want_read_error, "ssl", "SSLWantReadError");
cached_attr!(
    /// `ssl.SSLSyscallError`, which asyncio treats like a want-read.
    ssl_syscall_error, "ssl", "SSLSyscallError");
cached_attr!(
    /// `ssl.SSLError`.
    ssl_error, "ssl", "SSLError");
cached_attr!(
    /// `ssl.CertificateError` (`SSLCertVerificationError`).
    ssl_certificate_error, "ssl", "CertificateError");
cached_attr!(
    /// `asyncio.CancelledError`.
    cancelled_error, "asyncio", "CancelledError");
