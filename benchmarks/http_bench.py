"""HTTP benchmark: uvicorn (httptools) serving a plaintext "Hello, World!" ASGI app on
asyncio, uvloop, rloop and oxio, driven by wrk.

Each server runs in its own process with one loop (benchmarks/loops.py), uvicorn started
with `loop="none"` on that pre-created loop and access logging off; the server is pinned to
one CPU (`os.sched_setaffinity`) and wrk to another (`taskset`):

    taskset -c 1 wrk -t1 -c16 -d<duration>s --latency http://127.0.0.1:<port>/

Rounds are interleaved: in each of `--rounds` rounds the loops run in a shuffled order, a
fresh server process per loop and round. Each loop reports its best round (highest
requests/s) with that round's p99 latency; the ratio is against the best of uvloop and
rloop.

    python benchmarks/http_bench.py                       # 3 rounds x 10 s
    python benchmarks/http_bench.py --rounds 1 --duration 3 --json out.json
    python benchmarks/http_bench.py --smoke               # every loop once, ~1 s each: for CI

wrk must be on PATH; `--install-wrk` lets the script run `apt-get install -y wrk` when it is
missing and the script runs as root. A loop that is not installed is skipped with a note;
the exit status is non-zero only when asyncio or oxio failed to serve.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loops import LOOP_NAMES, loop_factory, loop_version  # noqa: E402
from server_process import Server, ServerFailed  # noqa: E402

REFERENCE_LOOPS = ("uvloop", "rloop")
MUST_SERVE = ("asyncio", "oxio")
BODY = b"Hello, World!"
CHECK_TIMEOUT = 5.0
APT_TIMEOUT = 600.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# the server process (python benchmarks/http_bench.py --serve LOOP)


async def hello_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(BODY)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def serve(loop_name: str, cpu: int | None) -> int:
    """Binds 127.0.0.1:0, prints `LISTENING <port>`, serves until SIGTERM or until the
    parent closes our stdin."""
    import asyncio
    import socket

    import uvicorn

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    factory = loop_factory(loop_name)
    if factory is None:
        print(f"{loop_name} is not installed", file=sys.stderr)
        return 2

    def orphan_guard() -> None:  # the parent went away without stopping us
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=orphan_guard, daemon=True).start()

    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only when sock.proto says TCP
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(
        hello_app,
        host="127.0.0.1",
        port=sock.getsockname()[1],
        loop="none",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    loop = factory()
    asyncio.set_event_loop(loop)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    try:
        loop.run_until_complete(server.serve(sockets=[sock]))
    finally:
        sock.close()
        loop.close()
    return 0


# ---------------------------------------------------------------------------------------
# the parent: servers, wrk, the report


def ensure_wrk(install: bool) -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if not install:
        raise SystemExit(
            "http_bench.py: wrk is not on PATH; install it (Debian/Ubuntu: apt-get install -y wrk) "
            "or rerun as root with --install-wrk"
        )
    if os.geteuid() != 0:
        raise SystemExit("http_bench.py: wrk is not on PATH and --install-wrk needs root")
    log("wrk is missing: apt-get install -y wrk")
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"],
            timeout=APT_TIMEOUT,
            check=True,
            stdout=sys.stderr,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemExit(f"http_bench.py: apt-get install -y wrk failed: {e}") from e
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("http_bench.py: wrk still not on PATH after apt-get install")
    return path


TIME_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_wrk(output: str) -> dict[str, Any]:
    """requests/s, p99 latency (µs), request count and error counts from `wrk --latency`."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p99 = re.search(r"^\s+99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    total = re.search(r"^\s+(\d+) requests in ", output, re.M)
    if not (rps and p99 and total):
        raise ValueError("could not parse wrk's output")
    result: dict[str, Any] = {
        "rps": float(rps.group(1)),
        "p99_us": float(p99.group(1)) * TIME_UNITS[p99.group(2)],
        "requests": int(total.group(1)),
        "non_2xx": 0,
        "socket_errors": {},
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        result["non_2xx"] = int(non_2xx.group(1))
    errors = re.search(r"Socket errors: (.*)$", output, re.M)
    if errors:
        for part in errors.group(1).split(","):
            name, _, count = part.strip().partition(" ")
            result["socket_errors"][name] = int(count)
    return result


def run_wrk(args: argparse.Namespace, wrk: str, port: int, duration: int) -> dict[str, Any]:
    argv = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency"]
    argv.append(f"http://127.0.0.1:{port}/")
    if args.client_cpu is not None:
        argv = ["taskset", "-c", str(args.client_cpu), *argv]
    timeout = duration + 30.0
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"wrk timed out after {timeout:.0f} s") from e
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise RuntimeError(why[-1] if why else f"wrk exited {done.returncode}")
    result = parse_wrk(done.stdout)
    if result["requests"] == 0:
        raise RuntimeError("wrk completed no request")
    if result["non_2xx"]:
        raise RuntimeError(f"{result['non_2xx']} non-2xx responses")
    return result


def check_response(port: int) -> None:
    """One request before the load: the server must answer exactly what the app says."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=CHECK_TIMEOUT) as resp:
        body = resp.read()
        if resp.status != 200 or body != BODY:
            raise RuntimeError(f"bad response: {resp.status} {body[:60]!r}")


def measure(
    args: argparse.Namespace, wrk: str, loop: str, tmp: Path, round_no: int
) -> dict[str, Any]:
    argv = [args.python, str(Path(__file__).resolve()), "--serve", loop]
    if args.server_cpu is not None:
        argv += ["--cpu", str(args.server_cpu)]
    server = Server(argv, tmp / f"{loop}.err")
    try:
        try:
            check_response(int(server.where))
            if args.warmup:
                run_wrk(args, wrk, int(server.where), args.warmup)
            result = run_wrk(args, wrk, int(server.where), args.duration)
        except (RuntimeError, ValueError, OSError) as e:
            why = str(e) if server.alive() else f"server exited: {server.error()}"
            raise RuntimeError(why) from e
        if not server.alive():
            raise RuntimeError(f"server exited: {server.error()}")
        result["round"] = round_no
        return result
    finally:
        server.stop()


def fmt_latency(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def table(results: dict[str, list[dict[str, Any]]], loops: list[str]) -> str:
    def best(loop: str) -> dict[str, Any] | None:
        return max(results.get(loop, []), key=lambda r: r["rps"], default=None)

    refs = [b["rps"] for b in (best(name) for name in REFERENCE_LOOPS) if b]
    reference = max(refs, default=None)
    lines = [
        "| loop | requests/s | p99 latency | rounds (min-max req/s) | vs best of uvloop/rloop |",
        "|---|---|---|---|---|",
    ]
    for loop in loops:
        top = best(loop)
        if top is None:
            lines.append(f"| {loop} | FAILED | - | - | - |")
            continue
        rates = [r["rps"] for r in results[loop]]
        spread = f"{len(rates)} ({min(rates):,.0f}-{max(rates):,.0f})"
        ratio = f"{top['rps'] / reference:.2f}x" if reference else "-"
        lines.append(
            f"| {loop} | {top['rps']:,.0f} | {fmt_latency(top['p99_us'])} | {spread} | {ratio} |"
        )
    return "\n".join(lines)


def usable_cpu(cpu: int | None, role: str, notes: list[str]) -> int | None:
    if cpu is None or cpu < 0:
        return None
    if cpu not in os.sched_getaffinity(0):
        notes.append(f"CPU {cpu} is not available: the {role} runs unpinned")
        return None
    return cpu


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default=",".join(LOOP_NAMES), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per round")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load discarded first")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--server-cpu", type=int, default=0, help="-1: do not pin")
    parser.add_argument("--client-cpu", type=int, default=1, help="-1: do not pin")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed")
    parser.add_argument("--python", default=sys.executable, help="interpreter for servers")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="every loop once, ~1 s (CI)")
    parser.add_argument("--install-wrk", action="store_true", help="apt-get it if missing")
    parser.add_argument("--serve", metavar="LOOP", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    for name in args.loops:
        if name not in LOOP_NAMES:
            parser.error(f"unknown loop {name!r}; choose from {', '.join(LOOP_NAMES)}")
    if args.smoke:
        args.rounds, args.duration, args.warmup = 1, 1, 0
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args.serve, args.cpu)

    started = time.monotonic()
    wrk = ensure_wrk(args.install_wrk)
    for module in ("uvicorn", "httptools"):
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"http_bench.py: {module} is not installed (pip install '.[bench]')")
    notes: list[str] = []
    args.server_cpu = usable_cpu(args.server_cpu, "server", notes)
    args.client_cpu = usable_cpu(args.client_cpu, "load generator", notes)
    if args.client_cpu is not None and shutil.which("taskset") is None:
        notes.append("taskset not found: wrk runs unpinned")
        args.client_cpu = None

    loops = []
    for name in args.loops:
        if name == "asyncio" or importlib.util.find_spec(name) is not None:
            loops.append(name)
        else:
            notes.append(f"{name}: not installed, skipped")
            log(f"note: {name} is not installed, skipping it")

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in loops}
    failures: dict[str, list[str]] = {name: [] for name in loops}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="oxio-http-") as tmp:
        for round_no in range(1, args.rounds + 1):
            order = list(loops)
            rng.shuffle(order)
            log(f"round {round_no}/{args.rounds}: {', '.join(order)}")
            for loop in order:
                try:
                    result = measure(args, wrk, loop, Path(tmp), round_no)
                except (ServerFailed, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    failures[loop].append(str(e))
                    log(f"  {loop}: FAILED: {e}")
                    continue
                results[loop].append(result)
                log(f"  {loop}: {result['rps']:,.0f} req/s, p99 {fmt_latency(result['p99_us'])}")

    versions = {name: loop_version(name) for name in loops}
    for module in ("uvicorn", "httptools"):
        versions[module] = loop_version(module)
    wrk_version = subprocess.run(
        [wrk, "--version"], capture_output=True, text=True, timeout=10
    ).stdout.split(" [")[0]
    print(
        f"{time.strftime('%Y-%m-%d')} · Python {platform.python_version()} · "
        f"{os.cpu_count()} CPUs · "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
        + f" · {wrk_version}\n"
    )
    print(table(results, loops))
    for loop in loops:
        if not results[loop]:
            why = failures[loop][0] if failures[loop] else "no result"
            notes.append(f"FAILED {loop}: {why}")
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    elapsed = time.monotonic() - started
    if args.server_cpu is None and args.client_cpu is None:
        pinned = "unpinned"
    else:
        pinned = f"server on CPU {args.server_cpu}, wrk on CPU {args.client_cpu}"
    print(
        f"\n{args.rounds} round(s) x {args.duration} s (+{args.warmup} s warm-up), "
        f"wrk -t{args.threads} -c{args.connections}, {pinned}; best round per loop; "
        f"{elapsed:.0f} s in all."
    )

    if args.json:
        data = {
            "meta": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "versions": versions,
                "wrk": wrk_version,
                "args": {k: v for k, v in vars(args).items() if k not in ("json", "serve")},
                "notes": notes,
            },
            "loops": {
                loop: {
                    "best": max(results[loop], key=lambda r: r["rps"], default=None),
                    "rounds": results[loop],
                    "failures": failures[loop],
                }
                for loop in loops
            },
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")

    fatal = [loop for loop in loops if loop in MUST_SERVE and not results[loop]]
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
