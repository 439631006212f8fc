//! Socket addresses between the kernel and Python: the tuples `socket.getpeername()`
//! returns, built from a `sockaddr_storage` without another system call, and snapshots
//! of a socket's addresses taken before it closes.

use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use oxio_core::addr::format_ipv6;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// A socket address as the kernel reported it.
#[derive(Clone, Copy)]
pub(crate) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    /// Wraps what accept4/getsockname wrote.
    pub(crate) fn new(storage: libc::sockaddr_storage, len: libc::socklen_t) -> Self {
        Self { storage, len }
    }

    /// The Python form, or `None` for a family not known here.
    pub(crate) fn to_py<'py>(self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        sockaddr_to_py(py, &self.storage, self.len)
    }
}

/// `getsockname` (`peer` false) or `getpeername` (`peer` true) of `fd`.
pub(crate) fn query(fd: RawFd, peer: bool) -> Option<RawAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is a writable sockaddr_storage and `len` its size.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, storage.as_mut_ptr().cast(), &mut len)
        } else {
            libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len)
        }
    };
    // SAFETY: zero-initialized, then written by the kernel.
    (rc == 0).then(|| RawAddr::new(unsafe { storage.assume_init() }, len))
}

/// The Python form of a socket address, as `socket.getpeername()` gives it; `None` for a
/// family this does not know (the caller then asks the socket).
pub(crate) fn sockaddr_to_py<'py>(
    py: Python<'py>,
    addr: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let len = len as usize;
    match addr.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in for AF_INET; the storage is
            // large enough and suitably aligned for any socket address.
            let sin = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            let port = u16::from_be(sin.sin_port);
            Ok(Some((ip.to_string(), port).into_pyobject(py)?.into_any()))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6 for AF_INET6.
            let sin6 = unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            let flow = u32::from_be(sin6.sin6_flowinfo);
            Ok(Some(
                (format_ipv6(ip), port, flow, sin6.sin6_scope_id)
                    .into_pyobject(py)?
                    .into_any(),
            ))
        }
        libc::AF_UNIX => {
            // SAFETY: as above, a sockaddr_un for AF_UNIX.
            let sun = unsafe { &*(addr as *const _ as *const libc::sockaddr_un) };
            let offset = std::mem::size_of::<libc::sa_family_t>();
            let path_len = len.saturating_sub(offset).min(sun.sun_path.len());
            let path: Vec<u8> = sun.sun_path[..path_len].iter().map(|&c| c as u8).collect();
            if path.is_empty() {
                return Ok(Some(PyString::new(py, "").into_any()));
            }
            if path[0] == 0 {
                // Linux's abstract namespace: bytes, as Python gives them.
                return Ok(Some(PyBytes::new(py, &path).into_any()));
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            let os = py.import("os")?;
            Ok(Some(os.call_method1(
                "fsdecode",
                (PyBytes::new(py, &path[..end]),),
            )?))
        }
        _ => Ok(None),
    }
}
