//! Non-blocking socket system calls with the error handling every transport needs:
//! `EINTR` retried, `SIGPIPE` suppressed, the OS error returned as-is otherwise.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

/// Runs a system call until it is not interrupted: its non-negative result, or the OS
/// error it set.
fn retrying(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `recv(2)` or `send(2)` (`call`: `SYS_recvfrom` or `SYS_sendto`, with no address) as
/// the bare system call. glibc's `recv` and `send` are thread cancellation points: each
/// call toggles the thread's asynchronous-cancel state around the system call, two atomic
/// updates that cost 1.5% of a 1 KiB echo server's time. oxio never cancels threads, so
/// its hot path asks the kernel directly.
///
/// # Safety
/// `ptr` must be valid for `len` bytes for the duration of the call: for writes when
/// receiving, for reads when sending.
unsafe fn bare_socket_call(
    call: libc::c_long,
    fd: RawFd,
    ptr: *const u8,
    len: usize,
    flags: libc::c_int,
) -> isize {
    // SAFETY: recvfrom and sendto with a null address and a zero length are recv and
    // send; the caller vouches for `ptr`.
    unsafe { libc::syscall(call, fd, ptr, len, flags, 0usize, 0usize) as isize }
}

/// `accept4(2)` as the bare system call (glibc's wrapper is a cancellation point too,
/// see [`bare_socket_call`]): the new descriptor, which the caller owns, or the OS error,
/// `EINTR` included (the caller's accept loop decides what to do with it).
///
/// # Safety
/// `addr` must be valid for writes of `*len` bytes, and `len` for reads and writes.
pub unsafe fn accept4(
    fd: RawFd,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: libc::c_int,
) -> io::Result<RawFd> {
    // SAFETY: the caller vouches for `addr` and `len`, which is all accept4 writes.
    let n = unsafe { libc::syscall(libc::SYS_accept4, fd, addr, len, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as RawFd)
    }
}

/// `close(2)` as the bare system call (glibc's `close` is a cancellation point too, see
/// [`bare_socket_call`]). Linux releases the descriptor whatever the call reports, so no
/// error is retried.
///
/// # Safety
/// The caller owns `fd` and nothing closes it again.
pub unsafe fn close(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller owns the descriptor it gives up here.
    if unsafe { libc::syscall(libc::SYS_close, fd) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads into `buf` with `recv(2)`. `Ok(0)` is end of file.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the whole call.
    unsafe { recv_raw(fd, buf.as_mut_ptr(), buf.len()) }
}

/// Reads into the raw region `ptr..ptr+len` (a buffer owned by Python, for
/// `BufferedProtocol` and `sock_recv_into`).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the duration of the call.
pub unsafe fn recv_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `ptr..ptr+len` is writable; the kernel writes at
    // most `len` bytes.
    retrying(|| unsafe { bare_socket_call(libc::SYS_recvfrom, fd, ptr, len, 0) })
}

/// Reads into the raw region `ptr..ptr+len` with `recvmsg`, giving ancillary data no
/// room. Returns the byte count and whether the kernel dropped ancillary data
/// (descriptors, credentials) for want of room: a Unix stream read ends after the data
/// that carried it even when more bytes wait, so a reader that relies on readiness edges
/// must read again.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the duration of the call.
pub unsafe fn recv_raw_msg(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<(usize, bool)> {
    let mut iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    // SAFETY: an all-zero msghdr is valid (no name, no control); it then points at the
    // one iovec above, which outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: the caller guarantees `ptr..ptr+len` is writable; `msg` is valid.
    let n = retrying(|| unsafe { libc::recvmsg(fd, &mut msg, 0) })?;
    Ok((n, msg.msg_flags & libc::MSG_CTRUNC != 0))
}

/// Largest total that [`write_slices`] gathers into one buffer instead of handing the
/// kernel a vector: for a few small slices, one copy in user space costs less than
/// `sendmsg` importing the message and its iovecs (about 50 ns less per call for two
/// slices of 512 B to 4 KiB over TCP loopback).
pub const GATHER_LIMIT: usize = 4096;

/// Writes `slices` in order with one system call: `send` for one slice or for several
/// small ones gathered into a buffer on the stack, [`writev`] otherwise. The result is
/// what one `writev` of `slices` would return.
pub fn write_slices(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    if let [one] = slices {
        return send(fd, one);
    }
    let total: usize = slices.iter().map(|s| s.len()).sum();
    if total > GATHER_LIMIT {
        return writev(fd, slices);
    }
    let mut buf = std::mem::MaybeUninit::<[u8; GATHER_LIMIT]>::uninit();
    let base = buf.as_mut_ptr().cast::<u8>();
    let mut at = 0;
    for s in slices {
        // SAFETY: `at + s.len() <= total <= GATHER_LIMIT`, so the copy stays inside
        // `buf`, which cannot overlap a slice the caller borrowed.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), base.add(at), s.len()) };
        at += s.len();
    }
    // SAFETY: the first `total` bytes of `buf` were initialised by the copies above.
    let gathered = unsafe { std::slice::from_raw_parts(base, total) };
    send(fd, gathered)
}

/// Writes `slices` with one `sendmsg(2)` (a `writev` that does not raise `SIGPIPE` on a
/// closed peer: the error comes back as `EPIPE`). Works on any socket; for pipes use
/// [`writev_fd`].
pub fn writev(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = slices.len() as _;
    // SAFETY: msg points at `slices`, which outlive the call and are only read.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSOCK) {
            return writev_fd(fd, slices);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// `writev(2)` on a descriptor that may not be a socket.
pub fn writev_fd(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
    let n = unsafe { libc::writev(fd, slices.as_ptr().cast(), slices.len() as libc::c_int) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(2)` of one buffer without `SIGPIPE` (`write(2)` for a descriptor that is not a
/// socket). `EINTR` is retried.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let mut socket = true;
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
        let n = unsafe {
            if socket {
                bare_socket_call(
                    libc::SYS_sendto,
                    fd,
                    buf.as_ptr(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            } else {
                libc::write(fd, buf.as_ptr().cast(), buf.len())
            }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOTSOCK) if socket => socket = false,
            _ => return Err(e),
        }
    }
}

/// Copies up to `count` bytes from `in_fd` at `*offset` to the socket `out_fd` in the
/// kernel, advancing `*offset` by what was sent. `Ok(0)` means end of file.
pub fn sendfile(out_fd: RawFd, in_fd: RawFd, offset: &mut i64, count: usize) -> io::Result<usize> {
    let mut off: libc::off_t = *offset as libc::off_t;
    // SAFETY: `off` is a valid, exclusively borrowed off_t for the call.
    let n = retrying(|| unsafe { libc::sendfile(out_fd, in_fd, &mut off, count) })?;
    *offset = off as i64;
    Ok(n)
}

/// How many bytes wait to be read (`FIONREAD`).
pub fn bytes_readable(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.max(0) as usize)
    }
}

/// Half-closes the write side (`shutdown(SHUT_WR)`).
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain system call on an integer descriptor.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The pending error of a socket (`SO_ERROR`), cleared by reading it: how a
/// non-blocking `connect` reports its outcome.
pub fn take_error(fd: RawFd) -> io::Result<i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes and sized as the kernel expects.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn recv_reads_what_was_sent_and_zero_at_eof() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"abc").unwrap();
        drop(b);
        let mut buf = [0u8; 8];
        assert_eq!(recv(a.as_raw_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(recv(a.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn write_slices_keeps_order_whether_gathered_or_vectored() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let big = vec![7u8; GATHER_LIMIT];
        for parts in [
            vec![&b"head,"[..], &b"body"[..]],
            vec![&b""[..], &b"x"[..], &b"yz"[..]],
            vec![&b"h"[..], &big[..]], // one byte over the limit: vectored
        ] {
            let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let want: Vec<u8> = parts.concat();
            assert_eq!(write_slices(a.as_raw_fd(), &slices).unwrap(), want.len());
            let mut got = vec![0u8; want.len()];
            std::io::Read::read_exact(&mut b, &mut got).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn write_slices_on_a_full_socket_would_block() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let fill = vec![0u8; 1 << 16];
        while send(a.as_raw_fd(), &fill).is_ok() {}
        while send(a.as_raw_fd(), &[1u8; 64]).is_ok() {}
        let e = write_slices(a.as_raw_fd(), &[IoSlice::new(b"ab"), IoSlice::new(b"cd")]);
        assert_eq!(e.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        drop(b);
    }

    #[test]
    fn bytes_readable_counts_what_waits() {
        let (a, mut b) = UnixStream::pair().unwrap();
        assert_eq!(bytes_readable(a.as_raw_fd()).unwrap(), 0);
        b.write_all(b"12345").unwrap();
        assert_eq!(bytes_readable(a.as_raw_fd()).unwrap(), 5);
    }

    #[test]
    fn recv_raw_msg_reports_a_read_cut_short_at_passed_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let passed = [b.as_raw_fd()];
        let mut space = [0u64; 8];
        // SAFETY: CMSG_SPACE only computes a size.
        let control_len = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(&passed) as u32) };
        let mut iov = libc::iovec {
            iov_base: b"first".as_ptr() as *mut libc::c_void,
            iov_len: 5,
        };
        // SAFETY: an all-zero msghdr is valid; it is then pointed at live buffers, and
        // the one control message written fits `space` (CMSG_SPACE of one descriptor).
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.as_mut_ptr().cast();
            msg.msg_controllen = control_len as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&passed) as u32) as usize;
            std::ptr::copy_nonoverlapping(passed.as_ptr(), libc::CMSG_DATA(cmsg).cast(), 1);
            assert_eq!(libc::sendmsg(b.as_raw_fd(), &msg, 0), 5);
        }
        (&b).write_all(b"second").unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: `buf` is writable for its length.
        let got = unsafe { recv_raw_msg(a.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        assert_eq!(got.unwrap(), (5, true));
        // SAFETY: as above.
        let got = unsafe { recv_raw_msg(a.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        assert_eq!(got.unwrap(), (6, false));
        assert_eq!(&buf[..6], b"second");
    }

    #[test]
    fn accept4_gives_a_connected_descriptor_and_would_block_when_none_waits() {
        use std::os::fd::{FromRawFd, OwnedFd};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let accept = || {
            let mut storage = std::mem::MaybeUninit::<libc::sockaddr_storage>::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: `storage` is writable for `len` bytes and `len` is a valid pointer.
            unsafe {
                accept4(
                    listener.as_raw_fd(),
                    storage.as_mut_ptr().cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            }
        };
        let e = accept().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"hi").unwrap();
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(accept().unwrap()) };
        let mut buf = [0u8; 4];
        assert_eq!(recv(fd.as_raw_fd(), &mut buf).unwrap(), 2);
    }

    #[test]
    fn close_releases_the_descriptor_and_reports_a_bad_one() {
        use std::os::fd::IntoRawFd;
        let (a, b) = UnixStream::pair().unwrap();
        let fd = a.into_raw_fd();
        // SAFETY: `fd` was just taken from its owner, so only this call closes it.
        unsafe { close(fd) }.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0); // the peer sees the close
                                                               // SAFETY: -1 is no descriptor: the call can close nothing.
        let e = unsafe { close(-1) }.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn recv_on_an_empty_nonblocking_socket_would_block() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        let e = recv(a.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn send_to_a_closed_peer_is_epipe_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = send(a.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn writev_falls_back_for_pipes() {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid two-element array for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let n = writev(fds[1], &[IoSlice::new(b"ab"), IoSlice::new(b"c")]).unwrap();
        assert_eq!(n, 3);
        // SAFETY: both descriptors were just created here and are closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn sendfile_copies_a_file_range() {
        let path = std::env::temp_dir().join(format!("oxio-sendfile-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut off = 2;
        let n = sendfile(a.as_raw_fd(), file.as_raw_fd(), &mut off, 5).unwrap();
        assert_eq!((n, off), (5, 7));
        let mut buf = [0u8; 8];
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"23456");
        std::fs::remove_file(path).unwrap();
    }
}
