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
    python benchmarks/http_bench.py --tls --rounds 3 --duration 5   # HTTPS
    python benchmarks/http_bench.py --smoke               # every loop once, ~1 s each: for CI
    python benchmarks/http_bench.py --smoke --tls         # the same over HTTPS

`--tls` serves HTTPS instead: uvicorn gets `ssl_certfile`/`ssl_keyfile` (its own context:
`PROTOCOL_TLS_SERVER`, the same on every loop) with a certificate made for the run in a
temporary directory (see tls_certs.py), and wrk loads https://127.0.0.1:<port>/. wrk keeps
its connections open, so each run does one TLS 1.3 handshake per connection (16 in 10 s)
and the rest is request/response over TLS. A loop whose `create_server` cannot do TLS is
reported as `unsupported` (rloop 0.5 raises NotImplementedError for `ssl=`).

wrk must be on PATH; `--install-wrk` lets the script run `apt-get install -y wrk` when it is
missing and the script runs as root. A loop that is not installed is skipped with a note;
the exit status is non-zero only when asyncio or oxio failed to serve (TLS included).
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
from tls_certs import Certificate, certificate_if, client_context  # noqa: E402

REFERENCE_LOOPS = ("uvloop", "rloop")
MUST_SERVE = ("asyncio", "oxio")
BODY = b"Hello, World!"
CHECK_TIMEOUT = 5.0
APT_TIMEOUT = 600.0
# In the last line of a server whose loop cannot serve TLS; reported as unsupported.
TLS_UNSUPPORTED = "TLS is not supported"


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


def serve(loop_name: str, cpu: int | None, certfile: str | None, keyfile: str | None) -> int:
    """Binds 127.0.0.1:0, starts uvicorn on it (over TLS with `certfile`), prints
    `LISTENING <port>` once uvicorn has started, serves until SIGTERM or until the parent
    closes our stdin."""
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
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside a buffered
        # reader holds its lock, which is fatal if the interpreter shuts down meanwhile.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            return
        os._exit(0)

    threading.Thread(target=orphan_guard, daemon=True).start()

    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only when sock.proto says TCP
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]  # now: a loop may detach the socket object when serving
    config = uvicorn.Config(
        hello_app,
        host="127.0.0.1",
        port=port,
        loop="none",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"LISTENING {port}", flush=True)
        await serving

    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run())
    except NotImplementedError:
        if certfile is None:
            raise
        print(
            f"http_bench: {TLS_UNSUPPORTED} by {loop_name} (NotImplementedError)", file=sys.stderr
        )
        return 3
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
    argv.append(f"{'https' if args.tls else 'http'}://127.0.0.1:{port}/")
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


def check_response(port: int, cert: Certificate | None) -> str | None:
    """One request before the load: the server must answer exactly what the app says.
    Over TLS, returns the negotiated protocol and cipher suite."""
    import http.client

    conn: http.client.HTTPConnection
    if cert is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT)
    else:
        context = client_context(cert)
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=CHECK_TIMEOUT, context=context
        )
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or body != BODY:
            raise RuntimeError(f"bad response: {resp.status} {body[:60]!r}")
        cipher = conn.sock.cipher() if cert is not None else None
        return f"{cipher[1]} {cipher[0]}" if cipher else None
    finally:
        conn.close()


def measure(
    args: argparse.Namespace, wrk: str, loop: str, tmp: Path, round_no: int
) -> dict[str, Any]:
    argv = [args.python, str(Path(__file__).resolve()), "--serve", loop]
    if args.server_cpu is not None:
        argv += ["--cpu", str(args.server_cpu)]
    if args.cert is not None:
        argv += ["--certfile", str(args.cert.certfile), "--keyfile", str(args.cert.keyfile)]
    server = Server(argv, tmp / f"{loop}.err")
    try:
        try:
            tls = check_response(int(server.where), args.cert)
            if args.warmup:
                run_wrk(args, wrk, int(server.where), args.warmup)
            result = run_wrk(args, wrk, int(server.where), args.duration)
        except (RuntimeError, ValueError, OSError) as e:
            why = str(e) if server.alive() else f"server exited: {server.error()}"
            raise RuntimeError(why) from e
        if not server.alive():
            raise RuntimeError(f"server exited: {server.error()}")
        result["round"] = round_no
        if tls:
            result["tls"] = tls
        return result
    finally:
        server.stop()


def fmt_latency(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def unsupported(failures: list[str]) -> bool:
    return bool(failures) and all(TLS_UNSUPPORTED in why for why in failures)


def table(
    results: dict[str, list[dict[str, Any]]], failures: dict[str, list[str]], loops: list[str]
) -> str:
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
            status = "unsupported" if unsupported(failures.get(loop, [])) else "FAILED"
            lines.append(f"| {loop} | {status} | - | - | - |")
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
    parser.add_argument("--tls", action="store_true", help="serve and load HTTPS")
    parser.add_argument("--serve", metavar="LOOP", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--certfile", help=argparse.SUPPRESS)
    parser.add_argument("--keyfile", help=argparse.SUPPRESS)
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
        return serve(args.serve, args.cpu, args.certfile, args.keyfile)

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
        args.cert = certificate_if(args.tls, Path(tmp), "http_bench.py", log)
        for round_no in range(1, args.rounds + 1):
            order = list(loops)
            rng.shuffle(order)
            log(f"round {round_no}/{args.rounds}: {', '.join(order)}")
            for loop in order:
                try:
                    result = measure(args, wrk, loop, Path(tmp), round_no)
                except (ServerFailed, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    failures[loop].append(str(e))
                    status = "unsupported" if unsupported([str(e)]) else "FAILED"
                    log(f"  {loop}: {status}: {e}")
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
    print(table(results, failures, loops))
    for loop in loops:
        if not results[loop]:
            why = failures[loop][0] if failures[loop] else "no result"
            status = "unsupported" if unsupported(failures[loop]) else "FAILED"
            notes.append(f"{status} {loop}: {why}")
    if args.tls:
        seen = sorted({r["tls"] for rounds in results.values() for r in rounds if "tls" in r})
        verified = "verified" if args.cert.verifiable else "not verified"
        notes.append(
            f"HTTPS: {', '.join(seen) or 'no handshake completed'} (negotiated by the check "
            f"request's OpenSSL client; wrk's OpenSSL has the same defaults); certificate: "
            f"{args.cert.origin} ({verified} by the check request)"
        )
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
        f"{'HTTPS' if args.tls else 'HTTP'}, "
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
                "args": {
                    k: v
                    for k, v in vars(args).items()
                    if k not in ("json", "serve", "cert", "certfile", "keyfile")
                },
                "tls_certificate": args.cert.origin if args.cert else None,
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
