"""run_forever, run_until_complete, stop, close, is_running, is_closed, time, and the
running-loop registration."""

import asyncio
import os
import signal
import threading
import time

import pytest
from conftest import LOOPS, close, run_briefly


def test_run_until_complete_returns_the_result_of_a_coroutine(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42


def test_run_until_complete_accepts_futures_and_tasks(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "f")
    assert loop.run_until_complete(fut) == "f"

    async def work():
        return "t"

    assert loop.run_until_complete(loop.create_task(work())) == "t"


def test_run_until_complete_raises_the_exception(loop):
    async def main():
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        loop.run_until_complete(main())


def test_stopped_before_the_future_completed(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(fut)


def test_stop_before_run_forever_runs_one_iteration(loop):
    ran = []
    loop.call_soon(ran.append, 1)
    loop.stop()
    loop.run_forever()
    assert ran == [1]
    assert not loop.is_running()


def test_callbacks_scheduled_during_an_iteration_run_in_the_next(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled-by-first")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.run_forever()
    assert order == ["first", "second"]
    run_briefly(loop)
    assert order == ["first", "second", "scheduled-by-first"]


def test_is_running_and_get_running_loop(loop):
    seen = {}

    def probe():
        seen["running"] = loop.is_running()
        seen["current"] = asyncio.get_running_loop()
        loop.stop()

    loop.call_soon(probe)
    loop.run_forever()
    assert seen == {"running": True, "current": loop}
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None


def test_close_is_idempotent_and_refuses_a_running_loop(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as e:
            errors.append(str(e))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_time_is_the_monotonic_clock(loop):
    before = time.monotonic()
    t = loop.time()
    after = time.monotonic()
    assert before <= t <= after


def test_nested_run_forever_and_run_until_complete_raise(loop):
    errors = []

    def nested():
        for call in (loop.run_forever, lambda: loop.run_until_complete(loop.create_future())):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ["This event loop is already running"] * 2


def test_running_while_another_loop_runs_in_the_thread(loop):
    other = LOOPS["oxio"]()
    errors = []

    def inner():
        try:
            other.run_forever()
        except RuntimeError as e:
            errors.append(str(e))
        loop.stop()

    try:
        loop.call_soon(inner)
        loop.run_forever()
    finally:
        close(other)
    assert errors == ["Cannot run the event loop while another loop is running"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_exit_exceptions_propagate_and_the_loop_stays_usable(loop, exc):
    ran = []

    def boom():
        raise exc()

    loop.call_soon(boom)
    loop.call_soon(ran.append, "after")
    with pytest.raises(exc):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    run_briefly(loop)
    assert ran == ["after"]


def test_sigint_interrupts_a_loop_waiting_in_the_poller(loop):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
    guard = loop.call_later(10, loop.stop)  # bounded, should the signal be lost
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        timer.join()
        guard.cancel()
    assert time.monotonic() - t0 < 5


def test_methods_of_a_closed_loop_raise(loop):
    loop.close()

    async def coro():
        pass

    calls = {
        "call_soon": lambda: loop.call_soon(print),
        "call_later": lambda: loop.call_later(1, print),
        "call_at": lambda: loop.call_at(1, print),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(print),
        "run_forever": loop.run_forever,
        "run_until_complete": lambda: loop.run_until_complete(loop.create_future()),
        "run_in_executor": lambda: loop.run_in_executor(None, print),
        "add_reader": lambda: loop.add_reader(0, print),
        "add_writer": lambda: loop.add_writer(1, print),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
            pytest.fail(f"{name} did not raise")
    c = coro()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(c)
    c.close()
    assert loop.remove_reader(0) is False
    assert loop.remove_writer(1) is False
