"""Measure oxio, uvloop, rloop and stock asyncio in the same run, and print ratios.

    python benchmarks/run.py                 # every benchmark, every installed loop
    python benchmarks/run.py --rounds 7 --bench call_soon --bench "sleep(0)"
    python benchmarks/run.py --smoke         # each benchmark once, tiny sizes (CI)
    python benchmarks/run.py --json out.json

Every measurement runs in a fresh process, so no loop sees another's state (installed
policies, the garbage collector's generations, allocator arenas). Rounds are
interleaved: each round measures every loop once, in a shuffled order, so drift on a
shared machine falls on all loops alike. A loop's figure is its best round; the spread
is (worst - best) / best over the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loops import LOOP_NAMES, loop_factory, loop_version  # noqa: E402
from micro import BENCHMARKS  # noqa: E402

#: Wall-clock limit for one measurement process; a hang is a failure, not a stuck run.
CHILD_TIMEOUT = 300.0


def child(loop_name: str, bench: str, n: int, repeat: int) -> None:
    """Runs one measurement in this process and prints it as JSON."""
    factory = loop_factory(loop_name)
    if factory is None:
        raise SystemExit(f"loop {loop_name} is not installed")
    func = BENCHMARKS[bench][0]
    best = float("inf")
    ops = 0
    for _ in range(repeat):
        loop = factory()
        try:
            func(loop, max(1, n // 10))  # warm-up: caches, freelists, lazy imports
            t0 = time.perf_counter()
            ops = func(loop, n)
            best = min(best, time.perf_counter() - t0)
        finally:
            loop.close()
    print(json.dumps({"ops": ops, "seconds": best}))


def measure(loop_name: str, bench: str, n: int, repeat: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        os.path.join(HERE, "run.py"),
        "--child",
        loop_name,
        bench,
        str(n),
        str(repeat),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{loop_name} / {bench} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_rate(ops_per_s: float) -> str:
    if ops_per_s >= 1e6:
        return f"{ops_per_s / 1e6:.2f}M/s"
    return f"{ops_per_s / 1e3:.0f}k/s"


def report(results: dict[str, dict[str, list[float]]], loops: list[str], header: str) -> str:
    lines = [header, ""]
    cols = ["benchmark"] + loops + ["oxio / asyncio", "oxio / best(uvloop, rloop)"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join(["---"] * len(cols)) + "|")
    for bench, per_loop in results.items():
        best = {name: max(rates) for name, rates in per_loop.items() if rates}
        row = [bench]
        for name in loops:
            rates = per_loop.get(name) or []
            if not rates:
                row.append("n/a")
                continue
            spread = (max(rates) - min(rates)) / max(rates) * 100
            row.append(f"{fmt_rate(max(rates))} ±{spread:.0f}%")
        ox = best.get("oxio")
        row.append(f"{ox / best['asyncio']:.2f}x" if ox and best.get("asyncio") else "n/a")
        peers = [best[p] for p in ("uvloop", "rloop") if p in best]
        row.append(f"**{ox / max(peers):.2f}x**" if ox and peers else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", nargs="+", default=list(LOOP_NAMES), choices=LOOP_NAMES)
    parser.add_argument("--bench", action="append", choices=sorted(BENCHMARKS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per process")
    parser.add_argument("--smoke", action="store_true", help="once each, tiny sizes")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        loop_name, bench, n, repeat = args.child
        child(loop_name, bench, int(n), int(repeat))
        return 0

    loops = [name for name in args.loops if loop_factory(name) is not None]
    missing = [name for name in args.loops if name not in loops]
    benches = args.bench or list(BENCHMARKS)
    rounds, repeat = (1, 1) if args.smoke else (args.rounds, args.repeat)
    results: dict[str, dict[str, list[float]]] = {b: {name: [] for name in loops} for b in benches}
    failures = []
    for r in range(rounds):
        for bench in benches:
            _, full_n, smoke_n = BENCHMARKS[bench]
            n = smoke_n if args.smoke else full_n
            order = loops[:]
            random.shuffle(order)
            for name in order:
                try:
                    m = measure(name, bench, n, repeat)
                except Exception as exc:  # reported, and the run fails at the end
                    failures.append(str(exc))
                    continue
                results[bench][name].append(m["ops"] / m["seconds"])
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    header = (
        f"{datetime.date.today()} · Python {platform.python_version()} · "
        f"{os.cpu_count()} CPUs · "
        + ", ".join(f"{name} {loop_version(name)}" for name in loops)
        + (f" · not installed: {', '.join(missing)}" if missing else "")
        + f" · best of {rounds} rounds × {repeat} runs, ops/s (higher is better)"
    )
    print(report(results, loops, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": results}, f, indent=2)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
