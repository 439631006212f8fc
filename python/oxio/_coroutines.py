"""The awaiting half of the loop's shutdown coroutines.

``Loop.shutdown_default_executor`` and ``Loop.shutdown_asyncgens`` do their bookkeeping
in Rust when called and return one of these coroutines, which does the waiting.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any


async def shutdown_executor(loop: Any, executor: Any, timeout: float | None = None) -> None:
    """Shut ``executor`` down in a helper thread, so the loop keeps running meanwhile."""
    if executor is None:
        return
    future = loop.create_future()

    def shut_down() -> None:
        try:
            executor.shutdown(wait=True)
        except Exception as exc:  # reported through the future
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, future, None, None)

    thread = threading.Thread(target=shut_down, name="oxio-executor-shutdown")
    thread.start()
    if timeout is None:
        try:
            await future
        finally:
            thread.join()
        return
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        warnings.warn(
            f"The executor did not finishing joining its threads within {timeout} seconds.",
            RuntimeWarning,
            stacklevel=2,
        )
        executor.shutdown(wait=False)
    else:
        thread.join()


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


async def close_asyncgens(loop: Any, agens: list) -> None:
    """Close the async generators ``agens``; report the ones that fail to close."""
    if not agens:
        return
    results = await asyncio.gather(*[ag.aclose() for ag in agens], return_exceptions=True)
    for result, agen in zip(results, agens):
        if isinstance(result, Exception):
            loop.call_exception_handler(
                {
                    "message": (
                        f"an error occurred during closing of asynchronous generator {agen!r}"
                    ),
                    "exception": result,
                    "asyncgen": agen,
                }
            )
