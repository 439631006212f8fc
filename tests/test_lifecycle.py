"""run_forever, run_until_complete, stop, close, is_running, is_closed, time, the
running-loop registration, and exit exceptions (KeyboardInterrupt, SystemExit, SIGINT)."""

import asyncio
import gc
import signal
import threading
import time
import warnings

import pytest
from conftest import LOOPS, close, run_briefly

# run_until_complete


def test_run_until_complete_returns_the_result_of_a_coroutine(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42


def test_run_until_complete_accepts_futures_tasks_and_awaitables(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "f")
    assert loop.run_until_complete(fut) == "f"

    async def work():
        return "t"

    assert loop.run_until_complete(loop.create_task(work())) == "t"

    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "a"

    assert loop.run_until_complete(Awaitable()) == "a"


def test_run_until_complete_of_a_finished_future(loop):
    fut = loop.create_future()
    fut.set_result(5)
    assert loop.run_until_complete(fut) == 5


def test_run_until_complete_raises_the_exception(loop):
    async def main():
        await asyncio.sleep(0)
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        loop.run_until_complete(main())
    assert not loop.is_running()


def test_run_until_complete_of_a_cancelled_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_of_a_future_of_another_loop(loop):
    other = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(
            ValueError,
            match="The future belongs to a different loop than the one specified as the loop "
            "argument",
        ):
            loop.run_until_complete(other.create_future())
    finally:
        other.close()


def test_run_until_complete_of_a_non_awaitable(loop):
    with pytest.raises(
        TypeError, match="An asyncio.Future, a coroutine or an awaitable is required"
    ):
        loop.run_until_complete(1)


def test_stopped_before_the_future_completed(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match=r"^Event loop stopped before Future completed\.$"):
        loop.run_until_complete(fut)


def test_stop_inside_a_task_then_resume_it(loop):
    async def main():
        loop.stop()
        await asyncio.sleep(0)
        return "resumed"

    task = loop.create_task(main())
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(task)
    assert loop.run_until_complete(task) == "resumed"


def test_stop_in_the_iteration_that_completes_the_future(loop):
    async def main():
        loop.stop()
        return "x"

    assert loop.run_until_complete(main()) == "x"


# stop and the per-iteration discipline


def test_stop_before_run_forever_runs_one_iteration(loop):
    ran = []

    def first():
        ran.append("first")
        loop.call_soon(ran.append, "next-iteration")

    loop.call_soon(first)
    loop.stop()
    loop.call_soon(ran.append, "queued-after-stop")
    loop.run_forever()
    assert ran == ["first", "queued-after-stop"]
    assert not loop.is_running()
    run_briefly(loop)
    assert ran == ["first", "queued-after-stop", "next-iteration"]


def test_stop_twice_before_running_stops_once(loop):
    ran = []
    loop.stop()
    loop.stop()
    loop.call_soon(ran.append, 1)
    loop.run_forever()
    loop.call_soon(ran.append, 2)
    loop.call_later(0.01, ran.append, 3)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert ran == [1, 2, 3]


def test_callbacks_queued_behind_stop_still_run_in_that_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(loop.stop)
    loop.call_soon(order.append, "queued-behind-stop")
    loop.run_forever()
    assert order == ["first", "queued-behind-stop"]
    run_briefly(loop)
    assert order == ["first", "queued-behind-stop", "scheduled-by-first"]


def test_stop_from_a_callback_then_run_again(loop):
    seen = []
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_later(0.01, seen.append, "timer")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert seen == ["timer"]


def test_an_instance_patch_of_call_soon_is_respected(loop):
    """CPython's own tests patch loop.call_soon on the instance; the loop must use it."""
    seen = []
    original = loop.call_soon

    def patched(*args, **kwargs):
        seen.append(args[0])
        return original(*args, **kwargs)

    loop.call_soon = patched
    try:
        fut = loop.create_future()
        fut.add_done_callback(lambda f: None)
        fut.set_result(1)  # futures schedule their callbacks with loop.call_soon
        run_briefly(loop)
    finally:
        del loop.call_soon
    assert len(seen) >= 2  # the done-callback and run_briefly's stop
    assert "call_soon" not in vars(loop)


def test_stop_on_a_closed_loop_is_harmless(loop):
    loop.close()
    loop.stop()
    assert loop.is_closed()


# is_running, registration, threads


def test_is_running_and_get_running_loop(loop):
    seen = {}

    def probe():
        seen["running"] = loop.is_running()
        seen["current"] = asyncio.get_running_loop()
        seen["event_loop"] = asyncio.get_event_loop()
        loop.stop()

    assert not loop.is_running()
    loop.call_soon(probe)
    loop.run_forever()
    assert seen == {"running": True, "current": loop, "event_loop": loop}
    assert "call_soon" not in vars(loop)
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


def test_running_loop_inside_timer_callbacks_and_after_errors(loop):
    seen = []
    loop.call_later(0.001, lambda: seen.append(asyncio.get_running_loop()))

    async def main():
        await asyncio.sleep(0.01)
        raise LookupError

    with pytest.raises(LookupError):
        loop.run_until_complete(main())
    assert seen == [loop]
    assert asyncio._get_running_loop() is None


def test_no_running_loop_in_executor_threads(loop):
    def probe():
        return asyncio._get_running_loop()

    assert loop.run_until_complete(loop.run_in_executor(None, probe)) is None


def test_a_loop_runs_in_a_thread_other_than_main(loop):
    result = []

    def in_thread():
        try:
            result.append(loop.run_until_complete(asyncio.sleep(0.01, "thread")))
            result.append(asyncio._get_running_loop())
        except BaseException as e:  # reported through `result`
            result.append(e)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert result == ["thread", None]


def test_two_loops_one_after_another_in_a_thread(loop):
    other = LOOPS["oxio" if loop.kind == "asyncio" else "asyncio"]()
    try:
        assert loop.run_until_complete(asyncio.sleep(0, 1)) == 1
        assert other.run_until_complete(asyncio.sleep(0, 2)) == 2
        assert loop.run_until_complete(asyncio.sleep(0, 3)) == 3
    finally:
        close(other)


# close


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
    assert not loop.is_running()


def test_close_drops_pending_callbacks(loop):
    ran = []
    loop.call_soon(ran.append, "soon")
    loop.call_later(0, ran.append, "later")
    loop.close()
    assert ran == []


@pytest.mark.parametrize("kind", list(LOOPS))
def test_an_unclosed_loop_warns_when_collected(kind):
    lp = LOOPS[kind]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    messages = [str(w.message) for w in caught if w.category is ResourceWarning]
    assert any(m.startswith("unclosed event loop") for m in messages), messages


# time


def test_time_is_the_monotonic_clock(loop):
    for _ in range(3):
        before = time.monotonic()
        t = loop.time()
        after = time.monotonic()
        assert before <= t <= after
    assert isinstance(loop.time(), float)


def test_time_never_goes_back(loop):
    samples = [loop.time() for _ in range(1000)]
    assert samples == sorted(samples)


# nesting


def test_nested_run_forever_and_run_until_complete_raise(loop):
    errors = []

    def nested():
        coro = asyncio.sleep(0)
        for call in (loop.run_forever, lambda: loop.run_until_complete(coro)):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))
        coro.close()
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ["This event loop is already running"] * 2
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("other_kind", list(LOOPS))
def test_running_while_another_loop_runs_in_the_thread(loop, other_kind):
    other = LOOPS[other_kind]()
    errors = []

    def try_to_run(inner, outer):
        def attempt():
            for call in (
                inner.run_forever,
                lambda: inner.run_until_complete(inner.create_future()),
            ):
                try:
                    call()
                except RuntimeError as e:
                    errors.append(str(e))
            assert asyncio.get_running_loop() is outer
            outer.stop()

        return attempt

    try:
        # `loop` refuses to start inside `other`, and `other` inside `loop`.
        other.call_soon(try_to_run(loop, other))
        other.run_forever()
        loop.call_soon(try_to_run(other, loop))
        loop.run_forever()
    finally:
        close(other)
    assert errors == ["Cannot run the event loop while another loop is running"] * 4


# exit exceptions


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
    assert "call_soon" not in vars(loop)  # nothing of the run is left on the instance
    assert ran == []
    run_briefly(loop)
    assert ran == ["after"]
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_exit_exceptions_from_a_timer_and_a_task(loop, exc):
    def boom():
        raise exc()

    guard = loop.call_later(10, loop.stop)
    loop.call_later(0.001, boom)
    with pytest.raises(exc):
        loop.run_forever()
    guard.cancel()

    async def main():
        await asyncio.sleep(0)
        raise exc()

    task = loop.create_task(main())
    with pytest.raises(exc):
        loop.run_until_complete(task)
    assert task.done()
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


def _main_thread_only():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not the default handler here")


def test_sigint_interrupts_a_loop_waiting_in_the_poller(loop):
    _main_thread_only()
    main_ident = threading.main_thread().ident
    started = threading.Event()

    def send():
        started.wait(10)
        time.sleep(0.05)  # not synchronisation: lets the loop settle into its poll
        signal.pthread_kill(main_ident, signal.SIGINT)

    sender = threading.Thread(target=send)
    guard = loop.call_later(10, loop.stop)  # bounded, should the signal be lost
    loop.call_soon(started.set)
    sender.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        sender.join()
        guard.cancel()
    assert time.monotonic() - t0 < 5
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


def test_sigint_raised_by_a_timer_callback(loop):
    _main_thread_only()
    ran = []
    loop.call_later(0.01, signal.raise_signal, signal.SIGINT)
    loop.call_later(0.01, ran.append, "same-time")
    guard = loop.call_later(10, loop.stop)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert ran == []
    run_briefly(loop)
    guard.cancel()
    assert ran == ["same-time"]


def test_a_python_signal_handler_runs_while_the_loop_waits(loop):
    _main_thread_only()

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted(signum)

    main_ident = threading.main_thread().ident
    old = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Timer(0.05, signal.pthread_kill, (main_ident, signal.SIGUSR1))
    guard = loop.call_later(10, loop.stop)
    t0 = time.monotonic()
    sender.start()
    try:
        with pytest.raises(Interrupted):
            loop.run_forever()
    finally:
        sender.join()
        signal.signal(signal.SIGUSR1, old)
        guard.cancel()
    assert time.monotonic() - t0 < 5
    assert not loop.is_running()
