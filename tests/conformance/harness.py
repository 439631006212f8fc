"""Binds CPython's own ``test.test_asyncio`` to oxio.

Two kinds of target:

* the loop-generic mixins (``EventLoopTestsMixin``, ``BaseSockTestsMixin``, ...) get
  concrete test classes here whose loop factory is oxio's, mirroring how each CPython
  module builds its classes for the selector loop;
* the high-level modules (tasks, locks, streams, ...) run as they are, with the default
  event loop policy patched so that every new loop is an oxio loop.

``--loop asyncio`` binds stock asyncio's loop instead, to check the harness itself.
"""

from __future__ import annotations

import asyncio
import importlib
import types
import unittest
from typing import Callable

#: Targets that bind a mixin: target -> (CPython module, [mixin class names], base kind).
#: "utils" bases use test_utils.TestCase with create_event_loop(); "functional" bases
#: use unittest.TestCase with new_loop().
MIXIN_TARGETS: dict[str, tuple] = {
    # CPython's Unix classes add a setUp that attaches a SIGCHLD child watcher, the
    # selector loop's 3.11 way of reaping subprocesses; oxio reaps children itself, so
    # the generic mixins are bound directly (no test is lost: the Unix mixin adds none).
    "events": ("test_events", ["EventLoopTestsMixin", "SubprocessTestsMixin"], "utils"),
    "sock_lowlevel": ("test_sock_lowlevel", ["BaseSockTestsMixin"], "utils"),
    "sendfile": ("test_sendfile", ["SendfileTestsBase"], "utils"),
    "server": ("test_server", ["SelectorStartServerTests"], "functional"),
    "buffered_proto": ("test_buffered_proto", ["BaseTestBufferedProtocol"], "functional"),
    "sslproto": ("test_sslproto", ["BaseStartTLS"], "functional"),
    "subprocess_mixin": ("test_subprocess", ["SubprocessMixin"], "utils"),
}

#: Whole modules run with every new loop an oxio loop.
MODULE_TARGETS: dict[str, str] = {
    name: f"test_{name}"
    for name in (
        "tasks",
        "futures",
        "futures2",
        "locks",
        "queues",
        "runners",
        "taskgroups",
        "timeouts",
        "waitfor",
        "context",
        "pep492",
        "threads",
        "streams",
        "ssl",
        "subprocess",
    )
}

TARGETS: list[str] = list(MIXIN_TARGETS) + list(MODULE_TARGETS)


def loop_factory(loop_name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop_name == "asyncio":
        return asyncio.SelectorEventLoop
    import oxio

    return oxio.new_event_loop


def install(loop_name: str) -> None:
    """Makes every loop asyncio creates by default a `loop_name` loop, and adapts the
    test helpers that read private attributes of asyncio's own loop."""
    from test.test_asyncio import utils as test_utils

    if loop_name == "oxio":
        import oxio

        # Tests reset the policy with set_event_loop_policy(None); asyncio then builds
        # a new default policy from the module attribute, so patch that attribute.
        asyncio.DefaultEventLoopPolicy = oxio.EventLoopPolicy
        asyncio.events.DefaultEventLoopPolicy = oxio.EventLoopPolicy  # type: ignore[attr-defined]
        asyncio.set_event_loop_policy(None)

    # Harness adaptation: test_utils.TestCase.close_loop() reads loop._default_executor,
    # a private attribute of asyncio's BaseEventLoop. asyncio's own loops (the tests'
    # TestLoop among them) keep the original; for oxio, shutting the executor down
    # through the public coroutine is what it means to do.
    original_close_loop = test_utils.TestCase.close_loop

    class _NoExecutor:
        """The loop as close_loop() sees it once its executor is shut down."""

        _default_executor = None

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.close = loop.close
            self.is_closed = loop.is_closed

    def close_loop(loop: asyncio.AbstractEventLoop) -> None:
        if hasattr(loop, "_default_executor"):
            original_close_loop(loop)
            return
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        original_close_loop(_NoExecutor(loop))

    test_utils.TestCase.close_loop = staticmethod(close_loop)


def _mixin_suite(
    target: str, factory: Callable[[], asyncio.AbstractEventLoop]
) -> unittest.TestSuite:
    module_name, mixins, kind = MIXIN_TARGETS[target]
    module = importlib.import_module(f"test.test_asyncio.{module_name}")
    from test.test_asyncio import utils as test_utils

    # One class combining the mixins, as CPython's own concrete classes do (the
    # subprocess mixin relies on the event-loop mixin's setUp).
    bases_mixins = tuple(getattr(module, name) for name in mixins)
    if kind == "utils":
        namespace = {"create_event_loop": lambda self: factory()}
        bases = bases_mixins + (test_utils.TestCase,)
    else:
        namespace = {"new_loop": lambda self: factory()}
        bases = bases_mixins + (unittest.TestCase,)
    if "EventLoopTestsMixin" in mixins:
        namespace.update(_events_adaptations())
    if mixins == ["SubprocessMixin"]:
        namespace.update(_subprocess_mixin_setup(factory))
    cls = types.new_class(f"Oxio{mixins[0]}", bases, {}, lambda ns: ns.update(namespace))
    cls.__module__ = target
    return unittest.TestLoader().loadTestsFromTestCase(cls)


def _events_adaptations() -> dict:
    # Harness adaptation: test_timeout_rounding builds its failure message from
    # loop._selector, a private attribute of asyncio's selector loop, before asserting;
    # give the instance a stand-in so the assertion itself is what is tested.
    def setUp(self):
        super(type(self), self).setUp()
        if not hasattr(self.loop, "_selector"):
            self.loop._selector = types.SimpleNamespace()

    return {"setUp": setUp}


def _subprocess_mixin_setup(factory: Callable[[], asyncio.AbstractEventLoop]) -> dict:
    def setUp(self):
        super(type(self), self).setUp()
        self.loop = factory()
        self.set_event_loop(self.loop)

    return {"setUp": setUp}


def suite_for(target: str, loop_name: str) -> unittest.TestSuite:
    """The tests of `target`, bound to `loop_name`'s loop."""
    factory = loop_factory(loop_name)
    if target in MIXIN_TARGETS:
        return _mixin_suite(target, factory)
    module = importlib.import_module(f"test.test_asyncio.{MODULE_TARGETS[target]}")
    return unittest.TestLoader().loadTestsFromModule(module)


def test_key(target: str, test: unittest.TestCase) -> str:
    """A stable id: target, class and method (`events::OxioUnixEventLoopTestsMixin.test_x`)."""
    cls = type(test).__name__
    return f"{target}::{cls}.{test._testMethodName}"
