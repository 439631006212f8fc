"""run_in_executor, set_default_executor, shutdown_default_executor, asyncio.to_thread."""

import asyncio
import concurrent.futures
import contextvars
import threading

import pytest
from conftest import run


def work(a, b):
    return a + b, threading.current_thread() is threading.main_thread()


def test_run_in_executor_default(loop):
    fut = loop.run_in_executor(None, work, 1, 2)
    assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
    assert run(loop, fut) == (3, False)


def test_run_in_executor_custom(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom") as pool:

        def name():
            return threading.current_thread().name

        assert run(loop, loop.run_in_executor(pool, work, 3, 4)) == (7, False)
        assert run(loop, loop.run_in_executor(pool, name)).startswith("custom")


def test_run_in_executor_propagates_exceptions(loop):
    def fail():
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        run(loop, loop.run_in_executor(None, fail))


def test_many_jobs_complete(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(50)))

    assert run(loop, main()) == [i * i for i in range(50)]


def test_to_thread(loop):
    async def main():
        return await asyncio.to_thread(sum, [1, 2, 3])

    assert run(loop, main()) == 6


def test_to_thread_carries_the_context(loop):
    var = contextvars.ContextVar("var")

    async def main():
        var.set("in task")
        return await asyncio.to_thread(var.get)

    assert run(loop, main()) == "in task"


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="default-custom")
    loop.set_default_executor(pool)
    name = run(loop, loop.run_in_executor(None, lambda: threading.current_thread().name))
    assert name.startswith("default-custom")
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(int)


def test_no_default_executor_after_shutdown(loop):
    loop.run_until_complete(loop.run_in_executor(None, int))
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match=r"^Executor shutdown has been called$"):
        loop.run_in_executor(None, int)
    # An explicit executor still works, and shutting down again is harmless.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert run(loop, loop.run_in_executor(pool, int, "5")) == 5
    loop.run_until_complete(loop.shutdown_default_executor())


def test_shutdown_default_executor_without_an_executor(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, int)


def test_shutdown_waits_for_running_jobs(loop):
    started, release, done = threading.Event(), threading.Event(), []

    def job():
        started.set()
        release.wait(10)
        done.append(True)

    loop.run_in_executor(None, job)
    assert started.wait(10)
    threading.Timer(0.05, release.set).start()
    loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), 10))
    assert done == [True]


def test_close_shuts_the_default_executor_down(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(pool)
    loop.close()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(int)


def test_a_cancelled_job_future(loop):
    release = threading.Event()

    async def main():
        fut = loop.run_in_executor(None, release.wait, 10)
        await asyncio.sleep(0)
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        release.set()
        return fut.cancelled()

    assert run(loop, main()) is True


def test_debug_mode_rejects_coroutines(loop):
    loop.set_debug(True)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match=r"^coroutines cannot be used with run_in_executor\(\)$"):
        loop.run_in_executor(None, coro_func)
