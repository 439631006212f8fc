"""create_future, create_task, task factories, and asyncio's task introspection."""

import asyncio
import contextvars

import pytest

var = contextvars.ContextVar("var", default="unset")


def test_create_future_is_an_asyncio_future_of_this_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    loop.call_soon(fut.set_result, 3)
    assert loop.run_until_complete(fut) == 3


def test_create_task_name_and_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task-context")

    async def work():
        return var.get(), asyncio.current_task().get_name()

    task = loop.create_task(work(), name="worker", context=ctx)
    assert isinstance(task, asyncio.Task)
    assert task.get_name() == "worker"
    assert loop.run_until_complete(task) == ("task-context", "worker")


def test_task_factory_receives_loop_coro_and_context(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, sorted(kwargs)))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return 1

    t1 = loop.create_task(work(), name="named")
    t2 = loop.create_task(work(), context=contextvars.copy_context())
    assert t1.get_name() == "named"
    assert loop.run_until_complete(asyncio.gather(t1, t2)) == [1, 1]
    assert calls == [(loop, []), (loop, ["context"])]
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_all_tasks_and_current_task(loop):
    async def child():
        await asyncio.sleep(0)

    async def main():
        t = asyncio.ensure_future(child())
        me = asyncio.current_task()
        tasks = asyncio.all_tasks()
        await t
        return me, tasks, t

    me, tasks, t = loop.run_until_complete(main())
    assert me in tasks and t in tasks
    assert asyncio.all_tasks(loop) == set()


def test_cancellation_reaches_the_task(loop):
    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        t = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0)
        t.cancel("stop it")
        with pytest.raises(asyncio.CancelledError):
            await t
        return t.cancelled()

    assert loop.run_until_complete(main()) is True


def test_timeouts_and_wait_for(loop):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        return "done"

    assert loop.run_until_complete(main()) == "done"
