//! `StreamTransport`: a connected TCP or Unix stream socket driving an asyncio
//! `Protocol` or `BufferedProtocol`, with asyncio's `_SelectorSocketTransport` semantics.
//!
//! The transport is the engine behind the Python-visible `oxio._transports
//! .SocketTransport` (a subclass of `asyncio.Transport`, which a Rust class cannot be):
//! the protocol sees that object, whose methods are this one's.
//!
//! Hot path: a read lands in the loop's read buffer and is copied once into an exactly
//! sized `bytes` (or goes straight into the `BufferedProtocol`'s buffer); writes are
//! queued and leave in one vectored write when the loop flushes before polling, or at
//! once when the queue passes the high-water mark or the loop is not running.

use std::os::fd::{IntoRawFd, OwnedFd, RawFd};

use oxio_core::{socket_io, Flushed, WriteQueue};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::errors;
use crate::event_loop::{os_error, Loop};
use crate::fd_watch::{Side, Trigger};
use crate::gil_cell::GilCell;
use crate::handle::NativeCall;
use crate::handles::tls::TlsProtocol;
use crate::py_buffer::with_buffer;
use crate::py_refs;
use crate::sockaddr::{self, RawAddr};

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// A queue this long is written at once rather than at the end of the iteration: the
/// system call is amortized over that much data anyway, and freeing large buffers
/// promptly keeps the allocator from returning memory to the kernel and faulting it
/// back in (measured: 10 page faults per 64 KiB echo otherwise).
const FLUSH_NOW_BYTES: usize = 16 * 1024;
/// Most bytes one read of a plain `Protocol`'s transport takes: about asyncio's
/// `max_size` (256 KiB), but not a power of two. An echo writes what it read, and
/// loopback TCP cuts a write into 65,482-byte segments: 256 KiB left a 216-byte segment
/// at the end of every write, one more packet and wake-up of the peer for almost no
/// data. 250 KiB (uvloop's size) ends in a 59,554-byte segment; a 1 MiB Protocol echo
/// went from 2,521-3,742 to 3,228-3,518 requests/s (five interleaved runs each).
const MAX_READ: usize = 250 * 1024;
/// A read this large predicts another: the next goes straight into its own `bytes`.
const BULK_READ: usize = 16 * 1024;
/// Full bulk reads taken per readiness event before yielding to other descriptors. One
/// read per event left a 1 MiB Protocol echo at 0.84x uvloop (which, through libuv,
/// reads up to 32 times); four brought it to 1.01x in interleaved runs. Eight take a
/// whole 1 MiB message in one event now that a read is 250 KiB (five reads): with four,
/// its last 24 KiB waited for a re-arm and another poll (3,452-3,860 requests/s against
/// 3,510-4,556 with eight, four interleaved runs each).
const BULK_READS_PER_EVENT: usize = 8;
/// asyncio's default high-water mark for writes.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// One queued write: an immutable `bytes` kept by reference, or a private copy of
/// mutable data (`bytearray`, `memoryview`) that the caller may change after `write()`.
pub(crate) enum Chunk {
    Bytes(Py<PyBytes>),
    Owned(Box<[u8]>),
}

impl AsRef<[u8]> for Chunk {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => {
                // Read from the object's layout (what CPython's PyBytes_AS_STRING and
                // Py_SIZE macros do) rather than through two exported calls: building a
                // write's iovecs does this per chunk.
                let obj = b.as_ptr().cast::<pyo3::ffi::PyBytesObject>();
                // SAFETY: `obj` is an exact or subclassed `bytes`, which share this
                // layout; it is immutable and lives while we hold a reference to it,
                // and every queue operation runs with the GIL held.
                unsafe {
                    std::slice::from_raw_parts(
                        std::ptr::addr_of!((*obj).ob_sval).cast::<u8>(),
                        (*obj).ob_base.ob_size as usize,
                    )
                }
            }
            Chunk::Owned(v) => v,
        }
    }
}

extern "C" {
    // CPython's public (non-limited) C API: shrinks a `bytes` nobody else has seen.
    fn _PyBytes_Resize(bytes: *mut *mut pyo3::ffi::PyObject, size: pyo3::ffi::Py_ssize_t) -> i32;
}

/// What one read produced: the data, and whether it filled the buffer.
pub(crate) type ReadBytes<'py> = (Bound<'py, PyBytes>, bool);

/// A read's data and the size its `bytes` is allocated for.
type SizedBytes<'py> = (Bound<'py, PyBytes>, usize);

/// True when [`bytes_resize`] shrinks a `bytes` of `len` bytes to `size` in place: a
/// read short by at most an eighth.
fn resize_in_place(len: usize, size: usize) -> bool {
    len - size <= len / 8
}

/// Shrinks a new `bytes` that a read did not fill to `size` bytes, as `_PyBytes_Resize`
/// does (same contract and result), except that a read short by at most an eighth keeps
/// its allocation and only has its size set: a 64 KiB echo reads 64 KiB + 1 to learn
/// whether more is waiting, and the `realloc` giving that byte back was 0.4% of its time.
///
/// # Safety
/// `obj` must be the only reference to a bytes object that has not been shared, and
/// `size` no larger than its size.
pub(crate) unsafe fn bytes_resize(obj: &mut *mut pyo3::ffi::PyObject, size: usize) -> i32 {
    // SAFETY: `obj` is a live bytes object (the caller's contract).
    let len = unsafe { pyo3::ffi::Py_SIZE(*obj) } as usize;
    if resize_in_place(len, size) {
        // SAFETY: unshared, and `size` is no larger than its size.
        unsafe { crate::bytes_pool::set_len(*obj, size) };
        return 0;
    }
    // SAFETY: the caller upholds _PyBytes_Resize's contract.
    unsafe { _PyBytes_Resize(obj, size as pyo3::ffi::Py_ssize_t) }
}

/// Reads up to `max` bytes straight into a new `bytes`, trimmed to what
/// arrived: no copy through the loop's buffer, which matters for bulk transfers. `None`
/// is end of file; the flag says whether the read filled the buffer.
pub(crate) fn recv_into_new_bytes(
    py: Python<'_>,
    fd: RawFd,
    max: usize,
) -> PyResult<std::io::Result<Option<ReadBytes<'_>>>> {
    let read = recv_into_bytes(py, fd, max, None)?;
    Ok(read.map(|r| {
        r.map(|(b, _)| {
            let full = b.as_bytes().len() == max;
            (b, full)
        })
    }))
}

/// [`recv_into_new_bytes`] into `reuse` when given (a private `bytes` and the size it was
/// allocated for, at least `max`) instead of a new object; with the data, the size its
/// `bytes` is now allocated for.
fn recv_into_bytes(
    py: Python<'_>,
    fd: RawFd,
    max: usize,
    reuse: Option<(Py<PyBytes>, usize)>,
) -> PyResult<std::io::Result<Option<SizedBytes<'_>>>> {
    let (mut obj, cap) = match reuse {
        Some((b, cap)) => {
            debug_assert!(cap >= max);
            let obj = b.into_ptr();
            // SAFETY: the pool's spare is an exact bytes object allocated for `cap >= max`
            // bytes, with no other reference (checked when it was kept).
            unsafe { crate::bytes_pool::set_len(obj, max) };
            (obj, cap)
        }
        None => (new_uninit_bytes(py, max)?.into_ptr(), max),
    };
    // SAFETY: `obj` is a live bytes object of `max` bytes that only this function can
    // see; its buffer is writable until it is shared.
    let read = unsafe { socket_io::recv_raw(fd, pyo3::ffi::PyBytes_AsString(obj) as *mut u8, max) };
    let n = match read {
        Ok(n) if n > 0 => n,
        other => {
            // SAFETY: `obj` is our own reference, released once.
            unsafe { pyo3::ffi::Py_DecRef(obj) };
            return Ok(other.map(|_| None));
        }
    };
    let mut cap = cap;
    if n < max {
        if !resize_in_place(max, n) {
            cap = n;
        }
        // SAFETY: `obj` has a reference count of one and has not been shared, which is
        // what _PyBytes_Resize requires; on failure it frees the object, sets an
        // exception and NULLs the pointer.
        if unsafe { bytes_resize(&mut obj, n) } != 0 {
            return Err(PyErr::fetch(py));
        }
    }
    // SAFETY: `obj` is a new reference to a bytes object, handed over to the Bound.
    let bytes = unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>() };
    Ok(Ok(Some((bytes, cap))))
}

/// A new `bytes` of `len` bytes whose contents are not yet written, for a read to fill
/// before anyone else sees it.
fn new_uninit_bytes(py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyBytes>> {
    // SAFETY: a NULL source asks CPython for an uninitialized bytes object of `len`
    // bytes; the result is a new reference or NULL with an exception set.
    let obj = unsafe {
        pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as pyo3::ffi::Py_ssize_t)
    };
    if obj.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `obj` is a new reference to a bytes object, handed over to the Bound.
    Ok(unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>() })
}

/// True for protocols that take reads into their own buffer: asyncio's BufferedProtocol,
/// and the TLS layer (fed from the loop's buffer).
fn is_buffered(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(protocol.is_instance_of::<TlsProtocol>()
        || protocol.is_instance(py_refs::buffered_protocol_class(protocol.py())?)?)
}

/// Mutable state, borrowed only between calls into Python.
struct State {
    /// Who owns the descriptor, and the socket object if one was made.
    socket: SocketSlot,
    /// The object the protocol sees (a subclass of `asyncio.Transport`).
    proxy: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    buffered: bool,
    server: Option<Py<PyAny>>,
    extra: Option<Py<PyDict>>,
    queue: WriteQueue<Chunk>,
    high: usize,
    low: usize,
    closing: bool,
    eof: bool,
    /// The last read filled the buffer: the peer is streaming, so reads go straight
    /// into a new `bytes` (trimmed to size) instead of through the loop's buffer.
    bulk: bool,
    /// The size of the last run of reads when it was one large read that emptied the
    /// socket (0 otherwise): a TCP peer exchanging messages of one size.
    one_read: usize,
    /// The last two runs of reads were one read each, of the same size (`one_read`):
    /// only then is the next read's size guessed rather than asked of the kernel.
    one_read_repeats: bool,
    /// The loop pass ([`Loop::pass`]) in which the last read found the socket emptied
    /// (0: it did not): a pause then leaves nothing unread behind it.
    drained_in: u64,
    /// The size of the last read when it was small (0 otherwise): the next small read
    /// goes straight into a recycled `bytes` about that large, if the pool has one.
    small_read: usize,
    /// The write side was shut down (after `write_eof()` and the flush).
    eof_sent: bool,
    conn_lost: u32,
    paused: bool,
    protocol_paused: bool,
    reading: bool,
    writing: bool,
    flush_queued: bool,
    empty_waiter: Option<Py<PyAny>>,
    released: Vec<Chunk>,
    /// The socket's addresses, taken as it closed if nobody had asked for them yet, so
    /// that `get_extra_info` still answers afterwards, as asyncio's does.
    addr_snapshot: Option<Box<[Option<RawAddr>; 2]>>,
}

/// A connected stream socket's transport. See the module documentation.
#[pyclass(frozen, module = "oxio._oxio", name = "StreamTransport")]
pub struct StreamTransport {
    lp: Py<Loop>,
    fd: RawFd,
    /// Reads may stop early at ancillary data (a Unix socket's passed descriptors or
    /// credentials), so they go through `recvmsg`, which tells when that happened.
    cut_reads: bool,
    /// The socket's family, type and protocol, to make its `socket.socket` on demand.
    kind: SockKind,
    st: GilCell<State>,
}

/// A stream socket's `(family, type, proto)`, as `socket.socket` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SockKind {
    pub family: i32,
    pub sock_type: i32,
    pub proto: i32,
}

impl SockKind {
    /// The kind of `sock`, a `socket.socket`.
    pub(crate) fn of(sock: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = sock.py();
        Ok(SockKind {
            family: sock.getattr(intern!(py, "family"))?.extract()?,
            sock_type: sock.getattr(intern!(py, "type"))?.extract()?,
            proto: sock.getattr(intern!(py, "proto"))?.extract()?,
        })
    }

    /// asyncio's `_set_nodelay` condition: an IP stream socket whose protocol is TCP (a
    /// socket made with protocol 0 keeps Nagle's algorithm, as in asyncio).
    pub(crate) fn is_tcp(&self) -> bool {
        (self.family == libc::AF_INET || self.family == libc::AF_INET6)
            && self.sock_type == libc::SOCK_STREAM
            && self.proto == libc::IPPROTO_TCP
    }
}

/// Who owns a transport's descriptor.
enum SocketSlot {
    /// The transport: no `socket.socket` has been asked for yet. Accepted connections
    /// start here, since most are never asked: making one costs a Python call, a
    /// `getsockname` (the socket module checks the descriptor) and, at the close, two more.
    Bare,
    /// This `socket.socket`, which the transport closes.
    Object(Py<PyAny>),
    /// Nobody: the descriptor is closed. Holds the socket object, closed, if one was made.
    Closed(Option<Py<PyAny>>),
}

impl SocketSlot {
    fn is_open(&self) -> bool {
        !matches!(self, SocketSlot::Closed(_))
    }

    fn object(&self) -> Option<&Py<PyAny>> {
        match self {
            SocketSlot::Object(o) | SocketSlot::Closed(Some(o)) => Some(o),
            _ => None,
        }
    }

    /// Closes the descriptor this slot held (the transport has just marked itself
    /// closed): through the socket object if one was made, else directly. A `collected`
    /// transport closes its socket object at the C level, since the collector may
    /// already have cleared the object's Python attributes. A reset reported at the
    /// close is no error, as for `socket.close()`.
    fn close_held(self, py: Python<'_>, fd: RawFd, collected: bool) -> PyResult<()> {
        match self {
            SocketSlot::Object(sock) if collected => {
                py_refs::socket_base_class(py)?.call_method1(intern!(py, "close"), (sock,))?;
            }
            SocketSlot::Object(sock) => {
                sock.bind(py).call_method0(intern!(py, "close"))?;
            }
            SocketSlot::Bare => {
                // SAFETY: the transport owned the descriptor (no socket object was made
                // from it) and now says closed, so nothing closes it again.
                if let Err(e) = unsafe { socket_io::close(fd) } {
                    if e.raw_os_error() != Some(libc::ECONNRESET) {
                        return Err(os_error(e));
                    }
                }
            }
            SocketSlot::Closed(_) => {}
        }
        Ok(())
    }
}

/// Disables Nagle's algorithm on TCP sockets, as asyncio does for every transport.
fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` (a valid c_int) for the given length; on a socket
    // that is not TCP it fails harmlessly and the error is ignored.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Creates the transport for `sock` (connected, non-blocking) and schedules, as asyncio
/// does, `protocol.connection_made(transport)`, the start of reading, and then the
/// waiter's result. Returns the Python-visible transport.
#[pyfunction]
#[pyo3(signature = (lp, sock, protocol, waiter=None, extra=None, server=None))]
pub fn make_stream_transport<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<&Bound<'py, PyDict>>,
    server: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    lp.get().check_closed()?;
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    let kind = SockKind::of(sock)?;
    let conn = Conn::Socket(sock, fd);
    start_stream_transport(lp, conn, kind, protocol, waiter, extra, server)
}

/// A new transport's descriptor, and who owns it.
pub(crate) enum Conn<'a, 'py> {
    /// A socket object, which keeps owning its descriptor (given here too).
    Socket(&'a Bound<'py, PyAny>, RawFd),
    /// A bare descriptor, which the transport takes over: it makes the socket object
    /// only if somebody asks for it (the acceptor's case).
    Fd(OwnedFd),
}

/// [`make_stream_transport`] for a caller that knows the socket's kind.
pub(crate) fn start_stream_transport<'py>(
    lp: &Bound<'py, Loop>,
    conn: Conn<'_, 'py>,
    kind: SockKind,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<&Bound<'py, PyDict>>,
    server: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let buffered = is_buffered(protocol)?;
    let (fd, socket) = match conn {
        Conn::Socket(sock, fd) => (fd, SocketSlot::Object(sock.clone().unbind())),
        // Owned by the transport from here: its Drop closes the descriptor if anything
        // below fails.
        Conn::Fd(fd) => (fd.into_raw_fd(), SocketSlot::Bare),
    };
    let tcp = kind.is_tcp();
    let server = server.filter(|s| !s.is_none());
    let core = Bound::new(
        py,
        StreamTransport {
            lp: lp.clone().unbind(),
            fd,
            cut_reads: !tcp,
            kind,
            st: GilCell::new(State {
                socket,
                proxy: None,
                protocol: Some(protocol.clone().unbind()),
                buffered,
                server: server.map(|s| s.clone().unbind()),
                extra: extra.map(|e| e.clone().unbind()),
                queue: WriteQueue::new(),
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                closing: false,
                eof: false,
                eof_sent: false,
                bulk: false,
                one_read: 0,
                one_read_repeats: false,
                drained_in: 0,
                small_read: 0,
                conn_lost: 0,
                paused: false,
                protocol_paused: false,
                reading: false,
                writing: false,
                flush_queued: false,
                empty_waiter: None,
                released: Vec::new(),
                addr_snapshot: None,
            }),
        },
    )?;
    if tcp {
        set_nodelay(fd);
    }
    // `EngineTransport.__init__` only sets `_core`: done here, without its Python frame.
    let proxy = py_refs::object_new(py)?.call1((py_refs::proxy_class(py)?,))?;
    proxy.setattr(intern!(py, "_core"), &core)?;
    core.get()
        .st
        .with(py, |s| s.proxy = Some(proxy.clone().unbind()));
    if let Some(server) = server {
        server.call_method1(intern!(py, "_attach"), (&proxy,))?;
    }
    lp.get().adopt_transport(py, fd, core.clone().unbind());
    let connection_made = protocol.getattr(intern!(py, "connection_made"))?;
    Loop::call_soon_internal(lp, &connection_made, (&proxy,))?;
    Loop::call_soon_internal(lp, &core.getattr(intern!(py, "_start_reading"))?, ())?;
    if let Some(w) = waiter.filter(|w| !w.is_none()) {
        Loop::call_soon_internal(
            lp,
            py_refs::set_result_unless_cancelled(py)?,
            (w, py.None()),
        )?;
    }
    Ok(proxy)
}

impl StreamTransport {
    /// True once `close()` or `abort()` ran or the connection was lost.
    pub(crate) fn is_closing_flag(&self, py: Python<'_>) -> bool {
        self.st.with(py, |s| s.closing)
    }

    fn proxy<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st.bound(py, |s| &s.proxy)
    }

    fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st.bound(py, |s| &s.protocol)
    }

    /// Releases written chunks, keeping the vector's capacity: steady state allocates
    /// nothing. Inline, because after most writes there is nothing to release.
    #[inline]
    fn drop_released(&self, py: Python<'_>) {
        if self.st.with(py, |s| !s.released.is_empty()) {
            self.release_finished(py);
        }
    }

    /// Written `bytes` that nothing else holds go to the pool that small reads use,
    /// inside the state's borrow (handing over a reference runs no Python code);
    /// anything else is dropped outside it, since a release may run Python code. An echo
    /// leaves nothing for the second step.
    #[inline(never)]
    fn release_finished(&self, py: Python<'_>) {
        let left = self.st.with(py, |s| {
            self.lp.get().with_bytes_pool(py, |pool| {
                let mut i = 0;
                while i < s.released.len() {
                    match &s.released[i] {
                        Chunk::Bytes(b) if pool.accepts(b) => {
                            if let Chunk::Bytes(b) = s.released.swap_remove(i) {
                                pool.keep(b);
                            }
                        }
                        _ => i += 1,
                    }
                }
            });
            (!s.released.is_empty()).then(|| std::mem::take(&mut s.released))
        });
        if let Some(left) = left {
            self.drop_chunks(py, left);
        }
    }

    /// Drops `chunks` and gives their vector back to the state for the next release.
    #[cold]
    fn drop_chunks(&self, py: Python<'_>, mut chunks: Vec<Chunk>) {
        for chunk in chunks.drain(..) {
            if let Chunk::Bytes(b) = chunk {
                // Dropped as a Bound, which holds the GIL by construction: dropping a
                // Py first asks a thread-local whether it does.
                drop(b.into_bound(py));
            }
        }
        self.st.with(py, |s| {
            if s.released.capacity() == 0 {
                s.released = chunks;
            }
        });
    }

    /// One read into `ptr..ptr+len`: the byte count, and whether the read stopped early
    /// at ancillary data with more bytes possibly waiting (then no edge announces them,
    /// so the caller reads again or asks for a re-arm).
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes for the duration of the call.
    unsafe fn recv_raw(&self, ptr: *mut u8, len: usize) -> std::io::Result<(usize, bool)> {
        if self.cut_reads {
            // SAFETY: the caller's guarantee, passed on.
            unsafe { socket_io::recv_raw_msg(self.fd, ptr, len) }
        } else {
            // SAFETY: as above.
            unsafe { socket_io::recv_raw(self.fd, ptr, len) }.map(|n| (n, false))
        }
    }

    /// The transport a watcher's callback is a bound method of.
    fn owner_of<'py>(callback: &Bound<'py, PyAny>) -> Bound<'py, Self> {
        // SAFETY: the only callbacks given a NativeCall are this type's own bound
        // methods (`_read_ready`, `_write_ready`), built-in methods whose `__self__` is
        // the transport, alive while the method is.
        unsafe {
            let owner = pyo3::ffi::PyCFunction_GET_SELF(callback.as_ptr());
            Bound::from_borrowed_ptr(callback.py(), owner).cast_into_unchecked::<Self>()
        }
    }

    /// Watches the descriptor on `side` with the transport's own `_read_ready` or
    /// `_write_ready`: the bound method is what repr and error reports show, and the
    /// loop calls it from Rust (a [`NativeCall`]) with the transport recovered from it.
    fn watch(slf: &Bound<'_, Self>, side: Side, trigger: Trigger) -> PyResult<()> {
        let py = slf.py();
        let (name, native): (_, NativeCall) = match side {
            Side::Read => (intern!(py, "_read_ready"), |cb| {
                Self::_read_ready(&Self::owner_of(cb))
            }),
            Side::Write => (intern!(py, "_write_ready"), |cb| {
                Self::_write_ready(&Self::owner_of(cb))
            }),
        };
        let this = slf.get();
        let callback = slf.getattr(name)?;
        Loop::watch_internal(
            this.lp.bind(py),
            this.fd,
            side,
            &callback,
            Some(native),
            trigger,
        )
        .map(drop)
    }

    /// Starts reading; `trigger` is [`Trigger::Resume`] when a pause ends, which may
    /// have left data unread.
    fn start_reading_watch(slf: &Bound<'_, Self>, trigger: Trigger) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let start = this.st.with(py, |s| {
            let start = !s.reading && !s.closing;
            if start {
                s.reading = true;
            }
            start
        });
        if start {
            if let Err(e) = Self::watch(slf, Side::Read, trigger) {
                this.st.with(py, |s| s.reading = false);
                return Err(e);
            }
        }
        Ok(())
    }

    fn stop_reading_watch(&self, py: Python<'_>) {
        let stop = self
            .st
            .with(py, |s| std::mem::replace(&mut s.reading, false));
        if stop {
            self.lp.get().unwatch_internal(py, self.fd, Side::Read);
        }
    }

    fn stop_writing_watch(&self, py: Python<'_>) {
        let stop = self
            .st
            .with(py, |s| std::mem::replace(&mut s.writing, false));
        if stop {
            self.lp.get().unwatch_internal(py, self.fd, Side::Write);
        }
    }

    /// asyncio's `_fatal_error`: OS errors are only logged in debug mode; anything else
    /// goes to the exception handler. Then the transport is force-closed.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lp = this.lp.bind(py);
        let value = exc.value(py).clone();
        if value.is_instance_of::<pyo3::exceptions::PyOSError>() {
            if lp.get().is_debug() {
                let kwargs = PyDict::new(py);
                // The exception itself as exc_info: logging formats its traceback. (An
                // exception left set while calling into Python is a SystemError.)
                kwargs.set_item("exc_info", &value)?;
                let repr = this
                    .proxy(py)
                    .map(|p| p.into_any())
                    .unwrap_or(slf.clone().into_any());
                py_refs::logger(py)?.call_method(
                    "debug",
                    ("%r: %s", repr, message),
                    Some(&kwargs),
                )?;
            }
        } else {
            let ctx = PyDict::new(py);
            ctx.set_item("message", message)?;
            ctx.set_item("exception", exc.clone_ref(py).into_value(py))?;
            ctx.set_item("transport", this.proxy(py))?;
            ctx.set_item("protocol", this.protocol(py))?;
            errors::call_exception_handler(lp, ctx.as_any())?;
        }
        Self::force_close(slf, Some(value.into_any()))
    }

    /// asyncio's `_force_close`: drop queued data, stop watching, and schedule
    /// `connection_lost(exc)` once.
    fn force_close(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (already, was_closing) = this.st.with(py, |s| {
            if s.conn_lost > 0 {
                return (true, true);
            }
            s.queue.clear(&mut s.released);
            let was_closing = s.closing;
            s.closing = true;
            s.conn_lost += 1;
            (false, was_closing)
        });
        if already {
            return Ok(());
        }
        this.drop_released(py);
        this.stop_writing_watch(py);
        if !was_closing {
            this.stop_reading_watch(py);
        }
        let exc = exc.map_or_else(|| py.None(), |e| e.unbind());
        let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
        Loop::call_soon_internal(this.lp.bind(py), &cb, (exc,))?;
        Ok(())
    }

    /// asyncio's `_maybe_pause_protocol`.
    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pause = this.st.with(py, |s| {
            if s.queue.len() > s.high && !s.protocol_paused {
                s.protocol_paused = true;
                true
            } else {
                false
            }
        });
        if pause {
            this.protocol_call_guarded(py, "pause_writing", "protocol.pause_writing() failed")?;
        }
        Ok(())
    }

    /// asyncio's `_maybe_resume_protocol`.
    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let resume = this.st.with(py, |s| {
            if s.protocol_paused && s.queue.len() <= s.low {
                s.protocol_paused = false;
                true
            } else {
                false
            }
        });
        if resume {
            this.protocol_call_guarded(py, "resume_writing", "protocol.resume_writing() failed")?;
        }
        Ok(())
    }

    /// Calls a flow-control method of the protocol; a failure goes to the exception
    /// handler, an exit exception propagates.
    fn protocol_call_guarded(&self, py: Python<'_>, method: &str, message: &str) -> PyResult<()> {
        let Some(protocol) = self.protocol(py) else {
            return Ok(());
        };
        if let Err(e) = protocol.call_method0(method) {
            if errors::is_exit_exception(py, &e) {
                return Err(e);
            }
            let ctx = PyDict::new(py);
            ctx.set_item("message", message)?;
            ctx.set_item("exception", e.into_value(py))?;
            ctx.set_item("transport", self.proxy(py))?;
            ctx.set_item("protocol", protocol)?;
            errors::call_exception_handler(self.lp.bind(py), ctx.as_any())?;
        }
        Ok(())
    }

    /// Writes what is queued. Called by the loop before it polls, by `write()` when the
    /// queue is past the high-water mark, and when the socket becomes writable.
    pub(crate) fn flush_queued(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let outcome = this.st.with(py, |s| {
            s.flush_queued = false;
            if s.conn_lost > 0 {
                return None;
            }
            if s.queue.is_empty() {
                // Sent already (by a direct write): only the completion is left.
                return Some(Ok(Flushed::All));
            }
            Some(s.queue.write_to(this.fd, &mut s.released))
        });
        this.drop_released(py);
        let Some(outcome) = outcome else {
            return Ok(());
        };
        match outcome {
            Err(e) => {
                this.stop_writing_watch(py);
                let waiter = this.st.with(py, |s| {
                    s.queue.clear(&mut s.released);
                    s.empty_waiter.take()
                });
                this.drop_released(py);
                let err = os_error(e);
                let exc = err.value(py).clone();
                Self::fatal_error(slf, err, "Fatal write error on socket transport")?;
                if let Some(w) = waiter {
                    w.bind(py)
                        .call_method1(intern!(py, "set_exception"), (exc,))?;
                }
                Ok(())
            }
            Ok(Flushed::Partial) => {
                let start = this
                    .st
                    .with(py, |s| !std::mem::replace(&mut s.writing, true));
                if start {
                    Self::watch(slf, Side::Write, Trigger::Edge)?;
                }
                Self::maybe_resume_protocol(slf)
            }
            Ok(Flushed::All) => {
                // Stop watching first: whatever resume_writing() writes is then queued
                // for the next flush instead of waiting for an edge that never comes.
                this.stop_writing_watch(py);
                Self::maybe_resume_protocol(slf)?;
                let done = this.st.with(py, |s| {
                    if !s.queue.is_empty() {
                        return None;
                    }
                    let lost_now = s.closing && s.conn_lost == 0;
                    if lost_now {
                        s.conn_lost += 1;
                    }
                    let shut_write = s.eof && !s.eof_sent && !s.closing;
                    s.eof_sent |= shut_write;
                    Some((s.empty_waiter.take(), lost_now, shut_write))
                });
                let Some((waiter, lost_now, shut_write)) = done else {
                    return Ok(());
                };
                if let Some(w) = waiter {
                    w.bind(py)
                        .call_method1(intern!(py, "set_result"), (py.None(),))?;
                }
                if lost_now {
                    Self::call_connection_lost(slf, py.None().bind(py))?;
                } else if shut_write {
                    socket_io::shutdown_write(this.fd).map_err(os_error)?;
                }
                Ok(())
            }
        }
    }

    /// Forgets a queued flush (the loop is unwinding with an exception).
    pub(crate) fn cancel_flush(&self, py: Python<'_>) {
        self.st.with(py, |s| s.flush_queued = false);
    }

    fn check_write(&self, py: Python<'_>) -> PyResult<bool> {
        let (eof, sendfile, conn_lost) = self
            .st
            .with(py, |s| (s.eof, s.empty_waiter.is_some(), s.conn_lost));
        if eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call write() after write_eof()",
            ));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err(
                "unable to write; sendfile is in progress",
            ));
        }
        if conn_lost > 0 {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                py_refs::logger(py)?
                    .call_method1("warning", ("socket.send() raised exception.",))?;
            }
            self.st.with(py, |s| s.conn_lost += 1);
            return Ok(false);
        }
        Ok(true)
    }

    /// A private copy of mutable data (a `bytearray`, a `memoryview` of any layout).
    fn copy_mutable<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        match with_buffer(data, |v| Ok(v.bytes().map(|b| PyBytes::new(data.py(), b))))? {
            Some(copy) => Ok(copy),
            // Not one run of bytes: the memoryview knows how to gather itself.
            None => Ok(data
                .call_method0(intern!(data.py(), "tobytes"))?
                .cast_into::<PyBytes>()?),
        }
    }

    fn is_mutable(data: &Bound<'_, PyAny>) -> bool {
        data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()
    }

    fn type_error(data: &Bound<'_, PyAny>) -> PyResult<PyErr> {
        Ok(PyTypeError::new_err(format!(
            "data argument must be a bytes-like object, not '{}'",
            data.get_type().name()?
        )))
    }

    fn to_chunk(data: &Bound<'_, PyAny>) -> PyResult<Chunk> {
        if let Ok(b) = data.cast::<PyBytes>() {
            return Ok(Chunk::Bytes(b.clone().unbind()));
        }
        if Self::is_mutable(data) {
            return Ok(Chunk::Bytes(Self::copy_mutable(data)?.unbind()));
        }
        Err(Self::type_error(data)?)
    }

    /// Checks a write as [`StreamTransport::check_write`] does, queues its chunks and
    /// arranges their flush. The usual write (nothing refuses it, and it joins this
    /// iteration's batch) takes one borrow of the state; a write that is refused, is
    /// empty or must flush now goes the long way.
    fn enqueue<I>(slf: &Bound<'_, Self>, chunks: I) -> PyResult<()>
    where
        I: IntoIterator<Item = Chunk>,
    {
        /// What the borrow decided.
        enum Next<I> {
            /// Refused: `check_write` says how, and the chunks drop outside the borrow.
            Refused(I),
            /// Queued and batched; true if this was the transport's first this iteration.
            Batched(bool),
            /// Queued, with the flush or flow-control work done outside the borrow.
            Queued { len: usize, writing: bool },
        }
        let py = slf.py();
        let this = slf.get();
        let running = this.lp.get().running_flag();
        let (next, released) = this.st.with(py, |s| {
            if s.eof || s.empty_waiter.is_some() || s.conn_lost > 0 {
                return (Next::Refused(chunks), false);
            }
            for c in chunks {
                if let Some(empty) = s.queue.push(c) {
                    s.released.push(empty);
                }
            }
            let len = s.queue.len();
            let batch = len > 0 && !s.writing && running && len < FLUSH_NOW_BYTES && len <= s.high;
            let next = if batch {
                Next::Batched(!std::mem::replace(&mut s.flush_queued, true))
            } else {
                Next::Queued {
                    len,
                    writing: s.writing,
                }
            };
            (next, !s.released.is_empty())
        });
        if released {
            this.release_finished(py);
        }
        match next {
            Next::Refused(chunks) => {
                // Raises, or drops the write as asyncio drops writes to a lost connection.
                let accepted = this.check_write(py)?;
                debug_assert!(!accepted, "refused in the borrow");
                drop(chunks);
                Ok(())
            }
            Next::Batched(first) => {
                if first {
                    this.lp.get().queue_flush(py, slf.clone().unbind());
                }
                Ok(())
            }
            Next::Queued { len: 0, .. } => Ok(()),
            Next::Queued { writing: true, .. } => {
                // The kernel's buffer is full: the writability edge flushes everything.
                Self::maybe_pause_protocol(slf)
            }
            Next::Queued { .. } => {
                Self::flush_queued(slf)?;
                Self::maybe_pause_protocol(slf)
            }
        }
    }

    /// Writes mutable data (a `bytearray`, a `memoryview`). Small data joins this
    /// iteration's batch as a private copy; large data is written now, behind whatever
    /// is queued, in one vectored write, and only what the kernel does not take is
    /// copied, as asyncio copies only what it cannot send at once. One export, on the
    /// stack, serves both (no heap allocation per write).
    fn write_mutable(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        /// What the export was used for.
        enum Took {
            /// A private copy of small data, for the batch.
            Copy(Py<PyBytes>),
            /// Not one run of bytes: gathered by the memoryview instead.
            Scattered,
            /// Dropped by `check_write` (the connection is lost).
            Refused,
            /// Written through.
            Sent {
                sent: usize,
                len: usize,
                error: Option<std::io::Error>,
            },
        }
        let py = slf.py();
        let this = slf.get();
        let took = with_buffer(data, |v| {
            let Some(bytes) = v.bytes() else {
                return Ok(Took::Scattered);
            };
            if bytes.len() < FLUSH_NOW_BYTES {
                let copy = this
                    .lp
                    .get()
                    .with_bytes_pool(py, |pool| pool.bytes_from(py, bytes));
                return Ok(Took::Copy(copy.unbind()));
            }
            if !this.check_write(py)? {
                return Ok(Took::Refused);
            }
            let written = this.st.with(py, |s| {
                if s.writing {
                    return Ok(0);
                }
                s.queue.write_with_tail(this.fd, bytes, &mut s.released)
            });
            let (sent, error) = match written {
                Ok(n) => (n, None),
                Err(e) => (0, Some(e)),
            };
            if sent < bytes.len() {
                let rest = Chunk::Owned(bytes[sent..].to_vec().into_boxed_slice());
                this.st.with(py, |s| s.queue.push(rest));
            }
            Ok(Took::Sent {
                sent,
                len: bytes.len(),
                error,
            })
        })?;
        let (sent, len, error) = match took {
            Took::Copy(copy) => return Self::write_copy(slf, copy),
            Took::Scattered => {
                return Self::write_copy(slf, Self::copy_mutable(data)?.unbind());
            }
            Took::Refused => return Ok(()),
            Took::Sent { sent, len, error } => (sent, len, error),
        };
        this.drop_released(py);
        if error.is_some() || sent < len {
            // Flushing again either meets the error (and handles it as any failed
            // write) or finds the kernel full and starts watching for writability.
            Self::flush_queued(slf)?;
        } else if this
            .st
            .with(py, |s| s.closing || s.eof || s.empty_waiter.is_some())
        {
            Self::flush_queued(slf)?; // finishes a pending close, write_eof or sendfile wait
        }
        Self::maybe_pause_protocol(slf)
    }

    /// `write()` of a `bytes` the transport may keep.
    fn write_copy(slf: &Bound<'_, Self>, data: Py<PyBytes>) -> PyResult<()> {
        Self::enqueue(slf, [Chunk::Bytes(data)])
    }

    /// Reads for a plain `Protocol`: once, or while bulk reads come back full, up to
    /// `BULK_READS_PER_EVENT` times, stopping as soon as the protocol paused reading or
    /// the transport began closing, or when `set_protocol()` swapped in a
    /// `BufferedProtocol`. Only a descriptor left with data it was told about is re-armed,
    /// once: new data raises an edge of its own.
    fn read_ready_data(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        for i in 0..BULK_READS_PER_EVENT {
            if !Self::read_once_data(slf, i == 0)? {
                return Ok(());
            }
            let (go_on, switched) = this
                .st
                .with(py, |s| (s.reading && !s.paused && !s.closing, s.buffered));
            if !go_on {
                return Ok(()); // resume_reading watches again; a closing transport reads no more
            }
            if switched {
                break; // set_protocol() gave it a BufferedProtocol: the next event fills its buffer
            }
        }
        this.lp.get().request_rearm(py, this.fd);
        Ok(())
    }

    /// One read and its delivery; true when more data is known or likely to be waiting.
    /// `first` says this is the first read of a readiness event.
    fn read_once_data(slf: &Bound<'_, Self>, first: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let lp = this.lp.get();
        let (bulk, one_read, repeats, small_read) = this.st.with(py, |s| {
            (s.bulk, s.one_read, s.one_read_repeats, s.small_read)
        });
        // A TCP peer whose last two messages came in one read each, of one size, most
        // likely sends that size again: a read one byte larger needs no count from the
        // kernel, since a short TCP read means the socket is empty (an ioctl saved per
        // message, 2% of a 64 KiB echo's server time). A Unix read may stop short with
        // data left. One message is not enough to go on: a stream cut into reads of
        // varying sizes (a 1 MiB echo through asyncio streams) made most guesses miss,
        // each a read too small or a `bytes` shrunk by `realloc`, and the freed tails
        // churned the heap's top (16-18 page faults per message without guesses, 30-48
        // with them; 10-25% of the throughput).
        let guess = if first && repeats && one_read > 0 && !this.cut_reads {
            (one_read + 1).min(MAX_READ)
        } else {
            0
        };
        let pending = if guess > 0 {
            guess
        } else if bulk {
            socket_io::bytes_readable(this.fd).unwrap_or(0)
        } else {
            0
        };
        let mut again = false;
        let mut emptied_by = 0;
        // An error a gathering read met after its data: reported once the data is in.
        let mut trailing = None;
        let read = if pending >= BULK_READ && guess > 0 {
            // The guess sizes the read: no copy, and a short read means the socket is
            // empty.
            let spare = lp.with_bytes_pool(py, |pool| pool.take_bulk(guess));
            recv_into_bytes(py, this.fd, guess, spare)?.map(|r| {
                r.map(|(b, cap)| {
                    let got = b.as_bytes().len();
                    again = got == guess;
                    if !again {
                        emptied_by = got;
                    }
                    ((b, cap), false)
                })
            })
        } else if pending >= BULK_READ {
            let read = this.read_gathering(py, &mut again, &mut trailing)?;
            if let Ok(Some((b, _))) = &read {
                if !again {
                    emptied_by = b.as_bytes().len();
                }
            }
            read.map(|r| r.map(|data| (data, false)))
        } else if let Some(b) = (small_read > 0)
            .then(|| lp.with_bytes_pool(py, |pool| pool.take_for_read(small_read)))
            .flatten()
        {
            this.read_into_recycled(b.into_bound(py), &mut again)
                .map(|r| r.map(|data| ((data, 0), false)))
        } else {
            lp.with_read_buf(py, |buf| {
                let max = buf.len().min(MAX_READ);
                // SAFETY: `buf` is the loop's read buffer, writable for its length (at
                // least `max`) and borrowed for the whole call.
                let (n, cut) = unsafe { this.recv_raw(buf.as_mut_ptr(), max) }?;
                again = cut || n == max;
                Ok((n > 0).then(|| {
                    let data = lp.with_bytes_pool(py, |pool| pool.bytes_from(py, &buf[..n]));
                    ((data, 0), false)
                }))
            })
        };
        let one_read = if first { emptied_by } else { 0 };
        let drained_in = if again { 0 } else { lp.pass() };
        this.st.with(py, |s| {
            s.one_read_repeats = one_read > 0 && one_read == s.one_read;
            s.one_read = one_read;
            s.drained_in = drained_in;
        });
        if let Ok(Some(((data, _), _))) = &read {
            let len = data.as_bytes().len();
            let bulk = len >= BULK_READ;
            this.st.with(py, |s| {
                s.bulk = bulk;
                s.small_read = if bulk { 0 } else { len };
            });
        }
        // The re-arm, when needed, is read_ready_data's, after its last read.
        Self::finish_read(
            slf,
            read,
            |(data, cap)| match this.protocol(py) {
                Some(p) => {
                    p.call_method1(intern!(py, "data_received"), (&data,))?;
                    this.recycle_read(data, cap);
                    Ok(())
                }
                None => Ok(()),
            },
            "Fatal error: protocol.data_received() call failed.",
        )?;
        if let Some(e) = trailing {
            // The recv that met the error consumed it: it goes to the protocol now,
            // unless data_received closed the transport (asyncio would stop reading).
            if !this.st.with(py, |s| s.closing) {
                Self::fatal_error(slf, os_error(e), "Fatal read error on socket transport")?;
            }
            return Ok(false);
        }
        Ok(again)
    }

    /// A bulk read that goes on reading into the same `bytes` until it holds
    /// `MAX_READ` bytes or the socket is drained, so that the protocol sees a stream's
    /// data in chunks as large as what has arrived by the time it is read. Delivering
    /// each `recv` on its own (sized by the kernel's count, 90-125 KiB while a 1 MiB
    /// message streams in) had an echo write in the same small pieces: 4,688 requests/s
    /// against 6,020 gathered, and rloop's 5,707 (it gathers into 256 KiB; 1 MiB
    /// Protocol echo, `benchmarks/ab.py --runs 6`, medians of alternating runs).
    ///
    /// The buffer is the pool's bulk spare, allocated once: a read that stops well short
    /// of it is copied out into a `bytes` of its own instead of shrinking it, since a
    /// `realloc` per read, and a new buffer after it, churned the heap (2,966 requests/s).
    /// End of file after data leaves `again` set (the next read sees it again); an error
    /// after data goes to `trailing`, since the kernel reports it only once.
    fn read_gathering<'py>(
        &self,
        py: Python<'py>,
        again: &mut bool,
        trailing: &mut Option<std::io::Error>,
    ) -> PyResult<std::io::Result<Option<SizedBytes<'py>>>> {
        let lp = self.lp.get();
        let (b, cap) = match lp.with_bytes_pool(py, |pool| pool.take_bulk(MAX_READ)) {
            Some((b, cap)) => (b.into_bound(py), cap),
            None => (new_uninit_bytes(py, MAX_READ)?, MAX_READ),
        };
        let give_back = |b: Bound<'py, PyBytes>| {
            // SAFETY: still private, allocated for `cap >= MAX_READ` bytes.
            unsafe { crate::bytes_pool::set_len(b.as_ptr(), MAX_READ) };
            drop(
                lp.with_bytes_pool(py, |pool| pool.keep_bulk(b, cap))
                    .map(|o| o.into_bound(py)),
            );
        };
        let obj = b.as_ptr().cast::<pyo3::ffi::PyBytesObject>();
        // SAFETY: `b` is private (new, or the pool's spare with a reference count of
        // one) and allocated for at least MAX_READ bytes at `ob_sval`, which stay
        // writable while it is owned here.
        let sval = unsafe { std::ptr::addr_of_mut!((*obj).ob_sval).cast::<u8>() };
        let mut n = 0;
        let mut eof = false;
        while n < MAX_READ {
            // SAFETY: `sval + n .. sval + MAX_READ` lies inside `b`'s buffer (above).
            match unsafe { self.recv_raw(sval.add(n), MAX_READ - n) } {
                Ok((0, _)) => {
                    eof = true;
                    break;
                }
                Ok((m, cut)) => {
                    n += m;
                    if cut {
                        *again = true; // a Unix read stopped at ancillary data
                        break;
                    }
                }
                Err(e) if n == 0 => {
                    give_back(b);
                    return Ok(Err(e));
                }
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        *trailing = Some(e);
                    }
                    break;
                }
            }
        }
        if n == 0 {
            give_back(b);
            return Ok(Ok(None));
        }
        *again |= n == MAX_READ || eof;
        if resize_in_place(cap, n) {
            // SAFETY: private, allocated for `cap >= n` bytes.
            unsafe { crate::bytes_pool::set_len(b.as_ptr(), n) };
            return Ok(Ok(Some((b, cap))));
        }
        // SAFETY: the reads wrote `n` bytes at `sval`, inside `b`, alive until give_back.
        let data = PyBytes::new(py, unsafe { std::slice::from_raw_parts(sval, n) });
        give_back(b);
        Ok(Ok(Some((data, 0))))
    }

    /// Hands a read's `bytes`, which its protocol has returned from, to the pool for the
    /// next read: as the bulk spare when it was allocated for `cap` bytes (`cap > 0`),
    /// else as the small-read spare. What the pool does not keep is dropped here, after
    /// the pool's borrow ends.
    fn recycle_read(&self, data: Bound<'_, PyBytes>, cap: usize) {
        let py = data.py();
        let unkept = self.lp.get().with_bytes_pool(py, |pool| {
            if cap > 0 {
                pool.keep_bulk(data, cap)
            } else {
                pool.keep_read(data)
            }
        });
        drop(unkept.map(|b| b.into_bound(py)));
    }

    /// A small read straight into `b`, a recycled private `bytes` about the size of the
    /// last one, instead of through the loop's buffer and a copy. The read may fill the
    /// object's size and its NUL byte; a message that does (it outgrew the object) is
    /// copied into a `bytes` of its own, `b` goes back to the pool, and `again` says to
    /// read on. `None` is end of file.
    fn read_into_recycled<'py>(
        &self,
        b: Bound<'py, PyBytes>,
        again: &mut bool,
    ) -> std::io::Result<Option<Bound<'py, PyBytes>>> {
        let py = b.py();
        let cap = b.as_bytes().len();
        let obj = b.as_ptr().cast::<pyo3::ffi::PyBytesObject>();
        // SAFETY: `b` came from the pool, so nothing else refers to it (reference count
        // one) and no one sees it change; as every `bytes`, it has room for its size plus
        // a NUL byte at `ob_sval`, and it stays alive (owned here) for the read.
        let (read, sval) = unsafe {
            let sval = std::ptr::addr_of_mut!((*obj).ob_sval).cast::<u8>();
            (self.recv_raw(sval, cap + 1), sval)
        };
        let give_back = |b: Bound<'py, PyBytes>| {
            // SAFETY: still private and allocated for `cap`; its NUL is rewritten.
            unsafe { crate::bytes_pool::set_len(b.as_ptr(), cap) };
            self.recycle_read(b, 0);
        };
        match read {
            Ok((n, cut)) if n > 0 && n <= cap => {
                // SAFETY: private, allocated for at least `cap >= n` bytes.
                unsafe { crate::bytes_pool::set_len(b.as_ptr(), n) };
                *again = cut;
                Ok(Some(b))
            }
            Ok((n, _)) if n > cap => {
                // SAFETY: the read wrote `n` (= cap + 1) bytes at `sval`, inside `b`,
                // which is alive until give_back below.
                let data = PyBytes::new(py, unsafe { std::slice::from_raw_parts(sval, n) });
                give_back(b);
                *again = true;
                Ok(Some(data))
            }
            Ok(_) => {
                give_back(b);
                Ok(None)
            }
            Err(e) => {
                give_back(b);
                Err(e)
            }
        }
    }

    /// asyncio's handling of a read's outcome: end of file goes to `eof_received`; data
    /// goes to `deliver` (after asking for another readiness event when the read filled
    /// its buffer), whose failure is fatal with `failed`; would-block waits; any other
    /// error is fatal.
    fn finish_read<T>(
        slf: &Bound<'_, Self>,
        read: std::io::Result<Option<(T, bool)>>,
        deliver: impl FnOnce(T) -> PyResult<()>,
        failed: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match read {
            Ok(None) => Self::read_eof(slf),
            Ok(Some((data, full))) => {
                if full {
                    this.lp.get().request_rearm(py, this.fd);
                }
                match deliver(data) {
                    Ok(()) => Ok(()),
                    Err(e) if errors::is_exit_exception(py, &e) => Err(e),
                    Err(e) => Self::fatal_error(slf, e, failed),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Self::fatal_error(slf, os_error(e), "Fatal read error on socket transport"),
        }
    }

    fn read_ready_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        if let Ok(tls) = protocol.cast::<TlsProtocol>() {
            return Self::read_ready_tls(slf, tls);
        }
        let read = protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|b| {
                with_buffer(&b, |v| {
                    if v.readonly {
                        return Err(PyTypeError::new_err(
                            "get_buffer() returned a read-only buffer",
                        ));
                    }
                    if v.len == 0 {
                        return Err(PyRuntimeError::new_err(
                            "get_buffer() returned an empty buffer",
                        ));
                    }
                    if !v.contiguous {
                        // asyncio's recv_into raises TypeError for it too.
                        return Err(PyTypeError::new_err(
                            "get_buffer() returned a non-contiguous buffer",
                        ));
                    }
                    // SAFETY: the buffer is writable, C-contiguous and `v.len` bytes
                    // long, and stays exported (neither moved nor freed) for this call.
                    let read = unsafe { this.recv_raw(v.ptr, v.len) };
                    Ok((read, v.len))
                })
            });
        let (read, len) = match read {
            Ok(r) => r,
            Err(e) if errors::is_exit_exception(py, &e) => return Err(e),
            Err(e) => {
                return Self::fatal_error(slf, e, "Fatal error: protocol.get_buffer() call failed.")
            }
        };
        let emptied = match &read {
            Ok((n, cut)) => *n > 0 && *n < len && !cut,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        };
        let drained_in = if emptied { this.lp.get().pass() } else { 0 };
        this.st.with(py, |s| s.drained_in = drained_in);
        Self::finish_read(
            slf,
            read.map(|(n, cut)| (n > 0).then_some((n, cut || n == len))),
            |n| {
                protocol
                    .call_method1(intern!(py, "buffer_updated"), (n,))
                    .map(drop)
            },
            "Fatal error: protocol.buffer_updated() call failed.",
        )
    }

    /// A read for the TLS layer: straight from the loop's buffer into its input BIO.
    fn read_ready_tls(slf: &Bound<'_, Self>, tls: &Bound<'_, TlsProtocol>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let read = this.lp.get().with_read_buf(py, |buf| {
            // SAFETY: `buf` is the loop's read buffer, writable for its length and
            // borrowed for the whole call.
            let (n, cut) = unsafe { this.recv_raw(buf.as_mut_ptr(), buf.len()) }?;
            // Only the copy into the BIO happens while the buffer is borrowed; the
            // protocol (which may call back into the loop) runs after.
            Ok((n > 0).then(|| {
                (
                    TlsProtocol::data_from_socket(tls, &buf[..n]),
                    cut || n == buf.len(),
                )
            }))
        });
        Self::finish_read(
            slf,
            read,
            |fed| fed.and_then(|()| TlsProtocol::on_incoming(tls)),
            "Fatal error: protocol.buffer_updated() call failed.",
        )
    }

    fn read_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.lp.get().is_debug() {
            py_refs::logger(py)?.call_method1("debug", ("%r received EOF", this.proxy(py)))?;
        }
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        let keep_open = match protocol
            .call_method0(intern!(py, "eof_received"))
            .and_then(|r| r.is_truthy())
        {
            Ok(k) => k,
            Err(e) if errors::is_exit_exception(py, &e) => return Err(e),
            Err(e) => {
                return Self::fatal_error(
                    slf,
                    e,
                    "Fatal error: protocol.eof_received() call failed.",
                )
            }
        };
        if keep_open {
            this.stop_reading_watch(py);
            Ok(())
        } else {
            Self::close(slf)
        }
    }

    /// Closes the descriptor once, through its socket object if one was made, keeping
    /// the addresses nobody has read yet for `get_extra_info`.
    fn close_socket(&self, py: Python<'_>) -> PyResult<()> {
        if !self.st.with(py, |s| s.socket.is_open()) {
            return Ok(());
        }
        let need = self.st.with(py, |s| match &s.extra {
            Some(e) => {
                let e = e.bind(py);
                if e.contains(intern!(py, "socket")).unwrap_or(false) {
                    [false, false]
                } else {
                    [
                        !e.contains(intern!(py, "sockname")).unwrap_or(false),
                        !e.contains(intern!(py, "peername")).unwrap_or(false),
                    ]
                }
            }
            None => [true, true],
        });
        let snapshot = [
            need[0].then(|| sockaddr::query(self.fd, false)).flatten(),
            need[1].then(|| sockaddr::query(self.fd, true)).flatten(),
        ];
        let slot = self.st.with(py, |s| {
            if need[0] || need[1] {
                s.addr_snapshot = Some(Box::new(snapshot));
            }
            let closed = SocketSlot::Closed(s.socket.object().map(|o| o.clone_ref(py)));
            std::mem::replace(&mut s.socket, closed)
        });
        self.lp.get().forget_transport(py, self.fd);
        self.lp.get().forget_fd(py, self.fd);
        slot.close_held(py, self.fd, false)
    }

    /// The connection's `socket.socket`, made from the descriptor on the first request
    /// (the object then owns it); after the close, the closed socket, or a closed one of
    /// the same kind if none was made while open.
    fn socket_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (made, open) = self.st.with(py, |s| {
            (
                s.socket.object().map(|o| o.clone_ref(py)),
                s.socket.is_open(),
            )
        });
        if let Some(made) = made {
            return Ok(made.into_bound(py));
        }
        let k = self.kind;
        let class = py_refs::socket_class(py)?;
        let sock = if open {
            class.call1((
                k.family,
                k.sock_type | libc::SOCK_NONBLOCK,
                k.proto,
                self.fd,
            ))?
        } else {
            let sock = class.call1((k.family, k.sock_type, k.proto))?;
            sock.call_method0(intern!(py, "close"))?;
            sock
        };
        // Making it ran Python code; install it only where the slot is still as it was.
        let installed = self.st.with(py, |s| match s.socket {
            SocketSlot::Bare if open => {
                s.socket = SocketSlot::Object(sock.clone().unbind());
                true
            }
            SocketSlot::Closed(None) if !open => {
                s.socket = SocketSlot::Closed(Some(sock.clone().unbind()));
                true
            }
            _ => false,
        });
        if !installed && open {
            // The descriptor is not this object's to close.
            sock.call_method0(intern!(py, "detach"))?;
        }
        Ok(sock)
    }
}

#[pymethods]
impl StreamTransport {
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::start_reading_watch(slf, Trigger::Edge)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lost, buffered) = slf.get().st.with(py, |s| (s.conn_lost > 0, s.buffered));
        if lost {
            return Ok(());
        }
        if buffered {
            Self::read_ready_buffered(slf)
        } else {
            Self::read_ready_data(slf)
        }
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flush_queued(slf)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc)
    }

    /// Write `data` (bytes, bytearray or memoryview) to the transport.
    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(b) = data.cast::<PyBytes>() {
            return Self::write_copy(slf, b.clone().unbind());
        }
        if Self::is_mutable(data) {
            return Self::write_mutable(slf, data);
        }
        Err(Self::type_error(data)?)
    }

    /// Write every bytes-like object of an iterable, in one go.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut chunks = Vec::new();
        for item in list_of_data.try_iter()? {
            chunks.push(Self::to_chunk(&item?)?);
        }
        Self::enqueue(slf, chunks)
    }

    /// Close the write end after queued data is flushed.
    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let shut_now = this.st.with(py, |s| {
            if s.closing || s.eof {
                return false;
            }
            s.eof = true;
            s.eof_sent = s.queue.is_empty();
            s.eof_sent
        });
        if shut_now {
            socket_io::shutdown_write(this.fd).map_err(os_error)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    /// asyncio's `_force_close(exc)`: the TLS protocol ends a failed connection with it.
    fn _force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::force_close(slf, (!exc.is_none()).then(|| exc.clone()))
    }

    /// Close now, dropping queued data; `connection_lost(None)` follows.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    /// Close after queued data is flushed; `connection_lost(None)` follows.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lost_now = this.st.with(py, |s| {
            if s.closing {
                return None;
            }
            s.closing = true;
            Some(if s.queue.is_empty() {
                s.conn_lost += 1;
                true
            } else {
                false
            })
        });
        let Some(lost_now) = lost_now else {
            return Ok(());
        };
        this.stop_reading_watch(py);
        if lost_now {
            this.stop_writing_watch(py);
            let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
            Loop::call_soon_internal(this.lp.bind(py), &cb, (py.None(),))?;
        }
        Ok(())
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.is_closing_flag(py)
    }

    /// `socket`, `sockname`, `peername`, and whatever extra the transport was made with.
    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let extra = self.extra(py)?;
        Ok(match extra.bind(py).get_item(name)? {
            Some(v) => v.unbind(),
            None => default.unwrap_or_else(|| py.None()),
        })
    }

    fn _extra_dict(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        self.extra(py)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        let pause = self.st.with(py, |s| {
            if s.closing || s.paused {
                return false;
            }
            s.paused = true;
            true
        });
        if pause {
            let drained_in = self.st.with(py, |s| s.drained_in);
            self.stop_reading_watch(py);
            if drained_in == self.lp.get().pass() {
                self.lp.get().reader_drained(py, self.fd);
            }
            if self.lp.get().is_debug() {
                py_refs::logger(py)?
                    .call_method1("debug", ("%r pauses reading", self.proxy(py)))?;
            }
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let resume = this.st.with(py, |s| {
            if s.closing || !s.paused {
                return false;
            }
            s.paused = false;
            true
        });
        if resume {
            Self::start_reading_watch(slf, Trigger::Resume)?;
            if this.lp.get().is_debug() {
                py_refs::logger(py)?
                    .call_method1("debug", ("%r resumes reading", this.proxy(py)))?;
            }
        }
        Ok(())
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.st.with(py, |s| !s.paused && !s.closing)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let (high, low) = water_marks(py, high, low)?;
        slf.get().st.with(py, |s| {
            s.high = high;
            s.low = low;
        });
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.st.with(py, |s| (s.low, s.high))
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.st.with(py, |s| s.queue.len())
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = is_buffered(protocol)?;
        let old = self.st.with(py, |s| {
            s.buffered = buffered;
            s.protocol.replace(protocol.clone().unbind())
        });
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    /// The descriptor, for the Python side (sendfile, repr).
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    /// The socket object while the connection is open (made now if nobody asked yet).
    fn _sock<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if !self.st.with(py, |s| s.socket.is_open()) {
            return Ok(None);
        }
        self.socket_object(py).map(Some)
    }

    /// A future that completes when the write queue is empty (sendfile waits on it).
    fn _make_empty_waiter<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if this.st.with(py, |s| s.empty_waiter.is_some()) {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let waiter = this
            .lp
            .bind(py)
            .call_method0(intern!(py, "create_future"))?;
        let empty = this.st.with(py, |s| {
            s.empty_waiter = Some(waiter.clone().unbind());
            s.queue.is_empty()
        });
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter)
    }

    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.st.with(py, |s| s.protocol_paused)
    }

    fn _loop(&self, py: Python<'_>) -> Py<Loop> {
        self.lp.clone_ref(py)
    }

    /// Lets `sock_sendfile` watch the descriptor while sendfile runs (asyncio takes the
    /// transport out of the loop's registry for that time).
    fn _release_fd(&self, py: Python<'_>) {
        self.lp.get().forget_transport(py, self.fd);
    }

    /// Ends what `_release_fd` began.
    fn _reclaim_fd(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        if this.st.with(py, |s| s.socket.is_open()) {
            this.lp
                .get()
                .adopt_transport(py, this.fd, slf.clone().unbind());
        }
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let w = self.st.with(py, |s| s.empty_waiter.take());
        drop(w);
    }

    /// The state summary asyncio puts in a transport's repr.
    fn _repr_info(&self, py: Python<'_>) -> String {
        let loop_closed = self.lp.get().is_closed_flag();
        self.st
            .with(py, |s| Self::repr_info(self.fd, loop_closed, s))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("<StreamTransport {}>", self._repr_info(py))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.lp)?;
        if let Some(visited) = self.st.try_peek(|s| -> Result<(), PyTraverseError> {
            visit.call(s.socket.object())?;
            visit.call(s.proxy.as_ref())?;
            visit.call(s.protocol.as_ref())?;
            visit.call(s.server.as_ref())?;
            visit.call(s.empty_waiter.as_ref())?;
            visit.call(s.extra.as_ref())?;
            Ok(())
        }) {
            visited?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        // Breaks the transport <-> protocol cycle of a connection nobody closed.
        let taken = self
            .st
            .try_peek(|s| (s.proxy.take(), s.protocol.take(), s.server.take()));
        drop(taken);
    }
}

impl StreamTransport {
    /// The state summary asyncio puts in a transport's repr.
    fn repr_info(fd: RawFd, loop_closed: bool, s: &State) -> String {
        let mut info = String::new();
        if !s.socket.is_open() {
            info.push_str("closed ");
        } else if s.closing {
            info.push_str("closing ");
        }
        info.push_str(&format!("fd={fd}"));
        if !loop_closed {
            info.push_str(if s.reading {
                " read=polling"
            } else {
                " read=idle"
            });
            info.push_str(&format!(
                " write=<{}, bufsize={}>",
                if s.writing { "polling" } else { "idle" },
                s.queue.len()
            ));
        }
        info
    }

    fn extra(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let (given, snapshot, open) = self.st.with(py, |s| {
            (
                s.extra.as_ref().map(|e| e.clone_ref(py)),
                s.addr_snapshot.as_deref().copied(),
                s.socket.is_open(),
            )
        });
        if let Some(e) = &given {
            if e.bind(py).contains(intern!(py, "socket"))? {
                return Ok(e.clone_ref(py));
            }
        }
        // Built on first use: most connections never ask.
        let extra = match given {
            Some(e) => e.bind(py).copy()?,
            None => PyDict::new(py),
        };
        for (i, key) in ["sockname", "peername"].into_iter().enumerate() {
            if extra.contains(key)? {
                continue;
            }
            let raw = if open {
                sockaddr::query(self.fd, i == 1)
            } else {
                snapshot.and_then(|snap| snap[i])
            };
            let mut value = match raw {
                Some(raw) => raw.to_py(py)?,
                None => None,
            };
            if value.is_none() && open {
                // A family not decoded here: the socket module knows it.
                let method = if i == 1 { "getpeername" } else { "getsockname" };
                value = self
                    .socket_object(py)
                    .and_then(|s| s.call_method0(method))
                    .ok();
            }
            extra.set_item(key, value)?;
        }
        extra.set_item(
            "socket",
            py_refs::transport_socket_class(py)?.call1((self.socket_object(py)?,))?,
        )?;
        let extra = extra.unbind();
        let old = self.st.with(py, |s| s.extra.replace(extra.clone_ref(py)));
        drop(old);
        Ok(extra)
    }

    /// asyncio's `_call_connection_lost`: tell the protocol, close the socket, detach
    /// from the server, and drop the references that tie the objects together.
    fn call_connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = this.protocol(py);
        let result = match protocol {
            Some(p) => p
                .call_method1(intern!(py, "connection_lost"), (exc,))
                .map(|_| ()),
            None => Ok(()),
        };
        let closed = this.close_socket(py);
        let (proxy, protocol, server) = this
            .st
            .with(py, |s| (s.proxy.take(), s.protocol.take(), s.server.take()));
        drop(protocol);
        let detached = match server {
            Some(server) => server
                .bind(py)
                .call_method1(intern!(py, "_detach"), (proxy,))
                .map(|_| ()),
            None => Ok(()),
        };
        result.and(closed).and(detached)
    }
}

/// asyncio's transport `__del__`, here rather than on the Python object so that the
/// connections that are closed (all but a leaked few) pay for no Python finalizer: a
/// transport collected while its connection is open warns `unclosed transport` and
/// closes the descriptor.
impl Drop for StreamTransport {
    fn drop(&mut self) {
        let (fd, loop_closed) = (self.fd, self.lp.get().is_closed_flag());
        let state = self.st.get_mut();
        if !state.socket.is_open() {
            return;
        }
        let info = Self::repr_info(fd, loop_closed, state);
        let message = format!("unclosed transport <SocketTransport {info}>");
        let slot = std::mem::replace(&mut state.socket, SocketSlot::Closed(None));
        // Deallocation runs with the interpreter attached; whatever exception is being
        // raised around it is kept and restored.
        Python::attach(|py| {
            let pending = PyErr::take(py);
            let category = py.get_type::<pyo3::exceptions::PyResourceWarning>();
            // The message is ASCII text and a number: it has no NUL.
            let message = std::ffi::CString::new(message).unwrap_or_default();
            let warned = PyErr::warn(py, &category, &message, 1);
            for failed in [warned, slot.close_held(py, fd, true)] {
                if let Err(e) = failed {
                    e.write_unraisable(py, None);
                }
            }
            if let Some(e) = pending {
                e.restore(py);
            }
        });
    }
}

/// asyncio's `_set_write_buffer_limits` arithmetic and checks.
fn water_marks(
    py: Python<'_>,
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, usize)> {
    let high = high.filter(|h| !h.is_none());
    let low = low.filter(|l| !l.is_none());
    let high: i64 = match (high, low) {
        (Some(h), _) => h.extract()?,
        (None, None) => DEFAULT_HIGH_WATER as i64,
        (None, Some(l)) => 4 * l.extract::<i64>()?,
    };
    let low: i64 = match low {
        Some(l) => l.extract()?,
        None => high / 4,
    };
    if !(high >= low && low >= 0) {
        let _ = py;
        return Err(PyValueError::new_err(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high as usize, low as usize))
}

/// Registers the stream transport's Python-visible pieces.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<StreamTransport>()?;
    m.add_function(wrap_pyfunction!(make_stream_transport, m)?)?;
    let _ = PyTuple::empty(m.py());
    Ok(())
}
