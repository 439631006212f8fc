"""CPython's own asyncio test suite, bound to oxio, against expected_failures.txt.

One item per target. Targets run in child processes, two at a time, started when the
first item asks for its result; each item fails on an unexpected failure, an unexpected
pass, a hang, or an entry in the expectations file that no longer names a test.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
import runner

#: Longest targets first, so two workers finish together.
ORDER = ["ssl", "tasks", "subprocess", "taskgroups"]
_TARGETS = ORDER + [t for t in harness.TARGETS if t not in ORDER]

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_futures: dict = {}


def _result(target: str) -> runner.TargetResult:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="conformance")
            for t in _TARGETS:
                _futures[t] = _pool.submit(runner.run_target, t, "oxio")
    return _futures[target].result()


def test_expectations_file_is_well_formed():
    expected = runner.load_expectations()
    assert expected, "expected_failures.txt is missing or empty"
    for test_id, e in expected.items():
        assert test_id.split("::", 1)[0] in harness.TARGETS, f"unknown target: {test_id}"
        assert e.capability != "todo", f"untriaged entry: {test_id}"
        assert e.reason.strip(), f"entry without a reason: {test_id}"


@pytest.mark.timeout(runner.TARGET_TIMEOUT * 2 + 120)
@pytest.mark.parametrize("target", _TARGETS)
def test_cpython_asyncio(target):
    result = _result(target)
    problems = runner.compare(result, runner.load_expectations())
    assert not problems, f"{target}: " + "\n".join(problems)
