"""Bad arguments get asyncio's exceptions, with asyncio's messages where they are fixed text.

asyncio checks callbacks only in debug mode; oxio always does, so where a test is about
that check the reference asyncio loop runs in debug mode (`checking_loop`)."""

import asyncio
import concurrent.futures
import math
import os
import socket

import pytest


@pytest.fixture
def checking_loop(loop):
    if loop.kind == "asyncio":
        loop.set_debug(True)
    return loop


async def coro_func():
    pass


# the closed loop


CLOSED_LOOP_CALLS = {
    "call_soon": lambda lp: lp.call_soon(print),
    "call_later": lambda lp: lp.call_later(1, print),
    "call_at": lambda lp: lp.call_at(1, print),
    "call_soon_threadsafe": lambda lp: lp.call_soon_threadsafe(print),
    "run_forever": lambda lp: lp.run_forever(),
    "run_until_complete(future)": lambda lp: lp.run_until_complete(lp.create_future()),
    "run_in_executor": lambda lp: lp.run_in_executor(None, print),
    "add_reader": lambda lp: lp.add_reader(0, print),
    "add_writer": lambda lp: lp.add_writer(1, print),
}


@pytest.mark.parametrize("name", list(CLOSED_LOOP_CALLS))
def test_methods_of_a_closed_loop_raise(loop, name):
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        CLOSED_LOOP_CALLS[name](loop)


def test_coroutines_on_a_closed_loop(loop):
    loop.close()
    for call in (loop.create_task, loop.run_until_complete):
        coro = coro_func()
        try:
            with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
                call(coro)
        finally:
            coro.close()


def test_what_a_closed_loop_still_allows(loop):
    """As asyncio: these do not check for a closed loop."""
    loop.close()
    assert isinstance(loop.create_future(), asyncio.Future)
    assert loop.remove_reader(0) is False
    assert loop.remove_writer(1) is False
    assert isinstance(loop.time(), float)
    loop.set_debug(True)
    assert loop.get_debug()
    loop.stop()
    loop.set_task_factory(None)
    loop.set_exception_handler(None)
    assert not loop.is_running()
    for make in (loop.shutdown_asyncgens, loop.shutdown_default_executor):
        make().close()


# callbacks


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_non_callables_are_rejected(checking_loop, method):
    args = (1,) if method in ("call_soon", "call_soon_threadsafe") else (0, 1)
    named = "call_at" if method == "call_later" else method  # call_later delegates
    with pytest.raises(TypeError, match=rf"^a callable object was expected by {named}\(\), got 1$"):
        getattr(checking_loop, method)(*args)
    with pytest.raises(TypeError, match=rf"by {named}\(\), got None$"):
        getattr(checking_loop, method)(*args[:-1], None)


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_coroutines_are_rejected(checking_loop, method):
    prefix = () if method in ("call_soon", "call_soon_threadsafe") else (0,)
    named = "call_at" if method == "call_later" else method  # call_later delegates
    with pytest.raises(TypeError, match=rf"^coroutines cannot be used with {named}\(\)$"):
        getattr(checking_loop, method)(*prefix, coro_func)
    coro = coro_func()
    try:
        with pytest.raises(TypeError, match=rf"^coroutines cannot be used with {named}\(\)$"):
            getattr(checking_loop, method)(*prefix, coro)
    finally:
        coro.close()


def test_oxio_checks_callbacks_outside_debug_mode_too(oxloop):
    """oxio-only: the callback checks are always on (asyncio: debug mode only)."""
    assert not oxloop.get_debug()
    with pytest.raises(TypeError, match=r"a callable object was expected by call_soon\(\)"):
        oxloop.call_soon(None)
    with pytest.raises(TypeError, match=r"coroutines cannot be used with call_at\(\)"):
        oxloop.call_later(1, coro_func)
    with pytest.raises(TypeError, match=r"a callable object was expected by add_reader\(\)"):
        oxloop.add_reader(0, 1)


def test_the_stock_loop_accepts_them_outside_debug_mode(refloop):
    """The reason for `checking_loop`: what stock asyncio does without debug mode."""
    refloop.call_soon(1).cancel()
    refloop.call_later(1, coro_func).cancel()


def test_missing_and_unknown_arguments(loop):
    with pytest.raises(TypeError):
        loop.call_soon()
    with pytest.raises(TypeError):
        loop.call_later(1)
    with pytest.raises(TypeError):
        loop.call_at()
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        loop.call_soon(print, foo=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        loop.call_later(1, print, foo=1)


# times


def test_none_times_are_type_errors(loop):
    with pytest.raises(TypeError, match=r"^delay must not be None$"):
        loop.call_later(None, print)
    with pytest.raises(TypeError, match=r"^when cannot be None$"):
        loop.call_at(None, print)


def test_a_non_number_delay_is_a_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_later("1", print)


def test_oxio_rejects_a_non_number_time_at_once(oxloop):
    """oxio-only: asyncio's call_at("1", ...) accepts the string and fails later, inside its
    heap; oxio refuses it up front."""
    with pytest.raises(TypeError):
        oxloop.call_at("1", print)


def test_nan_times_are_accepted(loop):
    """Neither loop raises for NaN (see test_scheduling for what runs when)."""
    loop.call_later(math.nan, print).cancel()
    loop.call_at(math.nan, print).cancel()


# file descriptors


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_bad_file_objects(loop, method):
    add = getattr(loop, method)
    remove = getattr(loop, method.replace("add", "remove"))
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        add(-1, print)
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -5$"):
        add(-5, print)
    with pytest.raises(ValueError, match=r"^Invalid file object: <object object at 0x"):
        add(object(), print)
    with pytest.raises(ValueError, match=r"^Invalid file object: 1\.5$"):
        add(1.5, print)
    with pytest.raises(ValueError, match=r"^Invalid file object: 'not a file'$"):
        remove("not a file")
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        remove(-1)

    class Negative:
        def fileno(self):
            return -1

    class Broken:
        def fileno(self):
            raise ValueError("I/O operation on closed file")

    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        add(Negative(), print)
    with pytest.raises(ValueError, match=r"^Invalid file object: "):
        add(Broken(), print)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_a_closed_descriptor_is_ebadf(loop, method):
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # nothing else in this single-threaded test opens a descriptor meanwhile
    with pytest.raises(OSError) as info:
        getattr(loop, method)(fd, print)
    assert info.value.errno == 9  # EBADF
    assert getattr(loop, method.replace("add", "remove"))(fd) is False
    with pytest.raises(OSError) as info:
        getattr(loop, method)(1_000_000, print)
    assert info.value.errno == 9
    assert getattr(loop, method.replace("add", "remove"))(1_000_000) is False


def test_a_closed_socket_object(loop):
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        loop.add_reader(a, print)


def test_a_regular_file_is_not_pollable(loop, tmp_path):
    """epoll refuses regular files with EPERM; asyncio passes that on."""
    with open(tmp_path / "f", "w") as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, print)
        assert loop.remove_reader(f) is False


# tasks, handlers, executors


def test_task_factory_and_exception_handler_must_be_callable(loop):
    with pytest.raises(TypeError, match=r"^task factory must be a callable or None$"):
        loop.set_task_factory(1)
    with pytest.raises(TypeError, match=r"^A callable object or None is expected, got 1$"):
        loop.set_exception_handler(1)
    with pytest.raises(TypeError, match=r"^A callable object or None is expected, got 'x'$"):
        loop.set_exception_handler("x")
    assert loop.get_task_factory() is None
    assert loop.get_exception_handler() is None


def test_create_task_of_a_non_coroutine(loop):
    with pytest.raises(TypeError, match=r"^a coroutine was expected, got 1$"):
        loop.create_task(1)
    fut = loop.create_future()
    with pytest.raises(TypeError, match=r"^a coroutine was expected, got <Future pending>$"):
        loop.create_task(fut)


def test_set_default_executor_requires_a_thread_pool(loop):
    with pytest.raises(TypeError, match=r"^executor must be ThreadPoolExecutor instance$"):
        loop.set_default_executor(object())
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor instance"):
            loop.set_default_executor(pool)
