"""The low-level socket methods: data moved intact, asyncio's checks, cancellation that
leaves no watch behind, and sendfile with its fallback."""

from __future__ import annotations

import array
import asyncio
import io
import socket
import tempfile

import pytest
from conftest import run, settling

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB


def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def receive(loop, sock, n, method):
    """One `loop.sock_recv`, or one `loop.sock_recv_into` of an n-byte buffer."""
    if method == "sock_recv":
        return await loop.sock_recv(sock, n)
    buf = bytearray(n)
    got = await loop.sock_recv_into(sock, buf)
    return bytes(buf[:got])


BOTH_RECEIVES = pytest.mark.parametrize("method", ["sock_recv", "sock_recv_into"])


def test_sendall_and_recv_move_every_byte(loop):
    async def main():
        a, b = pair()
        with a, b:
            sender = asyncio.ensure_future(loop.sock_sendall(a, PAYLOAD))
            got = bytearray()
            while len(got) < len(PAYLOAD):
                got += await loop.sock_recv(b, 65536)
            await sender
            assert got == PAYLOAD
            buf = bytearray(10)
            await loop.sock_sendall(a, b"0123456789")
            n = 0
            while n < 10:
                n += await loop.sock_recv_into(b, memoryview(buf)[n:])
            assert buf == b"0123456789"

    run(loop, main())


@pytest.mark.parametrize("kind", ["array", "bytearray"])
def test_sendall_takes_any_buffer_and_holds_it_while_waiting(loop, kind):
    # socket.send takes any contiguous buffer of bytes, signed ones too; a send that
    # must wait keeps its buffer exported, so a bytearray cannot be resized under it.
    data = array.array("b", PAYLOAD) if kind == "array" else bytearray(PAYLOAD)
    expected = PAYLOAD

    async def main():
        a, b = pair()
        with a, b:
            sender = asyncio.ensure_future(loop.sock_sendall(a, data))
            await asyncio.sleep(0)
            assert not sender.done()
            if kind == "bytearray":
                with pytest.raises(BufferError):
                    data.extend(b"more")
            got = bytearray()
            while len(got) < len(expected):
                got += await asyncio.wait_for(loop.sock_recv(b, 65536), 5)
            await asyncio.wait_for(sender, 5)
            assert got == expected

    run(loop, main())


@pytest.mark.parametrize("waits", [False, True], ids=["ready", "waits"])
def test_recv_into_takes_any_writable_buffer(loop, waits):
    # socket.recv_into fills any writable contiguous buffer, whatever its item format,
    # and says how many bytes it wrote; the same when the read has to wait.
    async def main():
        a, b = pair()
        with a, b:
            target = array.array("i", [0] * 4)
            if not waits:
                a.send(b"0123456789abcdef")
            receiver = asyncio.ensure_future(loop.sock_recv_into(b, target))
            await asyncio.sleep(0)
            if waits:
                assert not receiver.done()
                a.send(b"0123456789abcdef")
            assert await asyncio.wait_for(receiver, 5) == 16
            assert target.tobytes() == b"0123456789abcdef"

    run(loop, main())


@BOTH_RECEIVES
def test_a_bulk_receive_waits_for_a_poll_and_a_small_one_reads_at_once(oxloop, method):
    # An oxio choice (asyncio always reads at once): a receive of 64 KiB or more waits
    # for the next poll, as uvloop's every receive does, so a bulk transfer is read in
    # turns with the other ready tasks instead of all in one step. A smaller receive
    # keeps asyncio's order: data already there is returned without yielding.
    loop = oxloop
    data = bytes(range(256)) * 1024  # 256 KiB: four 64 KiB reads

    async def main():
        a, b = pair()
        with a, b:
            # All of it queued first, so that every read finds data waiting; 256 KiB
            # fits the send buffer any user may set (twice net.core.wmem_max's default).
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            a.sendall(data)
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            t = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            got = bytearray()
            async with asyncio.timeout(5):  # no wait_for: its task would yield too
                before = ticks
                got += await receive(loop, b, 1024, method)
                assert ticks == before, "a small receive with data waiting yielded"
                while len(got) < len(data):
                    before = ticks
                    got += await receive(loop, b, 65536, method)
                    assert ticks > before, "a bulk receive did not wait for a poll"
            t.cancel()
            assert got == data

    run(loop, main())


def test_accept_and_connect(loop):
    async def main():
        srv = socket.create_server(("127.0.0.1", 0))
        srv.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        with srv, client:
            (conn, addr), _ = await asyncio.gather(
                loop.sock_accept(srv), loop.sock_connect(client, srv.getsockname())
            )
            with conn:
                assert conn.gettimeout() == 0
                assert addr == client.getsockname()

    run(loop, main())


def test_connect_refused(loop):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    client = socket.socket()
    client.setblocking(False)
    with client, pytest.raises(ConnectionRefusedError):
        run(loop, loop.sock_connect(client, ("127.0.0.1", port)))


def test_blocking_socket_rejected_in_debug_mode(loop):
    loop.set_debug(True)
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            run(loop, loop.sock_recv(a, 1))
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            run(loop, loop.sock_sendall(a, b"x"))


def test_cancelled_recv_removes_its_watch(loop):
    async def main():
        a, b = pair()
        with a, b:
            task = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not loop.remove_reader(a.fileno())
            # The socket is usable again.
            b.send(b"next")
            assert await loop.sock_recv(a, 10) == b"next"

    run(loop, main())


def test_sock_sendfile(loop):
    async def main():
        a, b = pair()
        with a, b, tempfile.TemporaryFile() as f:
            f.write(PAYLOAD)
            f.flush()
            sender = asyncio.ensure_future(loop.sock_sendfile(a, f, 100, 1_000_000))
            got = bytearray()
            while len(got) < 1_000_000:
                got += await loop.sock_recv(b, 65536)
            assert await sender == 1_000_000
            assert got == PAYLOAD[100:1_000_100]
            assert f.tell() == 1_000_100

    run(loop, main())


def test_sock_sendfile_falls_back_for_non_files(loop):
    async def main():
        a, b = pair()
        with a, b:
            f = io.BytesIO(b"not a real file")
            assert await loop.sock_sendfile(a, f) == 15
            assert await loop.sock_recv(b, 100) == b"not a real file"
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sock_sendfile(a, io.BytesIO(b"x"), fallback=False)

    run(loop, main())


@pytest.mark.parametrize(
    "kwargs, error",
    [({"offset": -1}, ValueError), ({"count": 0}, ValueError), ({"offset": "1"}, TypeError)],
)
def test_sock_sendfile_argument_errors(loop, kwargs, error):
    a, b = pair()
    with a, b, tempfile.TemporaryFile() as f:
        with pytest.raises(error):
            run(loop, loop.sock_sendfile(a, f, **kwargs))


def test_sendfile_over_a_transport(loop):
    async def main():
        srv = socket.create_server(("127.0.0.1", 0))
        srv.setblocking(False)
        with srv, tempfile.TemporaryFile() as f:
            f.write(PAYLOAD)
            f.flush()
            (conn, _), (tr, pr) = await asyncio.gather(
                loop.sock_accept(srv),
                loop.create_connection(asyncio.Protocol, *srv.getsockname()),
            )
            conn.setblocking(False)
            with conn:
                tr.write(b"head")

                async def receive(n):
                    got = bytearray()
                    while len(got) < n:
                        got += await loop.sock_recv(conn, 1 << 20)
                    return got

                sent, got = await asyncio.gather(loop.sendfile(tr, f), receive(len(PAYLOAD) + 4))
                assert sent == len(PAYLOAD)
                tr.write(b"tail")  # the transport is usable afterwards
                got += await receive(4)
                assert got == b"head" + PAYLOAD + b"tail"
                tr.close()

    run(loop, main())


@BOTH_RECEIVES
def test_a_cancelled_bulk_receive_leaves_the_data_for_the_next(oxloop, method):
    # An oxio choice: a bulk receive (64 KiB or more) reads in its own task's step once
    # the socket is reported readable, so cancelling it between the report and that
    # step loses nothing (asyncio reads in the reader callback; cancelling then drops
    # what it read).
    loop = oxloop

    async def main():
        a, b = pair()
        with a, b:
            t = asyncio.ensure_future(receive(loop, b, 65536, method))
            await asyncio.sleep(0)
            assert t._fut_waiter is not None  # waiting for the socket
            cancelled = loop.create_future()

            def cancel_once_ready():
                waiter = t._fut_waiter
                if waiter is not None and waiter.done():
                    t.cancel()  # before the task's own step runs
                    cancelled.set_result(None)
                else:
                    loop.call_soon(cancel_once_ready)

            loop.call_soon(cancel_once_ready)
            a.send(b"kept" * 25)
            await cancelled
            with pytest.raises(asyncio.CancelledError):
                await t
            assert await asyncio.wait_for(receive(loop, b, 65536, method), 5) == b"kept" * 25

    run(loop, main())


def test_sendfile_over_an_accepted_transport(loop):
    # The server's side of a connection: its socket object (which oxio makes only when
    # asked) carries the zero-copy send, and the transport goes on afterwards.
    async def main():
        done = loop.create_future()

        async def handle(reader, writer):
            with tempfile.TemporaryFile() as f:
                f.write(PAYLOAD)
                f.flush()
                writer.write(b"head")
                sent = await loop.sendfile(writer.transport, f)
                writer.write(b"tail")
                await writer.drain()
            return sent

        server = await asyncio.start_server(settling(done, handle), "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            got = await asyncio.wait_for(reader.read(), 10)
            assert got == b"head" + PAYLOAD + b"tail"
            assert await asyncio.wait_for(done, 10) == len(PAYLOAD)
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    run(loop, main())
