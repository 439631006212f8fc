"""Exception handlers and the default handler's log format."""

import logging
import re

import pytest
from conftest import run_briefly


def test_callback_exception_reaches_the_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))

    def bad(x):
        raise ValueError(x)

    h = loop.call_soon(bad, 7)
    run_briefly(loop)
    [(lp, ctx)] = contexts
    assert lp is loop
    assert ctx["message"].startswith("Exception in callback ")
    assert "bad(7)" in ctx["message"]
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["handle"] is h


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
    loop.set_exception_handler(lambda lp, ctx: got.append(ctx))
    loop.call_exception_handler({"message": "hello", "x": 1})
    assert got == [{"message": "hello", "x": 1}]


def _normalize(text):
    text = re.sub(r"0x[0-9a-f]+", "0x", text)
    text = re.sub(r"when=[0-9.]+", "when=T", text)
    # asyncio's traceback has one more frame: events.Handle._run, which oxio runs from Rust.
    text = re.sub(r'  File ".*asyncio/events.py".*\n.*\n', "", text)
    return text


def _log_of(loop, caplog, action):
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        action()
    return [
        (r.levelname, _normalize(r.getMessage()), r.exc_info[0] if r.exc_info else None)
        for r in caplog.records
    ]


def test_default_handler_log_format(loop, caplog):
    def bad():
        raise KeyError("k")

    def callback_error():
        loop.call_soon(bad)
        run_briefly(loop)

    [(level, message, exc_type)] = _log_of(loop, caplog, callback_error)
    assert level == "ERROR"
    assert message.startswith("Exception in callback ")
    assert "\nhandle: <Handle " in message
    assert exc_type is KeyError

    logs = _log_of(
        loop, caplog, lambda: loop.call_exception_handler({"message": "m", "b": 2, "a": 1})
    )
    assert logs == [("ERROR", "m\na: 1\nb: 2", None)]

    logs = _log_of(loop, caplog, lambda: loop.call_exception_handler({}))
    assert logs == [("ERROR", "Unhandled exception in event loop", None)]


def test_a_failing_handler_is_logged_not_raised(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    logs = _log_of(loop, caplog, lambda: loop.call_exception_handler({"message": "x"}))
    assert logs == [
        ("ERROR", "Unhandled error in exception handler\ncontext: {'message': 'x'}", RuntimeError)
    ]


def test_exit_exceptions_in_a_handler_propagate(loop):
    def handler(lp, ctx):
        raise KeyboardInterrupt

    loop.set_exception_handler(handler)
    with pytest.raises(KeyboardInterrupt):
        loop.call_exception_handler({"message": "x"})
