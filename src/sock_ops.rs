//! The hot half of `sock_recv`, `sock_recv_into` and `sock_sendall`: asyncio's checks,
//! the first attempt (which needs no exception when the socket would block), and, when
//! it must wait, a future completed by a descriptor watch.
//!
//! The Python methods (`oxio._sockets`) stay coroutines, as asyncio's are; they call
//! these and await the future only when one comes back.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use oxio_core::socket_io;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyMemoryView};

use crate::event_loop::{os_error, Loop};
use crate::fd_watch::{Side, Trigger};
use crate::gil_cell::GilCell;
use crate::handle::Handle;
use crate::handles::stream::recv_into_new_bytes;
use crate::py_buffer::with_buffer;

/// `ssl.SSLSocket`, or `None` without an `ssl` module.
fn ssl_socket_class(py: Python<'_>) -> Option<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();
    CELL.get_or_init(py, || {
        py.import("ssl")
            .and_then(|m| m.getattr("SSLSocket"))
            .ok()
            .map(Bound::unbind)
    })
    .as_ref()
    .map(|c| c.bind(py))
}

/// asyncio's checks: no `ssl.SSLSocket`, and in debug mode a non-blocking socket.
fn check_sock(lp: &Loop, sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = sock.py();
    if let Some(cls) = ssl_socket_class(py) {
        if sock.is_instance(cls)? {
            return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
        }
    }
    if lp.is_debug() {
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
        if timeout.is_none() || timeout.extract::<f64>()? != 0.0 {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
    }
    sock.call_method0(intern!(py, "fileno"))?.extract()
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

/// From this size up, `sock_recv` reads straight into a new `bytes` trimmed to size (as
/// `socket.recv` does) instead of copying out of the loop's buffer.
const DIRECT_RECV: usize = 64 * 1024;

/// Reads up to `n` bytes into an exactly sized `bytes`.
fn recv_bytes<'py>(
    lp: &Loop,
    py: Python<'py>,
    fd: RawFd,
    n: usize,
) -> PyResult<std::io::Result<Bound<'py, PyBytes>>> {
    let pending = if n >= DIRECT_RECV && lp.bulk_recv.load(Ordering::Relaxed) {
        socket_io::bytes_readable(fd).unwrap_or(0)
    } else {
        0
    };
    let result = if pending >= DIRECT_RECV {
        // Sized by the kernel's count: no over-allocation to trim, no copy.
        recv_into_new_bytes(py, fd, pending.min(n))?
            .map(|r| r.map_or_else(|| PyBytes::new(py, b""), |(b, _)| b))
    } else {
        lp.with_read_buf(py, |buf| {
            let n = n.min(buf.len());
            socket_io::recv(fd, &mut buf[..n]).map(|got| PyBytes::new(py, &buf[..got]))
        })
    };
    if let Ok(b) = &result {
        // Large reads predict large reads: the next one skips the copy.
        lp.bulk_recv
            .store(b.as_bytes().len() >= DIRECT_RECV, Ordering::Relaxed);
    }
    Ok(result)
}

/// Reads into a writable, contiguous Python buffer.
fn recv_into(fd: RawFd, buf: &PyBuffer<u8>) -> std::io::Result<usize> {
    // SAFETY: the buffer was checked writable and C-contiguous, and `buf` keeps it
    // exported (neither moved nor freed) for the duration of the call.
    unsafe { socket_io::recv_raw(fd, buf.buf_ptr() as *mut u8, buf.len_bytes()) }
}

/// A lasting export of `obj` as bytes, whatever its item format (`socket.recv_into`
/// and `socket.send` take any contiguous buffer), for an operation that must wait; it
/// also keeps a bytearray from being resized meanwhile, as asyncio's memoryview does.
fn lasting_byte_buffer(obj: &Bound<'_, PyAny>) -> PyResult<PyBuffer<u8>> {
    let py = obj.py();
    let bytes_view = PyMemoryView::from(obj)?.call_method1(intern!(py, "cast"), ("B",))?;
    PyBuffer::<u8>::get(&bytes_view)
}

/// What a waiting socket operation does when its descriptor is ready.
enum Op {
    /// Completes with `None` once the socket is readable, reading nothing.
    Readable,
    Recv(usize),
    RecvInto(PyBuffer<u8>),
    SendAll {
        data: PyBuffer<u8>,
        pos: usize,
    },
}

/// A socket operation waiting for readiness: the watch's callback and the future's
/// done callback (which removes the watch when the future is cancelled).
#[pyclass(frozen, module = "oxio._oxio")]
pub struct SockWaiter {
    lp: Py<Loop>,
    fut: Py<PyAny>,
    fd: RawFd,
    side: Side,
    op: GilCell<Option<Op>>,
    handle: GilCell<Option<Py<Handle>>>,
}

impl SockWaiter {
    fn start<'py>(
        lp: &Bound<'py, Loop>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        side: Side,
        op: Op,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = lp.py();
        lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
        let fut = lp.call_method0(intern!(py, "create_future"))?;
        let _ = sock;
        let waiter = Bound::new(
            py,
            SockWaiter {
                lp: lp.clone().unbind(),
                fut: fut.clone().unbind(),
                fd,
                side,
                op: GilCell::new(Some(op)),
                handle: GilCell::new(None),
            },
        )?;
        // Edge-triggered: the operation was just tried and would block, so the next
        // edge is the one to wait for; and its registration is parked afterwards.
        let handle = Loop::watch_internal(lp, fd, side, waiter.as_any(), None, Trigger::Edge)?;
        waiter.get().handle.with(py, |h| *h = Some(handle));
        fut.call_method1(
            intern!(py, "add_done_callback"),
            (waiter.getattr(intern!(py, "_done"))?,),
        )?;
        Ok(fut)
    }

    /// Tries the operation; `Some(result)` when finished (successfully or not).
    fn attempt<'py>(&self, py: Python<'py>) -> Option<PyResult<Bound<'py, PyAny>>> {
        let lp = self.lp.get();
        let outcome = self
            .op
            .with(py, |op| -> Option<PyResult<Bound<'py, PyAny>>> {
                match op.as_mut()? {
                    Op::Readable => Some(Ok(py.None().into_bound(py))),
                    Op::Recv(n) => match recv_bytes(lp, py, self.fd, *n) {
                        Err(e) => Some(Err(e)),
                        Ok(Ok(b)) => Some(Ok(b.into_any())),
                        Ok(Err(e)) if would_block(&e) => None,
                        Ok(Err(e)) => Some(Err(os_error(e))),
                    },
                    Op::RecvInto(buf) => match recv_into(self.fd, buf) {
                        Ok(n) => Some(
                            n.into_pyobject(py)
                                .map(|n| n.into_any())
                                .map_err(Into::into),
                        ),
                        Err(e) if would_block(&e) => None,
                        Err(e) => Some(Err(os_error(e))),
                    },
                    Op::SendAll { data, pos } => {
                        // SAFETY: `data` keeps the buffer exported, so the region stays
                        // valid and unchanged in size for the call.
                        let bytes = unsafe {
                            std::slice::from_raw_parts(
                                data.buf_ptr() as *const u8,
                                data.len_bytes(),
                            )
                        };
                        match socket_io::send(self.fd, &bytes[*pos..]) {
                            Ok(n) => {
                                *pos += n;
                                (*pos == bytes.len()).then(|| Ok(py.None().into_bound(py)))
                            }
                            Err(e) if would_block(&e) => None,
                            Err(e) => Some(Err(os_error(e))),
                        }
                    }
                }
            });
        if outcome.is_some() {
            let op = self.op.with(py, |op| op.take());
            drop(op);
        }
        outcome
    }

    fn unwatch(&self, py: Python<'_>) {
        let handle = self.handle.with(py, |h| h.take());
        if let Some(h) = handle {
            // A cancelled handle was replaced by someone else's watch: leave theirs.
            if !h.get().is_cancelled() {
                self.lp.get().unwatch_internal(py, self.fd, self.side);
            }
        }
    }
}

#[pymethods]
impl SockWaiter {
    /// The watch fired.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let fut = self.fut.bind(py);
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        match self.attempt(py) {
            None => Ok(()),
            Some(Ok(v)) => fut.call_method1(intern!(py, "set_result"), (v,)).map(drop),
            Some(Err(e)) => fut
                .call_method1(intern!(py, "set_exception"), (e.into_value(py),))
                .map(drop),
        }
    }

    /// The future is done (or cancelled): stop watching.
    fn _done(&self, py: Python<'_>, _fut: &Bound<'_, PyAny>) {
        self.unwatch(py);
        let op = self.op.with(py, |op| op.take());
        drop(op);
    }
}

/// `sock_recv`'s attempt: the data, or a future for it. A bulk receive (`n` of 64 KiB
/// or more) is only tried once the socket was reported `ready`; until then, and when it
/// would block, the future completes with `None` when the socket is readable, and the
/// caller (`oxio._sockets`) calls again with `ready` set.
#[pyfunction]
pub fn sock_recv<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
    ready: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let fd = check_sock(lp.get(), sock)?;
    let n: isize = n.extract()?;
    if n < 0 {
        return Err(PyValueError::new_err("negative buffersize in recv"));
    }
    let n = n as usize;
    if n < DIRECT_RECV {
        let attempt = recv_bytes(lp.get(), py, fd, n)?.map(Bound::into_any);
        return done_or_wait(lp, sock, fd, Side::Read, attempt, || Ok(Op::Recv(n)));
    }
    // A bulk receive waits for a poll to report the socket before reading, as uvloop
    // does for every receive: reading at once let one transfer loop receive and send
    // within a single task step while the others waited, and kept more 256 KiB `bytes`
    // alive at a time, so glibc's heap grew and was trimmed back over and over and the
    // fresh pages faulted in on every receive. It then reads in the receiving task's
    // own step, not when the poll reports it: the data is still in the CPU's cache for
    // whatever the task does next (sends it, in an echo), instead of the cache having
    // been filled meanwhile with every other ready socket's 256 KiB.
    if !ready {
        return SockWaiter::start(lp, sock, fd, Side::Read, Op::Readable);
    }
    let attempt = recv_bytes(lp.get(), py, fd, n)?.map(Bound::into_any);
    done_or_wait(lp, sock, fd, Side::Read, attempt, || Ok(Op::Readable))
}

/// A first attempt's outcome: its result, its error, or (when the socket would block)
/// a future that the operation `op` completes once the socket is ready.
fn done_or_wait<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    fd: RawFd,
    side: Side,
    attempt: std::io::Result<Bound<'py, PyAny>>,
    op: impl FnOnce() -> PyResult<Op>,
) -> PyResult<Bound<'py, PyAny>> {
    match attempt {
        Ok(result) => Ok(result),
        Err(e) if would_block(&e) => SockWaiter::start(lp, sock, fd, side, op()?),
        Err(e) => Err(os_error(e)),
    }
}

/// `sock_recv_into`'s attempt: the byte count, or a future for it. A bulk receive (a
/// buffer of 64 KiB or more) waits, reads and is retried as `sock_recv`'s does.
#[pyfunction]
pub fn sock_recv_into<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    buf: &Bound<'py, PyAny>,
    ready: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let fd = check_sock(lp.get(), sock)?;
    // The attempt exports the buffer on the stack (no heap allocation); only an
    // operation that must wait for data takes a lasting export.
    let (attempt, bulk) = with_buffer(buf, |view| {
        if view.readonly {
            return Err(PyTypeError::new_err("buffer is read-only"));
        }
        if !view.contiguous {
            return Err(PyValueError::new_err("buffer is not contiguous"));
        }
        let bulk = view.len >= DIRECT_RECV;
        if bulk && !ready {
            return Ok((None, bulk));
        }
        // SAFETY: the view is writable, contiguous and exported for `len` bytes for
        // the length of the call.
        Ok((
            Some(unsafe { socket_io::recv_raw(fd, view.ptr, view.len) }),
            bulk,
        ))
    })?;
    let Some(attempt) = attempt else {
        return SockWaiter::start(lp, sock, fd, Side::Read, Op::Readable);
    };
    let attempt = match attempt {
        Ok(n) => Ok(n.into_pyobject(py)?.into_any()),
        Err(e) => Err(e),
    };
    done_or_wait(lp, sock, fd, Side::Read, attempt, || {
        if bulk {
            Ok(Op::Readable)
        } else {
            lasting_byte_buffer(buf).map(Op::RecvInto)
        }
    })
}

/// `sock_sendall`'s first attempt: `None` when everything went, or a future.
#[pyfunction]
pub fn sock_sendall<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let fd = check_sock(lp.get(), sock)?;
    // The first attempt exports the buffer on the stack: a boxed export per call was a
    // heap allocation per send, and only a send that must wait needs one that lasts.
    let (sent, len) = with_buffer(data, |view| {
        let bytes = view
            .bytes()
            .ok_or_else(|| PyValueError::new_err("data is not contiguous"))?;
        match socket_io::send(fd, bytes) {
            Ok(n) => Ok((n, bytes.len())),
            Err(e) if would_block(&e) => Ok((0, bytes.len())),
            Err(e) => Err(os_error(e)),
        }
    })?;
    if sent == len {
        return Ok(py.None().into_bound(py));
    }
    let buffer = lasting_byte_buffer(data)?;
    SockWaiter::start(
        lp,
        sock,
        fd,
        Side::Write,
        Op::SendAll {
            data: buffer,
            pos: sent,
        },
    )
}

/// Registers the socket operations on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SockWaiter>()?;
    m.add_function(wrap_pyfunction!(sock_recv, m)?)?;
    m.add_function(wrap_pyfunction!(sock_recv_into, m)?)?;
    m.add_function(wrap_pyfunction!(sock_sendall, m)?)?;
    Ok(())
}
