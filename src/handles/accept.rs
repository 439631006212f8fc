//! `Acceptor`: a listening socket's read callback. It accepts one pending connection
//! per readiness report and starts a stream transport for it; the cold error path (out
//! of descriptors, and the rest) goes back to Python, where asyncio's handling lives.
//!
//! It watches the socket level-triggered, so every poll reports the socket while
//! connections are queued, and takes one per report. asyncio instead accepts until
//! `accept` fails with `EAGAIN` (up to `backlog` per report), and that last call is no
//! cheap probe: the kernel allocates the new socket's inode and file before it looks at
//! the queue, and frees them again. In the connection-rate benchmark, where reports
//! found 1.3 connections on average, that call was 0.75 of the 1.75 `accept4` calls per
//! connection, and dropping it took the server's CPU time per connection from 20.8 µs
//! to 18.9 µs (uvloop, which also takes one per report: 19.5 µs; `benchmarks/ab.py
//! --connrate`). A burst of connections costs one loop pass each instead, and the
//! passes serve the other descriptors in between.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use oxio_core::socket_io;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors;
use crate::event_loop::{os_error, Loop};
use crate::fd_watch::{Side, Trigger};
use crate::handles::stream::{start_stream_transport, Conn, SockKind};
use crate::py_refs;
use crate::sockaddr::sockaddr_to_py;

/// Accepts connections for one listening socket of a server. See the module docs.
#[pyclass(frozen, module = "oxio._oxio")]
pub struct Acceptor {
    lp: Py<Loop>,
    fd: RawFd,
    /// The listening socket's kind, which its connections share.
    kind: SockKind,
    protocol_factory: Py<PyAny>,
    server: Option<Py<PyAny>>,
    /// The arguments asyncio's `_start_serving` got, for the error path.
    args: Py<PyTuple>,
}

impl Acceptor {
    /// One pending connection, or `None` when there is none (or it was aborted).
    fn accept_one(&self) -> std::io::Result<Option<(OwnedFd, libc::sockaddr_storage, u32)>> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        loop {
            // SAFETY: `storage` is a writable sockaddr_storage and `len` its size, as
            // accept4 requires.
            let accepted = unsafe {
                socket_io::accept4(
                    self.fd,
                    storage.as_mut_ptr().cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            let e = match accepted {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    // SAFETY: zero-initialized and then written by the kernel.
                    return Ok(Some((fd, unsafe { storage.assume_init() }, len)));
                }
                Err(e) => e,
            };
            match e.raw_os_error() {
                // A connection reset while queued is skipped for the one behind it.
                Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// Wraps an accepted descriptor in a `socket.socket` (non-blocking, as asyncio's
    /// accepted sockets are), which then owns it. On failure the descriptor is closed.
    fn wrap<'py>(&self, py: Python<'py>, fd: OwnedFd) -> PyResult<Bound<'py, PyAny>> {
        let sock = py_refs::socket_class(py)?.call1((
            self.kind.family,
            self.kind.sock_type | libc::SOCK_NONBLOCK,
            self.kind.proto,
            fd.as_raw_fd(),
        ))?;
        let _owned_by_sock = fd.into_raw_fd();
        Ok(sock)
    }

    fn start_connection(
        &self,
        py: Python<'_>,
        conn: Conn<'_, '_>,
        peer: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let lp = self.lp.bind(py);
        if lp.get().is_debug() {
            let shown = match &conn {
                Conn::Socket(sock, _) => (*sock).clone(),
                Conn::Fd(fd) => fd.as_raw_fd().into_pyobject(py)?.into_any(),
            };
            py_refs::logger(py)?.call_method1(
                "debug",
                (
                    "%r got a new connection from %r: %r",
                    self.server.as_ref().map(|s| s.bind(py).clone()),
                    &peer,
                    shown,
                ),
            )?;
        }
        let protocol = match self.protocol_factory.bind(py).call0() {
            Ok(p) => p,
            Err(e) => {
                if let Conn::Socket(sock, _) = &conn {
                    sock.call_method0(intern!(py, "close"))?;
                }
                // A bare descriptor closes as `conn` drops.
                drop(conn);
                if errors::is_exit_exception(py, &e) {
                    return Err(e);
                }
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
        start_stream_transport(lp, conn, self.kind, &protocol, None, Some(&extra), server)?;
        Ok(())
    }
}

#[pymethods]
impl Acceptor {
    #[new]
    #[pyo3(signature = (lp, sock, protocol_factory, server, args))]
    fn new(
        lp: &Bound<'_, Loop>,
        sock: &Bound<'_, PyAny>,
        protocol_factory: Py<PyAny>,
        server: Option<Py<PyAny>>,
        args: Py<PyTuple>,
    ) -> PyResult<Self> {
        let py = lp.py();
        Ok(Acceptor {
            lp: lp.clone().unbind(),
            fd: sock.call_method0(intern!(py, "fileno"))?.extract()?,
            kind: SockKind::of(sock)?,
            protocol_factory,
            server: server.filter(|s| !s.is_none(py)),
            args,
        })
    }

    /// Starts watching the listening socket (level-triggered; see the module docs).
    fn start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        Loop::watch_internal(
            this.lp.bind(slf.py()),
            this.fd,
            Side::Read,
            slf.as_any(),
            None,
            Trigger::Level,
        )
        .map(drop)
    }

    /// The listening socket is readable: accept a connection, if one is pending.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
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
        match sockaddr_to_py(py, &addr, len)? {
            Some(peer) => self.start_connection(py, Conn::Fd(fd), peer),
            None => {
                // A family not decoded here: the socket object knows its peer.
                let raw = fd.as_raw_fd();
                let sock = self.wrap(py, fd)?;
                let peer = sock
                    .call_method0(intern!(py, "getpeername"))
                    .unwrap_or_else(|_| py.None().into_bound(py));
                self.start_connection(py, Conn::Socket(&sock, raw), peer)
            }
        }
    }
}

/// Registers the acceptor on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Acceptor>()
}
