"""Listening: ``create_server``, ``create_unix_server``, the accept loop, and ``Server``,
which has asyncio.Server's whole API."""

from __future__ import annotations

import collections.abc
import errno
import itertools
import os
import socket
import stat
import sys
from asyncio import base_events, constants, events, exceptions, tasks, trsock
from asyncio.log import logger

from . import _oxio
from ._sockets import check_server_tls, check_ssl_socket, check_unix_stream

#: Errors that mean "out of descriptors or memory": asyncio logs them, stops accepting
#: for ACCEPT_RETRY_DELAY seconds and then carries on serving.
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_WAIT_CLOSED_AFTER_CLOSE = sys.version_info >= (3, 12)
_HAS_CLOSE_CLIENTS = sys.version_info >= (3, 13)


def _set_reuseport(sock):
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


class Server(events.AbstractServer):
    """A listening server: its sockets, and the connections it accepted that are open."""

    def __init__(
        self,
        loop,
        sockets,
        protocol_factory,
        ssl_context,
        backlog,
        ssl_handshake_timeout,
        ssl_shutdown_timeout=None,
    ):
        self._loop = loop
        self._sockets = sockets
        self._clients = set()
        self._waiters = []
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut = None

    def __repr__(self):
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    # The transports of accepted connections report here.
    def _attach(self, transport=None):
        assert self._sockets is not None
        self._clients.add(transport)

    def _detach(self, transport=None):
        self._clients.discard(transport)
        if not self._clients and self._sockets is None:
            self._wakeup()

    @property
    def _active_count(self):
        return len(self._clients)

    def _wakeup(self):
        waiters = self._waiters
        self._waiters = None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(waiter)

    def _start_serving(self):
        if self._serving:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop._start_serving(
                self._protocol_factory,
                sock,
                self._ssl_context,
                self,
                self._backlog,
                self._ssl_handshake_timeout,
                self._ssl_shutdown_timeout,
            )

    def get_loop(self):
        return self._loop

    def is_serving(self):
        return self._serving

    @property
    def sockets(self):
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def close(self):
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for sock in sockets:
            self._loop._stop_serving(sock)
        self._serving = False
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if not self._clients:
            self._wakeup()

    if _HAS_CLOSE_CLIENTS:

        def close_clients(self):
            for transport in self._clients.copy():
                transport.close()

        def abort_clients(self):
            for transport in self._clients.copy():
                transport.abort()

    async def start_serving(self):
        self._start_serving()
        # One iteration, so that the accept watches are in place.
        await tasks.sleep(0)

    async def serve_forever(self):
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self):
        if self._waiters is None:
            return
        if not _WAIT_CLOSED_AFTER_CLOSE and self._sockets is None:
            # Python 3.11 returns at once for a server that is already closed.
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter


class ServerMixin:
    """The loop's listening methods and its accept loop."""

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        args = (
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if sslcontext is None and type(sock) is socket.socket:
            # Plain connections on a plain socket: accepted natively. A socket subclass
            # may override accept(), so it keeps the Python path that calls it.
            _oxio.Acceptor(self, sock, protocol_factory, server, args).start()
        else:
            self._add_reader(sock.fileno(), self._accept_connection, *args)

    def _stop_serving(self, sock):
        # Not _remove_reader: that would park an edge-triggered registration left on
        # this socket (by sock_accept, say), which must not outlive the socket (a
        # duplicate of it would keep it in epoll).
        self._forget_fd(sock.fileno())
        sock.close()

    def _accept_connection(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        # Up to `backlog` connections per readiness event, as asyncio.
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                if self.get_debug():
                    logger.debug("%r got a new connection from %r: %r", server, addr, conn)
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._accept_failed(
                    exc,
                    protocol_factory,
                    sock,
                    sslcontext,
                    server,
                    backlog,
                    ssl_handshake_timeout,
                    ssl_shutdown_timeout,
                )
                return
            extra = {"peername": addr}
            if sslcontext:
                self.create_task(
                    self._accept_tls_connection(
                        protocol_factory,
                        conn,
                        extra,
                        sslcontext,
                        server,
                        ssl_handshake_timeout,
                        ssl_shutdown_timeout,
                    )
                )
            else:
                self._accept_plain_connection(protocol_factory, conn, extra, server)

    def _accept_failed(self, exc, protocol_factory, sock, *args):
        """accept() failed: out of descriptors or memory, stop accepting for a while;
        anything else is the loop's to report."""
        if exc.errno not in _RESOURCE_ERRORS:
            raise exc
        self.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": exc,
                "socket": trsock.TransportSocket(sock),
            }
        )
        self._remove_reader(sock.fileno())
        self.call_later(
            constants.ACCEPT_RETRY_DELAY, self._resume_accepting, protocol_factory, sock, *args
        )

    def _resume_accepting(self, protocol_factory, sock, *args):
        server = args[1]
        if sock.fileno() == -1 or (server is not None and not server.is_serving()):
            return  # closed while accepting was suspended
        self._start_serving(protocol_factory, sock, *args)

    def _report_accept_error(self, exc, protocol, transport):
        # asyncio reports these in debug mode only: a failing protocol factory or
        # handshake is the connection's problem, not the server's.
        if self.get_debug():
            context = {
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
            }
            if protocol is not None:
                context["protocol"] = protocol
            if transport is not None:
                context["transport"] = transport
            self.call_exception_handler(context)

    def _accept_plain_connection(self, protocol_factory, conn, extra, server):
        try:
            protocol = protocol_factory()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            self._report_accept_error(exc, None, None)
            return
        self._make_socket_transport(conn, protocol, extra=extra, server=server)

    async def _accept_tls_connection(
        self,
        protocol_factory,
        conn,
        extra,
        sslcontext,
        server,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
    ):
        protocol = None
        transport = None
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            transport = self._make_ssl_transport(
                conn,
                protocol,
                sslcontext,
                waiter=waiter,
                server_side=True,
                extra=extra,
                server=server,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
            try:
                await waiter
            except BaseException:
                transport.close()
                raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            self._report_accept_error(exc, protocol, transport)

    # -- create_server ------------------------------------------------------------------

    async def _create_server_getaddrinfo(self, host, port, family, flags):
        infos = await self._ensure_resolved(
            (host, port), family=family, type=socket.SOCK_STREAM, flags=flags
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos

    async def create_server(
        self,
        protocol_factory,
        host=None,
        port=None,
        *,
        family=socket.AF_UNSPEC,
        flags=socket.AI_PASSIVE,
        sock=None,
        backlog=100,
        ssl=None,
        reuse_address=None,
        reuse_port=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
    ):
        check_server_tls(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            check_ssl_socket(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            if host == "":
                hosts = [None]
            elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
                hosts = [host]
            else:
                hosts = host
            infos = await tasks.gather(
                *(self._create_server_getaddrinfo(h, port, family, flags) for h in hosts)
            )
            infos = set(itertools.chain.from_iterable(infos))
            sockets = self._bind_listeners(infos, reuse_address, reuse_port)
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]

        for s in sockets:
            s.setblocking(False)
        server = await self._serve(
            sockets,
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
            start_serving,
        )
        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    def _bind_listeners(self, infos, reuse_address, reuse_port):
        # Through asyncio's module reference, so that code which patches
        # `asyncio.base_events.socket` (CPython's tests do) sees our calls too.
        socket = base_events.socket
        sockets = []
        completed = False
        try:
            for af, socktype, proto, _canonname, sa in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    # A family, type or protocol this host does not support.
                    if self.get_debug():
                        logger.warning(
                            "create_server() failed to create socket.socket(%r, %r, %r)",
                            af,
                            socktype,
                            proto,
                            exc_info=True,
                        )
                    continue
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    _set_reuseport(sock)
                if af == getattr(socket, "AF_INET6", None) and hasattr(socket, "IPPROTO_IPV6"):
                    # One socket per family: no IPv4-mapped addresses on the IPv6 one.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(sa)
                except OSError as err:
                    msg = (
                        f"error while attempting to bind on address {sa!r}: "
                        + (err.strerror or "").lower()
                    )
                    if err.errno == errno.EADDRNOTAVAIL:
                        # The family is not enabled on this host (bpo-30945).
                        sockets.pop()
                        sock.close()
                        if self.get_debug():
                            logger.warning(msg)
                        continue
                    raise OSError(err.errno, msg) from None
            completed = True
        finally:
            if not completed:
                for sock in sockets:
                    sock.close()
        return sockets

    async def create_unix_server(
        self,
        protocol_factory,
        path=None,
        *,
        sock=None,
        backlog=100,
        ssl=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
    ):
        check_server_tls(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if path[0] not in (0, "\x00"):
                # Not an abstract socket: remove a stale socket file left behind.
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            check_unix_stream(sock)
        sock.setblocking(False)
        return await self._serve(
            [sock],
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
            start_serving,
        )

    async def _serve(self, sockets, protocol_factory, ssl, backlog, hs_timeout, sd_timeout, start):
        """A Server on bound sockets; serving, one iteration later, if `start`."""
        server = Server(self, sockets, protocol_factory, ssl, backlog, hs_timeout, sd_timeout)
        if start:
            server._start_serving()
            # One iteration, so that the accept watches are in place.
            await tasks.sleep(0)
        return server
