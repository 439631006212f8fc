"""Behaviour tests run against two loops: stock asyncio (the reference, proving the test
says what asyncio does) and oxio. A test that covers an oxio-only choice says so."""

from __future__ import annotations

import asyncio

import pytest

import oxio

LOOPS = {
    "asyncio": asyncio.SelectorEventLoop,
    "oxio": oxio.new_event_loop,
}


def close(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_running():
        loop.stop()
    if not loop.is_closed():
        loop.run_until_complete(loop.shutdown_default_executor())
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


def run(loop, coro, timeout: float = 10.0):
    """Runs `coro` on `loop`, failing (not hanging) after `timeout` seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def run_briefly(loop, iterations: int = 1) -> None:
    for _ in range(iterations):
        loop.call_soon(loop.stop)
        loop.run_forever()
