"""oxio: asyncio's event loop, rebuilt in Rust.

Three ways to run asyncio code on oxio::

    oxio.run(main())
    asyncio.run(main(), loop_factory=oxio.new_event_loop)   # Python 3.12+
    oxio.install()                                           # policy, for legacy code
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from . import _oxio
from ._connections import ConnectionMixin
from ._resolve import ResolverMixin
from ._server import ServerMixin
from ._sockets import SocketMixin

__all__ = ["Loop", "EventLoopPolicy", "new_event_loop", "install", "run", "__version__"]

__version__: str = _oxio.__version__

_T = TypeVar("_T")


class Loop(  # type: ignore[misc]
    _oxio.Loop,
    ConnectionMixin,
    ServerMixin,
    SocketMixin,
    ResolverMixin,
    asyncio.AbstractEventLoop,
):
    """The oxio event loop.

    The Rust base comes first so its methods win. The mixins hold the cold, coroutine
    shaped parts of networking (connection set-up, servers, the ``sock_*`` methods,
    name resolution); ``asyncio.AbstractEventLoop`` supplies the rest of the interface
    (methods a later release implements raise ``NotImplementedError`` from there, as
    the abstract loop does).
    """

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # As asyncio: an event loop garbage-collected without close() is a leak of its
        # poller; say so, and release what can be released.
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()


def new_event_loop() -> Loop:
    """Return a new oxio event loop."""
    return Loop()


class EventLoopPolicy(asyncio.events.BaseDefaultEventLoopPolicy):
    """An event loop policy whose new loops are oxio loops."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"


def install() -> None:
    """Make oxio the event loop policy, so that ``asyncio.new_event_loop()``,
    ``asyncio.run()`` and ``asyncio.get_event_loop()`` create oxio loops."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(
    main: Coroutine[Any, Any, _T] | Awaitable[_T],
    *,
    debug: bool | None = None,
    **run_kwargs: Any,
) -> _T:
    """Run the coroutine ``main`` on a new oxio loop and return its result,
    the way ``asyncio.run()`` does: the loop is closed, async generators are
    finalized and the default executor is shut down afterwards."""
    if asyncio.events._get_running_loop() is not None:
        # As asyncio.run(): refuse before creating (and leaking) a runner and a loop.
        raise RuntimeError("oxio.run() cannot be called from a running event loop")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop, **run_kwargs) as runner:
            return runner.run(main)
    return _run_legacy(main, debug=debug)


def _run_legacy(main: Any, *, debug: bool | None) -> Any:
    # Python 3.9/3.10 have no asyncio.Runner; this follows asyncio.run() there.
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: Loop) -> None:
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during oxio.run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
