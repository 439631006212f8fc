"""create_connection and friends: arguments asyncio rejects, unreachable addresses, the
"Multiple exceptions" report, Happy Eyeballs, local addresses, Unix and accepted
sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest
from conftest import run


def closed_port() -> int:
    """A loopback port nothing listens on (bound then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listener(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(16)
    s.setblocking(False)
    return s


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"host": "127.0.0.1", "port": 1, "sock": "SOCK"}, ValueError, "host/port and sock"),
        ({}, ValueError, "host and port was not specified and no sock specified"),
        ({"host": "127.0.0.1", "port": 1, "server_hostname": "x"}, ValueError, "server_hostname"),
        (
            {"host": "127.0.0.1", "port": 1, "ssl_handshake_timeout": 1},
            ValueError,
            "ssl_handshake_timeout is only meaningful with ssl",
        ),
        (
            {"host": "127.0.0.1", "port": 1, "ssl_shutdown_timeout": 1},
            ValueError,
            "ssl_shutdown_timeout is only meaningful with ssl",
        ),
        ({"sock": "DGRAM"}, ValueError, "A Stream Socket was expected"),
        ({"host": "", "port": 1, "ssl": True}, ValueError, "You must set server_hostname"),
    ],
)
def test_conflicting_arguments(loop, kwargs, error, match):
    socks = []
    if kwargs.get("sock") == "SOCK":
        socks.append(socket.socket())
        kwargs["sock"] = socks[-1]
    elif kwargs.get("sock") == "DGRAM":
        socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        kwargs["sock"] = socks[-1]
    try:
        with pytest.raises(error, match=match):
            run(loop, loop.create_connection(asyncio.Protocol, **kwargs))
    finally:
        for s in socks:
            s.close()


def test_unreachable_address_is_connection_refused(loop):
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_connection(asyncio.Protocol, "127.0.0.1", closed_port()))


def test_failures_of_every_address_are_reported_together(loop):
    port = closed_port()

    async def fake_getaddrinfo(host, port_, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        ]

    loop.getaddrinfo = fake_getaddrinfo
    with pytest.raises(OSError, match=r"^Multiple exceptions: ") as info:
        run(loop, loop.create_connection(asyncio.Protocol, "example.invalid", 80))
    assert "127.0.0.1" in str(info.value) and "::1" in str(info.value)


def test_same_failures_are_reported_once(loop):
    port = closed_port()

    async def fake_getaddrinfo(host, port_, **kwargs):
        entry = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))
        return [entry, entry]

    loop.getaddrinfo = fake_getaddrinfo
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_connection(asyncio.Protocol, "example.invalid", 80))


def test_empty_resolution_is_an_oserror(loop):
    async def fake_getaddrinfo(*args, **kwargs):
        return []

    loop.getaddrinfo = fake_getaddrinfo
    with pytest.raises(OSError, match="getaddrinfo\\(\\) returned empty list"):
        run(loop, loop.create_connection(asyncio.Protocol, "example.invalid", 80))


@pytest.mark.parametrize("delay", [None, 0.05])
def test_later_address_is_tried_after_a_refusal(loop, delay):
    srv = listener()
    good = srv.getsockname()[1]
    bad = closed_port()

    async def fake_getaddrinfo(host, port_, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", bad)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", good)),
        ]

    loop.getaddrinfo = fake_getaddrinfo

    async def main():
        tr, pr = await loop.create_connection(
            asyncio.Protocol, "example.invalid", 80, happy_eyeballs_delay=delay
        )
        assert tr.get_extra_info("peername") == ("127.0.0.1", good)
        tr.close()

    try:
        run(loop, main())
    finally:
        srv.close()


def test_local_addr_is_bound(loop):
    srv = listener()

    async def main():
        tr, pr = await loop.create_connection(
            asyncio.Protocol, *srv.getsockname(), local_addr=("127.0.0.1", 0)
        )
        assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
        tr.close()

    try:
        run(loop, main())
    finally:
        srv.close()


def test_local_addr_in_use(loop):
    srv = listener()
    taken = listener()
    try:
        with pytest.raises(OSError, match="error while attempting to bind on address"):
            run(
                loop,
                loop.create_connection(
                    asyncio.Protocol, *srv.getsockname(), local_addr=taken.getsockname()
                ),
            )
    finally:
        srv.close()
        taken.close()


def test_connect_with_a_connected_sock_and_accepted_socket(loop):
    srv = listener()

    async def main():
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, srv.getsockname())
        conn, _ = await loop.sock_accept(srv)
        tr, pr = await loop.create_connection(asyncio.Protocol, sock=client)
        str_, spr = await loop.connect_accepted_socket(asyncio.Protocol, conn)
        assert tr.get_extra_info("socket").fileno() == client.fileno()
        tr.close()
        str_.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # Closing the transport closes the socket it was given.
        assert client.fileno() == -1 and conn.fileno() == -1

    try:
        run(loop, main())
    finally:
        srv.close()


def test_connect_accepted_socket_rejects_datagram_sockets(loop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            run(loop, loop.connect_accepted_socket(asyncio.Protocol, s))
    finally:
        s.close()


def test_unix_connection_arguments(loop):
    s = socket.socket()
    try:
        with pytest.raises(ValueError, match="path and sock can not be specified"):
            run(loop, loop.create_unix_connection(asyncio.Protocol, "/x", sock=s))
        with pytest.raises(ValueError, match="no path and sock were specified"):
            run(loop, loop.create_unix_connection(asyncio.Protocol))
        with pytest.raises(ValueError, match="A UNIX Domain Stream Socket was expected"):
            run(loop, loop.create_unix_connection(asyncio.Protocol, sock=s))
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            run(loop, loop.create_unix_connection(asyncio.Protocol, "/x", server_hostname="h"))
    finally:
        s.close()
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(FileNotFoundError):
            run(loop, loop.create_unix_connection(asyncio.Protocol, os.path.join(d, "none")))


def test_cancelled_connect_leaves_nothing_behind(loop):
    # A connection attempt cancelled mid-way closes its socket.
    srv = listener()

    async def main():
        task = asyncio.ensure_future(loop.create_connection(asyncio.Protocol, *srv.getsockname()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        run(loop, main())
    finally:
        srv.close()
