"""The stream transport (TCP and Unix): bytes in order and complete, half-close, flow
control, reading pauses, close and abort, hostile peers, and the errors asyncio raises."""

from __future__ import annotations

import array
import asyncio
import contextvars
import fcntl
import gc
import logging
import os
import socket
import struct
import tempfile
import termios
import tracemalloc
import types
import weakref

import pytest
from conftest import PollsForReal, polls_for_real, run, run_until, until

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB with a pattern a lost or moved byte breaks


class Collect(asyncio.Protocol):
    """Records everything a transport tells its protocol."""

    def __init__(self, eof_keep_open=False):
        self.transport = None
        self.data = bytearray()
        self.events = []
        self.eof_keep_open = eof_keep_open
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return self.eof_keep_open

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


class BufferedCollect(asyncio.BufferedProtocol):
    def __init__(self, size):
        self.buf = bytearray(size)
        self.data = bytearray()
        self.eof = False
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class GivesBuffer(asyncio.BufferedProtocol):
    """A BufferedProtocol whose get_buffer() returns whatever `make()` gives."""

    def __init__(self, make):
        self.make = make
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint):
        self.buf = self.make()
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += memoryview(self.buf).cast("B")[:nbytes]

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def connected_pair(loop, protocol_factory):
    """A transport on `loop` for one end of a socket pair; the other end is a plain
    non-blocking socket."""
    a, b = socket.socketpair()
    b.setblocking(False)
    transport, protocol = await loop.connect_accepted_socket(protocol_factory, a)
    return transport, protocol, b


async def tcp_pair(loop, protocol_factory):
    """A TCP connection over loopback: (client transport, client protocol, server sock)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        port = listener.getsockname()[1]
        connect = loop.create_connection(protocol_factory, "127.0.0.1", port)
        (transport, protocol), (peer, _) = await asyncio.gather(connect, loop.sock_accept(listener))
    finally:
        listener.close()
    peer.setblocking(False)
    return transport, protocol, peer


async def recv_exactly(loop, sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, min(1 << 20, n - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def echo_each(loop, sock, messages):
    """Sends each message in turn, waiting for its echo before the next."""
    for m in messages:
        await loop.sock_sendall(sock, m)
        assert await asyncio.wait_for(recv_exactly(loop, sock, len(m)), 5) == m


async def recv_until_eof(loop, sock):
    out = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        out += chunk
    return bytes(out)


# Linux's SO_SNDBUFFORCE: a send buffer past net.core.wmem_max, for a privileged process.
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def backlogged_pair(*parts):
    """A Unix socket pair whose first end already has `parts` queued towards it, in
    order; a part is bytes, or (bytes, descriptors) to send the descriptors with it.
    A Unix socket queues at most its peer's send buffer, so that is raised (past
    net.core.wmem_max when the process may); the test is skipped when the backlog still
    does not fit, since then it cannot all wait before the reader starts."""
    a, b = socket.socketpair()
    try:
        b.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 * 1024 * 1024)
    except PermissionError:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
    b.setblocking(False)
    try:
        for part in parts:
            data, fds = part if isinstance(part, tuple) else (part, None)
            ancillary = []
            if fds:
                ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds)))
            sent = b.sendmsg([data], ancillary)
            while sent < len(data):
                sent += b.send(data[sent:])
    except BlockingIOError:
        a.close()
        b.close()
        size = sum(len(p[0] if isinstance(p, tuple) else p) for p in parts)
        pytest.skip(
            f"a {size}-byte backlog does not fit a Unix socket's send buffer here:"
            " raise net.core.wmem_max, or run as root"
        )
    return a, b


def unread(fd):
    """Bytes waiting in a socket's receive queue."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


async def receive_all(loop, sock, want, buffered=False):
    """A transport for `sock` with a collecting protocol (buffered or not); returns
    (transport, protocol) once `want` bytes have arrived, failing after 10 s."""
    done = loop.create_future()

    def check(protocol):
        if len(protocol.data) == want and not done.done():
            done.set_result(None)

    class UntilData(Collect):
        def data_received(self, chunk):
            super().data_received(chunk)
            check(self)

    class UntilBuffered(BufferedCollect):
        def __init__(self):
            super().__init__(1 << 20)

        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            check(self)

    factory = UntilBuffered if buffered else UntilData
    tr, pr = await loop.connect_accepted_socket(factory, sock)
    await asyncio.wait_for(done, 10)
    return tr, pr


def test_transport_is_an_asyncio_transport(loop):
    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        assert isinstance(tr, asyncio.Transport)
        assert pr.events == ["made"]
        assert tr.get_protocol() is pr
        assert tr.can_write_eof()
        assert tr.is_reading() and not tr.is_closing()
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_every_byte_arrives_in_order_both_ways(loop):
    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        # Many writes of uneven sizes, some of them mutable buffers changed afterwards.
        pos = 0
        for size in (1, 7, 4096, 100_000, 65_536, 3):
            chunk = bytearray(PAYLOAD[pos : pos + size])
            tr.write(chunk)
            chunk[:] = b"\0" * len(chunk)  # the transport copied it
            pos += size
        tr.writelines([PAYLOAD[pos : pos + 10], memoryview(PAYLOAD)[pos + 10 :]])
        got = await recv_exactly(loop, peer, len(PAYLOAD))
        assert got == PAYLOAD
        await loop.sock_sendall(peer, PAYLOAD)
        while len(pr.data) < len(PAYLOAD):
            await asyncio.sleep(0.001)
        assert pr.data == PAYLOAD
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


@pytest.mark.parametrize("items", [100, 50_000])  # below and past oxio's write-now size
def test_write_takes_any_buffer_layout(loop, items):
    # socket.send() takes a buffer of any item format, and so does asyncio's write():
    # the bytes are the items' memory, in order.
    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        data = array.array("i", range(items))
        tr.write(memoryview(data))
        tr.writelines([memoryview(array.array("h", [1, 2, 3]))])
        want = data.tobytes() + array.array("h", [1, 2, 3]).tobytes()
        assert await recv_exactly(loop, peer, len(want)) == want
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_writes_of_one_iteration_are_queued_together(oxloop):
    # oxio-only: writes leave in one vectored write when the loop next polls, so the
    # buffer holds both until then (asyncio sends each at once).
    async def main():
        tr, pr, peer = await tcp_pair(oxloop, Collect)
        tr.write(b"HTTP/1.1 200 OK\r\n\r\n")
        tr.write(b"body")
        assert tr.get_write_buffer_size() == 23
        await asyncio.sleep(0)
        assert tr.get_write_buffer_size() == 0
        assert await recv_exactly(oxloop, peer, 23) == b"HTTP/1.1 200 OK\r\n\r\nbody"
        tr.close()
        peer.close()

    run(oxloop, main())


def test_replies_of_scheduled_callbacks_leave_before_this_iterations_io(oxloop):
    # oxio-only: a callback scheduled in the previous iteration (a task step answering a
    # request) gets its writes sent before the I/O callbacks of this iteration run, so the
    # peer can answer before the loop next polls. Callback order is asyncio's.
    async def main():
        tr, pr, peer = await tcp_pair(oxloop, Collect)
        r, w = socket.socketpair()
        r.setblocking(False)
        order = []
        seen = oxloop.create_future()

        def reply():  # ready before the poll that reports `r`
            order.append("reply")
            tr.write(b"header,")
            tr.write(b"body")

        def on_readable():  # an I/O callback of that same iteration
            order.append("readable")
            oxloop.remove_reader(r)
            try:
                received = peer.recv(100)
            except BlockingIOError:
                received = b""
            seen.set_result((tr.get_write_buffer_size(), received))

        def arm():
            oxloop.call_soon(reply)
            w.send(b"x")
            oxloop.add_reader(r, on_readable)

        oxloop.call_soon(arm)
        try:
            queued, received = await asyncio.wait_for(seen, 5)
        finally:
            r.close()
            w.close()
        assert order == ["reply", "readable"]
        assert (queued, received) == (0, b"header,body")
        tr.close()
        peer.close()

    run(oxloop, main())


def test_no_data_reaches_a_protocol_that_paused_reading(loop):
    # Bulk reads may repeat within one readiness event; a pause in data_received must
    # stop them at once, and nothing may be lost or reordered.
    payload = PAYLOAD * 4

    class Pauser(Collect):
        paused = False
        violations = 0

        def data_received(self, data):
            if self.paused:
                self.violations += 1
            super().data_received(data)
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.resume)

        def resume(self):
            self.paused = False
            self.transport.resume_reading()

    async def main():
        tr, pr, peer = await tcp_pair(loop, Pauser)
        peer.setblocking(True)
        sending = loop.run_in_executor(None, peer.sendall, payload)

        async def everything():
            while len(pr.data) < len(payload):
                await asyncio.sleep(0.001)

        await asyncio.wait_for(everything(), 10)
        await asyncio.wait_for(sending, 10)
        assert pr.violations == 0
        assert pr.data == payload
        tr.close()
        peer.close()

    run(loop, main())


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: bytes(8), TypeError),  # read-only
        (bytearray, RuntimeError),  # empty
        (lambda: memoryview(bytearray(8))[::2], TypeError),  # not contiguous
    ],
    ids=["read-only", "empty", "strided"],
)
def test_get_buffer_returning_an_unusable_buffer_is_fatal(loop, make, error):
    async def main():
        reported = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        tr, pr, peer = await connected_pair(loop, lambda: GivesBuffer(make))
        peer.send(b"data")
        exc = await asyncio.wait_for(pr.lost, 5)
        assert isinstance(exc, error)
        assert reported and reported[0]["exception"] is exc
        assert tr.is_closing()
        peer.close()

    run(loop, main())


def test_get_buffer_may_return_a_buffer_of_wider_items(loop):
    # Any writable contiguous buffer will do; nbytes counts bytes, not items.
    async def main():
        tr, pr, peer = await connected_pair(
            loop, lambda: GivesBuffer(lambda: array.array("i", [0] * 4))
        )
        peer.send(b"0123456789")

        async def arrived():
            while len(pr.data) < 10:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(arrived(), 5)
        assert bytes(pr.data) == b"0123456789"
        tr.close()
        peer.close()
        await asyncio.wait_for(pr.lost, 5)

    run(loop, main())


def test_write_rejects_what_asyncio_rejects(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            tr.write("text")
        with pytest.raises(TypeError):
            tr.writelines(["text"])
        tr.write(b"")  # nothing to do, no error
        tr.write_eof()
        with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
            tr.write(b"x")
        tr.close()
        peer.close()

    run(loop, main())


def test_write_takes_data_by_keyword_and_rejects_wrong_calls(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        tr.write(data=b"by keyword")
        with pytest.raises(TypeError):
            tr.write()
        with pytest.raises(TypeError):
            tr.write(b"a", b"b")
        with pytest.raises(TypeError):
            tr.write(b"a", nonsense=1)
        assert await recv_exactly(loop, peer, 10) == b"by keyword"
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_a_transport_can_be_weakly_referenced(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        assert weakref.ref(tr)() is tr
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_write_is_a_method_of_the_transport_type(oxloop):
    """CPython specializes `transport.write(data)` only for a method found on the type:
    oxio's stream transport must not leave it to the instance's __dict__."""

    async def main():
        tr, pr, peer = await connected_pair(oxloop, Collect)
        tr.write(b"x")
        assert isinstance(type(tr).__dict__["write"], types.MethodDescriptorType)
        assert "write" not in tr.__dict__
        assert await recv_exactly(oxloop, peer, 1) == b"x"
        with pytest.raises(TypeError, match="doesn't apply to a 'object' object"):
            type(tr).write(object(), b"x")
        tr.close()
        peer.close()
        await pr.lost

    run(oxloop, main())


def test_protocol_callbacks_see_the_context_asyncio_gives_them(loop):
    """data_received runs in one copy of the context the transport was made in, kept from
    read to read; connection_made runs in a copy of its own."""
    var = contextvars.ContextVar("var", default="unset")

    class Records(Collect):
        def connection_made(self, transport):
            super().connection_made(transport)
            var.set("made")

        def data_received(self, data):
            self.events.append(var.get())
            var.set("seen")
            super().data_received(data)

    async def main():
        var.set("outer")
        tr, pr, peer = await tcp_pair(loop, Records)
        for sent in (1, 2):
            await loop.sock_sendall(peer, b"x")
            await asyncio.wait_for(until(lambda n=sent: len(pr.data) == n), 5)
        assert pr.events == ["made", "outer", "seen"]
        assert var.get() == "outer"
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_write_buffer_limits(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        assert tr.get_write_buffer_limits() == (16384, 65536)
        tr.set_write_buffer_limits(high=100)
        assert tr.get_write_buffer_limits() == (25, 100)
        tr.set_write_buffer_limits(low=10)
        assert tr.get_write_buffer_limits() == (10, 40)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
            tr.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=-1)
        tr.close()
        peer.close()

    run(loop, main())


def test_flow_control_pauses_and_resumes_writing(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        tr.set_write_buffer_limits(high=64 * 1024)
        while "pause" not in pr.events:
            tr.write(PAYLOAD)  # a socket pair's buffer fills after a few MiB
            await asyncio.sleep(0)
        size = tr.get_write_buffer_size()
        assert size > 64 * 1024
        assert "resume" not in pr.events
        # Drain the peer: the transport flushes and resumes the protocol.
        expected = 0
        received = 0
        while "resume" not in pr.events:
            received += len(await loop.sock_recv(peer, 1 << 20))
        assert tr.get_write_buffer_size() <= 16 * 1024
        expected = received + tr.get_write_buffer_size()
        tr.write_eof()
        received += len(await recv_until_eof(loop, peer))
        assert received >= expected
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_pause_and_resume_reading(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        await asyncio.sleep(0)
        tr.pause_reading()
        assert not tr.is_reading()
        tr.pause_reading()  # idempotent
        peer.send(b"while paused")
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert pr.data == b""
        tr.resume_reading()
        assert tr.is_reading()
        while pr.data != b"while paused":
            await asyncio.sleep(0.001)
        tr.close()
        assert not tr.is_reading()
        peer.close()
        await pr.lost

    run(loop, main())


def reading_through(protocol_class, buffered):
    """`protocol_class` (a Collect) as it is, or as a BufferedProtocol that hands each
    read to its `data_received`: the transport reads differently for the two."""
    if not buffered:
        return protocol_class

    class Buffered(protocol_class, asyncio.BufferedProtocol):
        def get_buffer(self, sizehint):
            self.buf = bytearray(65536)
            return self.buf

        def buffer_updated(self, nbytes):
            self.data_received(bytes(self.buf[:nbytes]))

    return Buffered


BUFFERED_OR_NOT = pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])


def peer_has_finished(sock):
    """True once a TCP socket has received its peer's FIN (its state is CLOSE_WAIT)."""
    tcp_close_wait = 8
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == tcp_close_wait


@BUFFERED_OR_NOT
def test_resume_reading_delivers_data_and_eof_that_came_while_paused(loop, buffered):
    # Both arrive, and are polled, while the transport is paused: whatever the loop did
    # with those readiness reports then, resuming must deliver the data and the end of
    # file without any new event from the peer.
    async def main():
        tr, pr, peer = await tcp_pair(loop, reading_through(Collect, buffered))
        tr.pause_reading()
        await loop.sock_sendall(peer, b"sent while paused")
        peer.shutdown(socket.SHUT_WR)
        sock = tr.get_extra_info("socket")
        await asyncio.wait_for(until(lambda: peer_has_finished(sock)), 5)
        assert unread(sock.fileno()) == len(b"sent while paused")
        await polls_for_real(loop)  # which report the socket while it is paused
        assert pr.data == b"" and "eof" not in pr.events
        tr.resume_reading()
        await asyncio.wait_for(pr.lost, 5)
        assert pr.data == b"sent while paused"
        assert pr.events[-2:] == ["eof", ("lost", None)]
        peer.close()

    run(loop, main())


@BUFFERED_OR_NOT
def test_resume_reading_delivers_data_that_came_after_a_read_emptied_the_socket(loop, buffered):
    # The pause comes in data_received of a read that left nothing behind, so nothing
    # was unread when reading stopped; the next message arrives, and is polled, while
    # the transport is paused, and the peer then stays silent.
    class PauseOnFirst(Collect):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

    async def main():
        tr, pr, peer = await tcp_pair(loop, reading_through(PauseOnFirst, buffered))
        await loop.sock_sendall(peer, b"first")
        await asyncio.wait_for(until(lambda: pr.data == b"first"), 5)
        assert not tr.is_reading()
        await loop.sock_sendall(peer, b"second")
        sock = tr.get_extra_info("socket")
        await asyncio.wait_for(until(lambda: unread(sock.fileno()) == len(b"second")), 5)
        await polls_for_real(loop)  # which report the socket while it is paused
        assert pr.data == b"first"
        tr.resume_reading()
        await asyncio.wait_for(until(lambda: pr.data == b"firstsecond"), 5)
        tr.close()
        peer.close()
        await asyncio.wait_for(pr.lost, 5)

    run(loop, main())


@BUFFERED_OR_NOT
@pytest.mark.parametrize("resume_in", ["call_soon", "data_received"])
def test_pausing_in_every_read_loses_neither_data_nor_eof(loop, resume_in, buffered):
    # A protocol that pauses in each data_received and resumes from the next callback
    # (or at once, from inside data_received), while the peer sends more than a read
    # takes and then ends: the end of file arrives with data the paused reader left.
    class PauseEachRead(Collect):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()
            if resume_in == "call_soon":
                asyncio.get_running_loop().call_soon(self.transport.resume_reading)
            else:
                self.transport.resume_reading()

    async def main():
        tr, pr, peer = await tcp_pair(loop, reading_through(PauseEachRead, buffered))
        with PollsForReal(loop):
            await loop.sock_sendall(peer, PAYLOAD)
            peer.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(pr.lost, 10)
        assert pr.data == PAYLOAD
        assert pr.events[-2:] == ["eof", ("lost", None)]
        peer.close()

    run(loop, main())


def test_write_eof_half_closes_and_the_peer_can_still_answer(loop):
    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        tr.write(b"request")
        tr.write_eof()
        tr.write_eof()  # idempotent
        assert await recv_until_eof(loop, peer) == b"request"
        await loop.sock_sendall(peer, b"answer")
        peer.close()
        await pr.lost
        assert pr.data == b"answer"
        assert pr.events[-2:] == ["eof", ("lost", None)]

    run(loop, main())


@pytest.mark.parametrize("keep_open", [False, True])
def test_peer_half_close(loop, keep_open):
    async def main():
        tr, pr, peer = await tcp_pair(loop, lambda: Collect(eof_keep_open=keep_open))
        await loop.sock_sendall(peer, b"last words")
        peer.shutdown(socket.SHUT_WR)
        while "eof" not in pr.events:
            await asyncio.sleep(0.001)
        assert pr.data == b"last words"
        if keep_open:
            # eof_received() returned true: the transport stays open for writing.
            assert not tr.is_closing()
            tr.write(b"reply after eof")
            tr.close()
            assert await recv_until_eof(loop, peer) == b"reply after eof"
        else:
            assert tr.is_closing()
        await pr.lost
        peer.close()

    run(loop, main())


def test_data_and_eof_in_one_event_are_both_delivered(loop):
    # The peer's data and its FIN can arrive together; the EOF must not be lost.
    async def main():
        a, b = socket.socketpair()
        b.sendall(b"x" * 1000)
        b.close()
        tr, pr = await loop.connect_accepted_socket(Collect, a)
        await pr.lost
        assert pr.data == b"x" * 1000
        assert pr.events == ["made", "eof", ("lost", None)]

    run(loop, main())


def test_close_flushes_and_abort_drops(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        tr.write(PAYLOAD)
        tr.close()
        assert tr.is_closing()
        tr.close()  # idempotent
        assert await recv_until_eof(loop, peer) == PAYLOAD
        await pr.lost
        assert pr.events[0] == "made" and pr.events[-1] == ("lost", None)
        peer.close()

        tr, pr, peer = await connected_pair(loop, Collect)
        for _ in range(20):
            tr.write(PAYLOAD)
        tr.abort()
        assert tr.get_write_buffer_size() == 0
        await pr.lost
        assert pr.events[-1] == ("lost", None)
        received = len(await recv_until_eof(loop, peer))
        assert received < 20 * len(PAYLOAD)
        peer.close()

    run(loop, main())


def test_writes_after_close_are_dropped_and_logged(loop, caplog):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        tr.abort()
        await pr.lost
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(7):
                tr.write(b"late")
        assert "socket.send() raised exception." in caplog.text
        assert await recv_until_eof(loop, peer) == b""
        peer.close()

    run(loop, main())


def test_peer_reset_mid_write(loop):
    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        for _ in range(16):
            tr.write(PAYLOAD)
        await loop.sock_recv(peer, 1000)
        # An abortive close: RST instead of FIN.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        exc = await pr.lost
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
        assert tr.is_closing()
        tr.write(b"after reset")  # dropped, no error

    run(loop, main())


def test_data_queued_before_a_reset_is_delivered_then_the_reset(loop):
    """Bytes the kernel queued ahead of a peer's RST reach data_received, then
    connection_lost gets the ConnectionResetError: a read that gathers several recv
    calls must not swallow the error that ends them, nor the data before it."""

    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        data = PAYLOAD[:40_000]  # bulk reads' size, within loopback's first window
        await loop.sock_sendall(peer, data)  # a first bulk read: the next one gathers
        await until(lambda: len(pr.data) == len(data))
        tr.pause_reading()
        await loop.sock_sendall(peer, data)
        fd = tr.get_extra_info("socket").fileno()

        def queued():
            return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]

        await until(lambda: queued() == len(data))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        tr.resume_reading()
        exc = await pr.lost
        assert isinstance(exc, ConnectionResetError)
        assert pr.data == data * 2
        assert "eof" not in pr.events

    run(loop, main())


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_buffered_protocol_receives_every_byte(loop, size):
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        tr, pr = await loop.connect_accepted_socket(lambda: BufferedCollect(size), a)
        data = PAYLOAD[: 200_000 + size]
        await loop.sock_sendall(b, data)
        b.close()
        while not pr.eof:
            await asyncio.sleep(0.001)
        assert pr.data == data
        tr.close()

    run(loop, main())


def test_extra_info(loop):
    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr.get_extra_info("sockname") == peer.getpeername()
        sock = tr.get_extra_info("socket")
        assert sock.fileno() >= 0 and sock.family == socket.AF_INET
        assert tr.get_extra_info("nonexistent") is None
        assert tr.get_extra_info("nonexistent", 42) == 42
        local = peer.getpeername()
        tr.close()
        peer.close()
        await pr.lost
        # Still answered after the socket is gone.
        assert tr.get_extra_info("sockname") == local

    run(loop, main())


def test_transport_descriptor_is_not_the_users_to_watch(loop):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        fd = tr.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match=f"File descriptor {fd} is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.remove_writer(fd)
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_unix_stream_round_trip(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s.sock")
            server_protos = []

            def factory():
                p = Collect()
                server_protos.append(p)
                return p

            server = await loop.create_unix_server(factory, path)
            tr, pr = await loop.create_unix_connection(Collect, path)
            tr.write(PAYLOAD)
            tr.write_eof()
            while not server_protos or "eof" not in server_protos[0].events:
                await asyncio.sleep(0.001)
            assert server_protos[0].data == PAYLOAD
            assert tr.get_extra_info("peername") == path
            tr.close()
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_protocol_errors_go_to_the_exception_handler(loop):
    class Bad(Collect):
        def data_received(self, data):
            raise ZeroDivisionError("boom")

    async def main():
        seen = []
        loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
        tr, pr, peer = await connected_pair(loop, Bad)
        peer.send(b"x")
        exc = await pr.lost
        assert isinstance(exc, ZeroDivisionError)
        assert seen[0]["message"] == "Fatal error: protocol.data_received() call failed."
        assert seen[0]["protocol"] is pr
        assert seen[0]["transport"] is tr
        peer.close()

    run(loop, main())


def test_loop_close_with_open_transport_does_not_crash(loop):
    async def main():
        return await connected_pair(loop, Collect)

    tr, pr, peer = run(loop, main())
    tr.close()
    run_until(loop, lambda: pr.lost.done())
    peer.close()


def test_data_written_by_resume_writing_is_sent(loop):
    # resume_writing() runs as the buffer drains; what it writes must still leave.
    class Refill(Collect):
        def resume_writing(self):
            super().resume_writing()
            self.transport.write(b"tail")
            self.transport.close()

    async def main():
        tr, pr, peer = await connected_pair(loop, Refill)
        tr.set_write_buffer_limits(high=1024)
        tr.write(PAYLOAD * 4)
        assert "pause" in pr.events
        got = await recv_until_eof(loop, peer)
        assert got == PAYLOAD * 4 + b"tail"
        await pr.lost
        peer.close()

    run(loop, main())


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_close_with_data_queued_then_more_written(loop, kind):
    # asyncio accepts writes after close() until the connection is lost; they are sent
    # before the socket closes, whichever kind of buffer they come in.
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        tr.write(PAYLOAD * 3)
        tr.close()
        tr.write(kind(b"after close"))
        got = await recv_until_eof(loop, peer)
        assert got == PAYLOAD * 3 + b"after close"
        await pr.lost
        peer.close()

    run(loop, main())


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_write_eof_after_mutable_write(loop, kind):
    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        tr.write(kind(PAYLOAD))
        tr.write_eof()
        assert await recv_until_eof(loop, peer) == PAYLOAD
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_a_larger_message_after_equal_ones_is_read_whole(loop):
    # Equal messages, each read at once, then a larger one that waits whole in the
    # socket while the peer stays silent (no new readiness edge): the read sized for
    # the usual message comes back full, and the transport must read on.
    msg, big = PAYLOAD[:65536], PAYLOAD[-150_000:]

    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        fd = tr.get_extra_info("socket").fileno()
        tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for sent in (len(msg), 2 * len(msg)):
            await loop.sock_sendall(peer, msg)
            await asyncio.wait_for(until(lambda n=sent: len(pr.data) == n), 5)
        expected = msg + msg
        tr.pause_reading()
        await loop.sock_sendall(peer, big)
        await asyncio.wait_for(until(lambda: unread(fd) == len(big)), 5)
        tr.resume_reading()
        await asyncio.wait_for(until(lambda: len(pr.data) == len(expected) + len(big)), 5)
        assert pr.data == expected + big
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


class CollectChunks(Collect):
    """Also records the size of every `data_received` call."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def data_received(self, data):
        super().data_received(data)
        self.sizes.append(len(data))


def test_messages_of_changing_sizes_each_come_in_one_read(loop):
    # Each message waits whole in the socket before the transport reads it, and fits one
    # read: every one is delivered by one data_received, as asyncio delivers it. A
    # transport that sized a read by the previous message alone (a guess, to spare
    # asking the kernel) cut a larger message in two and over-allocated for a smaller
    # one; only a size seen twice running is worth guessing.
    sizes = [100_000, 150_000, 120_000, 200_000, 64_000, 90_000]

    async def main():
        tr, pr, peer = await tcp_pair(loop, CollectChunks)
        sock = tr.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        fd = sock.fileno()
        expected = b""
        for size in sizes:
            msg = PAYLOAD[-size:]
            tr.pause_reading()
            await loop.sock_sendall(peer, msg)
            await asyncio.wait_for(until(lambda n=size: unread(fd) == n), 5)
            tr.resume_reading()
            expected += msg
            total = len(expected)
            await asyncio.wait_for(until(lambda n=total: len(pr.data) == n), 5)
        assert pr.data == expected
        assert pr.sizes == sizes
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


def test_bulk_reads_deliver_every_byte(loop):
    # A backlog bigger than one read: full reads, then the short one that ends them.
    async def main():
        tr, pr, peer = await tcp_pair(loop, Collect)
        tr.pause_reading()
        data = PAYLOAD * 8 + b"end"
        sender = asyncio.ensure_future(loop.sock_sendall(peer, data))
        for _ in range(20):
            await asyncio.sleep(0.005)
        tr.resume_reading()
        await sender
        while len(pr.data) < len(data):
            await asyncio.sleep(0.001)
        assert pr.data == data
        tr.close()
        peer.close()
        await pr.lost

    run(loop, main())


@BUFFERED_OR_NOT
def test_a_backlog_past_one_events_reads_is_read_without_new_edges(loop, buffered):
    # Everything is queued before the transport exists and the peer then stays silent,
    # so the one readiness edge must carry the whole backlog: the transport stops after
    # a few bulk reads per event (one buffer's worth for a BufferedProtocol) and must
    # ask the next poll to report the rest.
    data = PAYLOAD * 2 + PAYLOAD[:300_000]  # a run stops after eight 250 KiB reads
    a, b = backlogged_pair(data)

    async def main():
        tr, pr = await receive_all(loop, a, len(data), buffered=buffered)
        assert pr.data == data
        tr.close()
        await asyncio.wait_for(pr.lost, 5)

    try:
        run(loop, main())
    finally:
        b.close()


# A lead past one 250 KiB read puts the stop in the read sized by FIONREAD.
@pytest.mark.parametrize("lead", [0, 270_000], ids=["first-read", "bulk-read"])
@pytest.mark.parametrize("kind", ["protocol", "buffered"])
def test_bytes_behind_passed_descriptors_are_not_stranded(loop, kind, lead):
    # A Unix socket's read stops after data that carried descriptors (which a transport
    # discards), though more bytes wait behind it. The peer is silent afterwards, so no
    # new readiness edge comes: the transport must notice the stop and read on. With a
    # lead of plain data the stop falls in a read sized by the kernel's count.
    lead_data = PAYLOAD[-lead:] if lead else b""
    first, rest = b"with-fds" * 1000, PAYLOAD[:20_000]
    r, w = os.pipe()
    try:
        a, b = backlogged_pair(lead_data, (first, [r]), rest)
    finally:
        os.close(r)
        os.close(w)
    first = lead_data + first

    async def main():
        tr, pr = await receive_all(loop, a, len(first) + len(rest), kind == "buffered")
        assert pr.data == first + rest
        tr.close()

    try:
        run(loop, main())
    finally:
        b.close()


def test_switching_to_a_buffered_protocol_mid_backlog(loop):
    # data_received hands the transport to a BufferedProtocol while a backlog of several
    # full reads waits: the rest must reach the new protocol's buffer, as in asyncio.
    data = PAYLOAD[:300_000]  # more than one 250 KiB read
    a, b = backlogged_pair(data)

    async def main():
        done = loop.create_future()

        class Second(BufferedCollect):
            def buffer_updated(self, nbytes):
                super().buffer_updated(nbytes)
                if len(first.data) + len(self.data) == len(data) and not done.done():
                    done.set_result(None)

        second = Second(65536)

        class First(Collect):
            def data_received(self, chunk):
                super().data_received(chunk)
                self.transport.set_protocol(second)

        tr, first = await loop.connect_accepted_socket(First, a)
        await asyncio.wait_for(done, 5)
        assert first.data + second.data == data
        assert len(first.data) < len(data)
        tr.close()

    try:
        run(loop, main())
    finally:
        b.close()


class EchoCheckingHashes(asyncio.Protocol):
    """Echoes each message after hashing it (which caches the hash in the object), and
    records whether every message's hash matched a fresh copy's."""

    def __init__(self):
        self.transport = None
        self.hashes_right = True
        self.data = bytearray()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.hashes_right &= hash(data) == hash(bytes(bytearray(data)))
        self.data += data
        self.transport.write(data)


class EchoInSlices(EchoCheckingHashes):
    """Replies with two slices of each message, so the message itself is let go."""

    def data_received(self, data):
        self.hashes_right &= hash(data) == hash(bytes(bytearray(data)))
        self.data += data
        self.transport.write(data[:16])
        self.transport.write(data[16:])


@pytest.mark.parametrize("protocol", [EchoCheckingHashes, EchoInSlices], ids=["whole", "slices"])
@pytest.mark.parametrize("size", [300, 1024, 4000, 16384, 65536])
def test_echoed_messages_arrive_intact_with_right_hashes(loop, size, protocol):
    # oxio reuses a bytes object that came back private for a later read of a similar
    # size: one it wrote whole, or one its protocol let go after writing slices of it.
    # Its contents, size and cached hash must all be those of the new data (without the
    # hash reset, the 1024, 4000 and 16384 cases fail).
    messages = [bytes([i]) * (size - i) for i in range(40)]

    async def main():
        tr, pr, peer = await connected_pair(loop, protocol)
        await echo_each(loop, peer, messages)
        assert pr.data == b"".join(messages)
        assert pr.hashes_right
        tr.close()
        peer.close()

    run(loop, main())


class EchoCheckingHashesToEof(EchoCheckingHashes):
    def __init__(self):
        super().__init__()
        self.eof = asyncio.get_running_loop().create_future()

    def eof_received(self):
        self.eof.set_result(bytes(self.data))


SIZE_RUNS = {
    # Each message one byte longer than the last: every read fills the recycled object
    # it lands in, NUL byte included, so the message must be moved to a bytes of its own.
    "grow-by-one": [1000 + i for i in range(40)],
    # Far longer than the recycled object: the rest waits behind the first read.
    "jump": [600, 600, 5000, 600, 12000, 700, 700],
    "shrink": [4000 - 37 * i for i in range(40)],
}


@pytest.mark.parametrize("pair", [connected_pair, tcp_pair], ids=["unix", "tcp"])
@pytest.mark.parametrize("run_name", list(SIZE_RUNS))
def test_small_reads_into_recycled_bytes_deliver_every_byte(loop, pair, run_name):
    # oxio reads a small message straight into a written bytes object that came back
    # private, sized by the previous message. The peer waits for each echo before
    # sending on, so no new readiness edge comes for bytes a read left behind.
    messages = [bytes([i % 251]) * n for i, n in enumerate(SIZE_RUNS[run_name])]

    async def main():
        tr, pr, peer = await pair(loop, EchoCheckingHashesToEof)
        await echo_each(loop, peer, messages)
        peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(pr.eof, 5) == b"".join(messages)
        assert pr.hashes_right
        tr.close()
        peer.close()

    run(loop, main())


class KeepsEverything(asyncio.Protocol):
    def __init__(self):
        self.kept = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.kept.append(data)
        self.transport.write(data)


@pytest.mark.parametrize("size", [1024, 65536])
def test_a_message_the_protocol_keeps_is_never_rewritten(loop, size):
    # oxio reuses the bytes of a small written message, or of a bulk read, that nothing
    # refers to any more; one the protocol keeps must stay as it was.
    messages = [bytes([i]) * (size - i % 2) for i in range(40)]

    async def main():
        tr, pr, peer = await connected_pair(loop, KeepsEverything)
        await echo_each(loop, peer, messages)
        assert b"".join(pr.kept) == b"".join(messages)
        tr.close()
        peer.close()

    run(loop, main())


def test_a_reused_bytearray_is_written_as_it_was_at_each_write(loop):
    # A small mutable write is copied at once (oxio copies into a recycled bytes when
    # one fits); changing the bytearray afterwards must not change what is sent.
    buf = bytearray(1024)

    async def main():
        tr, pr, peer = await connected_pair(loop, Collect)
        for i in range(40):
            buf[:] = bytes([i]) * (1024 - i)
            tr.write(buf)
            buf[:] = b"x" * len(buf)
            got = await asyncio.wait_for(recv_exactly(loop, peer, 1024 - i), 5)
            assert got == bytes([i]) * (1024 - i)
        tr.close()
        peer.close()

    run(loop, main())


def test_closing_the_loop_frees_the_read_it_kept_for_the_next(oxloop):
    # A small read's bytes that its protocol let go is kept for the next read; closing
    # the loop lets it go too.
    loop = oxloop
    message = b"r" * 8000

    async def main():
        tr, pr, peer = await connected_pair(loop, Counting)
        await loop.sock_sendall(peer, message)
        await asyncio.wait_for(until(lambda: pr.count == len(message)), 5)
        tr.close()
        peer.close()
        await asyncio.sleep(0)

    freed = bytes_freed_by_closing(loop, main())
    assert freed > len(message) // 2, freed


def bytes_freed_by_closing(loop, coro):
    """Runs `coro` on `loop`, then closes it: how many bytes closing freed."""
    tracemalloc.start()
    try:
        run(loop, coro)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        loop.close()
        return before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


class Counting(asyncio.Protocol):
    """Counts what it receives and keeps none of it."""

    def __init__(self):
        self.count = 0

    def data_received(self, data):
        self.count += len(data)


def test_closing_the_loop_frees_the_bytes_it_kept_for_reuse(oxloop):
    # oxio keeps written bytes objects that came back private for later reads; closing
    # the loop lets them go, rather than when the loop object itself is freed.
    loop = oxloop
    message = b"m" * 8000  # read into a copy, written through the queue

    async def main():
        tr, pr, peer = await connected_pair(loop, EchoCheckingHashes)
        await loop.sock_sendall(peer, message)
        assert await asyncio.wait_for(recv_exactly(loop, peer, len(message)), 5) == message
        tr.close()
        peer.close()
        await asyncio.sleep(0)

    freed = bytes_freed_by_closing(loop, main())
    assert freed > len(message) // 2, freed
