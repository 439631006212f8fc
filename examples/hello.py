"""A small but real asyncio program: producers and consumers on a queue, a timeout,
a thread-pool call, cancellation, and a context variable, all on the oxio loop.

    python examples/hello.py
"""

import asyncio
import contextvars
import time

import oxio

request_id = contextvars.ContextVar("request_id", default="-")


async def producer(queue: asyncio.Queue, n: int) -> None:
    for i in range(n):
        await queue.put(i)
        await asyncio.sleep(0)
    await queue.put(None)


async def consumer(queue: asyncio.Queue, name: str) -> int:
    request_id.set(name)
    total = 0
    while (item := await queue.get()) is not None:
        total += item
    await queue.put(None)  # let the next consumer finish too
    return total


def blocking_work(x: int) -> int:
    time.sleep(0.01)
    return x * 2


async def main() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=8)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(producer(queue, 1000))
        consumers = [tg.create_task(consumer(queue, f"c{i}")) for i in range(3)]
    print("sum over consumers:", sum(c.result() for c in consumers))

    print("from the executor:", await loop.run_in_executor(None, blocking_work, 21))

    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(10)
    except TimeoutError:
        print("timed out as asked")

    sleeper = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    sleeper.cancel()
    print("cancelled:", await asyncio.gather(sleeper, return_exceptions=True))
    print(
        "loop:",
        type(loop).__module__ + "." + type(loop).__qualname__,
        "request_id:",
        request_id.get(),
    )


if __name__ == "__main__":
    oxio.run(main())
