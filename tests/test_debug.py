"""get_debug/set_debug, slow_callback_duration, the thread check, PYTHONASYNCIODEBUG and
-X dev."""

import asyncio
import logging
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from conftest import run_briefly


def test_debug_flag(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_debug_flag_while_running(loop):
    seen = []

    def toggle():
        loop.set_debug(True)
        seen.append(loop.get_debug())
        loop.set_debug(False)
        seen.append(loop.get_debug())

    loop.call_soon(toggle)
    run_briefly(loop, 2)
    assert seen == [True, False]


def test_slow_callback_duration(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5
    loop.slow_callback_duration = 1
    assert loop.slow_callback_duration == 1


def slow():
    time.sleep(0.03)


def test_slow_callbacks_are_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        run_briefly(loop)
    [record] = [r for r in caplog.records if r.getMessage().startswith("Executing")]
    assert record.levelname == "WARNING" and record.name == "asyncio"
    where = f"{__file__}:{slow.__code__.co_firstlineno}"
    pattern = (
        rf"Executing <Handle slow\(\) at {re.escape(where)} created at "
        rf"{re.escape(__file__)}:\d+> took \d+\.\d\d\d seconds"
    )
    assert re.fullmatch(pattern, record.getMessage()), record.getMessage()


def test_slow_callbacks_are_not_logged_outside_debug_mode(loop, caplog):
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        run_briefly(loop)
    assert not [r for r in caplog.records if r.getMessage().startswith("Executing")]


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "create_task"])
def test_debug_mode_refuses_non_threadsafe_calls_from_other_threads(loop, method):
    loop.set_debug(True)
    errors = []

    def from_thread():
        coro = asyncio.sleep(0)
        calls = {
            "call_soon": lambda: loop.call_soon(print),
            "call_later": lambda: loop.call_later(1, print),
            "call_at": lambda: loop.call_at(1, print),
            "create_task": lambda: loop.create_task(coro),
        }
        try:
            calls[method]()
        except RuntimeError as e:
            errors.append(str(e))
        finally:
            coro.close()
            loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=from_thread)
    guard = loop.call_later(10, loop.stop)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    guard.cancel()
    assert errors == [
        "Non-thread-safe operation invoked on an event loop other than the current one"
    ]


def test_no_thread_check_outside_debug_mode(loop):
    done = []

    def from_thread():
        loop.call_soon(done.append, "from thread")
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=from_thread)
    guard = loop.call_later(10, loop.stop)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    run_briefly(loop)
    guard.cancel()
    assert done == ["from thread"]


def _debug_in_subprocess(loop_expr, args=(), env=None):
    code = f"import asyncio, oxio; lp = {loop_expr}; print(lp.get_debug()); lp.close()"
    out = subprocess.run(
        [sys.executable, *args, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


LOOP_EXPRS = {"asyncio": "asyncio.SelectorEventLoop()", "oxio": "oxio.new_event_loop()"}


@pytest.mark.parametrize("kind", list(LOOP_EXPRS))
def test_pythonasynciodebug_turns_debug_on(kind):
    env = dict(os.environ, PYTHONASYNCIODEBUG="1")
    assert _debug_in_subprocess(LOOP_EXPRS[kind], env=env) == "True"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    assert _debug_in_subprocess(LOOP_EXPRS[kind], env=env) == "False"


@pytest.mark.parametrize("kind", list(LOOP_EXPRS))
def test_dev_mode_turns_debug_on(kind):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    assert _debug_in_subprocess(LOOP_EXPRS[kind], args=("-X", "dev"), env=env) == "True"
