"""create_server, create_unix_server and the Server object: asyncio.Server's whole API,
and accepting that survives running out of descriptors."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
import tempfile

import pytest
from conftest import polls_for_real, run, until


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Keep(asyncio.Protocol):
    """Resolves `made` with the transport and `lost` with connection_lost's argument."""

    def __init__(self, made, lost):
        self.made, self.lost = made, lost

    def connection_made(self, transport):
        self.made.set_result(transport)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def echo_once(loop, addr, payload=b"ping", family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, addr)
        await loop.sock_sendall(s, payload)
        got = b""
        while len(got) < len(payload):
            chunk = await loop.sock_recv(s, 65536)
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


def test_server_api(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert server.is_serving()
        (sock,) = server.sockets
        addr = sock.getsockname()
        assert await echo_once(loop, addr) == b"ping"
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await echo_once(loop, addr)

    run(loop, main())


def test_connections_queued_before_serving_are_all_accepted(loop):
    # Three wait in the queue before serving starts and no more come: every one must be
    # accepted. oxio's acceptor takes one per readiness report (asyncio's takes up to
    # `backlog`), so a watch that reported the socket only when a connection arrived
    # would leave two in the queue.
    async def main():
        made = []

        class Count(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport)

        sock = socket.create_server(("127.0.0.1", 0), backlog=2)
        clients = [socket.create_connection(sock.getsockname(), timeout=5) for _ in range(3)]
        try:
            server = await loop.create_server(Count, sock=sock, backlog=2)
            await asyncio.wait_for(until(lambda: len(made) == 3), 5)
            server.close()
            for t in made:
                t.close()
            await server.wait_closed()
        finally:
            for c in clients:
                c.close()

    run(loop, main())


def test_a_closed_servers_socket_reports_nothing_to_the_next_owner_of_its_number(loop):
    # The listening socket has a duplicate, so closing it leaves its file open and
    # listening. Once the server is closed, nothing about that file may reach whoever
    # is given the descriptor's number next.
    async def main():
        sock = socket.create_server(("127.0.0.1", 0))
        dup = sock.dup()
        number = sock.fileno()
        a, b = socket.socketpair()  # made first, so that neither takes the number
        try:
            server = await loop.create_server(Echo, sock=sock)
            server.close()
            await server.wait_closed()
            # The number's next owner: a socket placed on it.
            mine = socket.socket(fileno=os.dup2(a.fileno(), number))
            try:
                calls = []
                loop.add_reader(mine, calls.append, "reported")
                client = socket.create_connection(dup.getsockname(), timeout=5)
                try:
                    await polls_for_real(loop)
                    assert calls == []
                finally:
                    loop.remove_reader(mine)
                    client.close()
            finally:
                mine.close()
        finally:
            a.close()
            b.close()
            dup.close()

    run(loop, main())


def test_start_serving_later(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        assert await echo_once(loop, server.sockets[0].getsockname()) == b"ping"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_async_with_and_serve_forever(loop):
    async def main():
        async with await loop.create_server(Echo, "127.0.0.1", 0) as server:
            task = asyncio.ensure_future(server.serve_forever())
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
                await server.serve_forever()
            assert await echo_once(loop, server.sockets[0].getsockname()) == b"ping"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not server.is_serving()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(loop, main())


def test_wait_closed_waits_for_connections(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, server.sockets[0].getsockname())
        await loop.sock_sendall(client, b"x")
        assert await loop.sock_recv(client, 1) == b"x"
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.01)
        if sys.version_info >= (3, 12):
            # 3.12+ waits for the open connection; 3.11 returned at once once closed.
            assert not waiter.done()
        client.close()
        await asyncio.wait_for(waiter, 5)

    run(loop, main())


def test_multiple_hosts_and_families(loop):
    async def main():
        server = await loop.create_server(Echo, ["127.0.0.1", "::1", "127.0.0.1"], 0)
        families = sorted(s.family for s in server.sockets)
        assert families == [socket.AF_INET, socket.AF_INET6]
        for s in server.sockets:
            assert await echo_once(loop, s.getsockname(), family=s.family) == b"ping"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_argument_errors(loop):
    sock = socket.socket()
    try:
        with pytest.raises(ValueError, match="host/port and sock can not be specified"):
            run(loop, loop.create_server(Echo, "127.0.0.1", 0, sock=sock))
        with pytest.raises(ValueError, match="Neither host/port nor sock were specified"):
            run(loop, loop.create_server(Echo))
        with pytest.raises(TypeError, match="ssl argument must be an SSLContext or None"):
            run(loop, loop.create_server(Echo, "127.0.0.1", 0, ssl=True))
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            run(loop, loop.create_server(Echo, "127.0.0.1", 0, ssl_handshake_timeout=1))
    finally:
        sock.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            run(loop, loop.create_server(Echo, sock=udp))
    finally:
        udp.close()


def test_address_in_use(loop):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError) as info:
            run(loop, loop.create_server(Echo, *taken.getsockname(), reuse_address=False))
        assert info.value.errno == errno.EADDRINUSE
        assert "error while attempting to bind on address" in str(info.value)
    finally:
        taken.close()


def test_reuse_port(loop):
    async def main():
        a = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = a.sockets[0].getsockname()[1]
        b = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        for s in (a, b):
            s.close()
            await s.wait_closed()

    run(loop, main())


def test_unix_server(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "srv.sock")
            open(path, "w").close()  # not a socket: left alone, bind fails
            with pytest.raises(OSError, match="already in use"):
                await loop.create_unix_server(Echo, path)
            os.unlink(path)
            server = await loop.create_unix_server(Echo, path)
            assert await echo_once(loop, path, family=socket.AF_UNIX) == b"ping"
            server.close()
            await server.wait_closed()
            # A stale socket file from an earlier server is replaced.
            assert os.path.exists(path)
            server = await loop.create_unix_server(Echo, path)
            assert await echo_once(loop, path, family=socket.AF_UNIX) == b"ping"
            server.close()
            await server.wait_closed()

    run(loop, main())


class ResourceStarvedSocket(socket.socket):
    """A listening socket whose first accept() fails as if out of descriptors."""

    fail = 1

    def accept(self):
        if self.fail:
            self.fail -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_emfile_on_accept_is_logged_and_serving_resumes(loop, monkeypatch):
    monkeypatch.setattr(asyncio.constants, "ACCEPT_RETRY_DELAY", 0.05)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        sock = ResourceStarvedSocket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(Echo, sock=sock)
        addr = sock.getsockname()
        # The first connection waits in the backlog until accepting resumes.
        assert await echo_once(loop, addr) == b"ping"
        assert await echo_once(loop, addr, b"again") == b"again"
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert contexts[0]["message"] == "socket.accept() out of system resource"
    assert contexts[0]["exception"].errno == errno.EMFILE


def test_protocol_factory_failure_does_not_stop_the_server(loop):
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no protocol for you")
        return Echo()

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, addr)
        assert await loop.sock_recv(s, 10) == b""  # closed without a protocol
        s.close()
        assert await echo_once(loop, addr) == b"ping"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_real_emfile_on_accept(loop, monkeypatch):
    # The process really runs out of descriptors while connections wait to be
    # accepted: the loop reports it, stops accepting for a moment, and carries on once
    # descriptors are available again. Nothing is lost: every client is served.
    import resource

    monkeypatch.setattr(asyncio.constants, "ACCEPT_RETRY_DELAY", 0.05)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        clients = [socket.socket() for _ in range(8)]
        try:
            for c in clients:
                c.setblocking(False)
            open_now = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 2, hard))
            try:
                for c in clients:
                    await loop.sock_connect(c, addr)
                while not contexts:
                    await asyncio.sleep(0.01)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for c in clients:
                await loop.sock_sendall(c, b"hello")
            for c in clients:
                assert await asyncio.wait_for(loop.sock_recv(c, 5), 5) == b"hello"
        finally:
            for c in clients:
                c.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert contexts[0]["message"] == "socket.accept() out of system resource"
    assert contexts[0]["exception"].errno == errno.EMFILE


def open_descriptors():
    return set(os.listdir("/proc/self/fd"))


def test_a_failed_protocol_factory_leaves_no_descriptor_open(loop):
    def factory():
        raise RuntimeError("no protocol for you")

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        before = open_descriptors()
        for _ in range(3):
            with socket.create_connection(addr, timeout=5) as s:
                s.setblocking(False)
                assert await asyncio.wait_for(loop.sock_recv(s, 10), 5) == b""
        assert open_descriptors() == before
        server.close()
        await server.wait_closed()

    loop.set_exception_handler(lambda loop, ctx: None)
    run(loop, main())


@pytest.mark.parametrize("side", ["accepted", "connected"])
@pytest.mark.parametrize("warnings_are", ["warnings", "errors"])
def test_an_unclosed_transport_warns_and_closes_its_descriptor(loop, side, warnings_are):
    # A connection still open when its loop closes: collecting its transport warns
    # "unclosed transport" and closes the descriptor, as asyncio's __del__ does. With
    # warnings turned into errors, the error goes to sys.unraisablehook, and an exception
    # being handled around the collection is left as it was.
    import gc
    import warnings

    made = loop.create_future()

    class Made(asyncio.Protocol):
        def connection_made(self, transport):
            made.set_result(transport)

    async def main():
        factory = Made if side == "accepted" else asyncio.Protocol
        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        if side == "accepted":
            client = socket.create_connection(addr, timeout=5)
            tr = await asyncio.wait_for(made, 5)
        else:
            client = None
            tr, _ = await loop.create_connection(Made, *addr)
        server.close()
        return client, tr._sock_fd

    client, fd = run(loop, main())
    unraisable = []
    try:
        loop.close()
        made = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always" if warnings_are == "warnings" else "error")
            hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
            try:
                try:
                    raise KeyError("being handled")
                except KeyError:
                    gc.collect()
                    assert sys.exc_info()[0] is KeyError
            finally:
                sys.unraisablehook = hook
        if warnings_are == "warnings":
            reported = [str(w.message) for w in caught if w.category is ResourceWarning]
        else:
            reported = [str(u.exc_value) for u in unraisable]
        assert any(m.startswith("unclosed transport") for m in reported), reported
        with pytest.raises(OSError) as e:
            os.fstat(fd)
        assert e.value.errno == errno.EBADF
    finally:
        if client is not None:
            client.close()


def test_an_accepted_connection_makes_its_socket_object_only_when_asked(oxloop, monkeypatch):
    # oxio's choice: an accepted connection's `socket.socket` (a Python call and a
    # getsockname, then two Python calls at the close) is made on the first request.
    loop = oxloop
    made_sockets = []
    init = socket.socket.__init__

    def counting_init(self, *args, **kwargs):
        made_sockets.append(self)
        init(self, *args, **kwargs)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        clients = [socket.socket() for _ in range(3)]
        monkeypatch.setattr(socket.socket, "__init__", counting_init)
        for s in clients:
            with s:
                s.setblocking(False)
                await asyncio.wait_for(loop.sock_connect(s, addr), 5)
                await loop.sock_sendall(s, b"ping")
                assert await asyncio.wait_for(loop.sock_recv(s, 10), 5) == b"ping"
        assert made_sockets == []
        monkeypatch.undo()
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1", "unix"])
def test_both_ends_report_their_addresses_before_and_after_close(loop, host):
    # As asyncio's transports: sockname and peername are what the socket says, and
    # stay readable after the connection is lost. A wildcard listener's connections
    # report the address they were reached on.

    async def main():
        made = [loop.create_future(), loop.create_future()]
        lost = [loop.create_future(), loop.create_future()]
        with tempfile.TemporaryDirectory() as tmp:
            if host == "unix":
                path = os.path.join(tmp, "s")
                server = await loop.create_unix_server(lambda: Keep(made[0], lost[0]), path)
                await loop.create_unix_connection(lambda: Keep(made[1], lost[1]), path)
            else:
                server = await loop.create_server(lambda: Keep(made[0], lost[0]), host, 0)
                port = server.sockets[0].getsockname()[1]
                target = "127.0.0.1" if host == "0.0.0.0" else host
                await loop.create_connection(lambda: Keep(made[1], lost[1]), target, port)
            try:
                ends = [await asyncio.wait_for(m, 5) for m in made]
                real = []
                for tr in ends:
                    sock = tr.get_extra_info("socket")
                    real.append((sock.getsockname(), sock.getpeername()))
                    assert tr.get_extra_info("sockname") == real[-1][0]
                    assert tr.get_extra_info("peername") == real[-1][1]
                if host != "unix":  # a Unix client's own name is empty
                    assert real[0] == real[1][::-1]
                for tr in ends:
                    tr.close()
                for f in lost:
                    await asyncio.wait_for(f, 5)
                for tr, (sockname, peername) in zip(ends, real):
                    assert tr.get_extra_info("sockname") == sockname
                    assert tr.get_extra_info("peername") == peername
            finally:
                server.close()
                await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("asked", ["while open", "after close"])
def test_an_accepted_connections_socket_is_reported_open_and_closed(loop, asked):
    # Whether or not anyone asked for it while the connection was open, get_extra_info
    # ("socket") gives the connection's socket while it is open and a closed socket of
    # the same kind afterwards, and the descriptor is closed exactly once.

    async def main():
        made, lost = loop.create_future(), loop.create_future()
        server = await loop.create_server(lambda: Keep(made, lost), "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname(), timeout=5)
        try:
            tr = await asyncio.wait_for(made, 5)
            fd = tr._sock_fd
            if asked == "while open":
                sock = tr.get_extra_info("socket")
                assert sock.fileno() == fd
                assert tr.get_extra_info("socket").fileno() == fd
                assert sock.getpeername() == client.getsockname()
            assert tr.get_extra_info("peername") == client.getsockname()
            tr.close()
            await asyncio.wait_for(lost, 5)
            sock = tr.get_extra_info("socket")
            assert sock.fileno() == -1
            assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
            with pytest.raises(OSError) as e:
                os.fstat(fd)
            assert e.value.errno == errno.EBADF
            # The number is free again: whatever takes it must outlive the transport.
            r, w = os.pipe()
            try:
                del tr, sock
                made, lost = None, None
                import gc

                gc.collect()
                os.fstat(r)
                os.fstat(w)
            finally:
                os.close(r)
                os.close(w)
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1"])
def test_an_accepted_connections_addresses_hold_before_and_after_close(loop, host):
    # As asyncio's transports do, sockname and peername are the connection's own
    # addresses (a wildcard listener's connections report the address the client
    # reached), and stay readable after the close.
    target = "::1" if ":" in host else "127.0.0.1"

    async def main():
        made, lost = loop.create_future(), loop.create_future()
        server = await loop.create_server(lambda: Keep(made, lost), host, 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection((target, port), timeout=5)
        try:
            tr = await asyncio.wait_for(made, 5)
            here, there = tr.get_extra_info("sockname"), tr.get_extra_info("peername")
            assert here == client.getpeername()
            assert there == client.getsockname()
            tr.close()
            await asyncio.wait_for(lost, 5)
            assert tr.get_extra_info("sockname") == here
            assert tr.get_extra_info("peername") == there
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    run(loop, main())
