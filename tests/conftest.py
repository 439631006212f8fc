"""Behaviour tests run against two loops: stock asyncio (the reference, proving the test
says what asyncio does) and oxio. A test that covers an oxio-only choice says so."""

from __future__ import annotations

import asyncio
import pathlib
import socket

import pytest

import oxio

LOOPS = {
    "asyncio": asyncio.SelectorEventLoop,
    "oxio": oxio.new_event_loop,
}

# Each behaviour test gets far less than the project-wide 120 s (pyproject.toml).
TEST_TIMEOUT = 30
HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.parent == HERE and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


def close(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_running():
        loop.stop()
    if not loop.is_closed():
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            pass  # best effort: a failed test may leave a stop() queued; the test reports
        finally:
            loop.close()


@pytest.fixture(params=list(LOOPS))
def loop(request):
    lp = LOOPS[request.param]()
    lp.kind = request.param  # lets a test say which loop it is checking
    yield lp
    close(lp)
    asyncio.set_event_loop(None)


@pytest.fixture
def oxloop():
    lp = oxio.new_event_loop()
    yield lp
    close(lp)
    asyncio.set_event_loop(None)


@pytest.fixture
def refloop():
    """A stock asyncio loop, for tests that compare oxio's output with asyncio's."""
    lp = asyncio.SelectorEventLoop()
    yield lp
    close(lp)
    asyncio.set_event_loop(None)


def run(loop, coro, timeout: float = 10.0):
    """Runs `coro` on `loop`, failing (not hanging) after `timeout` seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def settling(done, handler):
    """A `start_server` callback that runs `handler(reader, writer)`, closes the writer,
    and settles the future `done` with the handler's result or exception, so that a test
    awaits the server side's outcome instead of losing it in the server's task."""

    async def handle(reader, writer):
        try:
            result = await handler(reader, writer)
            writer.close()
            await writer.wait_closed()
            done.set_result(result)
        except BaseException as exc:
            done.set_exception(exc)

    return handle


def run_briefly(loop, iterations: int = 1) -> None:
    """Runs `iterations` loop iterations (a stop() scheduled first lets one pass run)."""
    for _ in range(iterations):
        loop.call_soon(loop.stop)
        loop.run_forever()


def run_until(loop, predicate, timeout: float = 5.0) -> None:
    """Runs the loop until `predicate()` holds, checking once per iteration; fails after
    `timeout` seconds instead of hanging."""
    guard = loop.call_later(timeout, loop.stop)

    def check():
        if predicate():
            loop.stop()
        else:
            loop.call_soon(check)

    loop.call_soon(check)
    try:
        loop.run_forever()
    finally:
        guard.cancel()
    assert predicate(), "condition not reached in time"


def run_for(loop, seconds: float) -> None:
    """Runs the loop for about `seconds` (used only to show that something does NOT
    happen)."""
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


class PollsForReal:
    """Watches one end of an idle socket pair, so that every loop iteration meanwhile
    polls the kernel (with nothing watched, a loop with callbacks ready may skip the
    poll) and takes the readiness reports of everything registered."""

    def __init__(self, loop):
        self.loop = loop
        self.a, self.b = socket.socketpair()

    def __enter__(self):
        self.loop.add_reader(self.a, lambda: None)
        return self

    def __exit__(self, *exc):
        self.loop.remove_reader(self.a)
        self.a.close()
        self.b.close()


async def polls_for_real(loop, n=3):
    """Runs `n` loop iterations that each poll the kernel."""
    with PollsForReal(loop):
        for _ in range(n):
            await asyncio.sleep(0)


async def until(condition):
    """Returns once `condition()` holds, looking once per loop iteration (the caller
    bounds the wait)."""
    while not condition():
        await asyncio.sleep(0)
