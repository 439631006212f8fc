"""TLS (ssl=) on the loop: certificate and hostname verification, handshake and shutdown
timeouts, peers that vanish or speak plain text, descriptors, the TLS transport's API,
echo of every size through protocols and streams, write flow control, start_tls,
sendfile's fallback, and the close_notify a close() sends.

Certificates are the ones CPython's own asyncio tests use: ONLYCERT is self-signed for
'localhost', SIGNED_CERTFILE is signed by SIGNING_CA, also for 'localhost'."""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import re
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time

import pytest
from conftest import run, run_until, settling
from test.test_asyncio import utils as test_utils

HOST = "127.0.0.1"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB with a pattern a lost or moved byte breaks
X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
X509_V_ERR_HOSTNAME_MISMATCH = 62


# -- contexts ---------------------------------------------------------------------------


def server_context():
    """Serves ONLYCERT, self-signed for 'localhost'."""
    return test_utils.simple_server_sslcontext()


def client_context():
    """Verifies nothing: for tests about the transport, not about trust."""
    return test_utils.simple_client_sslcontext()


def signed_server_context():
    """Serves SIGNED_CERTFILE, signed by SIGNING_CA for 'localhost'."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(test_utils.SIGNED_CERTFILE)
    return ctx


def trusting_client_context():
    """Full verification (chain and hostname) that trusts SIGNING_CA."""
    return ssl.create_default_context(cafile=test_utils.SIGNING_CA)


def collect_errors(loop, debug=False):
    """Installs an exception handler that records its contexts; returns the list. The
    debug mode (which `python -X dev` turns on) reports more, so it is set explicitly."""
    loop.set_debug(debug)
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


class Unraisable:
    """Records the exceptions Python could not raise (in __del__, in callbacks of
    finalizers) while in use."""

    def __enter__(self):
        self.seen = []
        self._old = sys.unraisablehook
        sys.unraisablehook = lambda u: self.seen.append(f"{u.exc_type.__name__}: {u.exc_value}")
        return self

    def __exit__(self, *exc_info):
        gc.collect()
        sys.unraisablehook = self._old


def fd_count():
    return len(os.listdir("/proc/self/fd"))


# -- protocols --------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """Records what a TLS transport tells its app protocol, with futures to await."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.transport = None
        self.data = bytearray()
        self.events = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.paused = loop.create_future()
        self.resumed = loop.create_future()
        self._want = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        self._check()

    def received(self, n):
        """A future that resolves once at least `n` bytes have arrived."""
        self._want = (n, asyncio.get_running_loop().create_future())
        self._check()
        return self._want[1]

    def _check(self):
        if self._want is not None:
            n, fut = self._want
            if len(self.data) >= n and not fut.done():
                fut.set_result(bytes(self.data))

    def eof_received(self):
        self.events.append("eof")

    def pause_writing(self):
        self.events.append("pause")
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self):
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class Echo(Client):
    """Server side: sends back every byte it receives."""

    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class BufferedEcho(asyncio.BufferedProtocol):
    """Server side, as a BufferedProtocol: echoes from its own small buffer."""

    def __init__(self):
        self.buf = bytearray(1000)
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))


class BufferedClient(asyncio.BufferedProtocol):
    """Client side, as a BufferedProtocol with a small buffer."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.buf = bytearray(4096)
        self.data = bytearray()
        self.transport = None
        self.lost = loop.create_future()
        self.done = loop.create_future()
        self.expected = 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        # A memoryview: asyncio's TLS protocol fills a buffer piecewise through slices,
        # and a bytearray slice would be a copy.
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]
        if len(self.data) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Made(list):
    """The protocols a factory made; `first` resolves with the first of them."""

    def __init__(self):
        super().__init__()
        self.first = asyncio.get_running_loop().create_future()


def recording(cls):
    """A protocol factory that remembers every protocol it made (call it on the loop)."""
    made = Made()

    def factory():
        made.append(cls())
        if not made.first.done():
            made.first.set_result(made[-1])
        return made[-1]

    return factory, made


async def tls_server(loop, factory=Echo, ctx=None, **kwargs):
    server = await loop.create_server(
        factory, HOST, 0, ssl=ctx if ctx is not None else server_context(), **kwargs
    )
    return server, server.sockets[0].getsockname()[1]


async def echo_then_close(tr, pr, data):
    """Sends `data` over a connection to an echo server, expects all of it back, then
    closes: close_notify is exchanged and connection_lost gets None."""
    tr.write(data)
    assert await pr.received(len(data)) == data
    tr.close()
    assert await pr.lost is None


@contextlib.asynccontextmanager
async def echo_connection(loop):
    """A client connection, (transport, Client), to a fresh TLS echo server; the server
    is closed afterwards."""
    server, port = await tls_server(loop)
    try:
        yield await loop.create_connection(
            Client, HOST, port, ssl=client_context(), server_hostname="localhost"
        )
    finally:
        await stop(server)


@contextlib.asynccontextmanager
async def small_buffer_connection(loop, server_protocol, server_option, client_option, size):
    """A TLS connection whose server socket has `server_option` (SO_SNDBUF or SO_RCVBUF)
    and whose client socket has `client_option` set to `size`, so that flow control
    engages early; yields (the server's protocols, transport, Client)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, server_option, size)
    lsock.bind((HOST, 0))
    factory, made = recording(server_protocol)
    server = await loop.create_server(factory, sock=lsock, ssl=server_context())
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, client_option, size)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, lsock.getsockname())
        tr, pr = await loop.create_connection(
            Client, sock=sock, ssl=client_context(), server_hostname="localhost"
        )
        yield made, tr, pr
    finally:
        await stop(server)


async def stop(server):
    server.close()
    await server.wait_closed()


async def raw_listener(loop):
    lsock = socket.create_server((HOST, 0))
    lsock.setblocking(False)
    return lsock, lsock.getsockname()[1]


class ThreadPeer:
    """One connection served by a thread with the stdlib's blocking sockets. Every
    blocking call has a timeout, so a loop that misbehaves fails the test, never hangs
    it. `handler(peer, conn)` runs with the accepted socket; `done` resolves on the loop
    when it returns."""

    def __init__(self, loop, handler):
        self.loop = loop
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.release = threading.Event()
        self.result = {}
        self.ready = loop.create_future()
        self.done = loop.create_future()
        self.thread = threading.Thread(target=self._run, args=(handler,), daemon=True)
        self.thread.start()

    def set_ready(self):
        """Called by a handler (in the thread) to resolve `ready` on the loop."""
        self.loop.call_soon_threadsafe(self.ready.set_result, None)

    def _finish(self, exc):
        if not self.done.done():
            if exc is None:
                self.done.set_result(self.result)
            else:
                self.done.set_exception(exc)

    def _run(self, handler):
        exc = None
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(5)
            with conn:
                handler(self, conn)
        except BaseException as e:
            exc = e
        finally:
            self.listener.close()
            self.loop.call_soon_threadsafe(self._finish, exc)

    def close(self):
        self.release.set()
        self.thread.join(6)
        assert not self.thread.is_alive()


# -- certificate and hostname verification ----------------------------------------------


@pytest.mark.parametrize("api", ["create_connection", "open_connection", "ssl=True"])
def test_untrusted_certificate_fails_verification(loop, api):
    """A client that verifies (the default) rejects a self-signed server certificate
    with ssl.SSLCertVerificationError, and the server's app protocol never connects."""
    errors = collect_errors(loop)

    async def main():
        factory, made = recording(Echo)
        server, port = await tls_server(loop, factory)
        try:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                if api == "create_connection":
                    await loop.create_connection(
                        Client,
                        HOST,
                        port,
                        ssl=ssl.create_default_context(),
                        server_hostname="localhost",
                    )
                elif api == "open_connection":
                    await asyncio.open_connection(
                        HOST, port, ssl=ssl.create_default_context(), server_hostname="localhost"
                    )
                else:
                    await loop.create_connection(
                        Client, HOST, port, ssl=True, server_hostname="localhost"
                    )
            # The server side saw the client's alert and dropped the connection.
            await asyncio.sleep(0.05)
            assert all("made" not in p.events for p in made)
        finally:
            await stop(server)
        return info.value

    exc = run(loop, main())
    assert "certificate verify failed" in str(exc)
    assert exc.verify_code == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    assert errors == []  # an SSL error is an OSError: asyncio does not report it


def test_hostname_mismatch_fails_verification(loop):
    """A chain the client trusts, but for 'localhost', fails for 'wrong.example'."""

    async def main():
        server, port = await tls_server(loop, ctx=signed_server_context())
        try:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await loop.create_connection(
                    Client,
                    HOST,
                    port,
                    ssl=trusting_client_context(),
                    server_hostname="wrong.example",
                )
        finally:
            await stop(server)
        return info.value

    exc = run(loop, main())
    assert exc.verify_code == X509_V_ERR_HOSTNAME_MISMATCH
    assert "Hostname mismatch" in exc.verify_message
    assert "certificate verify failed" in str(exc)


def test_trusted_chain_and_matching_hostname_connect(loop):
    """The positive control of the two tests above: the same trusted chain with the
    right name connects, and the verified peer certificate is reported."""

    async def main():
        server, port = await tls_server(loop, ctx=signed_server_context())
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=trusting_client_context(), server_hostname="localhost"
            )
            assert tr.get_extra_info("peercert") == test_utils.PEERCERT
            await echo_then_close(tr, pr, b"ping")
        finally:
            await stop(server)

    run(loop, main())


# -- timeouts, and peers that vanish or misbehave ---------------------------------------


def test_handshake_timeout_aborts_promptly_and_closes_the_socket(loop):
    """A server that accepts and never speaks: ssl_handshake_timeout ends the attempt
    with ConnectionAbortedError, about on time, and the client's socket is closed."""

    async def main():
        lsock, port = await raw_listener(loop)
        sock = socket.socket()
        sock.setblocking(False)
        try:
            (peer, _), _ = await asyncio.gather(
                loop.sock_accept(lsock), loop.sock_connect(sock, (HOST, port))
            )
            start = time.monotonic()
            with pytest.raises(ConnectionAbortedError) as info:
                await loop.create_connection(
                    Client,
                    sock=sock,
                    ssl=client_context(),
                    server_hostname="localhost",
                    ssl_handshake_timeout=0.2,
                )
            elapsed = time.monotonic() - start
            fileno_after = sock.fileno()  # -1 once the transport closed it
            # The peer got a ClientHello, then the end of the stream.
            got = bytearray()
            while chunk := await loop.sock_recv(peer, 65536):
                got += chunk
            assert got[:1] == b"\x16"  # a TLS handshake record
            peer.close()
        finally:
            lsock.close()
            sock.close()
        return info.value, elapsed, fileno_after

    exc, elapsed, fileno_after = run(loop, main(), timeout=5)
    assert "SSL handshake is taking longer than 0.2 seconds" in str(exc)
    assert 0.15 <= elapsed < 2.0
    assert fileno_after == -1


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_peer_vanishing_mid_handshake_is_a_connection_reset(loop, how):
    """The server reads the ClientHello and goes away (FIN, or RST with SO_LINGER 0):
    the client's create_connection fails with ConnectionResetError, no hang."""

    async def main():
        lsock, port = await raw_listener(loop)

        async def vanish():
            peer, _ = await loop.sock_accept(lsock)
            assert (await loop.sock_recv(peer, 65536))[:1] == b"\x16"
            if how == "rst":
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()

        try:
            task = asyncio.ensure_future(vanish())
            with pytest.raises(ConnectionResetError):
                await loop.create_connection(
                    Client, HOST, port, ssl=client_context(), server_hostname="localhost"
                )
            await task
        finally:
            lsock.close()

    run(loop, main(), timeout=5)


def _tls_peer(ctx=None):
    ctx = ctx or server_context()

    def wrap(conn):
        return ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)

    return wrap


def test_peer_dropping_tcp_after_close_notify_ends_the_shutdown(loop):
    """The client closes (close_notify); the peer reads it and drops the TCP connection
    without answering. connection_lost(None) comes at once, not after the shutdown
    timeout."""

    def handler(peer, conn):
        tls = _tls_peer()(conn)
        peer.result["read"] = tls.recv(1024)  # b"" on close_notify
        # Closing the SSLSocket does not send close_notify: the TCP connection drops.
        tls.close()

    async def main():
        peer = ThreadPeer(loop, handler)
        try:
            tr, pr = await loop.create_connection(
                Client,
                HOST,
                peer.port,
                ssl=client_context(),
                server_hostname="localhost",
                ssl_shutdown_timeout=5,
            )
            start = time.monotonic()
            tr.close()
            assert tr.is_closing()
            exc = await pr.lost
            elapsed = time.monotonic() - start
            result = await peer.done
        finally:
            peer.close()
        return exc, elapsed, result

    exc, elapsed, result = run(loop, main(), timeout=4)
    assert result["read"] == b""
    assert exc is None
    assert elapsed < 2.5


def test_shutdown_timeout_when_peer_never_answers_close_notify(loop):
    """A peer that never reads nor answers close_notify: the connection is dropped about
    ssl_shutdown_timeout after close(), and connection_lost gets asyncio's TimeoutError."""

    def handler(peer, conn):
        peer.result["tls"] = _tls_peer()(conn)
        peer.set_ready()
        peer.release.wait(5)
        peer.result["tls"].close()

    async def main():
        peer = ThreadPeer(loop, handler)
        try:
            tr, pr = await loop.create_connection(
                Client,
                HOST,
                peer.port,
                ssl=client_context(),
                server_hostname="localhost",
                ssl_shutdown_timeout=0.3,
            )
            await peer.ready
            start = time.monotonic()
            tr.close()
            exc = await pr.lost
            elapsed = time.monotonic() - start
        finally:
            peer.close()
        await peer.done
        return exc, elapsed

    exc, elapsed = run(loop, main(), timeout=5)
    assert isinstance(exc, asyncio.TimeoutError)
    assert "SSL shutdown timed out" in str(exc)
    assert 0.25 <= elapsed < 2.5


def test_server_handshake_timeout_drops_a_silent_client(loop):
    """create_server(ssl_handshake_timeout=): a client that connects and says nothing
    is dropped about on time, unseen by the app protocol."""

    async def main():
        factory, made = recording(Client)
        server, port = await tls_server(loop, factory, ssl_handshake_timeout=0.2)
        raw = socket.socket()
        raw.setblocking(False)
        try:
            await loop.sock_connect(raw, (HOST, port))
            start = time.monotonic()
            got = bytearray()
            try:
                while chunk := await loop.sock_recv(raw, 65536):
                    got += chunk
            except ConnectionResetError:
                pass
            elapsed = time.monotonic() - start
            assert got == b""
            assert all(p.events == [] for p in made)
        finally:
            raw.close()
            await stop(server)
        return elapsed

    elapsed = run(loop, main(), timeout=5)
    assert 0.15 <= elapsed < 2.0


def test_cancelling_create_connection_mid_handshake_closes_the_socket(loop):
    """Cancelled while the server stays silent: CancelledError, the peer sees EOF, and
    no descriptor stays open."""
    gc.collect()
    before = fd_count()

    async def main():
        lsock, port = await raw_listener(loop)
        try:
            accept = asyncio.ensure_future(loop.sock_accept(lsock))
            task = asyncio.ensure_future(
                loop.create_connection(
                    Client, HOST, port, ssl=client_context(), server_hostname="localhost"
                )
            )
            peer, _ = await accept
            assert (await loop.sock_recv(peer, 65536))[:1] == b"\x16"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            while await loop.sock_recv(peer, 65536):
                pass
            peer.close()
        finally:
            lsock.close()

    run(loop, main(), timeout=5)
    run_until(loop, lambda: fd_count() <= before, timeout=3)
    assert fd_count() == before


def test_peer_closing_without_close_notify_is_eof_then_lost_none(loop):
    """A ragged end (TCP closed without close_notify) after data: as asyncio, the app
    gets the data, eof_received and connection_lost(None)."""

    def handler(peer, conn):
        tls = _tls_peer()(conn)
        tls.sendall(b"last words")
        peer.result["read"] = tls.recv(1)  # wait for the client's go-ahead
        tls.close()  # no close_notify

    async def main():
        peer = ThreadPeer(loop, handler)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, peer.port, ssl=client_context(), server_hostname="localhost"
            )
            assert await pr.received(10) == b"last words"
            tr.write(b"!")
            exc = await pr.lost
            await peer.done
        finally:
            peer.close()
        return exc, pr.events

    exc, events = run(loop, main(), timeout=5)
    assert exc is None
    assert events == ["made", "eof", "lost"]


@pytest.mark.parametrize("debug", [False, True])
def test_peer_reset_on_an_established_connection(loop, debug, request):
    """An RST after the handshake: connection_lost(ConnectionResetError), and nothing
    for the exception handler (an OSError is only logged, in debug mode)."""
    errors = collect_errors(loop, debug)

    def handler(peer, conn):
        tls = _tls_peer()(conn)
        tls.sendall(b"ready")
        peer.result["read"] = tls.recv(1)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()

    async def main():
        peer = ThreadPeer(loop, handler)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, peer.port, ssl=client_context(), server_hostname="localhost"
            )
            await pr.received(5)
            tr.write(b"!")
            exc = await pr.lost
            await peer.done
        finally:
            peer.close()
        return exc

    exc = run(loop, main(), timeout=5)
    assert errors == []
    assert isinstance(exc, ConnectionResetError)


def test_garbage_after_the_handshake_is_an_ssl_error(loop):
    """Bytes that are not a TLS record after the handshake: connection_lost gets the
    ssl.SSLError, which (an OSError) the exception handler does not see."""
    errors = collect_errors(loop)

    def handler(peer, conn):
        tls = _tls_peer()(conn)
        tls.sendall(b"ready")
        peer.result["read"] = tls.recv(1)
        os.write(tls.fileno(), b"this is not a TLS record\r\n" * 4)
        peer.release.wait(5)
        tls.close()

    async def main():
        peer = ThreadPeer(loop, handler)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, peer.port, ssl=client_context(), server_hostname="localhost"
            )
            await pr.received(5)
            tr.write(b"!")
            exc = await pr.lost
        finally:
            peer.close()
        await peer.done
        return exc, pr.data

    exc, data = run(loop, main(), timeout=5)
    assert isinstance(exc, ssl.SSLError)
    assert data == b"ready"
    assert errors == []


def test_records_behind_passed_descriptors_are_not_stranded(loop):
    """Over a Unix socket, a read stops after data that carried descriptors, though more
    waits behind it (see test_stream_transport). The client's last handshake flight and
    a first record go with a descriptor, a second record follows, all queued before the
    server reads again, and the peer then goes silent: both records must arrive."""
    a, b = socket.socketpair()
    b.setblocking(False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    first, second = b"first record " * 500, PAYLOAD[:100_000]

    async def main():
        server = asyncio.ensure_future(
            loop.connect_accepted_socket(Client, a, ssl=server_context())
        )
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                await loop.sock_sendall(b, outgoing.read())
            incoming.write(await asyncio.wait_for(loop.sock_recv(b, 65536), 5))
        # No await from here to the last send: the server cannot read in between.
        tls.write(first)
        flight = outgoing.read()
        tls.write(second)
        rest = outgoing.read()
        r, w = os.pipe()
        try:
            fds = array.array("i", [r])
            assert b.sendmsg([flight], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]) == len(flight)
            assert b.send(rest) == len(rest)
        finally:
            os.close(r)
            os.close(w)
        tr, pr = await asyncio.wait_for(server, 5)
        got = await asyncio.wait_for(pr.received(len(first) + len(second)), 5)
        assert got == first + second
        tr.abort()

    try:
        run(loop, main(), timeout=15)
    finally:
        b.close()


# -- plain text on a TLS port -----------------------------------------------------------


@pytest.mark.parametrize("debug", [False, True])
def test_plain_text_client_on_tls_port_is_dropped_and_server_keeps_serving(loop, debug):
    """An HTTP request in clear to a TLS server: the handshake fails, the raw client sees
    the connection end, nothing reaches the app protocol, and the next TLS client is
    served. The SSLError reaches the exception handler in debug mode only."""
    errors = collect_errors(loop, debug)

    async def main():
        factory, made = recording(Echo)
        server, port = await tls_server(loop, factory)
        raw = socket.socket()
        raw.setblocking(False)
        try:
            await loop.sock_connect(raw, (HOST, port))
            await loop.sock_sendall(raw, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            got = bytearray()
            try:
                while chunk := await loop.sock_recv(raw, 65536):
                    got += chunk
            except ConnectionResetError:
                pass
            assert b"HTTP" not in got  # at most a TLS alert, never an answer in clear
            assert len(made) == 1 and made[0].events == []

            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            tr.write(b"still serving")
            assert await pr.received(13) == b"still serving"
            tr.close()
            await pr.lost
            assert server.is_serving()
        finally:
            raw.close()
            await stop(server)

    run(loop, main(), timeout=5)
    if not debug:
        assert errors == []  # the handshake's SSLError is an OSError: not reported
    else:
        [context] = errors
        assert context["message"] == "Error on transport creation for incoming connection"
        assert isinstance(context["exception"], ssl.SSLError)
        assert "HTTP_REQUEST" in str(context["exception"])


# -- descriptors ------------------------------------------------------------------------


def test_no_descriptor_leak_after_failed_and_successful_connections(loop):
    """Failed handshakes (untrusted certificate, timeout) and echo exchanges closed
    normally leave the process with the descriptors it had."""
    collect_errors(loop)
    gc.collect()  # sockets earlier tests left to the collector are not this test's
    before = fd_count()

    async def main():
        server, port = await tls_server(loop)
        lsock, raw_port = await raw_listener(loop)
        held = []
        try:
            for _ in range(3):
                with pytest.raises(ssl.SSLCertVerificationError):
                    await loop.create_connection(
                        Client,
                        HOST,
                        port,
                        ssl=ssl.create_default_context(),
                        server_hostname="localhost",
                    )
                accept = asyncio.ensure_future(loop.sock_accept(lsock))
                with pytest.raises(ConnectionAbortedError):
                    await loop.create_connection(
                        Client,
                        HOST,
                        raw_port,
                        ssl=client_context(),
                        server_hostname="localhost",
                        ssl_handshake_timeout=0.05,
                    )
                held.append((await accept)[0])
                tr, pr = await loop.create_connection(
                    Client, HOST, port, ssl=client_context(), server_hostname="localhost"
                )
                tr.write(b"x" * 1000)
                await pr.received(1000)
                tr.close()
                await pr.lost
        finally:
            for s in held:
                s.close()
            lsock.close()
            await stop(server)

    run(loop, main(), timeout=8)
    # The server's side of each connection finishes its own close a little later.
    run_until(loop, lambda: fd_count() <= before, timeout=3)
    assert fd_count() == before


# -- the TLS transport's API ------------------------------------------------------------


def test_extra_info(loop):
    """ssl_object, peercert, cipher, compression, sslcontext from the TLS layer; socket,
    peername, sockname from the socket under it; a default for unknown keys."""

    async def main():
        server, port = await tls_server(loop, ctx=signed_server_context())
        ctx = trusting_client_context()
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=ctx, server_hostname="localhost"
            )
            sslobj = tr.get_extra_info("ssl_object")
            assert isinstance(sslobj, ssl.SSLObject)
            assert sslobj.server_hostname == "localhost"
            assert tr.get_extra_info("peercert") == sslobj.getpeercert()
            assert tr.get_extra_info("peercert")["subjectAltName"] == (("DNS", "localhost"),)
            cipher = tr.get_extra_info("cipher")
            assert cipher == sslobj.cipher()
            assert len(cipher) == 3 and cipher[1].startswith("TLSv1")
            assert tr.get_extra_info("compression") is None
            assert tr.get_extra_info("sslcontext") is ctx
            sock = tr.get_extra_info("socket")
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
            assert tr.get_extra_info("peername") == (HOST, port)
            assert tr.get_extra_info("sockname") == sock.getsockname()
            assert sock.getpeername() == (HOST, port)
            assert tr.get_extra_info("no such key", "dflt") == "dflt"
            tr.close()
            await pr.lost
        finally:
            await stop(server)

    run(loop, main())


def test_no_half_close_and_write_buffer_api(loop):
    """TLS has no half-close: can_write_eof() is False and write_eof() raises
    NotImplementedError; the write-buffer methods behave as asyncio's."""

    async def main():
        async with echo_connection(loop) as (tr, pr):
            assert isinstance(tr, asyncio.Transport)
            assert tr.get_protocol() is pr
            assert tr.can_write_eof() is False
            with pytest.raises(NotImplementedError):
                tr.write_eof()
            assert tr.get_write_buffer_size() == 0
            tr.set_write_buffer_limits(high=1000, low=100)
            assert tr.get_write_buffer_limits() == (100, 1000)
            tr.set_write_buffer_limits(high=400)
            assert tr.get_write_buffer_limits() == (100, 400)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
                tr.write("text")
            tr.write(b"")
            tr.write(b"after all that")
            assert await pr.received(14) == b"after all that"
            tr.close()
            await pr.lost

    run(loop, main())


def test_pause_and_resume_reading(loop):
    """While paused, data the peer sent is held back; resume_reading() delivers it."""

    async def main():
        async with echo_connection(loop) as (tr, pr):
            assert tr.is_reading()
            tr.pause_reading()
            assert not tr.is_reading()
            tr.write(b"echo me")
            await asyncio.sleep(0.1)  # long enough for the echo to come back: it must not
            assert pr.data == b""
            tr.resume_reading()
            assert tr.is_reading()
            assert await pr.received(7) == b"echo me"
            tr.close()
            await pr.lost

    run(loop, main())


def test_close_flushes_then_connection_lost_none(loop):
    """close() sends what was written, then the peer gets EOF; is_closing() turns true
    at once and connection_lost(None) follows."""

    async def main():
        factory, made = recording(Client)
        server, port = await tls_server(loop, factory)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            assert not tr.is_closing()
            tr.write(b"flushed before close_notify")
            tr.close()
            assert tr.is_closing()
            tr.close()  # a second close is harmless
            assert await pr.lost is None
            assert pr.events == ["made", "eof", "lost"]  # the peer answered close_notify
            spr = await made.first
            assert await spr.lost is None
            assert spr.data == b"flushed before close_notify"
            assert spr.events == ["made", "eof", "lost"]
        finally:
            await stop(server)

    run(loop, main())


def test_abort_makes_connection_lost_none(loop):
    """abort() closes at once (no close_notify): connection_lost(None) here, and the
    server's side ends too."""

    async def main():
        factory, made = recording(Echo)
        server, port = await tls_server(loop, factory)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            tr.write(b"x")
            await pr.received(1)
            tr.abort()
            assert tr.is_closing()
            assert await pr.lost is None
            # The server's side of the connection ends too.
            await asyncio.wait_for(made[0].lost, 3)
        finally:
            await stop(server)

    run(loop, main())


@pytest.mark.parametrize("kwargs", [{"ssl_handshake_timeout": 0}, {"ssl_shutdown_timeout": -1}])
def test_non_positive_timeouts_are_rejected(loop, kwargs):
    """ssl_handshake_timeout / ssl_shutdown_timeout must be positive (asyncio's message)."""
    (name, value) = next(iter(kwargs.items()))

    async def main():
        server, port = await tls_server(loop)
        # A socket of the test's own: asyncio leaves one it made itself open on this error.
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (HOST, port))
            with pytest.raises(
                ValueError, match=f"{name} should be a positive number, got {value}"
            ):
                await loop.create_connection(
                    Client, sock=sock, ssl=client_context(), server_hostname="localhost", **kwargs
                )
        finally:
            sock.close()
            await stop(server)

    run(loop, main())


def test_default_buffer_limits_and_read_buffer_api(loop):
    """The TLS transport's own flow-control defaults (512 KiB to write, 256 KiB to
    read) and its read-buffer methods."""

    async def main():
        async with echo_connection(loop) as (tr, pr):
            assert tr.get_write_buffer_limits() == (128 * 1024, 512 * 1024)
            assert tr.get_read_buffer_limits() == (64 * 1024, 256 * 1024)
            tr.set_read_buffer_limits(high=4000)
            assert tr.get_read_buffer_limits() == (1000, 4000)
            with pytest.raises(ValueError):
                tr.set_read_buffer_limits(high=1, low=2)
            assert tr.get_read_buffer_size() == 0
            tr.close()
            await pr.lost

    run(loop, main())


def test_server_side_extra_info(loop):
    """The accepted side: a server-side SSLObject, and no peer certificate from a
    client that sent none."""

    async def main():
        factory, made = recording(Client)
        ctx = server_context()
        server, port = await tls_server(loop, factory, ctx=ctx)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            tr.write(b"x")
            spr = await made.first
            await spr.received(1)
            str_ = spr.transport
            assert str_.get_extra_info("ssl_object").server_side is True
            assert str_.get_extra_info("sslcontext") is ctx
            assert str_.get_extra_info("peercert") is None
            assert str_.get_extra_info("sockname") == (HOST, port)
            assert str_.get_extra_info("peername") == tr.get_extra_info("sockname")
            tr.close()
            await pr.lost
        finally:
            await stop(server)

    run(loop, main())


def test_set_protocol_switches_the_receiver(loop):
    """After set_protocol(), data and connection_lost go to the new protocol only."""

    async def main():
        server, port = await tls_server(loop)
        try:
            tr, first = await loop.create_connection(
                Client, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            second = Client()
            tr.set_protocol(second)
            assert tr.get_protocol() is second
            tr.write(b"to the second")
            assert await second.received(13) == b"to the second"
            assert first.data == b""
            tr.close()
            assert await second.lost is None
            assert not first.lost.done()
        finally:
            await stop(server)

    run(loop, main())


def test_writes_after_close_are_dropped_and_logged(loop, caplog):
    """As asyncio: writing to a closing TLS transport raises nothing, sends nothing,
    and past a few writes logs 'SSL connection is closed'."""

    async def main():
        factory, made = recording(Client)
        server, port = await tls_server(loop, factory)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            tr.write(b"before")
            tr.close()
            for _ in range(10):
                tr.write(b"after")
            await pr.lost
            spr = await made.first
            await spr.lost
            assert spr.data == b"before"
        finally:
            await stop(server)

    with caplog.at_level("WARNING", logger="asyncio"):
        run(loop, main())
    assert any("SSL connection is closed" in r.getMessage() for r in caplog.records)


def test_app_protocol_error_goes_to_the_exception_handler(loop):
    """An exception from data_received: reported as asyncio reports it ('Fatal error
    on SSL protocol'), and the connection is lost with it."""
    errors = collect_errors(loop)

    class Boom(Client):
        def data_received(self, data):
            raise RuntimeError("boom")

    async def main():
        server, port = await tls_server(loop)
        try:
            tr, pr = await loop.create_connection(
                Boom, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            tr.write(b"echo")
            exc = await pr.lost
        finally:
            await stop(server)
        return exc

    exc = run(loop, main())
    assert isinstance(exc, RuntimeError) and str(exc) == "boom"
    assert len(errors) == 1
    assert errors[0]["message"] == "Fatal error on SSL protocol"
    assert errors[0]["exception"] is exc


def test_app_protocol_without_a_transport_reference(loop):
    """An app protocol that keeps no reference to its transport: freeing the TLS
    transport when the connection ends raises nothing, not even unraisably (an oxio
    regression: the transport's __del__ once re-entered the TLS layer and panicked)."""

    class Greet(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"hi")
            transport.close()

    async def main():
        server, port = await tls_server(loop, Greet)
        try:
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            assert await reader.read() == b"hi"
            writer.close()
            await writer.wait_closed()
        finally:
            await stop(server)

    with Unraisable() as caught:
        run(loop, main())
    assert caught.seen == []


# -- echo -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1024, 1 << 20])
def test_protocol_echo(loop, size):
    """Payloads of 1 B, 1 KiB and 1 MiB come back intact through a Protocol TLS server."""

    async def main():
        async with echo_connection(loop) as (tr, pr):
            tr.write(PAYLOAD[:size])
            got = await pr.received(size)
            assert got == PAYLOAD[:size]
            tr.close()
            await pr.lost

    run(loop, main())


@pytest.mark.parametrize("size", [16 * 1024, 16 * 1024 + 1, 64 * 1024, 100_000])
def test_request_response_rounds(loop, size):
    """Request, wait for the whole reply, repeat: when a message spans several TLS
    records and nothing more arrives after it, the server must still decrypt every
    record it already holds (a stall here is data left inside the TLS engine)."""

    async def main():
        async with echo_connection(loop) as (tr, pr):
            expected = 0
            for i in range(20):
                message = PAYLOAD[i : i + size]
                tr.write(message)
                expected += size
                got = await asyncio.wait_for(pr.received(expected), 5)
                assert got[-size:] == message
            tr.close()
            await pr.lost

    run(loop, main(), timeout=20)


@pytest.mark.parametrize("size", [1, 1024, 1 << 20])
def test_streams_echo(loop, size):
    """start_server(ssl=) and open_connection(ssl=, server_hostname=); the server's
    close reaches the client's reader as a clean EOF."""

    async def handle(reader, writer):
        (n,) = struct.unpack("!I", await reader.readexactly(4))
        writer.write(await reader.readexactly(n))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0, ssl=server_context())
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            writer.write(struct.pack("!I", size) + PAYLOAD[:size])
            await writer.drain()
            assert await reader.readexactly(size) == PAYLOAD[:size]
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        finally:
            await stop(server)

    run(loop, main())


def test_buffered_protocols_over_tls(loop):
    """BufferedProtocol as the app protocol on both sides, with buffers much smaller
    than the data."""

    async def main():
        server, port = await tls_server(loop, BufferedEcho)
        try:
            tr, pr = await loop.create_connection(
                BufferedClient, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            pr.expected = 256 * 1024
            tr.write(PAYLOAD[: pr.expected])
            await pr.done
            assert pr.data == PAYLOAD[: pr.expected]
            tr.close()
            assert await pr.lost is None
        finally:
            await stop(server)

    run(loop, main())


def test_writelines(loop):
    """writelines() of mixed bytes-like objects and of an iterator, through TLS."""

    async def main():
        async with echo_connection(loop) as (tr, pr):
            mutable = bytearray(b"b" * 70_000)
            parts = [b"a" * 10, mutable, memoryview(b"c" * 5), b"d"]
            expected = b"".join(bytes(p) for p in parts)
            tr.writelines(parts)
            mutable[:] = b"\0" * len(mutable)  # written is written: a later change is not sent
            tr.writelines(iter([b"e", b"f"]))  # any iterable
            expected += b"ef"
            assert await pr.received(len(expected)) == expected
            tr.close()
            await pr.lost

    run(loop, main())


def test_unix_socket_echo(loop):
    """create_unix_server(ssl=) / create_unix_connection(ssl=, server_hostname=)."""

    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "tls.sock")
            server = await loop.create_unix_server(Echo, path, ssl=server_context())
            try:
                tr, pr = await loop.create_unix_connection(
                    Client, path, ssl=client_context(), server_hostname="localhost"
                )
                assert tr.get_extra_info("ssl_object") is not None
                await echo_then_close(tr, pr, PAYLOAD[:65536])
            finally:
                await stop(server)

    run(loop, main())


def test_many_concurrent_connections(loop):
    """Twenty TLS clients at once, each echoed its own bytes."""

    async def one(port, i):
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client_context(), server_hostname="localhost"
        )
        msg = f"client {i} ".encode() * 100
        writer.write(msg)
        assert await reader.readexactly(len(msg)) == msg
        writer.close()
        await writer.wait_closed()

    async def main():
        server, port = await tls_server(loop)
        try:
            await asyncio.gather(*(one(port, i) for i in range(20)))
        finally:
            await stop(server)

    run(loop, main())


# -- flow control -----------------------------------------------------------------------


class Sink(Client):
    """Server side: stops reading at once; hashes what it gets once told to read."""

    def __init__(self):
        super().__init__()
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.pause_reading()

    def eof_received(self):
        super().eof_received()
        self.eof.set_result(hashlib.sha256(self.data).hexdigest())


def test_write_flow_control_pauses_and_resumes_with_no_byte_lost(loop):
    """Writing far past the high-water mark to a peer that does not read pauses the
    writer; once the peer reads, it resumes; every byte arrives."""
    data = os.urandom(8 << 20)
    chunk = 1 << 20
    limit = 64 * 1024

    async def main():
        async with small_buffer_connection(
            loop, Sink, socket.SO_RCVBUF, socket.SO_SNDBUF, limit
        ) as (made, tr, pr):
            tr.set_write_buffer_limits(high=limit, low=limit // 4)
            for i in range(0, len(data), chunk):
                tr.write(data[i : i + chunk])
            assert pr.events == ["made", "pause"]
            assert tr.get_write_buffer_size() > limit
            await asyncio.sleep(0.1)  # the peer does not read: no resume may come
            assert "resume" not in pr.events
            spr = await made.first
            await spr.made
            spr.transport.resume_reading()
            await pr.resumed
            tr.close()
            digest = await spr.eof
            assert await pr.lost is None
        return digest

    assert run(loop, main()) == hashlib.sha256(data).hexdigest()


def test_paused_reading_pushes_back_on_the_sender(loop):
    """pause_reading() on the TLS transport stops reading the socket once its read
    buffer is full: the sender's buffer stays full; after resume_reading() every byte
    arrives."""
    data = os.urandom(8 << 20)
    limit = 64 * 1024

    async def main():
        async with small_buffer_connection(
            loop, Client, socket.SO_SNDBUF, socket.SO_RCVBUF, limit
        ) as (made, tr, pr):
            tr.pause_reading()
            spr = await made.first
            await spr.made
            for i in range(0, len(data), 1 << 20):
                spr.transport.write(data[i : i + (1 << 20)])
            await spr.paused
            await asyncio.sleep(0.1)  # time enough to drain, were the reader not paused
            assert pr.data == b""
            assert tr.get_read_buffer_size() < 1 << 20
            assert spr.transport.get_write_buffer_size() > 4 << 20
            assert "resume" not in spr.events
            tr.resume_reading()
            await pr.received(len(data))
            await spr.resumed
            tr.close()
            assert await pr.lost is None
        return hashlib.sha256(pr.data).hexdigest()

    assert run(loop, main()) == hashlib.sha256(data).hexdigest()


def test_pause_writing_errors_go_to_the_exception_handler(loop):
    """A pause_writing() that raises is reported ('protocol.pause_writing() failed')
    and the connection carries on."""
    errors = collect_errors(loop)

    class BadPause(Client):
        def pause_writing(self):
            raise RuntimeError("pause")

    async def main():
        server, port = await tls_server(loop)
        try:
            tr, pr = await loop.create_connection(
                BadPause, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            tr.set_write_buffer_limits(high=0)
            await echo_then_close(tr, pr, b"y" * 100)
        finally:
            await stop(server)

    run(loop, main())
    assert errors
    for context in errors:
        assert context["message"] == "protocol.pause_writing() failed"
        assert str(context["exception"]) == "pause"


# -- start_tls and sendfile -------------------------------------------------------------


def test_stream_writer_start_tls_upgrades_a_plain_connection(loop):
    """StreamWriter.start_tls() on both ends of a plain connection (STARTTLS style)."""

    async def main():
        handled = loop.create_future()

        async def handle(reader, writer):
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"OK\n")
            await writer.drain()
            await writer.start_tls(server_context())
            assert writer.get_extra_info("ssl_object") is not None
            writer.write((await reader.readexactly(5)).upper())
            await writer.drain()

        server = await asyncio.start_server(settling(handled, handle), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            assert writer.get_extra_info("ssl_object") is None
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"OK\n"
            await writer.start_tls(client_context(), server_hostname="localhost")
            assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"HELLO"
            assert await reader.read() == b""
            await handled
            writer.close()
            await writer.wait_closed()
        finally:
            await stop(server)

    run(loop, main())


def test_loop_start_tls_on_a_transport(loop):
    """loop.start_tls() upgrades both transports of a plain connection; the protocols
    stay, without a second connection_made."""

    async def main():
        factory, made = recording(Echo)
        server = await loop.create_server(factory, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            ctr, cpr = await loop.create_connection(Client, HOST, port)
            spr = await made.first
            await spr.made
            server_side = loop.start_tls(spr.transport, spr, server_context(), server_side=True)
            client_side = loop.start_tls(ctr, cpr, client_context(), server_hostname="localhost")
            str_, ctls = await asyncio.gather(server_side, client_side)
            spr.transport = str_
            assert ctls.get_extra_info("ssl_object") is not None
            assert ctls.get_protocol() is cpr
            assert cpr.events == ["made"]  # no second connection_made
            await echo_then_close(ctls, cpr, b"over tls")
        finally:
            await stop(server)

    run(loop, main())


def test_sendfile_over_tls_uses_the_fallback(loop):
    """loop.sendfile() on a TLS transport reads and writes through the TLS layer
    (the fallback); fallback=False is refused as asyncio refuses it."""

    content = os.urandom(300_000)

    async def main():
        factory, made = recording(Client)
        server, port = await tls_server(loop, factory)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, port, ssl=client_context(), server_hostname="localhost"
            )
            with tempfile.TemporaryFile() as f:
                f.write(content)
                f.seek(0)
                sent = await loop.sendfile(tr, f)
                assert f.tell() == len(content)
                with pytest.raises(RuntimeError, match="fallback is disabled"):
                    f.seek(0)
                    await loop.sendfile(tr, f, fallback=False)
            assert sent == len(content)
            spr = await made.first
            assert await spr.received(len(content)) == content
            tr.close()
            await pr.lost
        finally:
            await stop(server)

    run(loop, main())


# -- close_notify -----------------------------------------------------------------------


def test_client_close_sends_close_notify(loop):
    """A stdlib SSLSocket peer that reports ragged EOFs sees data, then a clean EOF."""

    def handler(peer, conn):
        tls = _tls_peer()(conn)
        got = bytearray()
        while chunk := tls.recv(65536):  # SSLEOFError without close_notify
            got += chunk
        peer.result["data"] = bytes(got)
        tls.close()

    async def main():
        peer = ThreadPeer(loop, handler)
        try:
            tr, pr = await loop.create_connection(
                Client, HOST, peer.port, ssl=client_context(), server_hostname="localhost"
            )
            tr.write(b"bye" * 1000)
            tr.close()
            result = await peer.done
            await pr.lost
        finally:
            peer.close()
        return result

    assert run(loop, main(), timeout=8)["data"] == b"bye" * 1000


def test_server_close_sends_close_notify(loop):
    """The same from the server side: a TLS server that writes and closes; a stdlib
    client that reports ragged EOFs reads the data, then a clean EOF."""

    class Greet(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"hello" * 1000)
            transport.close()

    def client(port):
        ctx = client_context()
        with socket.create_connection((HOST, port), timeout=5) as raw:
            with ctx.wrap_socket(
                raw, server_hostname="localhost", suppress_ragged_eofs=False
            ) as tls:
                got = bytearray()
                while chunk := tls.recv(65536):
                    got += chunk
                return bytes(got)

    async def main():
        server, port = await tls_server(loop, Greet)
        try:
            return await loop.run_in_executor(None, client, port)
        finally:
            await stop(server)

    assert run(loop, main(), timeout=8) == b"hello" * 1000


class WireTransport(asyncio.Transport):
    """The transport under a TLS layer, driven by hand: what the layer writes is kept
    for the test to hand to the peer."""

    def __init__(self):
        super().__init__()
        self.out = bytearray()

    def write(self, data):
        self.out += data

    def take(self):
        data, self.out = bytes(self.out), bytearray()
        return data

    def is_closing(self):
        return False

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        pass

    def abort(self):
        pass

    def _force_close(self, exc):
        raise AssertionError(f"the TLS layer failed: {exc!r}")


def tls_layer(loop, app_protocol, waiter):
    """The loop's own TLS layer, server side (asyncio's SSLProtocol, or oxio's)."""
    if loop.kind == "oxio":
        from oxio._tls import make_tls_protocol

        return make_tls_protocol(loop, app_protocol, server_context(), waiter, server_side=True)
    from asyncio import sslproto

    return sslproto.SSLProtocol(loop, app_protocol, server_context(), waiter, server_side=True)


def feed(layer, data):
    """Hands `data` to the layer as a buffered protocol, as a transport would."""
    while data:
        buf = layer.get_buffer(len(data))
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        layer.buffer_updated(n)
        data = data[n:]


@pytest.mark.parametrize("piece", [1, 141, 1000, 16_000, 16_500, 70_000])
def test_records_split_anywhere_are_all_delivered(loop, piece):
    """Ciphertext arriving in pieces that end inside records: once the last piece is
    in, every byte has reached the application. (The engine keeps the start of an
    unfinished record to itself; the layer must not take its empty input BIO for
    'nothing left'.)"""

    async def main():
        app = Client()
        waiter = loop.create_future()
        layer = tls_layer(loop, app, waiter)
        wire = WireTransport()
        layer.connection_made(wire)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        peer = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:  # the handshake, by hand
            try:
                peer.do_handshake()
                break
            except ssl.SSLWantReadError:
                feed(layer, outgoing.read())
                incoming.write(wire.take())
        feed(layer, outgoing.read())  # the client's Finished
        await asyncio.wait_for(waiter, 5)
        message = PAYLOAD[: 3 * 16384 + 5000]
        peer.write(message)
        ciphertext = outgoing.read()
        for i in range(0, len(ciphertext), piece):
            feed(layer, ciphertext[i : i + piece])
        assert await asyncio.wait_for(app.received(len(message)), 5) == message

    run(loop, main())


def test_debug_mode_logs_the_handshake(loop, caplog):
    """In debug mode the TLS layer logs the handshake's start and its duration, as
    asyncio's does."""
    loop.set_debug(True)
    loop.slow_callback_duration = 10  # only the handshake lines matter here

    async def main():
        async with echo_connection(loop) as (tr, pr):
            tr.close()
            await pr.lost

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(loop, main())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("starts SSL handshake" in m for m in messages) >= 2  # client and server
    assert any(re.search(r": SSL handshake took \d+\.\d ms", m) for m in messages)
