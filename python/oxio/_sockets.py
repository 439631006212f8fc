"""The low-level socket methods (``sock_recv``, ``sock_sendall``, ``sock_connect``, ...)
with asyncio's checks and semantics: try the call at once, and only when it would block
wait for readiness with a descriptor watch that a cancelled future removes."""

from __future__ import annotations

import errno
import functools
import io
import os
import socket
from asyncio import constants, exceptions

from . import _oxio

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - Python built without ssl
    _ssl = None

_IP_FAMILIES = (socket.AF_INET, getattr(socket, "AF_INET6", socket.AF_INET))


def check_ssl_socket(sock) -> None:
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def check_tls_only(ssl, **arguments) -> None:
    """asyncio's ValueError for TLS arguments given without TLS, checked in the order
    given."""
    for name, value in arguments.items():
        if value is not None and not ssl:
            raise ValueError(f"{name} is only meaningful with ssl")


def check_server_tls(ssl, ssl_handshake_timeout, ssl_shutdown_timeout) -> None:
    """A server's TLS arguments, checked as asyncio checks them."""
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    check_tls_only(
        ssl,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )


def check_unix_stream(sock) -> None:
    """asyncio's ValueError for a socket given where a Unix stream socket belongs."""
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")


def _settle(fut, call, *args) -> bool:
    """Completes `fut` with `call(*args)`'s result or exception; False (and `fut` left
    pending) when the call would block. KeyboardInterrupt and SystemExit propagate."""
    try:
        result = call(*args)
    except (BlockingIOError, InterruptedError):
        return False
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
    finally:
        # Break the cycle exception -> traceback -> this frame -> fut.
        fut = None
    return True


def _connect_outcome(sock, address):
    """A non-blocking connect's result once the socket is writable."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err != 0:
        raise OSError(err, f"Connect call failed {address}")


def _accept(sock):
    conn, address = sock.accept()
    conn.setblocking(False)
    return conn, address


def check_sendfile_params(sock, file, offset, count) -> None:
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if not sock.type == socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


class SocketMixin:
    """The loop's ``sock_*`` methods."""

    def _check_sock(self, sock) -> None:
        check_ssl_socket(sock)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _sock_read_done(self, fd, fut, handle=None):
        if handle is None or not handle.cancelled():
            self.remove_reader(fd)

    def _sock_write_done(self, fd, fut, handle=None):
        if handle is None or not handle.cancelled():
            self.remove_writer(fd)

    def _wait_readable(self, sock, callback, *args):
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_reader(fd, callback, fut, *args)
        fut.add_done_callback(functools.partial(self._sock_read_done, fd, handle=handle))
        return fut

    def _wait_writable(self, sock, callback, *args):
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, callback, fut, *args)
        fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        return fut

    # -- receiving ------------------------------------------------------------------

    async def sock_recv(self, sock, n):
        # The attempt and the wait are native (oxio._oxio.sock_recv): the data comes
        # back at once, or a future to await.
        result = _oxio.sock_recv(self, sock, n, False)
        if result.__class__ is bytes:
            return result
        return await _received(result, bytes, _oxio.sock_recv, self, sock, n)

    async def sock_recv_into(self, sock, buf):
        result = _oxio.sock_recv_into(self, sock, buf, False)
        if result.__class__ is int:
            return result
        return await _received(result, int, _oxio.sock_recv_into, self, sock, buf)

    async def _try_then_wait(self, wait, sock, method, *args):
        """The shape of asyncio's datagram socket methods: `sock.<method>(*args)` at
        once, and if the socket would block, again each time `wait` reports it ready.
        The method is looked up on every attempt, as asyncio's code does."""
        self._check_sock(sock)
        try:
            return getattr(sock, method)(*args)
        except (BlockingIOError, InterruptedError):
            pass
        return await wait(sock, self._sock_retry, sock, method, *args)

    def _sock_retry(self, fut, sock, method, *args):
        if not fut.done():
            _settle(fut, getattr(sock, method), *args)

    async def sock_recvfrom(self, sock, bufsize):
        return await self._try_then_wait(self._wait_readable, sock, "recvfrom", bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        nbytes = nbytes or len(buf)
        return await self._try_then_wait(self._wait_readable, sock, "recvfrom_into", buf, nbytes)

    # -- sending --------------------------------------------------------------------

    async def sock_sendall(self, sock, data):
        result = _oxio.sock_sendall(self, sock, data)
        if result is None:
            return None
        return await result

    async def sock_sendto(self, sock, data, address):
        return await self._try_then_wait(self._wait_writable, sock, "sendto", data, address)

    # -- connecting and accepting --------------------------------------------------------

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        if sock.family in _IP_FAMILIES:
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto
            )
            address = resolved[0][4]
        fut = self.create_future()
        if not _settle(fut, sock.connect, address):
            fd = sock.fileno()
            self._ensure_fd_no_transport(fd)
            handle = self._add_writer(fd, self._sock_connect_ready, fut, sock, address)
            fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        try:
            return await fut
        finally:
            # Break the cycle exception -> traceback -> this frame -> fut.
            fut = None

    def _sock_connect_ready(self, fut, sock, address):
        if not fut.done():
            _settle(fut, _connect_outcome, sock, address)

    async def sock_accept(self, sock):
        self._check_sock(sock)
        fut = self.create_future()
        self._sock_accept_ready(fut, sock, first=True)
        return await fut

    def _sock_accept_ready(self, fut, sock, first=False):
        if fut.done() or _settle(fut, _accept, sock) or not first:
            return
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_reader(fd, self._sock_accept_ready, fut, sock)
        fut.add_done_callback(functools.partial(self._sock_read_done, fd, handle=handle))

    # -- sendfile -----------------------------------------------------------------------

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        check_ssl_socket(sock)
        check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation) as err:
            raise exceptions.SendfileNotAvailableError("not a regular file") from err
        try:
            fsize = os.fstat(fileno).st_size
        except OSError as err:
            raise exceptions.SendfileNotAvailableError("not a regular file") from err
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # an empty file
        fut = self.create_future()
        self._sendfile_step(fut, None, sock, fileno, offset, count, blocksize, 0)
        return await fut

    def _sendfile_step(self, fut, registered_fd, sock, fileno, offset, count, blocksize, sent):
        fd = sock.fileno()
        if registered_fd is not None:
            # One watch per step: removed here, added again if the socket blocks.
            self.remove_writer(registered_fd)
        if fut.cancelled():
            self._sendfile_seek(fileno, offset, sent)
            return
        if count:
            blocksize = count - sent
            if blocksize <= 0:
                self._sendfile_seek(fileno, offset, sent)
                fut.set_result(sent)
                return
        try:
            n = os.sendfile(fd, fileno, offset, blocksize)
        except (BlockingIOError, InterruptedError):
            if registered_fd is None:
                self._sendfile_watch_cancel(fut, sock)
            self.add_writer(
                fd, self._sendfile_step, fut, fd, sock, fileno, offset, count, blocksize, sent
            )
        except OSError as exc:
            if (
                registered_fd is not None
                and exc.errno == errno.ENOTCONN
                and type(exc) is not ConnectionError
            ):
                new_exc = ConnectionError("socket is not connected", errno.ENOTCONN)
                new_exc.__cause__ = exc
                exc = new_exc
            self._sendfile_seek(fileno, offset, sent)
            if sent == 0:
                fut.set_exception(exceptions.SendfileNotAvailableError("os.sendfile call failed"))
            else:
                fut.set_exception(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._sendfile_seek(fileno, offset, sent)
            fut.set_exception(exc)
        else:
            if n == 0:
                # End of file.
                self._sendfile_seek(fileno, offset, sent)
                fut.set_result(sent)
            else:
                offset += n
                sent += n
                if registered_fd is None:
                    self._sendfile_watch_cancel(fut, sock)
                self.add_writer(
                    fd, self._sendfile_step, fut, fd, sock, fileno, offset, count, blocksize, sent
                )

    @staticmethod
    def _sendfile_seek(fileno, offset, sent):
        if sent > 0:
            os.lseek(fileno, offset, os.SEEK_SET)

    def _sendfile_watch_cancel(self, fut, sock):
        def on_done(fut):
            if fut.cancelled():
                fd = sock.fileno()
                if fd != -1:
                    self.remove_writer(fd)

        fut.add_done_callback(on_done)

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        if offset:
            file.seek(offset)
        size = constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        blocksize = min(count, size) if count else size
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # EOF
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)


async def _received(waiting, kind, attempt, loop, sock, arg):
    """The result of a receive that had to wait. Its future completes with the result
    (a `kind`), or, for a bulk receive, with None once the socket is readable: the read
    is then made here, in the receiving task, so that the data arrives just before the
    code that uses it (and cancelling the task before then loses nothing)."""
    result = await waiting
    while result is None:
        result = attempt(loop, sock, arg, True)
        if result.__class__ is not kind:
            result = await result
    return result
