//! `getaddrinfo` of address literals, answered without libc or the executor (design rule
//! 6). `getaddrinfo_literal` takes `socket.getaddrinfo`'s arguments and returns its
//! exact result for a numeric host, or `None` to mean "ask `socket.getaddrinfo`": for
//! names, for inputs it would reject (so that it raises its own error), and for every
//! case `oxio_core::addr` declines.

use oxio_core::addr::{self, Hints, SockAddr};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

/// The `socket.AddressFamily` and `socket.SocketKind` members a literal's entries use;
/// `socket.getaddrinfo` returns these `IntEnum` members, not plain ints. Members are
/// singletons, so calling the enum class once per value and keeping the result is the
/// same as calling it per entry.
struct EnumMembers {
    af_inet: Py<PyAny>,
    af_inet6: Py<PyAny>,
    sock_stream: Py<PyAny>,
    sock_dgram: Py<PyAny>,
    sock_raw: Py<PyAny>,
}

fn enum_members(py: Python<'_>) -> PyResult<&EnumMembers> {
    static CELL: PyOnceLock<EnumMembers> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        let socket = py.import("socket")?;
        let family = socket.getattr("AddressFamily")?;
        let kind = socket.getattr("SocketKind")?;
        Ok::<_, PyErr>(EnumMembers {
            af_inet: family.call1((libc::AF_INET,))?.unbind(),
            af_inet6: family.call1((libc::AF_INET6,))?.unbind(),
            sock_stream: kind.call1((libc::SOCK_STREAM,))?.unbind(),
            sock_dgram: kind.call1((libc::SOCK_DGRAM,))?.unbind(),
            sock_raw: kind.call1((libc::SOCK_RAW,))?.unbind(),
        })
    })
}

impl EnumMembers {
    fn family(&self, value: i32) -> Option<&Py<PyAny>> {
        match value {
            libc::AF_INET => Some(&self.af_inet),
            libc::AF_INET6 => Some(&self.af_inet6),
            _ => None,
        }
    }

    fn kind(&self, value: i32) -> Option<&Py<PyAny>> {
        match value {
            libc::SOCK_STREAM => Some(&self.sock_stream),
            libc::SOCK_DGRAM => Some(&self.sock_dgram),
            libc::SOCK_RAW => Some(&self.sock_raw),
            _ => None,
        }
    }
}

/// The host bytes `socket.getaddrinfo` would hand to libc, for the hosts that can be
/// literals: a `str` (which it IDNA-encodes; for ASCII that is the identity, except that
/// a label of 64 characters or more raises, so long ones are left to it) or `bytes`
/// (passed as they are). `None` for anything else, including `None`.
fn host_bytes<'a>(host: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    if let Ok(s) = host.cast::<PyString>() {
        let s = s.to_str().ok()?;
        return (s.is_ascii() && s.len() < 64).then_some(s.as_bytes());
    }
    host.cast::<PyBytes>().ok().map(|b| b.as_bytes())
}

/// The service as `socket.getaddrinfo` passes it: `Some(None)` for no service (`None`),
/// `Some(Some(port))` for a port number given as an exact `int` (which it formats in
/// decimal), a `str` or `bytes`; `None` (decline) for everything else.
fn service(port: &Bound<'_, PyAny>) -> Option<Option<u16>> {
    if port.is_none() {
        return Some(None);
    }
    if port.is_exact_instance_of::<PyInt>() {
        return port.extract::<u16>().ok().map(Some);
    }
    if let Ok(s) = port.cast::<PyString>() {
        return addr::parse_port(s.to_str().ok()?.as_bytes()).map(Some);
    }
    let b = port.cast::<PyBytes>().ok()?;
    addr::parse_port(b.as_bytes()).map(Some)
}

/// An integer argument as `socket.getaddrinfo` reads it (a C int, through `__index__`),
/// or `None` for a value it would reject, which is then left to it to reject.
pub struct CInt(Option<i32>);

impl<'a, 'py> FromPyObject<'a, 'py> for CInt {
    type Error = std::convert::Infallible;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        Ok(CInt(obj.extract::<i32>().ok()))
    }
}

/// The default of the integer arguments.
const ZERO: CInt = CInt(Some(0));

/// `socket.getaddrinfo(host, port, family, type, proto, flags)` for an address literal,
/// without a lookup; `None` when `socket.getaddrinfo` itself must answer.
#[pyfunction]
#[pyo3(
    signature = (host, port, family=ZERO, r#type=ZERO, proto=ZERO, flags=ZERO),
    text_signature = "(host, port, family=0, type=0, proto=0, flags=0)"
)]
pub fn getaddrinfo_literal<'py>(
    host: &Bound<'py, PyAny>,
    port: &Bound<'py, PyAny>,
    family: CInt,
    r#type: CInt,
    proto: CInt,
    flags: CInt,
) -> PyResult<Option<Bound<'py, PyList>>> {
    let py = host.py();
    let (Some(family), Some(socktype), Some(protocol), Some(flags)) =
        (family.0, r#type.0, proto.0, flags.0)
    else {
        return Ok(None);
    };
    let (Some(host), Some(port)) = (host_bytes(host), service(port)) else {
        return Ok(None);
    };
    let hints = Hints {
        family,
        socktype,
        protocol,
        flags,
    };
    let Some(infos) = addr::resolve_literal(host, port, hints) else {
        return Ok(None);
    };
    let Some(first) = infos.first() else {
        return Ok(None);
    };
    let members = enum_members(py)?;
    // Every entry has the same address: one host string and one sockaddr tuple serve all.
    let host_text = PyString::new(py, &first.addr.host_text());
    let sockaddr = match first.addr {
        SockAddr::V4(_, p) => (host_text, p).into_pyobject(py)?,
        SockAddr::V6(_, p) => (host_text, p, 0u32, 0u32).into_pyobject(py)?,
    };
    let mut entries = Vec::with_capacity(infos.len());
    for info in &infos {
        let (Some(fam), Some(kind)) = (members.family(info.family), members.kind(info.socktype))
        else {
            return Ok(None);
        };
        let canonname = info.canonname.as_deref().unwrap_or("");
        entries.push(PyTuple::new(
            py,
            [
                fam.bind(py).clone(),
                kind.bind(py).clone(),
                info.protocol.into_pyobject(py)?.into_any(),
                PyString::new(py, canonname).into_any(),
                sockaddr.clone().into_any(),
            ],
        )?);
    }
    PyList::new(py, entries).map(Some)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(getaddrinfo_literal, m)?)
}
