"""Handles are kept off the garbage collector's lists while the loop holds them; these
tests make sure a cycle through a handle is still collected once the loop lets go, and
that a handle's context survives being shared."""

import asyncio
import contextvars
import gc
import weakref

import pytest

import oxio


@pytest.fixture
def loop():
    lp = oxio.new_event_loop()
    yield lp
    lp.close()


class Holder:
    def __init__(self, loop, delay):
        # A cycle: holder -> handle -> bound method -> holder.
        if delay is None:
            self.handle = loop.call_soon(self.callback)
        else:
            self.handle = loop.call_later(delay, self.callback)
        self.ran = False

    def callback(self):
        self.ran = True


@pytest.mark.parametrize("delay", [None, 0.0, 3600.0])
def test_cycle_through_a_handle_is_collected(loop, delay):
    holder = Holder(loop, delay)
    if delay == 3600.0:
        holder.handle.cancel()
    ref = weakref.ref(holder)
    loop.call_soon(loop.stop)
    loop.run_forever()
    if delay != 3600.0:
        assert holder.ran
    del holder
    gc.collect()
    assert ref() is None, "a reference cycle through a handle leaked"


def test_cycle_through_a_reader_handle_is_collected(loop):
    import socket

    a, b = socket.socketpair()
    try:
        holder = type("H", (), {})()
        holder.cb = lambda: None
        loop.add_reader(a, holder.cb)
        holder.loop_ref = loop
        loop.remove_reader(a)
        ref = weakref.ref(holder)
        del holder
        gc.collect()
        assert ref() is None
    finally:
        a.close()
        b.close()


def test_handle_context_outlives_the_loops_reference(loop):
    var = contextvars.ContextVar("var")
    var.set("outer")
    seen = []
    h = loop.call_soon(lambda: seen.append(var.get()))
    ctx = h.get_context()
    loop.call_soon(loop.stop)
    loop.run_forever()
    del h
    gc.collect()
    assert seen == ["outer"]
    assert ctx.run(var.get) == "outer"
    assert gc.is_tracked(ctx)


def test_many_pending_handles_do_not_crash_a_collection(loop):
    handles = [loop.call_soon(lambda: None) for _ in range(5000)]
    timers = [loop.call_later(3600, lambda: None) for _ in range(5000)]
    gc.collect()
    for t in timers[::2]:
        t.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    del handles, timers
    gc.collect()


def test_task_cycle_is_collected(loop):
    async def work():
        await asyncio.sleep(0)
        return 1

    task = loop.create_task(work())
    task.self_ref = task
    assert loop.run_until_complete(task) == 1
    ref = weakref.ref(task)
    del task
    gc.collect()
    assert ref() is None
