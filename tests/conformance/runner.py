"""Runs conformance targets in child processes and compares them with the expectations.

    python tests/conformance/runner.py [TARGET ...] [--loop asyncio|oxio] [--update]

`--update` rewrites expected_failures.txt from this run, keeping the reasons already
written for tests that still fail (new entries get a placeholder to fill in).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

EXPECTATIONS = os.path.join(HERE, "expected_failures.txt")
#: A whole target gets this long, restarts after hanging tests included.
TARGET_TIMEOUT = float(os.environ.get("OXIO_CONFORMANCE_TARGET_TIMEOUT", "900"))
FAILING = ("fail", "error", "timeout")


@dataclass
class Expectation:
    capability: str
    reason: str


@dataclass
class TargetResult:
    target: str
    outcomes: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    problem: str | None = None


def load_expectations(path: str = EXPECTATIONS) -> dict[str, Expectation]:
    """`<test id>  <capability>: <reason>` per line; `#` starts a comment."""
    expected: dict[str, Expectation] = {}
    if not os.path.exists(path):
        return expected
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
            if not line:
                continue
            m = re.match(r"^(\S+)\s+([\w-]+):\s*(.+)$", line)
            if not m:
                raise ValueError(f"{path}:{n}: expected '<id>  <capability>: <reason>'")
            expected[m.group(1)] = Expectation(m.group(2), m.group(3))
    return expected


def run_target(target: str, loop: str) -> TargetResult:
    """Runs `target` to completion in as many child processes as hangs require."""
    result = TargetResult(target)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"oxio-conf-{target}-") as tmp:
        out = os.path.join(tmp, "out.jsonl")
        skip = os.path.join(tmp, "skip.txt")
        open(out, "w").close()
        while True:
            remaining = TARGET_TIMEOUT - (time.monotonic() - start)
            if remaining <= 0:
                result.problem = f"target exceeded {TARGET_TIMEOUT:.0f}s"
                break
            cmd = [sys.executable, os.path.join(HERE, "child.py"), target, loop, out, skip]
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=tmp,
                start_new_session=True,
            )
            try:
                _, stderr = proc.communicate(timeout=remaining)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                result.problem = f"target exceeded {TARGET_TIMEOUT:.0f}s"
                break
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            _read_outcomes(out, result)
            if proc.returncode == 3:  # the watchdog ended a hanging test; go on after it
                with open(skip, "w") as f:
                    f.write("\n".join(result.outcomes))
                continue
            if proc.returncode != 0:
                tail = stderr.decode(errors="replace")[-3000:]
                result.problem = f"child exited with {proc.returncode}:\n{tail}"
            break
    result.seconds = time.monotonic() - start
    return result


def _read_outcomes(path: str, result: TargetResult) -> None:
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            previous = result.outcomes.get(rec["id"])
            # A test with several failing subtests reports more than once; failure wins.
            if previous in FAILING and rec["outcome"] == "pass":
                continue
            result.outcomes[rec["id"]] = rec["outcome"]
            if rec.get("detail"):
                result.details[rec["id"]] = rec["detail"]


def compare(result: TargetResult, expected: dict[str, Expectation]) -> list[str]:
    """Everything about `result` that disagrees with the expectations, as messages."""
    problems = []
    if result.problem:
        problems.append(result.problem)
    for test_id, outcome in sorted(result.outcomes.items()):
        listed = test_id in expected
        if outcome in FAILING and not listed:
            detail = result.details.get(test_id, "").strip().splitlines()
            last = detail[-1] if detail else ""
            problems.append(f"unexpected {outcome}: {test_id}: {last}")
        elif outcome == "pass" and listed:
            problems.append(f"unexpected pass (remove it from expected_failures.txt): {test_id}")
    prefix = f"{result.target}::"
    for test_id in sorted(expected):
        if test_id.startswith(prefix) and test_id not in result.outcomes and not result.problem:
            problems.append(f"listed but not run (stale entry?): {test_id}")
    return problems


def update_expectations(results: list[TargetResult], expected: dict[str, Expectation]) -> None:
    ran = {r.target for r in results}
    kept = {k: v for k, v in expected.items() if k.split("::", 1)[0] not in ran}
    for r in results:
        for test_id, outcome in r.outcomes.items():
            if outcome in FAILING:
                kept[test_id] = expected.get(test_id) or Expectation(
                    "todo", f"{outcome}: triage me"
                )
    with open(EXPECTATIONS, "w") as f:
        f.write(
            "# CPython tests that do not pass on oxio yet, one per line:\n"
            "#   <target>::<Class>.<test>  <capability>: <one-line reason>\n"
            "# The capability names the issue that will make the test pass. This list only\n"
            "# shrinks: the conformance run fails on an unexpected failure and on an\n"
            "# unexpected pass alike.\n"
        )
        by_target: dict[str, list[str]] = {}
        for test_id in kept:
            by_target.setdefault(test_id.split("::", 1)[0], []).append(test_id)
        for target in sorted(by_target):
            f.write(f"\n# {target}\n")
            for test_id in sorted(by_target[target]):
                e = kept[test_id]
                f.write(f"{test_id}  {e.capability}: {e.reason}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("targets", nargs="*", default=harness.TARGETS)
    parser.add_argument("--loop", default="oxio", choices=("oxio", "asyncio"))
    parser.add_argument("--update", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    expected = load_expectations() if args.loop == "oxio" else {}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda t: run_target(t, args.loop), args.targets))
    failed = False
    for r in results:
        counts: dict[str, int] = {}
        for outcome in r.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = ", ".join(f"{counts[k]} {k}" for k in sorted(counts))
        print(f"{r.target:18s} {r.seconds:6.1f}s  {summary}")
        problems = compare(r, expected)
        if problems and not args.update:
            failed = True
            for p in problems:
                print(f"    {p}")
    if args.update:
        update_expectations(results, expected)
        print(f"wrote {EXPECTATIONS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
