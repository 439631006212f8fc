"""get_debug/set_debug, slow_callback_duration, PYTHONASYNCIODEBUG."""

import logging
import os
import subprocess
import sys
import time

from conftest import run_briefly


def test_debug_flag_and_slow_callback_duration(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


def test_slow_callbacks_are_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.03)
        run_briefly(loop)
    assert any("Executing" in r.getMessage() and "took" in r.getMessage() for r in caplog.records)


def test_debug_mode_records_where_handles_were_created(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    assert h._source_traceback
    assert h._source_traceback[-1][0] == __file__
    h.cancel()


def test_pythonasynciodebug_turns_debug_on():
    code = "import oxio; print(oxio.new_event_loop().get_debug())"
    env = dict(os.environ, PYTHONASYNCIODEBUG="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "True", out.stderr
