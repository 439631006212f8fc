"""Exception handlers, the default handler's log format, and errors raised by callbacks."""

import asyncio
import gc
import logging
import re
import socket
import sys

import pytest
from conftest import run_briefly, run_until


def bad(x):
    raise ValueError(x)


BAD_SOURCE = f"at {__file__}:{bad.__code__.co_firstlineno}"


# errors raised by callbacks


def test_callback_exception_reaches_the_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    h = loop.call_soon(bad, 7)
    run_briefly(loop)
    [(lp, ctx)] = contexts
    assert lp is loop
    assert sorted(ctx) == ["exception", "handle", "message"]
    assert ctx["message"] == f"Exception in callback bad(7) {BAD_SOURCE}"
    assert isinstance(ctx["exception"], ValueError) and ctx["exception"].args == (7,)
    assert ctx["handle"] is h


def test_timer_and_reader_exceptions_reach_the_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    t = loop.call_later(0, bad, "timer")
    a, b = socket.socketpair()
    try:
        loop.add_reader(a, bad, "reader")
        b.send(b"x")
        run_until(loop, lambda: len(contexts) >= 2)
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    by_arg = {ctx["exception"].args[0]: ctx for ctx in contexts}
    assert by_arg["timer"]["handle"] is t
    assert by_arg["timer"]["message"] == f"Exception in callback bad('timer') {BAD_SOURCE}"
    assert by_arg["reader"]["message"] == f"Exception in callback bad('reader') {BAD_SOURCE}"
    assert type(by_arg["reader"]["handle"]).__name__ == "Handle"


def test_the_loop_goes_on_after_a_callback_error(loop):
    loop.set_exception_handler(lambda lp, ctx: None)
    seen = []
    loop.call_soon(bad, 1)
    loop.call_soon(seen.append, "next")
    run_briefly(loop)
    assert seen == ["next"]
    assert loop.is_running() is False


def test_the_handler_sees_the_exception_as_being_handled(loop):
    """asyncio calls the handler from inside its `except` block, so sys.exc_info() (and so
    logger.exception() or traceback.print_exc() in a handler) sees the callback's error."""
    seen = []

    def handler(lp, ctx):
        seen.append(sys.exc_info()[1] is ctx["exception"])

    loop.set_exception_handler(handler)
    loop.call_soon(bad, 1)
    loop.call_later(0, bad, 2)
    run_briefly(loop, 2)
    assert seen == [True, True]


def test_debug_mode_adds_the_source_traceback(loop):
    contexts = []
    loop.set_debug(True)
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_soon(bad, 1)
    run_briefly(loop)
    [ctx] = contexts
    assert sorted(ctx) == ["exception", "handle", "message", "source_traceback"]
    assert ctx["source_traceback"][-1].name == "test_debug_mode_adds_the_source_traceback"


def test_overridden_handlers_in_a_subclass_are_used(loop):
    """Callback errors go through self.call_exception_handler, which goes through
    self.default_exception_handler: subclasses can override either."""
    base = type(loop)
    got = []

    class DefaultOverride(base):
        def default_exception_handler(self, context):
            got.append(("default", context["message"]))

    class CallOverride(base):
        def call_exception_handler(self, context):
            got.append(("call", context["message"]))

    for cls in (DefaultOverride, CallOverride):
        lp = cls()
        try:
            lp.call_soon(bad, 1)
            run_briefly(lp)
        finally:
            lp.close()
    message = f"Exception in callback bad(1) {BAD_SOURCE}"
    assert got == [("default", message), ("call", message)]


# set/get/call


def test_get_and_reset_the_exception_handler(loop):
    def handler(lp, ctx):
        pass

    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_call_exception_handler_with_a_custom_handler(loop):
    got = []

    class Handler:
        def __call__(self, lp, ctx):
            got.append((lp, ctx))

    loop.set_exception_handler(Handler())
    context = {"message": "hello", "x": 1}
    loop.call_exception_handler(context)
    assert got == [(loop, {"message": "hello", "x": 1})]
    assert got[0][1] is context


# the default handler and its log format


def _normalize(text):
    return re.sub(r"0x[0-9a-f]+", "0x", text)


def _log_of(caplog, action):
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        action()
    return [
        (r.name, r.levelname, _normalize(r.getMessage()), r.exc_info[1] if r.exc_info else None)
        for r in caplog.records
    ]


def _error():
    try:
        raise KeyError("k")
    except KeyError as e:
        return e


def test_default_handler_log_format(loop, caplog):
    err = _error()
    cases = [
        ({"message": "m", "b": 2, "a": 1}, "m\na: 1\nb: 2", None),
        ({}, "Unhandled exception in event loop", None),
        ({"exception": err}, "Unhandled exception in event loop", err),
        ({"message": "hi", "exception": err, "future": "F"}, "hi\nfuture: 'F'", err),
        ({"message": "none", "exception": None}, "none", None),
        (
            {"message": "tb", "source_traceback": [("f.py", 1, "fn", "line")]},
            'tb\nsource_traceback: Object created at (most recent call last):\n  File "f.py",'
            " line 1, in fn\n    line",
            None,
        ),
        (
            {"message": "h", "handle_traceback": [("g.py", 2, "gn", "l2")]},
            'h\nhandle_traceback: Handle created at (most recent call last):\n  File "g.py",'
            " line 2, in gn\n    l2",
            None,
        ),
    ]
    for context, message, exc in cases:
        logs = _log_of(caplog, lambda c=context: loop.default_exception_handler(dict(c)))
        assert logs == [("asyncio", "ERROR", message, exc)], context
        logs = _log_of(caplog, lambda c=context: loop.call_exception_handler(dict(c)))
        assert logs == [("asyncio", "ERROR", message, exc)], context


def test_default_handler_output_matches_asyncio(oxloop, refloop, caplog):
    """The same contexts, logged by oxio and by the stock loop, give the same records."""
    err = _error()
    fut = refloop.create_future()
    contexts = [
        {"message": "plain"},
        {"message": "with future", "exception": err, "future": fut, "extra": [1, 2]},
        {"exception": err, "protocol": object, "transport": None},
        {"message": "multi\nline", "z": "last", "a": "first"},
    ]
    for context in contexts:
        ours = _log_of(caplog, lambda c=context: oxloop.call_exception_handler(dict(c)))
        theirs = _log_of(caplog, lambda c=context: refloop.call_exception_handler(dict(c)))
        assert ours == theirs


def test_callback_error_log(loop, caplog):
    def action():
        loop.call_soon(bad, "logged")
        run_briefly(loop)

    [(name, level, message, exc)] = _log_of(caplog, action)
    assert (name, level) == ("asyncio", "ERROR")
    assert isinstance(exc, ValueError)
    assert message == (
        f"Exception in callback bad('logged') {BAD_SOURCE}\n"
        f"handle: <Handle bad('logged') {BAD_SOURCE}>"
    )


def test_a_failing_handler_is_logged_not_raised(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    logs = _log_of(caplog, lambda: loop.call_exception_handler({"message": "x"}))
    [(name, level, message, exc)] = logs
    assert (name, level, message) == (
        "asyncio",
        "ERROR",
        "Unhandled error in exception handler\ncontext: {'message': 'x'}",
    )
    assert isinstance(exc, RuntimeError) and str(exc) == "handler broke"


def test_a_failing_handler_for_a_callback_error(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    seen = []

    def action():
        loop.call_soon(bad, 1)
        loop.call_soon(seen.append, "loop goes on")
        run_briefly(loop)

    [(name, level, message, exc)] = _log_of(caplog, action)
    assert message.startswith(
        "Unhandled error in exception handler\ncontext: {'message': 'Exception in callback bad(1)"
    )
    assert isinstance(exc, RuntimeError)
    assert isinstance(exc.__context__, ValueError)  # raised while handling the callback's error
    assert seen == ["loop goes on"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_exit_exceptions_in_a_handler_propagate(loop, exc):
    def handler(lp, ctx):
        raise exc

    loop.set_exception_handler(handler)
    with pytest.raises(exc):
        loop.call_exception_handler({"message": "x"})
    loop.call_soon(bad, 1)
    with pytest.raises(exc):
        run_briefly(loop)
    loop.set_exception_handler(None)
    run_briefly(loop)  # the stop() queued behind the failing callback
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


def test_unretrieved_task_exception_is_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fail():
        raise LookupError("never retrieved")

    task = loop.create_task(fail())
    run_briefly(loop, 2)
    assert task.done()
    del task
    gc.collect()
    [ctx] = contexts
    assert ctx["message"] == "Task exception was never retrieved"
    assert isinstance(ctx["exception"], LookupError)
