"""Runs one conformance target in this process and streams outcomes as JSON lines.

    python child.py TARGET LOOP OUT_FILE [SKIP_FILE]

Each finished test appends {"id", "outcome", "detail"} to OUT_FILE, so the parent keeps
every result even if this process crashes or hangs. A watchdog thread records a test
that runs longer than the per-test limit as "timeout" and ends the process; the parent
then starts another child that skips what is already done.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

PER_TEST_TIMEOUT = float(os.environ.get("OXIO_CONFORMANCE_TEST_TIMEOUT", "60"))


class StreamingResult(unittest.TestResult):
    def __init__(self, target: str, out, skip: set) -> None:
        super().__init__()
        self.target = target
        self.out = out
        self.skip = skip
        self.current = None
        self.started = 0.0
        self.lock = threading.Lock()

    def key(self, test) -> str:
        if isinstance(test, unittest.TestCase):
            return harness.test_key(self.target, test)
        return f"{self.target}::{test.id()}"

    def record(self, test, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.out.write(
                json.dumps({"id": self.key(test), "outcome": outcome, "detail": detail[-4000:]})
                + "\n"
            )
            self.out.flush()

    def startTest(self, test):
        with self.lock:
            self.current = test
            self.started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        with self.lock:
            self.current = None
        super().stopTest(test)

    def addSuccess(self, test):
        self.record(test, "pass")

    def addFailure(self, test, err):
        self.record(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        self.record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        self.record(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        self.record(test, "pass", "expected failure (CPython's own marker)")

    def addUnexpectedSuccess(self, test):
        self.record(test, "fail", "unexpected success (CPython marks it expectedFailure)")

    def addSubTest(self, test, subtest, err):
        if err is not None:
            outcome = "fail" if issubclass(err[0], test.failureException) else "error"
            self.record(
                test,
                outcome,
                f"subtest {subtest._subDescription()}: " + self._exc_info_to_string(err, test),
            )


def iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def watchdog(result: StreamingResult) -> None:
    while True:
        time.sleep(1.0)
        with result.lock:
            test, started = result.current, result.started
        if test is not None and time.monotonic() - started > PER_TEST_TIMEOUT:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            result.record(test, "timeout", f"no result after {PER_TEST_TIMEOUT:.0f}s")
            os._exit(3)


def main() -> int:
    target, loop_name, out_path = sys.argv[1:4]
    # CPython's interrupt tests (test_runners) need SIGINT to reach Python, as it does
    # in a terminal. A suite started in the background of a non-interactive shell
    # inherits SIGINT ignored, and then those tests hang on any loop, asyncio's included.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    skip = set()
    if len(sys.argv) > 4 and os.path.exists(sys.argv[4]):
        with open(sys.argv[4]) as f:
            skip = {line.strip() for line in f if line.strip()}
    harness.install(loop_name)
    suite = harness.suite_for(target, loop_name)
    with open(out_path, "a") as out:
        result = StreamingResult(target, out, skip)
        threading.Thread(target=watchdog, args=(result,), daemon=True).start()
        # Run through a TestSuite, which is what calls setUpClass/setUpModule.
        todo = [t for t in iter_tests(suite) if result.key(t) not in skip]
        unittest.TestSuite(todo).run(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
