"""Echo servers for the network benchmark (benchmarks/net.py), one per API kind, run on a
chosen event loop.

    python benchmarks/net_servers.py --loop {asyncio,uvloop,rloop,oxio} --kind KIND
        [--host 127.0.0.1] [--port 0 | --unix PATH] [--cpu N]
        [--certfile PEM [--keyfile PEM]]

Kinds:
  protocol     asyncio.Protocol, echoing in data_received
  buffered     asyncio.BufferedProtocol, echoing from get_buffer/buffer_updated
  streams      asyncio.start_server: reader.read, writer.write, await writer.drain()
  sockets      loop.sock_accept / sock_recv / sock_sendall on non-blocking sockets
  header_body  asyncio.Protocol replying with two writes per chunk received: a small header
               (the chunk's first bytes) then the body (the rest), so the reply has exactly
               the request's size
  one_write    header_body's control: the same slicing of every chunk into header and body,
               but the reply is the chunk itself in one write. header_body against one_write
               is what the second write costs; against `protocol` it also counts the
               slicing (two new `bytes` per chunk), which is the benchmark's work, not the
               loop's

Every kind closes a connection once the client has finished sending and everything has
been echoed (which is what `oxio-loadgen --mode connrate` waits for).

TLS: `--certfile` (and `--keyfile`, when the key is in a file of its own) makes every kind
but `sockets` serve TLS: `loop.create_server(..., ssl=ctx)` or `asyncio.start_server(...,
ssl=ctx)`, with the same context on every loop (tls_certs.server_context: TLS 1.3 only,
OpenSSL's default TLS 1.3 cipher suites). A loop whose servers cannot do TLS (it raises
NotImplementedError) makes the server fail with a last line saying `TLS is not supported`.

Prints `LISTENING <port>` (or `LISTENING <path>`) on stdout once serving. Stops on SIGTERM,
SIGINT, or end-of-file on stdin, so run it with stdin connected to a pipe (or a terminal);
with stdin at /dev/null it stops at once. Exit status: 0 after a clean stop, 2 when the loop
is not installed, 1 when the server could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loops import LOOP_NAMES, loop_factory
from tls_certs import server_context

KINDS = ("protocol", "buffered", "streams", "sockets", "header_body", "one_write")
# The kinds that can serve TLS (`sockets` works on raw sockets).
TLS_KINDS = ("protocol", "buffered", "streams", "header_body", "one_write")
# In the failure line of a loop that cannot serve TLS; net.py reports it as unsupported.
TLS_UNSUPPORTED = "TLS is not supported"
READ_SIZE = 256 * 1024
HEADER_SIZE = 16
BACKLOG = 1024


class EchoProtocol(asyncio.Protocol):
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # The buffer is reused for the next read, and a transport may keep what it could not
        # send at once by reference, so hand it a copy.
        self.transport.write(self.buffer[:nbytes])


class HeaderBodyProtocol(EchoProtocol):
    def data_received(self, data: bytes) -> None:
        if len(data) <= HEADER_SIZE:
            self.transport.write(data)
            return
        self.transport.write(data[:HEADER_SIZE])
        self.transport.write(data[HEADER_SIZE:])


class OneWriteProtocol(EchoProtocol):
    def data_received(self, data: bytes) -> None:
        if len(data) <= HEADER_SIZE:
            self.transport.write(data)
            return
        # HeaderBodyProtocol's work, kept so that the two differ only in the writes.
        _header, _body = data[:HEADER_SIZE], data[HEADER_SIZE:]
        self.transport.write(data)


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def listening_socket(args: argparse.Namespace) -> socket.socket:
    """The listening socket for the `sockets` kind (the others let the loop make theirs)."""
    if args.unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(args.unix)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def serve_sockets(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    data = await loop.sock_recv(conn, READ_SIZE)
                    if not data:
                        break
                    await loop.sock_sendall(conn, data)
            except ConnectionError:
                pass

    while True:
        conn, _ = await loop.sock_accept(sock)
        conn.setblocking(False)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(echo(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


class _TaskCloser:
    def __init__(self, task: asyncio.Task[None], sock: socket.socket) -> None:
        self.task = task
        self.sock = sock

    def close(self) -> None:
        self.task.cancel()
        self.sock.close()


class TLSUnsupported(Exception):
    pass


async def start(kind: str, args: argparse.Namespace) -> tuple[Any, str]:
    """Starts serving; returns (a thing to close, what to print after LISTENING)."""
    loop = asyncio.get_running_loop()
    if args.unix and os.path.exists(args.unix):
        os.unlink(args.unix)
    if kind == "sockets":
        sock = listening_socket(args)
        task = loop.create_task(serve_sockets(loop, sock))
        return _TaskCloser(task, sock), args.unix or str(sock.getsockname()[1])
    tls: ssl.SSLContext | None = None
    if args.certfile:
        tls = server_context(args.certfile, args.keyfile)
    options: dict[str, Any] = {"backlog": BACKLOG, "ssl": tls}
    server: Any
    try:
        if kind == "streams":
            if args.unix:
                server = await asyncio.start_unix_server(stream_echo, args.unix, **options)
            else:
                server = await asyncio.start_server(stream_echo, args.host, args.port, **options)
        else:
            factories: dict[str, Callable[[], asyncio.BaseProtocol]] = {
                "protocol": EchoProtocol,
                "buffered": EchoBufferedProtocol,
                "header_body": HeaderBodyProtocol,
                "one_write": OneWriteProtocol,
            }
            if args.unix:
                server = await loop.create_unix_server(factories[kind], args.unix, **options)
            else:
                server = await loop.create_server(factories[kind], args.host, args.port, **options)
    except NotImplementedError as e:
        if tls is None:
            raise
        why = f"NotImplementedError: {e}" if str(e) else "NotImplementedError"
        raise TLSUnsupported(f"{TLS_UNSUPPORTED} by {args.loop} ({why})") from e
    return server, args.unix or str(server.sockets[0].getsockname()[1])


def install_stop_triggers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT and stdin end-of-file set `stop`, whatever the loop supports."""

    def trigger() -> None:
        loop.call_soon_threadsafe(stop.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            signal.signal(signum, lambda *_: trigger())

    def watch_stdin() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside a buffered
        # reader would hold its lock while the interpreter shuts down.
        try:
            while os.read(0, 65536):
                pass
        except OSError:  # no usable stdin: rely on the signals
            return
        try:
            trigger()
        except RuntimeError:  # the loop is already closed
            pass

    threading.Thread(target=watch_stdin, name="stdin-eof", daemon=True).start()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    install_stop_triggers(loop, stop)
    closer, shown = await start(args.kind, args)
    print(f"LISTENING {shown}", flush=True)
    stopped = loop.create_task(stop.wait())
    watched: list[asyncio.Future[Any]] = [stopped]
    if isinstance(closer, _TaskCloser):
        watched.append(closer.task)  # the accept loop: its failure is the server's failure
    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if isinstance(closer, _TaskCloser) and closer.task in done:
        closer.task.result()
    closer.close()
    if args.unix and os.path.exists(args.unix):
        os.unlink(args.unix)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=LOOP_NAMES, default="asyncio")
    parser.add_argument("--kind", choices=KINDS, default="protocol")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    parser.add_argument("--cpu", type=int, help="pin the process to this CPU")
    parser.add_argument("--certfile", type=Path, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--keyfile", type=Path, help="its private key (default: in --certfile)")
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.certfile and args.kind not in TLS_KINDS:
        parser.error(f"--kind {args.kind} cannot serve TLS; choose from {', '.join(TLS_KINDS)}")
    if args.certfile and not args.keyfile:
        args.keyfile = args.certfile
    return args


def run(args: argparse.Namespace) -> int:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    factory = loop_factory(args.loop)
    if factory is None:
        print(f"net_servers: loop {args.loop!r} is not installed", file=sys.stderr)
        return 2
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main(args))
    except Exception as e:
        traceback.print_exc()
        # One line last, for the runner's failure note.
        print(f"net_servers: {type(e).__name__}: {e}".rstrip(": "), file=sys.stderr)
        return 1
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(parse_args()))
