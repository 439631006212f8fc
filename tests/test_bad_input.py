"""Bad arguments get asyncio's exceptions. asyncio checks callbacks only in debug mode;
oxio always does, so the reference here runs asyncio in debug mode."""

import asyncio
import os
import socket

import pytest


@pytest.fixture
def checking_loop(loop):
    if loop.kind == "asyncio":
        loop.set_debug(True)
    return loop


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_non_callables_are_rejected(checking_loop, method):
    args = (1,) if method in ("call_soon", "call_soon_threadsafe") else (0, 1)
    named = "call_at" if method == "call_later" else method  # call_later delegates
    with pytest.raises(TypeError, match=rf"a callable object was expected by {named}\(\), got 1"):
        getattr(checking_loop, method)(*args)


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_coroutines_are_rejected(checking_loop, method):
    async def coro_func():
        pass

    prefix = () if method == "call_soon" else (0,)
    named = "call_at" if method == "call_later" else method  # call_later delegates
    with pytest.raises(TypeError, match=rf"coroutines cannot be used with {named}\(\)"):
        getattr(checking_loop, method)(*prefix, coro_func)
    coro = coro_func()
    try:
        with pytest.raises(TypeError, match=rf"coroutines cannot be used with {named}\(\)"):
            getattr(checking_loop, method)(*prefix, coro)
    finally:
        coro.close()


def test_oxio_checks_callbacks_outside_debug_mode_too(oxloop):
    assert not oxloop.get_debug()
    with pytest.raises(TypeError, match="a callable object was expected"):
        oxloop.call_soon(None)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used"):
        oxloop.call_later(1, coro_func)


def test_missing_and_unknown_arguments(loop):
    with pytest.raises(TypeError):
        loop.call_soon()
    with pytest.raises(TypeError):
        loop.call_later(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        loop.call_soon(print, foo=1)


def test_add_reader_with_bad_file_objects(loop):
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(object(), print)
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.remove_reader("not a file")


def test_add_reader_of_a_closed_descriptor_is_ebadf(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    # Make sure nothing reuses the number under the test's feet.
    with pytest.raises(OSError) as info:
        loop.add_reader(fd, print)
    assert info.value.errno == 9  # EBADF
    assert loop.remove_reader(fd) is False


def test_task_factory_and_exception_handler_must_be_callable(loop):
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(1)
    with pytest.raises(TypeError, match="A callable object or None is expected, got 1"):
        loop.set_exception_handler(1)


def test_create_task_of_a_non_coroutine(loop):
    with pytest.raises(TypeError, match="a coroutine was expected, got 1"):
        loop.create_task(1)


def test_run_until_complete_of_a_non_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(1)


def test_set_default_executor_requires_a_thread_pool(loop):
    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor instance"):
        loop.set_default_executor(object())


def test_fd_that_was_never_open(loop):
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises((OSError, ValueError)):
        loop.add_reader(fd, print)
    assert asyncio.isfuture(loop.create_future())
