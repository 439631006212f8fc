"""The executor bridge and async generators."""

import asyncio
import concurrent.futures
import sys
import threading

import pytest


def test_run_in_executor_default_and_custom(loop):
    def work(a, b):
        return a + b, threading.current_thread() is threading.main_thread()

    assert loop.run_until_complete(loop.run_in_executor(None, work, 1, 2)) == (3, False)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert loop.run_until_complete(loop.run_in_executor(pool, work, 3, 4)) == (7, False)


def test_run_in_executor_propagates_exceptions(loop):
    def fail():
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_to_thread(loop):
    async def main():
        return await asyncio.to_thread(sum, [1, 2, 3])

    assert loop.run_until_complete(main()) == 6


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom")
    loop.set_default_executor(pool)
    name = loop.run_until_complete(
        loop.run_in_executor(None, lambda: threading.current_thread().name)
    )
    assert name.startswith("custom")


def test_no_executor_after_shutdown(loop):
    loop.run_until_complete(loop.run_in_executor(None, int))
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, int)


def test_shutdown_asyncgens_finalizes_generators(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g

    hooks_before = sys.get_asyncgen_hooks()
    g = loop.run_until_complete(main())
    assert sys.get_asyncgen_hooks() == hooks_before
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]
    del g


def test_asyncgen_hooks_are_installed_while_running(loop):
    async def main():
        return sys.get_asyncgen_hooks()

    firstiter, finalizer = loop.run_until_complete(main())
    assert firstiter is not None and finalizer is not None
    assert sys.get_asyncgen_hooks() != (firstiter, finalizer)
