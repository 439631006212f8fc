"""create_future, create_task, task factories, and asyncio's task introspection."""

import asyncio
import contextvars
import threading

import pytest
from conftest import run

var = contextvars.ContextVar("var", default="unset")


def test_create_future_is_an_asyncio_future_of_this_loop(loop):
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 3)
    assert loop.run_until_complete(fut) == 3


def test_future_callbacks_run_through_the_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append(("cb", f.result())))
    fut.set_result(1)
    assert seen == []  # scheduled with call_soon, not run inline
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [("cb", 1)]


def test_create_task_returns_an_asyncio_task(loop):
    async def work():
        return asyncio.current_task()

    task = loop.create_task(work())
    assert type(task) is asyncio.Task
    assert task.get_loop() is loop
    assert task.get_name().startswith("Task-")
    assert loop.run_until_complete(task) is task


def test_create_task_name_and_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task-context")

    async def work():
        var.set("changed-by-task")
        return asyncio.current_task().get_name()

    task = loop.create_task(work(), name="worker", context=ctx)
    assert task.get_name() == "worker"
    assert loop.run_until_complete(task) == "worker"
    assert ctx[var] == "changed-by-task"
    assert var.get() == "unset"
    named = loop.create_task(work(), name=123)
    assert named.get_name() == "123"
    loop.run_until_complete(named)


def test_a_task_runs_in_a_copy_of_the_context_at_creation(loop):
    async def work():
        return var.get()

    token = var.set("at-creation")
    try:
        task = loop.create_task(work())
        var.set("later")
    finally:
        var.reset(token)
    assert loop.run_until_complete(task) == "at-creation"


def test_task_factory_receives_loop_coro_and_context(loop):
    calls = []
    made = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, asyncio.iscoroutine(coro), sorted(kwargs)))
        task = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(task)
        return task

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return 1

    t1 = loop.create_task(work(), name="named")
    t2 = loop.create_task(work(), context=contextvars.copy_context())
    assert [t1, t2] == made
    assert t1.get_name() == "named"  # the loop names the factory's task
    assert loop.run_until_complete(asyncio.gather(t1, t2)) == [1, 1]
    assert calls == [(loop, True, []), (loop, True, ["context"])]
    # run_until_complete of a coroutine goes through the factory too
    assert loop.run_until_complete(work()) == 1
    assert len(calls) == 3 and calls[2][2] == []
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    assert type(loop.create_task(work())) is asyncio.Task
    loop.run_until_complete(asyncio.sleep(0))


def test_a_task_factory_may_return_a_task_subclass(loop):
    class MyTask(asyncio.Task):
        pass

    loop.set_task_factory(lambda lp, coro, **kw: MyTask(coro, loop=lp, **kw))

    async def main():
        inner = asyncio.ensure_future(asyncio.sleep(0, "inner"))
        return type(asyncio.current_task()), type(inner), await inner

    assert loop.run_until_complete(main()) == (MyTask, MyTask, "inner")


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
    assert tasks == {me, t}
    assert asyncio.current_task(loop) is None
    assert asyncio.all_tasks(loop) == set()


def test_cancellation_reaches_the_task(loop):
    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        t = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0)
        t.cancel("stop it")
        with pytest.raises(asyncio.CancelledError, match="stop it"):
            await t
        return t.cancelled()

    assert run(loop, main()) is True


def test_timeouts_and_wait_for(loop):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        async with asyncio.timeout(0.01):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.sleep(10)
        return "done"

    assert run(loop, main()) == "done"


def test_task_group_and_gather(loop):
    async def square(x):
        await asyncio.sleep(0)
        return x * x

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(square(i)) for i in range(5)]
        gathered = await asyncio.gather(*(square(i) for i in range(3)))
        return [t.result() for t in tasks], gathered

    assert run(loop, main()) == ([0, 1, 4, 9, 16], [0, 1, 4])


def test_run_coroutine_threadsafe(loop):
    async def main():
        result = []

        def in_thread():
            fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "from thread"), loop)
            result.append(fut.result(10))

        t = threading.Thread(target=in_thread)
        t.start()
        await loop.run_in_executor(None, t.join, 10)
        return result

    assert run(loop, main()) == ["from thread"]
