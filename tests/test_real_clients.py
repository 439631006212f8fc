"""Real third-party asyncio code on the loop: uvicorn (httptools and h11), aiohttp's server,
client and websockets, and asyncio's own streams (TCP and Unix).

Every test runs on stock asyncio (the reference, proving the test is right) and on oxio.
Servers listen on 127.0.0.1 or a Unix socket only. The dependencies are declared test
dependencies (pyproject.toml), so a missing one fails collection instead of skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import random
import socket
import tempfile

import aiohttp
import h11  # noqa: F401  (uvicorn's h11 implementation needs it: fail here, not later)
import httptools  # noqa: F401  (likewise for the httptools implementation)
import pytest
import uvicorn
from aiohttp import web
from conftest import run

HOST = "127.0.0.1"
IO_TIMEOUT = 10.0  # blocking client sockets and per-step waits: fail, never hang


def listening_socket() -> socket.socket:
    """A bound, listening TCP socket: clients can connect (into the backlog) before the
    server starts accepting, so there is no port race and no need to wait for startup.
    The protocol is spelled out: asyncio sets TCP_NODELAY only on sockets whose `proto` is
    IPPROTO_TCP, and without it a two-write response waits out the peer's delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(128)
    return sock


def pattern(n: int, seed: int = 0) -> bytes:
    """`n` reproducible pseudo-random bytes (no run of equal chunks hides a reordering)."""
    return random.Random(seed).getrandbits(8 * n).to_bytes(n, "little") if n else b""


# --------------------------------------------------------------------------- uvicorn


class ServerState:
    """What the ASGI app and the test share (created inside the running loop)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()  # a /wait request has reached the app
        self.shutting_down = asyncio.Event()  # uvicorn's shutdown() has begun


def make_asgi_app(state: ServerState):
    async def read_body(receive) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            body += message.get("body", b"")
            if not message.get("more_body", False):
                return bytes(body)

    async def app(scope, receive, send):
        assert scope["type"] == "http"
        path = scope["path"]
        if path == "/echo":
            body = await read_body(receive)
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if path == "/chunks":  # a streamed response: chunked transfer encoding
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(10):
                await send({"type": "http.response.body", "body": b"%d;" % i, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/wait":  # in flight across the start of a graceful shutdown
            state.entered.set()
            await state.shutting_down.wait()
            body = b"done"
        else:
            await read_body(receive)
            info = {
                "method": scope["method"],
                "path": path,
                "query": scope["query_string"].decode(),
                "client_port": scope["client"][1],
            }
            body = json.dumps(info).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class ObservedServer(uvicorn.Server):
    """uvicorn.Server that tells the test when its graceful shutdown starts."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets=None):
        self.state.shutting_down.set()
        await super().shutdown(sockets=sockets)


@contextlib.asynccontextmanager
async def uvicorn_server(http_impl: str):
    """Serves the ASGI app with uvicorn on the running loop; yields (server, port); on the
    way out asks for a graceful shutdown and requires serve() to finish cleanly."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    state = ServerState()
    config = uvicorn.Config(
        make_asgi_app(state),
        host=HOST,
        port=port,
        loop="none",  # the test's loop is already running
        http=http_impl,
        ws="none",
        lifespan="off",
        log_level="warning",
        log_config=None,  # leave the process's logging configuration alone
        timeout_graceful_shutdown=5,
    )
    server = ObservedServer(config, state)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield server, port
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, IO_TIMEOUT)
        finally:
            sock.close()


def http_call(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


async def in_thread(fn, *args):
    """Runs a blocking stdlib HTTP client in the loop's executor: the client side is then
    independent of the loop under test."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@pytest.fixture(params=["httptools", "h11"])
def http_impl(request):
    return request.param


def test_uvicorn_get(loop, http_impl):
    def client(port):
        conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
        try:
            out = [http_call(conn, "GET", f"/hello?n={i}") for i in range(3)]
            out.append(http_call(conn, "GET", "/chunks"))
            return out
        finally:
            conn.close()

    async def main():
        async with uvicorn_server(http_impl) as (server, port):
            results = await in_thread(client, port)
            assert server.started
        return results

    results = run(loop, main(), timeout=20)
    for i, (status, headers, body) in enumerate(results[:3]):
        assert status == 200
        assert headers["content-type"] == "application/json"
        info = json.loads(body)
        assert info["method"] == "GET"
        assert info["path"] == "/hello"
        assert info["query"] == f"n={i}"
    status, headers, body = results[3]
    assert status == 200
    assert headers.get("transfer-encoding") == "chunked"
    assert body == b"".join(b"%d;" % i for i in range(10))


def test_uvicorn_post_echo(loop, http_impl):
    payload = pattern(300 * 1024, seed=1)

    def client(port):
        conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
        try:
            plain = http_call(conn, "POST", "/echo", body=payload)
            # the same body again, sent with chunked transfer encoding in 7 KiB pieces
            pieces = (payload[i : i + 7 * 1024] for i in range(0, len(payload), 7 * 1024))
            conn.request("POST", "/echo", body=pieces, encode_chunked=True)
            resp = conn.getresponse()
            chunked = resp.status, resp.read()
            return plain, chunked
        finally:
            conn.close()

    async def main():
        async with uvicorn_server(http_impl) as (_server, port):
            return await in_thread(client, port)

    (status, headers, body), (status2, body2) = run(loop, main(), timeout=20)
    assert status == 200
    assert int(headers["content-length"]) == len(payload)
    assert body == payload
    assert status2 == 200
    assert body2 == payload


def test_uvicorn_keep_alive(loop, http_impl):
    count = 200

    def client(port):
        conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
        try:
            conn.connect()
            local_port = conn.sock.getsockname()[1]
            results = []
            for i in range(count):
                status, headers, body = http_call(conn, "GET", f"/k?i={i}")
                # http.client reconnects silently if the server closed: check the socket
                assert conn.sock is not None and conn.sock.getsockname()[1] == local_port
                results.append((status, headers.get("connection"), json.loads(body)))
            return local_port, results
        finally:
            conn.close()

    async def main():
        async with uvicorn_server(http_impl) as (_server, port):
            return await in_thread(client, port)

    local_port, results = run(loop, main(), timeout=30)
    assert len(results) == count
    for i, (status, connection, info) in enumerate(results):
        assert status == 200
        assert connection != "close"
        assert info["query"] == f"i={i}"
        assert info["client_port"] == local_port  # one connection served them all


def test_uvicorn_graceful_shutdown(loop, http_impl):
    async def main():
        sock = listening_socket()
        port = sock.getsockname()[1]
        state = ServerState()
        config = uvicorn.Config(
            make_asgi_app(state),
            host=HOST,
            port=port,
            loop="none",
            http=http_impl,
            ws="none",
            lifespan="off",
            log_level="warning",
            log_config=None,
            timeout_graceful_shutdown=5,
        )
        server = ObservedServer(config, state)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            # an idle keep-alive connection: the shutdown must close it
            idle = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
            status, _, _ = await in_thread(http_call, idle, "GET", "/first")
            assert status == 200
            # a request in flight when the shutdown starts: it must complete
            busy = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
            in_flight = asyncio.ensure_future(in_thread(http_call, busy, "GET", "/wait"))
            await asyncio.wait_for(state.entered.wait(), IO_TIMEOUT)

            server.should_exit = True
            status, headers, body = await asyncio.wait_for(in_flight, IO_TIMEOUT)
            assert (status, body) == (200, b"done")
            if busy.sock is None:  # httptools announces the close, http.client obeyed
                assert headers.get("connection") == "close"
            else:  # h11 just closes after the response
                assert await in_thread(busy.sock.recv, 1) == b""
            await asyncio.wait_for(task, IO_TIMEOUT)
            assert task.exception() is None

            # the idle connection got EOF from the server; the listener is gone
            assert await in_thread(idle.sock.recv, 1) == b""
            with pytest.raises(ConnectionRefusedError):
                await in_thread(socket.create_connection, (HOST, port), IO_TIMEOUT)
            idle.close()
            busy.close()
        finally:
            if not task.done():
                server.force_exit = server.should_exit = True
                await asyncio.wait_for(task, IO_TIMEOUT)
            sock.close()

    run(loop, main(), timeout=30)


# --------------------------------------------------------------------------- aiohttp

STREAM_SIZE = 6 * 1024 * 1024


def make_aiohttp_app() -> web.Application:
    async def json_handler(request: web.Request) -> web.Response:
        data = await request.json()
        return web.json_response({"echo": data, "sum": sum(data["numbers"])})

    async def item_handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0)  # interleave the concurrent handlers a little
        return web.json_response({"id": int(request.match_info["id"])})

    async def download_handler(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        data = pattern(size, seed=2)
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        step = 100_003  # odd-sized chunks, so boundaries never line up with buffers
        for i in range(0, size, step):
            await resp.write(data[i : i + step])
        await resp.write_eof()
        return resp

    async def upload_handler(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        received = bytearray()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            received += chunk
        return web.Response(body=bytes(received), headers={"X-Sha256": digest.hexdigest()})

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "bye":
                    await ws.close()
                else:
                    await ws.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application(client_max_size=STREAM_SIZE * 2)
    app.router.add_post("/json", json_handler)
    app.router.add_get("/item/{id}", item_handler)
    app.router.add_get("/download", download_handler)
    app.router.add_post("/upload", upload_handler)
    app.router.add_get("/ws", ws_handler)
    return app


@contextlib.asynccontextmanager
async def aiohttp_server_and_session():
    sock = listening_socket()
    runner = web.AppRunner(make_aiohttp_app(), access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        timeout = aiohttp.ClientTimeout(total=IO_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield session, f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


def test_aiohttp_json_round_trip(loop):
    async def main():
        async with aiohttp_server_and_session() as (session, base):
            doc = {"name": "oxio", "numbers": list(range(100)), "nested": {"ok": True}}
            async with session.post(base + "/json", json=doc) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                assert await resp.json() == {"echo": doc, "sum": 4950}
            async with session.get(base + "/missing") as resp:
                assert resp.status == 404
                await resp.read()

    run(loop, main(), timeout=20)


def test_aiohttp_streamed_download(loop):
    async def main():
        async with aiohttp_server_and_session() as (session, base):
            url = f"{base}/download?size={STREAM_SIZE}"
            async with session.get(url) as resp:
                assert resp.status == 200
                assert resp.headers.get("Transfer-Encoding") == "chunked"
                got = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    got += chunk
            return bytes(got)

    got = run(loop, main(), timeout=30)
    expected = pattern(STREAM_SIZE, seed=2)
    assert len(got) == len(expected)
    assert got == expected


def test_aiohttp_streamed_upload(loop):
    payload = pattern(STREAM_SIZE, seed=3)

    async def body():
        step = 77_777
        for i in range(0, len(payload), step):
            yield payload[i : i + step]

    async def main():
        async with aiohttp_server_and_session() as (session, base):
            async with session.post(base + "/upload", data=body()) as resp:
                assert resp.status == 200
                return resp.headers["X-Sha256"], await resp.read()

    digest, echoed = run(loop, main(), timeout=30)
    assert digest == hashlib.sha256(payload).hexdigest()
    assert echoed == payload


def test_aiohttp_concurrent_requests(loop):
    async def main():
        async with aiohttp_server_and_session() as (session, base):

            async def fetch(i):
                async with session.get(f"{base}/item/{i}") as resp:
                    assert resp.status == 200
                    return (await resp.json())["id"]

            return await asyncio.gather(*(fetch(i) for i in range(50)))

    assert run(loop, main(), timeout=20) == list(range(50))


def test_aiohttp_websocket_echo(loop):
    big = pattern(1024 * 1024, seed=4)

    async def main():
        async with aiohttp_server_and_session() as (session, base):
            async with session.ws_connect(base + "/ws") as ws:
                for i in range(20):
                    await ws.send_str(f"message {i}")
                    assert await ws.receive_str(timeout=IO_TIMEOUT) == f"echo:message {i}"
                await ws.send_bytes(big)
                assert await ws.receive_bytes(timeout=IO_TIMEOUT) == big[::-1]
                await ws.send_str("bye")  # the server closes; the client answers
                msg = await ws.receive(timeout=IO_TIMEOUT)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                await ws.close()
                assert ws.closed
                assert ws.close_code == aiohttp.WSCloseCode.OK

    run(loop, main(), timeout=20)


# --------------------------------------------------------------------------- asyncio streams


async def line_protocol(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """ECHO <text>, BLOB <n> + n bytes (answered with a digest line and the bytes
    reversed), GEN <n> (n pattern bytes), QUIT; EOF from the client ends the session."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd, _, arg = line.rstrip(b"\n").partition(b" ")
            if cmd == b"ECHO":
                writer.write(b"ECHO " + arg.upper() + b"\n")
            elif cmd == b"BLOB":
                data = await reader.readexactly(int(arg))
                writer.write(hashlib.sha256(data).hexdigest().encode() + b"\n")
                writer.write(data[::-1])
            elif cmd == b"GEN":
                writer.write(pattern(int(arg), seed=5))
            elif cmd == b"QUIT":
                writer.write(b"BYE\n")
                break
            else:
                writer.write(b"ERR\n")
            await writer.drain()
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def stream_server(kind: str):
    """Yields a coroutine function that opens a client connection to a line_protocol
    server, over TCP or a Unix socket."""
    if kind == "tcp":
        server = await asyncio.start_server(line_protocol, HOST, 0)
        port = server.sockets[0].getsockname()[1]

        def connect():
            return asyncio.open_connection(HOST, port)

    else:
        tmp = tempfile.mkdtemp(prefix="oxio-")
        path = os.path.join(tmp, "s.sock")
        server = await asyncio.start_unix_server(line_protocol, path)

        def connect():
            return asyncio.open_unix_connection(path)

    try:
        yield connect
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), IO_TIMEOUT)
        if kind != "tcp":
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.rmdir(tmp)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), IO_TIMEOUT)


@pytest.fixture(params=["tcp", "unix"])
def stream_kind(request):
    return request.param


def test_streams_line_protocol(loop, stream_kind):
    async def main():
        async with stream_server(stream_kind) as connect:
            reader, writer = await connect()
            # pipelined: every request written before any answer is read
            writer.write(b"".join(b"ECHO line %d\n" % i for i in range(300)))
            await writer.drain()
            for i in range(300):
                assert await reader.readline() == b"ECHO LINE %d\n" % i
            writer.write(b"NOPE\nQUIT\n")
            assert await reader.readline() == b"ERR\n"
            assert await reader.readline() == b"BYE\n"
            assert await reader.read() == b""  # the server closed
            assert reader.at_eof()
            await close_writer(writer)

    run(loop, main(), timeout=20)


def test_streams_large_payloads(loop, stream_kind):
    blob = pattern(4 * 1024 * 1024, seed=6)
    gen_size = 8 * 1024 * 1024

    async def main():
        async with stream_server(stream_kind) as connect:
            reader, writer = await connect()
            writer.write(b"BLOB %d\n" % len(blob))
            writer.write(blob)
            await writer.drain()
            digest = await reader.readline()
            reversed_back = await reader.readexactly(len(blob))
            writer.write(b"GEN %d\n" % gen_size)
            generated = await reader.readexactly(gen_size)
            await close_writer(writer)
            return digest, reversed_back, generated

    digest, reversed_back, generated = run(loop, main(), timeout=30)
    assert digest == hashlib.sha256(blob).hexdigest().encode() + b"\n"
    assert reversed_back == blob[::-1]
    assert generated == pattern(gen_size, seed=5)


def test_streams_eof_and_incomplete_read(loop, stream_kind):
    async def main():
        async with stream_server(stream_kind) as connect:
            # half-close: the server sees EOF after our request, answers, then closes
            reader, writer = await connect()
            assert writer.can_write_eof()
            writer.write(b"ECHO last\n")
            writer.write_eof()
            assert await reader.readline() == b"ECHO LAST\n"
            assert await reader.readline() == b""
            await close_writer(writer)

            # the server closes in the middle of a readexactly()
            reader, writer = await connect()
            writer.write(b"GEN 10\nQUIT\n")
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(100)
            assert info.value.partial == pattern(10, seed=5) + b"BYE\n"
            await close_writer(writer)

    run(loop, main(), timeout=20)


def test_streams_many_clients(loop, stream_kind):
    async def main():
        async with stream_server(stream_kind) as connect:

            async def client(n):
                reader, writer = await connect()
                for i in range(20):
                    writer.write(b"ECHO c%d-%d\n" % (n, i))
                    assert await reader.readline() == b"ECHO C%d-%d\n" % (n, i)
                writer.write(b"QUIT\n")
                assert await reader.read() == b"BYE\n"
                await close_writer(writer)
                return n

            return await asyncio.gather(*(client(n) for n in range(25)))

    assert run(loop, main(), timeout=20) == list(range(25))
