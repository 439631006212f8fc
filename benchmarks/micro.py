"""Micro benchmarks of the loop's scheduling core.

Each benchmark takes a loop and a size, runs the workload once, and returns the number
of operations it performed; the runner times it. The loop is created by the runner and
is not part of the measurement.
"""

from __future__ import annotations

import asyncio
from typing import Callable

Benchmark = Callable[[asyncio.AbstractEventLoop, int], int]


def _noop(*args: object) -> None:
    pass


def call_soon(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Schedule n callbacks with call_soon, then run them all (scheduling + running)."""
    schedule = loop.call_soon
    for _ in range(n):
        schedule(_noop)
    loop.call_soon(loop.stop)
    loop.run_forever()
    return n


def call_soon_3_args(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """As call_soon, each callback with three arguments."""
    schedule = loop.call_soon
    for _ in range(n):
        schedule(_noop, 1, 2, 3)
    loop.call_soon(loop.stop)
    loop.run_forever()
    return n


def call_later_cancel(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Schedule n timers with call_later and cancel each; one iteration then drops them."""
    later = loop.call_later
    for _ in range(n):
        later(10.0, _noop).cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    return n


def sleep0(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """One coroutine awaiting asyncio.sleep(0) n times: n loop iterations."""

    async def main() -> None:
        sleep = asyncio.sleep
        for _ in range(n):
            await sleep(0)

    loop.run_until_complete(main())
    return n


def future_round_trip(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """create_future, call_soon(fut.set_result), await the future; n times."""

    async def main() -> None:
        create = loop.create_future
        schedule = loop.call_soon
        for i in range(n):
            fut = create()
            schedule(fut.set_result, i)
            await fut

    loop.run_until_complete(main())
    return n


def gather_tasks(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """gather() of n trivial tasks (n is 50,000 in a full run)."""

    async def trivial() -> int:
        return 1

    async def main() -> None:
        await asyncio.gather(*(trivial() for _ in range(n)))

    loop.run_until_complete(main())
    return n


def _write_responses(loop: asyncio.AbstractEventLoop, n: int, parts: tuple[bytes, ...]) -> int:
    """n responses of 1 KiB written to a TCP transport over loopback, 64 per loop
    iteration, each as `parts` (one write per part); the peer drains between batches."""
    import socket

    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        tr, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
        b, _ = listener.accept()  # already in the backlog: does not block
        listener.close()
        b.setblocking(False)
        write = tr.write
        left = n
        while left > 0:
            for _ in range(min(64, left)):
                for part in parts:
                    write(part)
            left -= 64
            await asyncio.sleep(0)
            while True:
                try:
                    if not b.recv(1 << 20):
                        break
                except BlockingIOError:
                    if not tr.get_write_buffer_size():
                        break
                    await asyncio.sleep(0)
        tr.close()
        b.close()

    loop.run_until_complete(main())
    return n


_RESPONSE = b"x" * 1024


def write_response(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """A 1 KiB response in one write (see _write_responses)."""
    return _write_responses(loop, n, (_RESPONSE,))


def write_header_body(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """The same 1 KiB response as a 16-byte header and a body: two writes, which the
    loop should send together (see _write_responses)."""
    return _write_responses(loop, n, (_RESPONSE[:16], _RESPONSE[16:]))


def reader_ping_pong(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """n one-byte exchanges over a socket pair between two `add_reader` callbacks: each
    reads what the other wrote and answers. Every exchange is a readiness event of a
    level-triggered watch."""
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    done = loop.create_future()
    left = n

    def on_a() -> None:
        nonlocal left
        a.recv(1)
        left -= 1
        if left <= 0:
            done.set_result(None)
        else:
            a.send(b"x")

    def on_b() -> None:
        b.recv(1)
        b.send(b"x")

    loop.add_reader(a.fileno(), on_a)
    loop.add_reader(b.fileno(), on_b)
    a.send(b"x")
    try:
        loop.run_until_complete(done)
    finally:
        loop.remove_reader(a.fileno())
        loop.remove_reader(b.fileno())
        a.close()
        b.close()
    return n


#: name -> (function, size in a full run, size in a smoke run)
BENCHMARKS: dict[str, tuple] = {
    "call_soon": (call_soon, 200_000, 200),
    "call_soon 3 args": (call_soon_3_args, 200_000, 200),
    "call_later + cancel": (call_later_cancel, 200_000, 200),
    "sleep(0)": (sleep0, 200_000, 200),
    "future round trip": (future_round_trip, 200_000, 200),
    "gather 50k tasks": (gather_tasks, 50_000, 200),
    "write 1 KiB response": (write_response, 200_000, 200),
    "write header + body": (write_header_body, 200_000, 200),
    "add_reader ping-pong": (reader_ping_pong, 100_000, 200),
}
