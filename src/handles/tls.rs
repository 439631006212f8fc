//! TLS over a stream transport: `TlsProtocol`, asyncio's `SSLProtocol` state machine
//! with the pump in Rust.
//!
//! The TLS engine is Python's own `ssl.SSLObject` over two `ssl.MemoryBIO`s, because
//! users hand the loop `ssl.SSLContext` objects. Everything between those calls (the
//! handshake, flush and shutdown states, the write backlog, both directions of flow
//! control, the timeouts) runs here: a record costs the `SSLObject` and BIO calls and
//! nothing else in Python.
//!
//! To the transport below, a `TlsProtocol` is a buffered protocol; `StreamTransport`
//! recognises it and hands it each read without the `get_buffer`/`buffer_updated` calls.
//! To the application, its methods are those of the transport it sees
//! (`oxio._tls.SSLTransport`, a real `asyncio.Transport`).

use std::collections::VecDeque;

use pyo3::exceptions::{PyConnectionResetError, PyNotImplementedError, PyTimeoutError};
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::errors;
use crate::gil_cell::GilCell;
use crate::py_refs;

/// Largest plaintext read asked of the TLS engine at once (asyncio's `max_size`).
const MAX_READ: usize = 256 * 1024;
/// After this many writes to a closed connection, each one is logged.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ` (KiB).
const READ_HIGH_WATER_KIB: usize = 256;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_WRITE` (KiB).
const WRITE_HIGH_WATER_KIB: usize = 512;

/// Where the TLS session is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Unwrapped,
    Handshake,
    Wrapped,
    Flushing,
    Shutdown,
}

/// Which of its callbacks the application protocol has had.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppPhase {
    Init,
    Made,
    Eof,
    Lost,
}

/// The Python objects a record passes through, fixed for the connection's life.
struct Engine {
    sslobj: Py<PyAny>,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    /// Bound `incoming.write`, `outgoing.read`, `sslobj.read`, `sslobj.write`.
    incoming_write: Py<PyAny>,
    outgoing_read: Py<PyAny>,
    ssl_read: Py<PyAny>,
    ssl_write: Py<PyAny>,
}

struct State {
    phase: Phase,
    app_phase: AppPhase,
    app_protocol: Option<Py<PyAny>>,
    app_is_buffer: bool,
    app_transport: Option<Py<PyAny>>,
    /// The application transport's `_closed`.
    app_closed: bool,
    transport: Option<Py<PyAny>>,
    /// Bound `transport.write` of the transport below.
    transport_write: Option<Py<PyAny>>,
    waiter: Option<Py<PyAny>>,
    extra: Py<PyDict>,
    handshake_timer: Option<Py<PyAny>>,
    /// `loop.time()` when the handshake started, in debug mode (for its log line).
    handshake_start: Option<f64>,
    shutdown_timer: Option<Py<PyAny>>,
    write_backlog: VecDeque<Py<PyAny>>,
    write_buffer_size: usize,
    conn_lost: u32,
    eof_received: bool,
    ssl_writing_paused: bool,
    ssl_reading_paused: bool,
    app_reading_paused: bool,
    app_writing_paused: bool,
    incoming_high: usize,
    incoming_low: usize,
    outgoing_high: usize,
    outgoing_low: usize,
    /// What `get_buffer` hands a transport that is not ours, and its view.
    read_buffer: Option<(Py<PyByteArray>, Py<PyAny>)>,
}

/// The TLS layer: a protocol to the transport below, the engine of the transport above.
#[pyclass(frozen, module = "oxio._oxio")]
pub struct TlsProtocol {
    lp: Py<PyAny>,
    engine: Engine,
    handshake_timeout: f64,
    /// The timeout as the caller wrote it, for the error message (`10`, not `10.0`).
    handshake_timeout_text: String,
    shutdown_timeout: f64,
    st: GilCell<State>,
}

/// asyncio's `add_flowcontrol_defaults`: (high, low) from what the caller gave.
fn flow_limits(high: Option<isize>, low: Option<isize>, kib: usize) -> PyResult<(usize, usize)> {
    let hi = match (high, low) {
        (Some(h), _) => h,
        (None, Some(l)) => 4 * l,
        (None, None) => (kib * 1024) as isize,
    };
    let lo = low.unwrap_or(hi / 4);
    if !(hi >= lo && lo >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({hi}) must be >= low ({lo}) must be >= 0"
        )));
    }
    Ok((hi as usize, lo as usize))
}

/// True for the errors asyncio reads as "the engine wants more input".
fn is_again(py: Python<'_>, e: &PyErr) -> PyResult<bool> {
    Ok(e.is_instance(py, py_refs::ssl_want_read_error(py)?)
        || e.is_instance(py, py_refs::ssl_syscall_error(py)?))
}

impl TlsProtocol {
    fn app_protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st.bound(py, |s| &s.app_protocol)
    }

    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st.bound(py, |s| &s.transport)
    }

    /// The loop's debug mode, asked of the loop object (as asyncio's layer does).
    fn debug(&self, py: Python<'_>) -> PyResult<bool> {
        self.lp
            .bind(py)
            .call_method0(intern!(py, "get_debug"))?
            .is_truthy()
    }

    fn phase(&self, py: Python<'_>) -> Phase {
        self.st.with(py, |s| s.phase)
    }

    fn set_phase(&self, py: Python<'_>, new: Phase) -> PyResult<()> {
        self.st.with(py, |s| {
            use Phase::*;
            let allowed = matches!(
                (s.phase, new),
                (_, Unwrapped)
                    | (Unwrapped, Handshake)
                    | (Handshake, Wrapped)
                    | (Wrapped, Flushing)
                    | (Flushing, Shutdown)
            );
            if allowed {
                s.phase = new;
                Ok(())
            } else {
                Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "cannot switch state from {} to {}",
                    phase_name(s.phase),
                    phase_name(new)
                )))
            }
        })
    }

    fn set_app_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let is_buffer = protocol.hasattr(intern!(py, "get_buffer"))?
            && protocol.is_instance(py_refs::buffered_protocol_class(py)?)?;
        // The old protocol is released after the borrow: its finalizer may call us.
        let old = self.st.with(py, |s| {
            s.app_is_buffer = is_buffer;
            s.app_protocol.replace(protocol.clone().unbind())
        });
        drop(old);
        Ok(())
    }

    fn wakeup_waiter(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(waiter) = self.st.with(py, |s| s.waiter.take()) else {
            return Ok(());
        };
        let waiter = waiter.bind(py);
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            match exc {
                Some(e) => waiter.call_method1(intern!(py, "set_exception"), (e,))?,
                None => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
            };
        }
        Ok(())
    }

    fn call_later(
        slf: &Bound<'_, Self>,
        delay: f64,
        method: &Bound<'_, pyo3::types::PyString>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let cb = slf.getattr(method)?;
        Ok(slf
            .get()
            .lp
            .bind(py)
            .call_method1(intern!(py, "call_later"), (delay, cb))?
            .unbind())
    }

    fn call_soon(
        &self,
        py: Python<'_>,
        cb: &Bound<'_, PyAny>,
        arg: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let lp = self.lp.bind(py);
        match arg {
            Some(a) => lp.call_method1(intern!(py, "call_soon"), (cb, a))?,
            None => lp.call_method1(intern!(py, "call_soon"), (cb,))?,
        };
        Ok(())
    }

    fn cancel_timer(timer: Option<Py<PyAny>>, py: Python<'_>) -> PyResult<()> {
        if let Some(t) = timer {
            t.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    // ---- handshake ------------------------------------------------------------------

    fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.debug(py)? {
            py_refs::logger(py)?.call_method1("debug", ("%r starts SSL handshake", slf))?;
            let now: f64 = this
                .lp
                .bind(py)
                .call_method0(intern!(py, "time"))?
                .extract()?;
            this.st.with(py, |s| s.handshake_start = Some(now));
        }
        this.set_phase(py, Phase::Handshake)?;
        let timer = Self::call_later(
            slf,
            this.handshake_timeout,
            intern!(py, "_check_handshake_timeout"),
        )?;
        this.st.with(py, |s| s.handshake_timer = Some(timer));
        Self::do_handshake(slf)
    }

    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        match slf
            .get()
            .engine
            .sslobj
            .bind(py)
            .call_method0(intern!(py, "do_handshake"))
        {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if e.is_instance(py, py_refs::ssl_error(py)?) => {
                Self::on_handshake_complete(slf, Some(e.into_value(py).into_bound(py).into_any()))
            }
            Err(e) => Err(e),
        }
    }

    fn on_handshake_complete(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let timer = this.st.with(py, |s| s.handshake_timer.take());
        Self::cancel_timer(timer, py)?;
        let sslobj = this.engine.sslobj.bind(py);
        let peercert = match exc {
            None => this
                .set_phase(py, Phase::Wrapped)
                .and_then(|_| sslobj.call_method0(intern!(py, "getpeercert"))),
            Some(e) => Err(PyErr::from_value(e)),
        };
        let peercert = match peercert {
            Ok(p) => p,
            Err(e) => {
                this.set_phase(py, Phase::Unwrapped)?;
                let msg = if e.is_instance(py, py_refs::ssl_certificate_error(py)?) {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                let exc = e.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, &exc, msg)?;
                return this.wakeup_waiter(py, Some(&exc));
            }
        };
        if let Some(start) = this.st.with(py, |s| s.handshake_start.take()) {
            let now: f64 = this
                .lp
                .bind(py)
                .call_method0(intern!(py, "time"))?
                .extract()?;
            py_refs::logger(py)?.call_method1(
                "debug",
                ("%r: SSL handshake took %.1f ms", slf, (now - start) * 1e3),
            )?;
        }
        let extra = this.st.with(py, |s| s.extra.clone_ref(py));
        let extra = extra.bind(py);
        extra.set_item(intern!(py, "peercert"), peercert)?;
        extra.set_item(
            intern!(py, "cipher"),
            sslobj.call_method0(intern!(py, "cipher"))?,
        )?;
        extra.set_item(
            intern!(py, "compression"),
            sslobj.call_method0(intern!(py, "compression"))?,
        )?;
        extra.set_item(intern!(py, "ssl_object"), sslobj)?;
        let made = this.st.with(py, |s| {
            if s.app_phase == AppPhase::Init {
                s.app_phase = AppPhase::Made;
                Some((opt_ref(&s.app_protocol, py), opt_ref(&s.app_transport, py)))
            } else {
                None
            }
        });
        if let Some((Some(protocol), Some(transport))) = made {
            protocol
                .bind(py)
                .call_method1(intern!(py, "connection_made"), (transport,))?;
        }
        this.wakeup_waiter(py, None)?;
        Self::do_read(slf)
    }

    // ---- shutdown -------------------------------------------------------------------

    fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let phase = this.phase(py);
        if matches!(phase, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped) {
            return Ok(());
        }
        this.st.with(py, |s| {
            if s.app_transport.is_some() {
                s.app_closed = true;
            }
        });
        if phase == Phase::Handshake {
            return Self::abort_inner(slf);
        }
        this.set_phase(py, Phase::Flushing)?;
        let timer = Self::call_later(
            slf,
            this.shutdown_timeout,
            intern!(py, "_check_shutdown_timeout"),
        )?;
        this.st.with(py, |s| s.shutdown_timer = Some(timer));
        Self::do_flush(slf)
    }

    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        slf.get().set_phase(slf.py(), Phase::Shutdown)?;
        Self::do_shutdown(slf)
    }

    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = if this.st.with(py, |s| s.eof_received) {
            Ok(())
        } else {
            this.engine
                .sslobj
                .bind(py)
                .call_method0(intern!(py, "unwrap"))
                .map(drop)
        };
        match result {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if e.is_instance(py, py_refs::ssl_error(py)?) => {
                Self::on_shutdown_complete(slf, Some(e.into_value(py).into_bound(py).into_any()))
            }
            Err(e) => Err(e),
        }
    }

    fn on_shutdown_complete(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let timer = this.st.with(py, |s| s.shutdown_timer.take());
        Self::cancel_timer(timer, py)?;
        match exc {
            Some(e) => Self::fatal_error(slf, &e, "Fatal error on transport"),
            None => match this.transport(py) {
                Some(t) => this.call_soon(py, &t.getattr(intern!(py, "close"))?, None),
                None => Ok(()),
            },
        }
    }

    fn abort_inner(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.set_phase(py, Phase::Unwrapped)?;
        if let Some(t) = this.transport(py) {
            t.call_method0(intern!(py, "abort"))?;
        }
        Ok(())
    }

    // ---- outgoing -------------------------------------------------------------------

    fn write_appdata(slf: &Bound<'_, Self>, items: &[Bound<'_, PyAny>]) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let phase = this.phase(py);
        if matches!(phase, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped) {
            let lost = this.st.with(py, |s| {
                let n = s.conn_lost;
                s.conn_lost += 1;
                n
            });
            if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                py_refs::logger(py)?.call_method1("warning", ("SSL connection is closed",))?;
            }
            return Ok(());
        }
        if let [data] = items {
            if phase == Phase::Wrapped && this.st.with(py, |s| s.write_backlog.is_empty()) {
                // The common case: nothing queued, so the record goes straight out.
                return match Self::write_now(slf, data) {
                    Err(e)
                        if !errors::is_exit_exception(py, &e)
                            && e.is_instance_of::<pyo3::exceptions::PyException>(py) =>
                    {
                        let exc = e.into_value(py).into_bound(py).into_any();
                        Self::fatal_error(slf, &exc, "Fatal error on SSL protocol")
                    }
                    other => other,
                };
            }
        }
        for data in items {
            let size = data.len()?;
            this.st.with(py, |s| {
                s.write_backlog.push_back(data.clone().unbind());
                s.write_buffer_size += size;
            });
        }
        if phase == Phase::Wrapped {
            if let Err(e) = Self::do_write(slf) {
                if errors::is_exit_exception(py, &e)
                    || !e.is_instance_of::<pyo3::exceptions::PyException>(py)
                {
                    return Err(e);
                }
                let exc = e.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, &exc, "Fatal error on SSL protocol")?;
            }
        }
        Ok(())
    }

    /// Encrypts `data` with nothing queued before it; what the engine does not take
    /// joins the backlog.
    fn write_now(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let len = data.len()?;
        let count: usize = match this.engine.ssl_write.bind(py).call1((data,)) {
            Ok(n) => n.extract()?,
            Err(e) if is_again(py, &e)? => 0,
            Err(e) => return Err(e),
        };
        if count < len {
            let rest = data.get_item(pyo3::types::PySlice::new(
                py,
                count as isize,
                len as isize,
                1,
            ))?;
            this.st.with(py, |s| {
                s.write_backlog.push_back(rest.unbind());
                s.write_buffer_size += len - count;
            });
        }
        Self::process_outgoing(slf)
    }

    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let ssl_write = this.engine.ssl_write.bind(py);
        loop {
            let Some(data) = this
                .st
                .with(py, |s| s.write_backlog.front().map(|d| d.clone_ref(py)))
            else {
                break;
            };
            let data = data.bind(py);
            let count: usize = match ssl_write.call1((data,)) {
                Ok(n) => n.extract()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            let len = data.len()?;
            let rest = if count < len {
                Some(data.get_item(pyo3::types::PySlice::new(
                    py,
                    count as isize,
                    len as isize,
                    1,
                ))?)
            } else {
                None
            };
            let done = this.st.with(py, |s| match rest {
                Some(r) => {
                    s.write_buffer_size -= count;
                    Some(std::mem::replace(&mut s.write_backlog[0], r.unbind()))
                }
                None => {
                    s.write_buffer_size -= len;
                    s.write_backlog.pop_front()
                }
            });
            drop(done);
        }
        Self::process_outgoing(slf)
    }

    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut pending = this.outgoing_pending(py)?;
        let write = this.st.with(py, |s| {
            if s.ssl_writing_paused || pending == 0 {
                None
            } else {
                opt_ref(&s.transport_write, py)
            }
        });
        if let Some(write) = write {
            let data = this.engine.outgoing_read.bind(py).call0()?;
            pending = 0;
            write.bind(py).call1((data,))?;
        }
        Self::control_app_writing_at(slf, pending + this.st.with(py, |s| s.write_buffer_size))
    }

    fn outgoing_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.engine
            .outgoing
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()
    }

    fn write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.outgoing_pending(py)? + self.st.with(py, |s| s.write_buffer_size))
    }

    fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let size = slf.get().write_buffer_size(slf.py())?;
        Self::control_app_writing_at(slf, size)
    }

    /// Pauses or resumes the application's writing for a write buffer of `size` bytes.
    fn control_app_writing_at(slf: &Bound<'_, Self>, size: usize) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let call = this.st.with(py, |s| {
            if size >= s.outgoing_high && !s.app_writing_paused {
                s.app_writing_paused = true;
                Some("pause_writing")
            } else if size <= s.outgoing_low && s.app_writing_paused {
                s.app_writing_paused = false;
                Some("resume_writing")
            } else {
                None
            }
        });
        let (Some(name), Some(protocol)) = (call, this.app_protocol(py)) else {
            return Ok(());
        };
        match protocol.call_method0(name) {
            Ok(_) => Ok(()),
            Err(e) if errors::is_exit_exception(py, &e) => Err(e),
            Err(e) => {
                let ctx = PyDict::new(py);
                ctx.set_item("message", format!("protocol.{name}() failed"))?;
                ctx.set_item("exception", e.into_value(py))?;
                ctx.set_item(
                    "transport",
                    this.st.with(py, |s| opt_ref(&s.app_transport, py)),
                )?;
                ctx.set_item("protocol", slf)?;
                this.lp
                    .bind(py)
                    .call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
                Ok(())
            }
        }
    }

    // ---- incoming -------------------------------------------------------------------

    /// Hands bytes read from the socket to the TLS engine.
    fn feed_incoming(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        // SAFETY: the memoryview is read-only over `data`, which outlives it: it is
        // released (MemoryBIO.write copies what it is given) before this returns.
        let view = unsafe {
            let ptr = pyo3::ffi::PyMemoryView_FromMemory(
                data.as_ptr() as *mut std::os::raw::c_char,
                data.len() as pyo3::ffi::Py_ssize_t,
                pyo3::ffi::PyBUF_READ,
            );
            Bound::from_owned_ptr_or_err(py, ptr)?
        };
        let result = self.engine.incoming_write.bind(py).call1((&view,));
        // SAFETY: `view` is a live object we hold a reference to.
        if unsafe { pyo3::ffi::Py_REFCNT(view.as_ptr()) } > 1 {
            // Someone kept the view: make it unusable before `data` goes away.
            view.call_method0(intern!(py, "release"))?;
        }
        result.map(drop)
    }

    /// What the new input means in the current phase.
    pub(crate) fn on_incoming(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::Handshake => Self::do_handshake(slf),
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            Phase::Unwrapped => Ok(()),
        }
    }

    /// Feeds bytes read by a `StreamTransport` (no `get_buffer` round trip).
    pub(crate) fn data_from_socket(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        slf.get().feed_incoming(slf.py(), data)
    }

    fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !matches!(this.phase(py), Phase::Wrapped | Phase::Flushing) {
            return Ok(());
        }
        let result = (|| {
            let (paused, buffer, backlog) = this.st.with(py, |s| {
                (
                    s.app_reading_paused,
                    s.app_is_buffer,
                    !s.write_backlog.is_empty(),
                )
            });
            if !paused {
                if buffer {
                    Self::do_read_buffered(slf)?;
                } else {
                    Self::do_read_copied(slf)?;
                }
                let backlog = backlog || this.st.with(py, |s| !s.write_backlog.is_empty());
                if backlog {
                    Self::do_write(slf)?;
                } else {
                    Self::process_outgoing(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })();
        match result {
            Ok(()) => Ok(()),
            Err(e) if !e.is_instance_of::<pyo3::exceptions::PyException>(py) => Err(e),
            Err(e) => {
                let exc = e.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, &exc, "Fatal error on SSL protocol")
            }
        }
    }

    /// Bytes waiting in the input BIO plus decrypted bytes the engine holds.
    fn incoming_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.engine
            .incoming
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()
    }

    fn pending_input(&self, py: Python<'_>) -> PyResult<usize> {
        let incoming = self.incoming_pending(py)?;
        let buffered: usize = self
            .engine
            .sslobj
            .bind(py)
            .call_method0(intern!(py, "pending"))?
            .extract()?;
        Ok(incoming + buffered)
    }

    fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut chunks: Vec<Bound<'_, PyBytes>> = Vec::new();
        let mut close_notify = false;
        loop {
            let (chunk, more) = this.read_plaintext(py, &mut close_notify)?;
            chunks.extend(chunk);
            if !more || close_notify {
                break;
            }
        }
        let data = match chunks.len() {
            0 => None,
            1 => chunks.pop().map(Bound::into_any),
            _ => Some(PyBytes::new(py, b"").call_method1(intern!(py, "join"), (chunks,))?),
        };
        if let (Some(data), Some(protocol)) = (data, this.app_protocol(py)) {
            protocol.call_method1(intern!(py, "data_received"), (data,))?;
        }
        if close_notify {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    /// Decrypts into one new `bytes`, filled in place: sized by the input known to wait
    /// (plaintext is never longer than its records), trimmed to what was read. Returns
    /// the bytes (if any) and whether it filled up, so that more may be waiting.
    fn read_plaintext<'py>(
        &self,
        py: Python<'py>,
        close_notify: &mut bool,
    ) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
        // With read-ahead off (Python never turns it on) the engine takes one record at a
        // time from the BIO; the only input neither count shows is the start of a record
        // it could not finish, and that cannot progress until the BIO has more. So "both
        // counts are zero" means a read could only raise SSLWantReadError, and an
        // exception per read is not free. A record finished from a short BIO tail yields
        // more than the tail: the buffer fills, and the caller reads on.
        let cap = self.pending_input(py)?.min(MAX_READ);
        if cap == 0 {
            return Ok((None, false));
        }
        // SAFETY: a NULL source asks for an uninitialised bytes object of `cap` bytes;
        // the result is a new reference or NULL with an exception set.
        let obj = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), cap as isize),
            )?
        };
        // SAFETY: `obj` is a live bytes object of `cap` bytes.
        let base = unsafe { pyo3::ffi::PyBytes_AsString(obj.as_ptr()) };
        let read = self.engine.ssl_read.bind(py);
        let mut filled = 0usize;
        let mut more = true;
        while filled < cap {
            // SAFETY: a writable view of the unfilled tail of `obj`, which nothing else can
            // see yet; the view is released before `obj` is resized or shared.
            let view = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    pyo3::ffi::PyMemoryView_FromMemory(
                        base.add(filled),
                        (cap - filled) as isize,
                        pyo3::ffi::PyBUF_WRITE,
                    ),
                )?
            };
            let result = read.call1((cap - filled, &view));
            // SAFETY: `view` is a live object we hold a reference to.
            if unsafe { pyo3::ffi::Py_REFCNT(view.as_ptr()) } > 1 {
                view.call_method0(intern!(py, "release"))?;
            }
            drop(view);
            match result {
                Ok(n) => {
                    let n: usize = n.extract()?;
                    if n == 0 {
                        *close_notify = true;
                        more = false;
                        break;
                    }
                    filled += n;
                    if filled < cap && self.pending_input(py)? == 0 {
                        more = false;
                        break;
                    }
                }
                Err(e) if is_again(py, &e)? => {
                    more = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok((None, false));
        }
        let mut ptr = obj.into_ptr();
        if filled < cap {
            // SAFETY: `ptr` is the only reference to a bytes object that has not been
            // shared, as _PyBytes_Resize requires; on failure it frees the object, sets
            // an exception and NULLs the pointer.
            if unsafe { crate::handles::stream::bytes_resize(&mut ptr, filled) } != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        // SAFETY: `ptr` is a new reference to a bytes object.
        let bytes = unsafe { Bound::from_owned_ptr(py, ptr).cast_into_unchecked::<PyBytes>() };
        Ok((Some(bytes), more && filled == cap))
    }

    fn do_read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.app_protocol(py) else {
            return Ok(());
        };
        let pending: usize = this.incoming_pending(py)?;
        let buf = protocol.call_method1(intern!(py, "get_buffer"), (pending,))?;
        let wants = buf.len()?;
        let read = this.engine.ssl_read.bind(py);
        let mut offset = 0usize;
        let mut count = 1usize;
        let result: PyResult<()> = (|| {
            count = read.call1((wants, &buf))?.extract()?;
            if count > 0 {
                offset = count;
                while offset < wants {
                    let view = PyMemoryView::from(&buf)?;
                    let rest = view.get_item(pyo3::types::PySlice::new(
                        py,
                        offset as isize,
                        wants as isize,
                        1,
                    ))?;
                    count = read.call1((wants - offset, rest))?.extract()?;
                    if count > 0 {
                        offset += count;
                    } else {
                        break;
                    }
                }
                if offset >= wants {
                    let again = slf.getattr(intern!(py, "_read_more"))?;
                    this.call_soon(py, &again, None)?;
                }
            }
            Ok(())
        })();
        match result {
            Err(e) if is_again(py, &e)? => {}
            other => other?,
        }
        if offset > 0 {
            protocol.call_method1(intern!(py, "buffer_updated"), (offset,))?;
        }
        if count == 0 {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = this.st.with(py, |s| {
            if s.app_phase == AppPhase::Made {
                s.app_phase = AppPhase::Eof;
                opt_ref(&s.app_protocol, py)
            } else {
                None
            }
        });
        let Some(protocol) = protocol else {
            return Ok(());
        };
        match protocol.bind(py).call_method0(intern!(py, "eof_received")) {
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    py_refs::logger(py)?.call_method1(
                        "warning",
                        ("returning true from eof_received() has no effect when using ssl",),
                    )?;
                }
                Ok(())
            }
            Err(e) if errors::is_exit_exception(py, &e) => Err(e),
            Err(e) => {
                let exc = e.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, &exc, "Error calling eof_received()")
            }
        }
    }

    fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size: usize = this.incoming_pending(py)?;
        let call = this.st.with(py, |s| {
            if size >= s.incoming_high && !s.ssl_reading_paused {
                s.ssl_reading_paused = true;
                Some("pause_reading")
            } else if size <= s.incoming_low && s.ssl_reading_paused {
                s.ssl_reading_paused = false;
                Some("resume_reading")
            } else {
                None
            }
        });
        if let (Some(name), Some(t)) = (call, this.transport(py)) {
            t.call_method0(name)?;
        }
        Ok(())
    }

    fn fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let transport = this.transport(py);
        if let Some(t) = &transport {
            t.call_method1(intern!(py, "_force_close"), (exc,))?;
        }
        if exc.is_instance_of::<PyOSError>() {
            return Ok(());
        }
        if exc.is_instance(py_refs::cancelled_error(py)?)? {
            return Ok(());
        }
        let ctx = PyDict::new(py);
        ctx.set_item("message", message)?;
        ctx.set_item("exception", exc)?;
        ctx.set_item("transport", transport)?;
        ctx.set_item("protocol", slf)?;
        this.lp
            .bind(py)
            .call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        Ok(())
    }
}

/// A new reference to an optional object.
fn opt_ref(o: &Option<Py<PyAny>>, py: Python<'_>) -> Option<Py<PyAny>> {
    o.as_ref().map(|p| p.clone_ref(py))
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Unwrapped => "SSLProtocolState.UNWRAPPED",
        Phase::Handshake => "SSLProtocolState.DO_HANDSHAKE",
        Phase::Wrapped => "SSLProtocolState.WRAPPED",
        Phase::Flushing => "SSLProtocolState.FLUSHING",
        Phase::Shutdown => "SSLProtocolState.SHUTDOWN",
    }
}

#[pymethods]
impl TlsProtocol {
    /// Built by `oxio._tls.make_tls_protocol`, which checks the arguments, makes the
    /// context and the `SSLObject`, and attaches the application transport.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        lp: Py<PyAny>,
        app_protocol: &Bound<'_, PyAny>,
        sslcontext: &Bound<'_, PyAny>,
        sslobj: &Bound<'_, PyAny>,
        incoming: &Bound<'_, PyAny>,
        outgoing: &Bound<'_, PyAny>,
        waiter: Option<Py<PyAny>>,
        call_connection_made: bool,
        handshake_timeout: &Bound<'_, PyAny>,
        shutdown_timeout: f64,
    ) -> PyResult<Self> {
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", sslcontext)?;
        let (incoming_high, incoming_low) = flow_limits(None, None, READ_HIGH_WATER_KIB)?;
        let (outgoing_high, outgoing_low) = flow_limits(None, None, WRITE_HIGH_WATER_KIB)?;
        let this = TlsProtocol {
            lp,
            engine: Engine {
                incoming_write: incoming.getattr("write")?.unbind(),
                outgoing_read: outgoing.getattr("read")?.unbind(),
                ssl_read: sslobj.getattr("read")?.unbind(),
                ssl_write: sslobj.getattr("write")?.unbind(),
                sslobj: sslobj.clone().unbind(),
                incoming: incoming.clone().unbind(),
                outgoing: outgoing.clone().unbind(),
            },
            handshake_timeout: handshake_timeout.extract()?,
            handshake_timeout_text: handshake_timeout.str()?.to_string(),
            shutdown_timeout,
            st: GilCell::new(State {
                phase: Phase::Unwrapped,
                app_phase: if call_connection_made {
                    AppPhase::Init
                } else {
                    AppPhase::Made
                },
                app_protocol: None,
                app_is_buffer: false,
                app_transport: None,
                app_closed: false,
                transport: None,
                transport_write: None,
                waiter,
                extra: extra.unbind(),
                handshake_timer: None,
                handshake_start: None,
                shutdown_timer: None,
                write_backlog: VecDeque::new(),
                write_buffer_size: 0,
                conn_lost: 0,
                eof_received: false,
                ssl_writing_paused: false,
                ssl_reading_paused: false,
                app_reading_paused: false,
                app_writing_paused: false,
                incoming_high,
                incoming_low,
                outgoing_high,
                outgoing_low,
                read_buffer: None,
            }),
        };
        this.set_app_protocol(py, app_protocol)?;
        Ok(this)
    }

    /// Attaches the application transport (once).
    fn _attach_app_transport(&self, py: Python<'_>, transport: Py<PyAny>) -> PyResult<()> {
        self.st.with(py, |s| {
            if s.app_transport.is_some() {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "Creating _SSLProtocolTransport twice",
                ));
            }
            s.app_transport = Some(transport);
            Ok(())
        })
    }

    /// The application transport, until the connection is lost.
    #[getter]
    fn _app_transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.with(py, |s| opt_ref(&s.app_transport, py))
    }

    /// The application protocol.
    #[getter]
    fn _app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.with(py, |s| opt_ref(&s.app_protocol, py))
    }

    /// The loop.
    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.lp.clone_ref(py)
    }

    /// Marks the application transport closed without closing anything (its finalizer).
    fn _mark_closed(&self, py: Python<'_>) {
        self.st.with(py, |s| s.app_closed = true);
    }

    /// The `SSLObject`.
    #[getter]
    fn _sslobj(&self, py: Python<'_>) -> Py<PyAny> {
        self.engine.sslobj.clone_ref(py)
    }

    /// The transport below.
    #[getter]
    fn _transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.with(py, |s| opt_ref(&s.transport, py))
    }

    /// The state, as asyncio's `SSLProtocolState` value names it.
    #[getter]
    fn _state(&self, py: Python<'_>) -> &'static str {
        phase_name(self.phase(py)).trim_start_matches("SSLProtocolState.")
    }

    // ---- the protocol side: called by the transport below --------------------------

    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let write = transport.getattr(intern!(py, "write"))?.unbind();
        let old = slf.get().st.with(py, |s| {
            (
                s.transport.replace(transport.clone().unbind()),
                s.transport_write.replace(write),
            )
        });
        drop(old);
        Self::start_handshake(slf)
    }

    #[pyo3(signature = (exc))]
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.engine.outgoing_read.bind(py).call0()?;
        // Everything released here is dropped after the borrow ends: a finalizer (the
        // application transport's warns when unclosed) may call back into this object.
        let (lost_cb, timers, released) = this.st.with(py, |s| {
            let backlog = std::mem::take(&mut s.write_backlog);
            s.conn_lost += 1;
            s.app_closed = true;
            let cb = if s.phase != Phase::Handshake
                && matches!(s.app_phase, AppPhase::Made | AppPhase::Eof)
            {
                s.app_phase = AppPhase::Lost;
                opt_ref(&s.app_protocol, py)
            } else {
                None
            };
            s.phase = Phase::Unwrapped;
            let released = (
                backlog,
                [
                    s.transport.take(),
                    s.transport_write.take(),
                    s.app_transport.take(),
                    s.app_protocol.take(),
                ],
            );
            (
                cb,
                [s.shutdown_timer.take(), s.handshake_timer.take()],
                released,
            )
        });
        drop(released);
        if let Some(p) = lost_cb {
            let cb = p.bind(py).getattr(intern!(py, "connection_lost"))?;
            let arg = exc.clone().unwrap_or_else(|| py.None().into_bound(py));
            this.call_soon(py, &cb, Some(&arg))?;
        }
        this.wakeup_waiter(py, exc.as_ref())?;
        for t in timers {
            Self::cancel_timer(t, py)?;
        }
        Ok(())
    }

    /// A buffer for transports that do not feed us directly.
    fn get_buffer(&self, py: Python<'_>, n: isize) -> PyResult<Py<PyAny>> {
        let want = if n <= 0 || n as usize > MAX_READ {
            MAX_READ
        } else {
            n as usize
        };
        if let Some(view) = self.st.with(py, |s| {
            s.read_buffer
                .as_ref()
                .filter(|(b, _)| b.bind(py).len() >= want)
                .map(|(_, v)| v.clone_ref(py))
        }) {
            return Ok(view);
        }
        let buf = PyByteArray::new(py, &vec![0u8; want.max(MAX_READ)]);
        let view = PyMemoryView::from(buf.as_any())?.into_any().unbind();
        self.st.with(py, |s| {
            s.read_buffer = Some((buf.unbind(), view.clone_ref(py)))
        });
        Ok(view)
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(buf) = this
            .st
            .with(py, |s| s.read_buffer.as_ref().map(|(b, _)| b.clone_ref(py)))
        else {
            return Err(PyValueError::new_err(
                "buffer_updated() without get_buffer()",
            ));
        };
        let buf = buf.bind(py);
        // SAFETY: the bytearray is ours and is not resized (its exported view pins it);
        // the slice is only read, and only for the duration of the copy into the BIO.
        let data = unsafe { &buf.as_bytes()[..nbytes.min(buf.len())] };
        this.feed_incoming(py, data)?;
        Self::on_incoming(slf)
    }

    /// Input from a transport that hands over `bytes` (TLS over TLS, for one).
    fn data_received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.get()
            .engine
            .incoming_write
            .bind(slf.py())
            .call1((data,))?;
        Self::on_incoming(slf)
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let this = slf.get();
        this.st.with(py, |s| s.eof_received = true);
        if this.debug(py)? {
            py_refs::logger(py)?.call_method1("debug", ("%r received EOF", slf))?;
        }
        let result = (|| -> PyResult<Option<bool>> {
            match this.phase(py) {
                Phase::Handshake => {
                    let exc = PyConnectionResetError::new_err(())
                        .into_value(py)
                        .into_bound(py);
                    Self::on_handshake_complete(slf, Some(exc.into_any()))?;
                }
                Phase::Wrapped => {
                    this.set_phase(py, Phase::Flushing)?;
                    if this.st.with(py, |s| s.app_reading_paused) {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                Phase::Flushing => {
                    Self::do_write(slf)?;
                    this.set_phase(py, Phase::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                Phase::Shutdown => Self::do_shutdown(slf)?,
                Phase::Unwrapped => {}
            }
            Ok(None)
        })();
        if let Err(e) = &result {
            if e.is_instance_of::<pyo3::exceptions::PyException>(py) {
                if let Some(t) = this.transport(py) {
                    t.call_method0(intern!(py, "close"))?;
                }
            }
        }
        result
    }

    fn pause_writing(&self, py: Python<'_>) {
        self.st.with(py, |s| s.ssl_writing_paused = true);
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get()
            .st
            .with(slf.py(), |s| s.ssl_writing_paused = false);
        Self::process_outgoing(slf)
    }

    // ---- timers and deferred steps ---------------------------------------------------

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.phase(py) != Phase::Handshake {
            return Ok(());
        }
        let msg = format!(
            "SSL handshake is taking longer than {} seconds: aborting the connection",
            this.handshake_timeout_text
        );
        let exc = pyo3::exceptions::PyConnectionAbortedError::new_err(msg)
            .into_value(py)
            .into_bound(py)
            .into_any();
        Self::fatal_error(slf, &exc, "Fatal error on transport")
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !matches!(this.phase(py), Phase::Flushing | Phase::Shutdown) {
            return Ok(());
        }
        if let Some(t) = this.transport(py) {
            let exc = PyTimeoutError::new_err("SSL shutdown timed out").into_value(py);
            t.call_method1(intern!(py, "_force_close"), (exc,))?;
        }
        Ok(())
    }

    fn _read_more(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    fn _resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    // ---- the application transport's methods -----------------------------------------

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        if data.len()? == 0 {
            return Ok(());
        }
        Self::write_appdata(slf, std::slice::from_ref(data))
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let items: Vec<Bound<'_, PyAny>> = list_of_data.try_iter()?.collect::<PyResult<_>>()?;
        Self::write_appdata(slf, &items)
    }

    fn write_eof(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.st.with(py, |s| s.app_closed)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let first = slf
            .get()
            .st
            .with(slf.py(), |s| !std::mem::replace(&mut s.app_closed, true));
        if first {
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().st.with(slf.py(), |s| s.app_closed = true);
        Self::abort_inner(slf)
    }

    fn _force_close(slf: &Bound<'_, Self>, _exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::abort(slf)
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let extra = self.st.with(py, |s| s.extra.clone_ref(py));
        if let Some(v) = extra.bind(py).get_item(name)? {
            return Ok(v.unbind());
        }
        let default = default.unwrap_or_else(|| py.None());
        match self.transport(py) {
            Some(t) => Ok(t
                .call_method1(intern!(py, "get_extra_info"), (name, default))?
                .unbind()),
            None => Ok(default),
        }
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_app_protocol(py, protocol)
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.with(py, |s| opt_ref(&s.app_protocol, py))
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        !self.st.with(py, |s| s.app_reading_paused)
    }

    fn pause_reading(&self, py: Python<'_>) {
        self.st.with(py, |s| s.app_reading_paused = true);
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let was = slf
            .get()
            .st
            .with(py, |s| std::mem::replace(&mut s.app_reading_paused, false));
        if was {
            let cb = slf.getattr(intern!(py, "_resume"))?;
            slf.get().call_soon(py, &cb, None)?;
        }
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<isize>,
        low: Option<isize>,
    ) -> PyResult<()> {
        let (hi, lo) = flow_limits(high, low, WRITE_HIGH_WATER_KIB)?;
        slf.get().st.with(slf.py(), |s| {
            s.outgoing_high = hi;
            s.outgoing_low = lo;
        });
        Self::control_app_writing(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.st.with(py, |s| (s.outgoing_low, s.outgoing_high))
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.write_buffer_size(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_read_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<isize>,
        low: Option<isize>,
    ) -> PyResult<()> {
        let (hi, lo) = flow_limits(high, low, READ_HIGH_WATER_KIB)?;
        slf.get().st.with(slf.py(), |s| {
            s.incoming_high = hi;
            s.incoming_low = lo;
        });
        Self::control_ssl_reading(slf)
    }

    fn get_read_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.st.with(py, |s| (s.incoming_low, s.incoming_high))
    }

    fn get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.incoming_pending(py)
    }

    /// The application transport's `_protocol_paused` (used by sendfile's fallback).
    fn _app_writing_paused(&self, py: Python<'_>) -> bool {
        self.st.with(py, |s| s.app_writing_paused)
    }

    /// Appends to the write backlog without writing (asyncio's test hook).
    #[allow(non_snake_case)]
    fn _test__append_write_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let len = data.len()?;
        self.st.with(py, |s| {
            s.write_backlog.push_back(data.clone().unbind());
            s.write_buffer_size += len;
        });
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.lp)?;
        visit.call(&self.engine.sslobj)?;
        visit.call(&self.engine.incoming)?;
        visit.call(&self.engine.outgoing)?;
        visit.call(&self.engine.incoming_write)?;
        visit.call(&self.engine.outgoing_read)?;
        visit.call(&self.engine.ssl_read)?;
        visit.call(&self.engine.ssl_write)?;
        self.st
            .try_peek(|s| -> Result<(), PyTraverseError> {
                for obj in [
                    &s.app_protocol,
                    &s.app_transport,
                    &s.transport,
                    &s.transport_write,
                    &s.waiter,
                    &s.handshake_timer,
                    &s.shutdown_timer,
                ]
                .into_iter()
                .flatten()
                {
                    visit.call(obj)?;
                }
                visit.call(&s.extra)?;
                for obj in &s.write_backlog {
                    visit.call(obj)?;
                }
                Ok(())
            })
            .unwrap_or(Ok(()))
    }

    fn __clear__(&self) {
        let released = self.st.try_peek(|s| {
            (
                std::mem::take(&mut s.write_backlog),
                [
                    s.app_protocol.take(),
                    s.app_transport.take(),
                    s.transport.take(),
                    s.transport_write.take(),
                    s.waiter.take(),
                ],
            )
        });
        drop(released);
    }
}

/// Registers the class on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TlsProtocol>()
}
