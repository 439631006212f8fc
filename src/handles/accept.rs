//! `Acceptor`: a listening socket's read callback. It accepts up to `backlog` pending
//! connections per readiness event, as asyncio's `_accept_connection` does, and starts a
//! stream transport for each; the cold error path (out of descriptors, and the rest)
//! goes back to Python, where asyncio's handling lives.

use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors;
use crate::event_loop::{os_error, Loop};
use crate::handles::stream::start_stream_transport;
use crate::py_refs;
use crate::sockaddr::sockaddr_to_py;

/// Accepts connections for one listening socket of a server. See the module docs.
#[pyclass(frozen, module = "oxio._oxio")]
pub struct Acceptor {
    lp: Py<Loop>,
    fd: RawFd,
    family: i32,
    sock_type: i32,
    proto: i32,
    protocol_factory: Py<PyAny>,
    server: Option<Py<PyAny>>,
    backlog: usize,
    /// The arguments asyncio's `_start_serving` got, for the error path.
    args: Py<PyTuple>,
}

impl Acceptor {
    /// One pending connection, or `None` when there is none (or it was aborted).
    fn accept_one(&self) -> std::io::Result<Option<(RawFd, libc::sockaddr_storage, u32)>> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        loop {
            // SAFETY: `storage` is a writable sockaddr_storage and `len` its size, as
            // accept4 requires; the returned descriptor is owned by the caller.
            let fd = unsafe {
                libc::accept4(
                    self.fd,
                    storage.as_mut_ptr().cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: zero-initialized and then written by the kernel.
                return Ok(Some((fd, unsafe { storage.assume_init() }, len)));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::ECONNABORTED) => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// Wraps an accepted descriptor in a `socket.socket` (non-blocking, as asyncio's
    /// accepted sockets are). On failure the descriptor is closed here.
    fn wrap(&self, py: Python<'_>, fd: RawFd) -> PyResult<Py<PyAny>> {
        match py_refs::socket_class(py)?.call1((
            self.family,
            self.sock_type | libc::SOCK_NONBLOCK,
            self.proto,
            fd,
        )) {
            Ok(s) => Ok(s.unbind()),
            Err(e) => {
                // SAFETY: the descriptor came from accept4 and no object owns it yet.
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    fn start_connection(
        &self,
        py: Python<'_>,
        fd: RawFd,
        conn: Py<PyAny>,
        peer: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let lp = self.lp.bind(py);
        let conn = conn.bind(py);
        if lp.get().is_debug() {
            py_refs::logger(py)?.call_method1(
                "debug",
                (
                    "%r got a new connection from %r: %r",
                    self.server.as_ref().map(|s| s.bind(py).clone()),
                    &peer,
                    conn,
                ),
            )?;
        }
        let protocol = match self.protocol_factory.bind(py).call0() {
            Ok(p) => p,
            Err(e) if errors::is_exit_exception(py, &e) => {
                conn.call_method0(intern!(py, "close"))?;
                return Err(e);
            }
            Err(e) => {
                conn.call_method0(intern!(py, "close"))?;
                lp.call_method1(
                    intern!(py, "_report_accept_error"),
                    (e.into_value(py), py.None(), py.None()),
                )?;
                return Ok(());
            }
        };
        let extra = PyDict::new(py);
        extra.set_item(intern!(py, "peername"), peer)?;
        let server = self.server.as_ref().map(|s| s.bind(py));
        let tcp = (self.family == libc::AF_INET || self.family == libc::AF_INET6)
            && self.sock_type == libc::SOCK_STREAM
            && self.proto == libc::IPPROTO_TCP;
        start_stream_transport(lp, conn, fd, tcp, &protocol, None, Some(&extra), server)?;
        Ok(())
    }
}

#[pymethods]
impl Acceptor {
    #[new]
    #[pyo3(signature = (lp, sock, protocol_factory, server, backlog, args))]
    fn new(
        lp: &Bound<'_, Loop>,
        sock: &Bound<'_, PyAny>,
        protocol_factory: Py<PyAny>,
        server: Option<Py<PyAny>>,
        backlog: usize,
        args: Py<PyTuple>,
    ) -> PyResult<Self> {
        let py = lp.py();
        Ok(Acceptor {
            lp: lp.clone().unbind(),
            fd: sock.call_method0(intern!(py, "fileno"))?.extract()?,
            family: sock.getattr(intern!(py, "family"))?.extract()?,
            sock_type: sock.getattr(intern!(py, "type"))?.extract()?,
            proto: sock.getattr(intern!(py, "proto"))?.extract()?,
            protocol_factory,
            server: server.filter(|s| !s.is_none(py)),
            backlog: backlog.max(1),
            args,
        })
    }

    /// The listening socket is readable: accept what is pending.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        for _ in 0..self.backlog {
            let (fd, addr, len) = match self.accept_one() {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let exc = os_error(e).into_value(py);
                    let lp = self.lp.bind(py);
                    let mut args = vec![exc.into_any().into_bound(py)];
                    args.extend(self.args.bind(py).iter());
                    lp.call_method1(intern!(py, "_accept_failed"), PyTuple::new(py, args)?)?;
                    return Ok(());
                }
            };
            let conn = self.wrap(py, fd)?;
            let peer = match sockaddr_to_py(py, &addr, len)? {
                Some(p) => p,
                None => conn
                    .bind(py)
                    .call_method0(intern!(py, "getpeername"))
                    .unwrap_or_else(|_| py.None().into_bound(py)),
            };
            self.start_connection(py, fd, conn, peer)?;
        }
        Ok(())
    }
}

/// Registers the acceptor on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Acceptor>()
}
